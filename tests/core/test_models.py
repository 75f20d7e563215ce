"""Encoders (the optional 1x1 expansion: its feature size, its parameter names), normalisation and the one embedding function."""

from __future__ import annotations

from pathlib import Path

import torch

from core.models import CIFAR_MEAN, CIFAR_STD, EncoderSpec, build_encoder, embed, feature_dim, load_encoder, normalize
from training.config import PretrainConfig


def test_expansion_sets_the_feature_size() -> None:
    plain, wide = EncoderSpec(width=8), EncoderSpec(width=8, expand=96)
    x = torch.randn(2, 3, 24, 24)
    assert feature_dim(plain) == 64 and build_encoder(plain).eval()(x).shape == (2, 64)
    assert feature_dim(wide) == 96 and build_encoder(wide).eval()(x).shape == (2, 96)
    assert PretrainConfig(width=8, expand=96).encoder_spec == wide


def test_expansion_keeps_every_other_parameter_name() -> None:
    """Checkpoints of encoders without the expansion keep loading: no existing name moves."""
    plain = build_encoder(EncoderSpec(width=8)).state_dict()
    wide = build_encoder(EncoderSpec(width=8, expand=96)).state_dict()
    assert set(plain) < set(wide)
    assert all(plain[k].shape == wide[k].shape for k in plain)
    assert all(k.startswith("layer4.2.") for k in set(wide) - set(plain))


def test_normalize_takes_uint8_pixels_or_unit_floats() -> None:
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    x = normalize(pixels)
    torch.testing.assert_close(x, normalize(pixels.float() / 255))
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x * std + mean, pixels.float() / 255)
    torch.testing.assert_close(normalize(pixels, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), pixels.float() / 127.5 - 1)


def test_embed_gives_unit_rows_in_eval_mode_batch_by_batch(tmp_path: Path) -> None:
    spec = EncoderSpec(width=8)
    torch.manual_seed(0)
    encoder = build_encoder(spec).train()
    torch.save(encoder.state_dict(), tmp_path / "encoder.pt")
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    batches = []
    vectors = embed(encoder, images, batch_size=2, progress=lambda starts: batches.extend(starts) or starts)
    assert vectors.shape == (5, feature_dim(spec)) and vectors.dtype == torch.float32
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(5))
    assert not encoder.training and batches == [0, 2, 4]
    # The same weights loaded from disk embed the same way; one image alone as in a batch (eval-mode BatchNorm).
    torch.testing.assert_close(embed(load_encoder(tmp_path / "encoder.pt", spec), images), vectors, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(embed(encoder, images[3:4]), vectors[3:4], rtol=1e-4, atol=1e-5)
    assert embed(encoder, images[:0]).numel() == 0
