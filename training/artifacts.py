"""The on-disk layout under ``--home`` (DESIGN.md, Artifacts). Nothing else builds these paths.

    <home>/
      runs/<run-id>/          config.json, checkpoint.pt, metrics.jsonl, loss.png,
                              classifier.pt, finetune.json, index/ (what publish packs),
                              eval/<row>.json (simclr evaluate), report/REPORT.md + *.png
      models/<version>/       an immutable servable bundle (BUNDLE_FILES)
      CURRENT                 the current version's name, replaced atomically
      data/                   downloads and the decoded-image cache

A bundle's manifest records the sha256 of each weights file and of the encoder
that built the index; :func:`load_bundle` refuses any bundle where they differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from training.atomic import atomic_write_bytes, atomic_write_json
from training.models import CIFAR_MEAN, CIFAR_STD, Classifier, EncoderSpec, build_encoder, feature_dim

DEFAULT_HOME = Path("artifacts")
ENCODER_FILE = "encoder.pt"
CLASSIFIER_FILE = "classifier.pt"
INDEX_FILE = "index.faiss"
INDEX_META_FILE = "index.json"
ITEMS_FILE = "items.json"
PIXELS_FILE = "images.npy"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILES = (ENCODER_FILE, CLASSIFIER_FILE, INDEX_FILE, INDEX_META_FILE, ITEMS_FILE, PIXELS_FILE)


class BundleError(RuntimeError):
    """A bundle that must not be served; the message says why."""


def home_from_env(home: str | Path | None = None) -> Path:
    return Path(home or os.environ.get("SIMCLR_HOME") or DEFAULT_HOME)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class IndexInfo(BaseModel):
    kind: str
    metric: str = "inner_product"
    size: int
    dim: int
    encoder_fingerprint: str


class Manifest(BaseModel):
    version: str
    created: str
    run_id: str | None = None
    backbone: dict[str, int | str]
    image_size: int
    normalization: dict[str, list[float]]
    class_names: list[str]
    weights: dict[str, str]
    metrics: dict[str, float]
    index: IndexInfo

    @property
    def encoder_spec(self) -> EncoderSpec:
        b = self.backbone
        return EncoderSpec(arch=str(b["arch"]), width=int(b["width"]), image_size=self.image_size, expand=int(b.get("expand", 0)))


@dataclass(frozen=True)
class RunPaths:
    """The files of one pretraining run."""

    dir: Path

    @property
    def run_id(self) -> str:
        return self.dir.name

    config = property(lambda self: self.dir / "config.json")
    checkpoint = property(lambda self: self.dir / "checkpoint.pt")
    encoder = property(lambda self: self.dir / ENCODER_FILE)
    metrics = property(lambda self: self.dir / "metrics.jsonl")
    loss_plot = property(lambda self: self.dir / "loss.png")
    classifier = property(lambda self: self.dir / CLASSIFIER_FILE)
    finetune = property(lambda self: self.dir / "finetune.json")
    index_dir = property(lambda self: self.dir / "index")
    eval_dir = property(lambda self: self.dir / "eval")
    report_dir = property(lambda self: self.dir / "report")
    report = property(lambda self: self.dir / "report" / "REPORT.md")

    def eval_result(self, row: str) -> Path:
        """``eval/<row>.json``: one evaluation row (``simclr evaluate``)."""
        return self.eval_dir / f"{row}.json"

    def report_figure(self, name: str) -> Path:
        """``report/<name>.png``: a figure of ``simclr report``."""
        return self.report_dir / f"{name}.png"


class ArtifactHome:
    """Paths and the current-version pointer under one ``--home``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = home_from_env(root)

    runs = property(lambda self: self.root / "runs")
    models = property(lambda self: self.root / "models")
    data = property(lambda self: self.root / "data")
    pointer = property(lambda self: self.root / "CURRENT")

    def new_run(self) -> RunPaths:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = self.runs / run_id
        n = 1
        while path.exists():
            n += 1
            path = self.runs / f"{run_id}-{n}"
        path.mkdir(parents=True)
        return RunPaths(path)

    def run(self, run_id: str | None = None) -> RunPaths:
        """A named run, or the newest one that has a checkpoint."""
        if run_id:
            path = self.runs / run_id
            if not path.is_dir():
                raise FileNotFoundError(f"no run {run_id!r} under {self.runs}")
            return RunPaths(path)
        runs = sorted(p for p in self.runs.glob("*") if (p / "checkpoint.pt").exists()) if self.runs.exists() else []
        if not runs:
            raise FileNotFoundError(f"no pretraining run under {self.runs}; run `simclr pretrain` first")
        return RunPaths(max(runs, key=lambda p: p.stat().st_mtime))

    def bundle_dir(self, version: str) -> Path:
        return self.models / version

    def current_version(self) -> str | None:
        try:
            version = self.pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def set_current(self, version: str) -> None:
        if not (self.bundle_dir(version) / MANIFEST_FILE).exists():
            raise BundleError(f"no bundle {version!r} under {self.models}")
        atomic_write_bytes(self.pointer, (version + "\n").encode())



