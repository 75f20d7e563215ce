"""Encoders (the optional 1x1 expansion: its feature size, its parameter names), normalisation and the one embedding function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from core.models import CIFAR_MEAN, CIFAR_STD, EncoderSpec, build_encoder, default_stem, embed, feature_dim, load_encoder, normalize
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


def test_normalize_builds_its_mean_and_std_once_per_device_not_per_call() -> None:
    """A tensor built from Python numbers on a GPU is a blocking host-to-device copy; normalize runs
    several times per training step, so its constants are made once per device and dtype."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
            self.seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    x = torch.rand(2, 3, 4, 4)
    normalize(x)  # the first call on a device and dtype may build them
    with Ops() as ops:
        normalize(x)
        normalize(x)
    assert ops.seen == ["sub", "div", "sub", "div"]  # no tensor made (lift_fresh), copied or viewed


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


@pytest.mark.parametrize("stem", ["stride2", "pool"])
def test_a_halving_stem_gives_64_px_inputs_the_maps_32_px_get_from_the_cifar_stem(stem: str) -> None:
    cifar, halving = EncoderSpec(width=8, image_size=32), EncoderSpec(width=8, image_size=64, stem=stem)
    seen: dict[str, tuple[int, ...]] = {}
    for name, spec, size in (("cifar", cifar, 32), (stem, halving, 64)):
        net = build_encoder(spec).eval()
        net.layer1.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape)))
        assert net(torch.randn(2, 3, size, size)).shape == (2, feature_dim(spec))
    assert seen[stem] == seen["cifar"] == (2, 8, 32, 32)
    # The same parameters: only the recorded stem tells them apart (a manifest's backbone, a run's config).
    a, b = build_encoder(cifar).state_dict(), build_encoder(halving).state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    with pytest.raises(ValueError, match="unknown stem"):
        build_encoder(EncoderSpec(width=8, stem="imagenet"))


def test_the_default_stem_follows_the_image_size() -> None:
    assert default_stem(32) == "cifar" and default_stem(48) == "cifar" and default_stem(64) == "stride2" and default_stem(96) == "stride2"
    assert PretrainConfig(image_size=64).encoder_spec.stem == "stride2" and PretrainConfig().encoder_spec.stem == "cifar"
    assert PretrainConfig(image_size=64, stem="cifar").encoder_spec.stem == "cifar"
