"""Bundles: publishing, loading, and the refusals that keep a wrong bundle from being served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.bundles import BundleError, Manifest, load_bundle, publish_bundle, sha256_file
from core.home import MANIFEST_FILE, ArtifactHome
from core.index_files import write_index_dir
from core.models import Classifier, EncoderSpec, build_encoder, embed, feature_dim
from index.faiss_index import build_index


def copy_current(home_dir: Path, tmp_path: Path) -> Path:
    """The current bundle copied into ``tmp_path``, in a folder named as its version (bundles are never renamed)."""
    home = ArtifactHome(home_dir)
    version = home.current_version()
    assert version is not None
    return Path(shutil.copytree(home.bundle_dir(version), tmp_path / version))


def test_tampered_bundle_is_refused(trained_home: Path, tmp_path: Path) -> None:
    copy = copy_current(trained_home, tmp_path)
    with open(copy / "classifier.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="fingerprint"):
        load_bundle(copy)


def test_index_from_another_encoder_is_refused(trained_home: Path, tmp_path: Path) -> None:
    copy = copy_current(trained_home, tmp_path)
    meta = json.loads((copy / "index.json").read_text())
    meta["encoder_fingerprint"] = "0" * 64
    (copy / "index.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="another encoder"):
        load_bundle(copy)


def test_renamed_bundle_is_refused(trained_home: Path, tmp_path: Path) -> None:
    home = ArtifactHome(trained_home)
    copy = tmp_path / "another-name"
    shutil.copytree(home.bundle_dir(home.current_version()), copy)
    with pytest.raises(BundleError, match="never renamed"):
        load_bundle(copy)


def test_items_relabelled_with_other_classes_are_refused(trained_home: Path, tmp_path: Path) -> None:
    copy = copy_current(trained_home, tmp_path)
    items = json.loads((copy / "items.json").read_text())
    items["classes"] = list(reversed(items["classes"]))
    (copy / "items.json").write_text(json.dumps(items))
    with pytest.raises(BundleError, match="labelled with classes"):
        load_bundle(copy)


def random_run(tmp_path: Path, spec: EncoderSpec, labels: list[int], classes: list[str]) -> Path:
    """encoder.pt, classifier.pt (2 classes) and index/ over 6 random images, in ``tmp_path``."""
    encoder = build_encoder(spec).eval()
    classifier = Classifier(build_encoder(spec), feature_dim(spec), 2).eval()
    torch.save(encoder.state_dict(), tmp_path / "encoder.pt")
    torch.save(classifier.state_dict(), tmp_path / "classifier.pt")
    images = np.random.default_rng(0).integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    write_index_dir(tmp_path / "index", build_index(embed(encoder, torch.from_numpy(images)).numpy()), kind="exact",
                    encoder_fingerprint=sha256_file(tmp_path / "encoder.pt"), labels=labels,
                    sources=[f"{i}.png" for i in range(len(labels))], classes=classes, pixels=images)
    return tmp_path


def publish(run: Path, spec: EncoderSpec, class_names: list[str], **kw: object) -> tuple[ArtifactHome, str]:
    home = ArtifactHome(run / "home")
    version = publish_bundle(home, encoder_file=run / "encoder.pt", classifier_file=run / "classifier.pt",
                             index_dir=run / "index", spec=spec, class_names=class_names, metrics={}, **kw)
    return home, version


def test_expanded_bundle_loads_and_old_manifests_mean_no_expansion(tmp_path: Path) -> None:
    spec = EncoderSpec(width=8, expand=96)
    home, version = publish(random_run(tmp_path, spec, [0, 1] * 3, ["a", "b"]), spec, ["a", "b"])
    loaded = load_bundle(home.models / version)
    assert loaded.manifest.encoder_spec == spec and loaded.index.d == 96

    manifest = json.loads((home.models / version / MANIFEST_FILE).read_text())
    del manifest["backbone"]["expand"]  # as written before the expansion existed
    assert Manifest.model_validate(manifest).encoder_spec == EncoderSpec(width=8)


def test_publishing_refuses_an_index_labelled_with_other_classes(tmp_path: Path) -> None:
    spec = EncoderSpec(width=8)
    run = random_run(tmp_path, spec, [0, 1] * 3, ["b", "a"])  # the same names, another order: other label ids
    with pytest.raises(BundleError) as e:
        publish(run, spec, ["a", "b"])
    assert "['b', 'a']" in str(e.value) and "['a', 'b']" in str(e.value)
    assert not (run / "home" / "CURRENT").exists()
    assert not list((run / "home").glob("models/*"))  # nothing half-published either


def test_an_unlabelled_index_publishes_with_any_classifier(tmp_path: Path) -> None:
    spec = EncoderSpec(width=8)
    home, version = publish(random_run(tmp_path, spec, [-1] * 6, []), spec, ["a", "b"], metrics_split="held-out train")
    loaded = load_bundle(home.models / version)
    assert home.current_version() == version and (loaded.labels == -1).all()
    assert loaded.manifest.metrics_split == "held-out train"


def test_old_manifests_say_their_metrics_are_on_the_test_split(tmp_path: Path) -> None:
    spec = EncoderSpec(width=8)
    home, version = publish(random_run(tmp_path, spec, [0, 1] * 3, ["a", "b"]), spec, ["a", "b"])
    manifest = json.loads((home.models / version / MANIFEST_FILE).read_text())
    assert manifest["metrics_split"] == "test"
    del manifest["metrics_split"]  # as written before metrics_split existed
    assert Manifest.model_validate(manifest).metrics_split == "test"


def test_a_model_without_classifier_publishes_and_loads(tmp_path: Path) -> None:
    spec = EncoderSpec(width=8)
    run = random_run(tmp_path, spec, [-1] * 6, [])
    (run / "classifier.pt").unlink()
    home = ArtifactHome(run / "home")
    version = publish_bundle(home, encoder_file=run / "encoder.pt", classifier_file=None, index_dir=run / "index", spec=spec,
                             class_names=[], metrics={}, metrics_split="none")
    bundle_dir = home.models / version
    loaded = load_bundle(bundle_dir)
    assert loaded.classifier is None and not loaded.manifest.has_classifier and loaded.manifest.class_names == []
    assert set(loaded.manifest.weights) == {"encoder"} and not (bundle_dir / "classifier.pt").exists()
    assert loaded.label_names == [] and (loaded.labels == -1).all() and home.current_version() == version
    assert "has_classifier" not in json.loads((bundle_dir / MANIFEST_FILE).read_text())  # derived: answered, not stored


def test_a_bundle_claiming_classes_must_have_the_classifier_and_vice_versa(tmp_path: Path) -> None:
    spec = EncoderSpec(width=8)
    run = random_run(tmp_path, spec, [-1] * 6, [])
    kw = {"encoder_file": run / "encoder.pt", "index_dir": run / "index", "spec": spec, "metrics": {}}
    home = ArtifactHome(run / "home")
    with pytest.raises(BundleError, match="class names"):
        publish_bundle(home, classifier_file=None, class_names=["a", "b"], **kw)
    with pytest.raises(BundleError, match="class names"):
        publish_bundle(home, classifier_file=run / "classifier.pt", class_names=[], **kw)
    assert not home.models.exists() or not list(home.models.iterdir())

    labelled = publish_bundle(home, classifier_file=run / "classifier.pt", class_names=["a", "b"], **kw)
    path = home.models / labelled
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    no_fingerprint = {**manifest, "weights": {"encoder": manifest["weights"]["encoder"]}}
    (path / MANIFEST_FILE).write_text(json.dumps(no_fingerprint))
    with pytest.raises(BundleError, match="names 2 classes but has no classifier"):
        load_bundle(path)
    (path / MANIFEST_FILE).write_text(json.dumps({**no_fingerprint, "class_names": []}))
    with pytest.raises(BundleError, match="has classifier.pt but"):  # a classifier the manifest does not vouch for
        load_bundle(path)
    (path / "classifier.pt").unlink()
    assert load_bundle(path).classifier is None
    (path / MANIFEST_FILE).write_text(json.dumps({**manifest, "class_names": []}))
    with pytest.raises(BundleError, match="at least 2 class names"):
        load_bundle(path)
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="lacks classifier.pt"):
        load_bundle(path)


def test_the_stem_is_recorded_and_old_manifests_mean_the_cifar_stem(tmp_path: Path) -> None:
    spec = EncoderSpec(width=8, stem="stride2")
    home, version = publish(random_run(tmp_path, spec, [0, 1] * 3, ["a", "b"]), spec, ["a", "b"])
    manifest = json.loads((home.models / version / MANIFEST_FILE).read_text())
    assert manifest["backbone"]["stem"] == "stride2" and load_bundle(home.models / version).manifest.encoder_spec == spec
    del manifest["backbone"]["stem"]  # as written before stems existed
    assert Manifest.model_validate(manifest).encoder_spec == EncoderSpec(width=8, stem="cifar")
