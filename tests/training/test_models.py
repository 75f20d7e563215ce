"""The encoder's optional 1x1 expansion: its feature size, its parameter names and its bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from index.embed import embed
from index.faiss_index import build_index
from training.artifacts import MANIFEST_FILE, ArtifactHome, load_bundle, publish_bundle, sha256_file, write_index_dir
from training.cli import main as simclr
from training.config import PretrainConfig
from training.models import Classifier, EncoderSpec, build_encoder, feature_dim


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


def test_expanded_bundle_loads_and_old_manifests_mean_no_expansion(tmp_path: Path) -> None:
    spec = EncoderSpec(width=8, expand=96)
    encoder = build_encoder(spec).eval()
    classifier = Classifier(build_encoder(spec), feature_dim(spec), 2).eval()
    torch.save(encoder.state_dict(), tmp_path / "encoder.pt")
    torch.save(classifier.state_dict(), tmp_path / "classifier.pt")
    images = np.random.default_rng(0).integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    write_index_dir(tmp_path / "index", build_index(embed(encoder, torch.from_numpy(images))), kind="IndexFlatIP",
                    encoder_fingerprint=sha256_file(tmp_path / "encoder.pt"), labels=[0, 1] * 3,
                    sources=[f"{i}.png" for i in range(6)], pixels=images)
    home = ArtifactHome(tmp_path / "home")
    version = publish_bundle(home, encoder_file=tmp_path / "encoder.pt", classifier_file=tmp_path / "classifier.pt",
                             index_dir=tmp_path / "index", spec=spec, class_names=["a", "b"], metrics={})
    loaded = load_bundle(home.models / version)
    assert loaded.manifest.encoder_spec == spec and loaded.index.d == 96

    manifest = json.loads((home.models / version / MANIFEST_FILE).read_text())
    del manifest["backbone"]["expand"]  # as written before the expansion existed
    assert type(loaded.manifest).model_validate(manifest).encoder_spec == EncoderSpec(width=8)


def test_negative_expansion_is_refused_by_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        simclr(["pretrain", "--data", str(tmp_path), "--home", str(tmp_path), "--expand", "-1"])
    assert e.value.code == 2 and "--expand: must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing started