def write_index_dir(
    out: Path,
    index: faiss.Index,
    *,
    kind: str,
    encoder_fingerprint: str,
    labels: list[int],
    sources: list[str],
    pixels: np.ndarray,
) -> None:
    """The index part of a bundle: FAISS index, what built it, per-item metadata and pixels."""
    out.mkdir(parents=True, exist_ok=True)
    if not (index.ntotal == len(labels) == len(sources) == len(pixels)):
        raise ValueError("index, labels, sources and pixels must have one entry per item")
    atomic_write_bytes(out / INDEX_FILE, faiss.serialize_index(index).tobytes())
    buf = _npy_bytes(pixels)
    atomic_write_bytes(out / PIXELS_FILE, buf)
    atomic_write_json(out / ITEMS_FILE, {"labels": labels, "sources": sources})
    info = IndexInfo(kind=kind, size=index.ntotal, dim=index.d, encoder_fingerprint=encoder_fingerprint)
    atomic_write_json(out / INDEX_META_FILE, info.model_dump())


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    f = io.BytesIO()
    np.save(f, np.ascontiguousarray(arr))
    return f.getvalue()


def publish_bundle(
    home: ArtifactHome,
    *,
    encoder_file: Path,
    classifier_file: Path,
    index_dir: Path,
    spec: EncoderSpec,
    class_names: list[str],
    metrics: dict[str, float],
    run_id: str | None = None,
    make_current: bool = True,
) -> str:
    """Copy a run's outputs into a new immutable ``models/<version>/`` and (by default) point CURRENT at it.

    The bundle is assembled in a hidden temp folder and renamed into place, so
    a reader sees either no bundle or a complete one. It is loaded once before
    the pointer moves: a bundle that would not serve is never made current.
    """
    enc_fp = sha256_file(encoder_file)
    info = IndexInfo.model_validate_json((index_dir / INDEX_META_FILE).read_text())
    if info.encoder_fingerprint != enc_fp:
        raise BundleError("the index was built by a different encoder than the one being published; re-run `simclr index`")
    version = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + enc_fp[:8]
    home.models.mkdir(parents=True, exist_ok=True)
    tmp = home.models / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    try:
        shutil.copyfile(encoder_file, tmp / ENCODER_FILE)
        shutil.copyfile(classifier_file, tmp / CLASSIFIER_FILE)
        for name in (INDEX_FILE, INDEX_META_FILE, ITEMS_FILE, PIXELS_FILE):
            shutil.copyfile(index_dir / name, tmp / name)
        manifest = Manifest(
            version=version,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            run_id=run_id,
            backbone={"arch": spec.arch, "width": spec.width, "expand": spec.expand},
            image_size=spec.image_size,
            normalization={"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)},
            class_names=class_names,
            weights={"encoder": enc_fp, "classifier": sha256_file(tmp / CLASSIFIER_FILE)},
            metrics=metrics,
            index=info,
        )
        atomic_write_json(tmp / MANIFEST_FILE, manifest.model_dump())
        load_bundle(tmp)  # refuse to publish what could not be served
        final = home.bundle_dir(version)
        while final.exists():  # two publishes of one encoder within a second
            time.sleep(1.0)
            version = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + enc_fp[:8]
            manifest.version = version
            atomic_write_json(tmp / MANIFEST_FILE, manifest.model_dump())
            final = home.bundle_dir(version)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if make_current:
        home.set_current(version)
    return version


@dataclass
class LoadedBundle:
    """A validated bundle in memory, ready to answer requests. Never mutated after loading."""

    manifest: Manifest
    encoder: torch.nn.Module  # SimCLR encoder: embeddings for the index
    classifier: Classifier  # fine-tuned encoder + linear head
    index: faiss.Index
    labels: np.ndarray  # (N,) int64
    sources: list[str]
    pixels: np.ndarray  # (N, 3, H, W) uint8, memory-mapped
    # Each item's best (scores, ids), (N, k) each, itself included; precomputed by the service for small indexes.
    id_neighbors: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def version(self) -> str:
        return self.manifest.version


def load_bundle(path: Path) -> LoadedBundle:
    """Load and validate a bundle: manifest, weight fingerprints, index-encoder match, shapes, classes.

    Raises :class:`BundleError` with the reason for anything that does not match.
    """
    try:
        manifest = Manifest.model_validate_json((path / MANIFEST_FILE).read_text())
    except FileNotFoundError as e:
        raise BundleError(f"{path} has no {MANIFEST_FILE}") from e
    except ValidationError as e:
        raise BundleError(f"{path / MANIFEST_FILE} is not a valid manifest: {e}") from e
    if path.name != manifest.version and not path.name.startswith(".tmp-"):  # .tmp-: being published
        raise BundleError(f"{path} holds a manifest for version {manifest.version}: bundles are never renamed")
    for name in BUNDLE_FILES:
        if not (path / name).is_file():
            raise BundleError(f"bundle {manifest.version} lacks {name}")
    for key, name in (("encoder", ENCODER_FILE), ("classifier", CLASSIFIER_FILE)):
        if sha256_file(path / name) != manifest.weights.get(key):
            raise BundleError(f"bundle {manifest.version}: {name} does not match its fingerprint in the manifest")
    try:
        info = IndexInfo.model_validate_json((path / INDEX_META_FILE).read_text())
    except ValidationError as e:
        raise BundleError(f"bundle {manifest.version}: {INDEX_META_FILE} is not valid: {e}") from e
    if info.encoder_fingerprint != manifest.weights.get("encoder"):
        raise BundleError(f"bundle {manifest.version}: the index was built by another encoder")
    spec = manifest.encoder_spec
    dim = feature_dim(spec)
    n_classes = len(manifest.class_names)
    if n_classes < 2:
        raise BundleError(f"bundle {manifest.version}: needs at least 2 class names, has {n_classes}")
    try:
        encoder = build_encoder(spec)
        encoder.load_state_dict(torch.load(path / ENCODER_FILE, map_location="cpu", weights_only=True))
        classifier = Classifier(build_encoder(spec), dim, n_classes)
        classifier.load_state_dict(torch.load(path / CLASSIFIER_FILE, map_location="cpu", weights_only=True))
        index = faiss.deserialize_index(np.fromfile(path / INDEX_FILE, dtype=np.uint8))
        items = json.loads((path / ITEMS_FILE).read_text())
        labels = np.asarray(items["labels"], dtype=np.int64)
        sources = [str(s) for s in items["sources"]]
        pixels = np.load(path / PIXELS_FILE, mmap_mode="r")
    except (RuntimeError, ValueError, OSError, KeyError, TypeError) as e:
        raise BundleError(f"bundle {manifest.version}: cannot load its files: {e!r}") from e
    checks = {
        "index dimension": (index.d, dim),
        "index size in manifest": (index.ntotal, manifest.index.size),
        "items": (len(labels), index.ntotal),
        "sources": (len(sources), index.ntotal),
        "stored images": (pixels.shape[0], index.ntotal),
    }
    for what, (got, want) in checks.items():
        if got != want:
            raise BundleError(f"bundle {manifest.version}: {what} is {got}, expected {want}")
    if pixels.shape[1:] != (3, spec.image_size, spec.image_size) or pixels.dtype != np.uint8:
        raise BundleError(f"bundle {manifest.version}: stored images have shape {pixels.shape[1:]}, expected 3x{spec.image_size}x{spec.image_size} uint8")
    if labels.size and (labels.max() >= n_classes or labels.min() < -1):
        raise BundleError(f"bundle {manifest.version}: item labels must be -1 (none) or below {n_classes}")
    encoder.eval()
    classifier.eval()
    return LoadedBundle(manifest, encoder, classifier, index, labels, sources, pixels)


def load_current(home: ArtifactHome) -> LoadedBundle | None:
    version = home.current_version()
    return None if version is None else load_bundle(home.bundle_dir(version))
