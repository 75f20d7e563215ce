"""``simclr export`` (index/export.py): the current version's items -- the bundle's, less the deleted and
replaced ones, plus the collection's -- with payloads and embeddings of that version, in id order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.bundles import publish_bundle, sha256_file
from core.collection import Collection, stored_sizes
from core.home import ArtifactHome
from core.index_files import write_index_dir
from core.models import Classifier, EncoderSpec, build_encoder, embed, feature_dim
from index.faiss_index import build_index
from simclr.cli import main as simclr

SPEC = EncoderSpec(arch="resnet18", width=8, image_size=32)
CLASSES = ["a", "b", "c"]
N = 20


def publish_random(home: ArtifactHome, work: Path, images: np.ndarray, labels: np.ndarray) -> tuple[str, torch.nn.Module]:
    """A bundle of random-init models over ``images`` (no training), made current."""
    torch.manual_seed(0)
    work.mkdir(parents=True)
    encoder = build_encoder(SPEC).eval()
    classifier = Classifier(build_encoder(SPEC), feature_dim(SPEC), len(CLASSES)).eval()
    torch.save(encoder.state_dict(), work / "encoder.pt")
    torch.save(classifier.state_dict(), work / "classifier.pt")
    write_index_dir(work / "index", build_index(embed(encoder, torch.from_numpy(images)).numpy()), kind="exact",
                    encoder_fingerprint=sha256_file(work / "encoder.pt"), labels=labels.tolist(),
                    sources=[f"img/{i}.png" for i in range(len(images))], classes=CLASSES, pixels=images)
    version = publish_bundle(home, encoder_file=work / "encoder.pt", classifier_file=work / "classifier.pt", index_dir=work / "index",
                             spec=SPEC, class_names=CLASSES, metrics={})
    return version, encoder


def test_export_writes_the_current_versions_items_in_id_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N + 3, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(N) % len(CLASSES)
    labels[1] = -1
    home = ArtifactHome(tmp_path / "home")
    version, encoder = publish_random(home, tmp_path / "run", images[:N], labels)

    def copies(image: np.ndarray) -> dict[int, np.ndarray]:
        big = np.kron(image, np.ones((1, 2, 2), dtype=np.uint8))  # any 64 px copy: the 32 px one is what is embedded
        return dict(zip(stored_sizes(32), (image, big)))

    def vector(image: np.ndarray) -> np.ndarray:
        return embed(encoder, torch.from_numpy(image[None])).numpy()[0]

    with Collection(home.collection) as c:
        added = c.put(None, {"mine": 1}, copies(images[N]), version, vector(images[N]), N).record.id  # this version's vector
        c.put(3, {"replaced": True}, copies(images[N + 1]), "an-older-version", np.ones(vector(images[0]).shape, np.float32), N)
        c.delete(7, N)
        gone = c.put(None, None, copies(images[N + 2]), version, vector(images[N + 2]), N).record.id
        c.delete(gone, N)
    assert added == N

    out = tmp_path / "export"
    simclr(["export", "--home", str(home.root), "--out", str(out)])
    assert f"exported {N} items (2 added to the collection, 1 of them embedded now) of model {version}" in capsys.readouterr().out

    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert ids == [i for i in range(N) if i != 7] + [added]
    payloads = dict(zip(ids, (r["payload"] for r in rows)))
    assert payloads[0] == {"source": "img/0.png", "label": "a"} and payloads[1] == {"source": "img/1.png", "label": None}
    assert payloads[3] == {"replaced": True} and payloads[added] == {"mine": 1}

    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.dtype == np.float32 and embeddings.shape == (N, feature_dim(SPEC))
    row = {i: embeddings[j] for j, i in enumerate(ids)}
    bundle_vectors = embed(encoder, torch.from_numpy(images[:N])).numpy()
    for i in (0, 1, 19):
        np.testing.assert_allclose(row[i], bundle_vectors[i], atol=1e-5)
    np.testing.assert_allclose(row[added], vector(images[N]), atol=1e-6)  # the stored vector, of this version
    np.testing.assert_allclose(row[3], vector(images[N + 1]), atol=1e-5)  # stored under another version: embedded now
    assert json.loads((out / "export.json").read_text())["version"] == version


def test_export_without_a_model_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no model published"):
        simclr(["export", "--home", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
