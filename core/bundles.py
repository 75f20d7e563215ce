"""Servable bundles, ``<home>/models/<version>/``: immutable once written.

    manifest.json   version, created, backbone, image size, normalisation, class names,
                    weight fingerprints (sha256), metrics, the index's description
    encoder.pt      SimCLR encoder weights: embeddings for the index and for queries
    classifier.pt   fine-tuned encoder + linear head; absent from a model trained without labels
                    (its manifest then has no class names and no classifier fingerprint)
    index.faiss, index.json, items.json, images.npy   the index (``core.index_files``)

A bundle's manifest records the sha256 of each weights file, and its index the sha256
of the encoder that built it; :func:`load_bundle` refuses any bundle where they differ,
so an index is never queried with another model's embeddings.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import torch
from pydantic import BaseModel, ValidationError, computed_field

from core.atomic import atomic_write_json
from core.home import MANIFEST_FILE, ArtifactHome
from core.index_files import FILES as INDEX_FILES
from core.index_files import IndexInfo, copy_index_dir, read_index_classes, read_index_dir, read_index_info
from core.models import CIFAR_MEAN, CIFAR_STD, Classifier, EncoderSpec, build_encoder, feature_dim, load_classifier

ENCODER_FILE = "encoder.pt"
CLASSIFIER_FILE = "classifier.pt"
BUNDLE_FILES = (ENCODER_FILE, *INDEX_FILES)  # every bundle's; CLASSIFIER_FILE too when the model has a classifier


class BundleError(RuntimeError):
    """A bundle that must not be served (or published); the message says why."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Normalization(BaseModel):
    """Per-channel mean and std (in [0, 1] units) that the models' inputs are normalised with."""

    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD


class Manifest(BaseModel):
    version: str
    created: str
    run_id: str | None = None
    backbone: dict[str, int | str]
    image_size: int
    normalization: Normalization = Normalization()
    # The classifier's classes; empty for a model without a classifier (trained without labels).
    class_names: list[str]
    weights: dict[str, str]  # sha256 by role: "encoder", and "classifier" when the model has one
    metrics: dict[str, float]
    # The split the metrics were measured on: "test", "held-out train" for data without one,
    # "none" for a model without a classifier whose data had no labels (no accuracy at all).
    metrics_split: str = "test"
    index: IndexInfo

    @property
    def encoder_spec(self) -> EncoderSpec:
        b = self.backbone
        # Manifests written before stems existed describe the CIFAR stem.
        return EncoderSpec(arch=str(b["arch"]), width=int(b["width"]), image_size=self.image_size, expand=int(b.get("expand", 0)),
                           stem=str(b.get("stem", "cifar")))

    @computed_field(description="false for a model trained without labels: no classifier.pt, no class_names")  # type: ignore[prop-decorator]
    @property
    def has_classifier(self) -> bool:
        """Whether the model classifies (``classifier.pt``, ``class_names``); one trained without labels does not.
        Derived from ``weights``: in the manifest's JSON answers (/model), not in its file (``DERIVED``)."""
        return "classifier" in self.weights


DERIVED = {"has_classifier"}  # Manifest's computed fields: answered, never written to manifest.json


def check_classes(index_classes: list[str], class_names: list[str]) -> None:
    """Refuse an index whose label ids name other classes than the classifier's."""
    if index_classes and index_classes != class_names:
        raise BundleError(
            f"the index's items are labelled with classes {index_classes}, the classifier predicts {class_names}: "
            "index a folder with the same class subfolders as the fine-tuning data (or unlabelled images)"
        )


def publish_bundle(
    home: ArtifactHome,
    *,
    encoder_file: Path,
    classifier_file: Path | None,
    index_dir: Path,
    spec: EncoderSpec,
    class_names: list[str],
    metrics: dict[str, float],
    metrics_split: str = "test",
    run_id: str | None = None,
    make_current: bool = True,
) -> str:
    """Copy a run's outputs into a new immutable ``models/<version>/`` and (by default) point CURRENT at it.

    ``classifier_file`` None (with ``class_names`` empty): a model without a classifier, for
    data without labels; it serves everything but classification.

    The bundle is assembled in a hidden temp folder and renamed into place, so
    a reader sees either no bundle or a complete one. It is loaded once before
    the pointer moves: a bundle that would not serve is never made current.
    """
    enc_fp = sha256_file(encoder_file)
    if read_index_info(index_dir).encoder_fingerprint != enc_fp:
        raise BundleError("the index was built by a different encoder than the one being published; re-run `simclr index`")
    if (classifier_file is None) != (not class_names):
        raise BundleError("a classifier needs its class names and class names need a classifier: "
                          f"got {'no classifier' if classifier_file is None else 'a classifier'} and {len(class_names)} class names")
    if classifier_file is not None:
        check_classes(read_index_classes(index_dir), class_names)
    version = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + enc_fp[:8]
    home.models.mkdir(parents=True, exist_ok=True)
    tmp = home.models / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    try:
        shutil.copyfile(encoder_file, tmp / ENCODER_FILE)
        weights = {"encoder": enc_fp}
        if classifier_file is not None:
            shutil.copyfile(classifier_file, tmp / CLASSIFIER_FILE)
            weights["classifier"] = sha256_file(tmp / CLASSIFIER_FILE)
        copy_index_dir(index_dir, tmp)
        manifest = Manifest(
            version=version,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            run_id=run_id,
            backbone={"arch": spec.arch, "width": spec.width, "expand": spec.expand, "stem": spec.stem},
            image_size=spec.image_size,
            normalization=Normalization(),
            class_names=class_names,
            weights=weights,
            metrics=metrics,
            metrics_split=metrics_split,
            index=read_index_info(index_dir),
        )
        atomic_write_json(tmp / MANIFEST_FILE, manifest.model_dump(exclude=DERIVED))
        load_bundle(tmp)  # refuse to publish what could not be served
        final = home.bundle_dir(version)
        while final.exists():  # two publishes of one encoder within a second
            time.sleep(1.0)
            version = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + enc_fp[:8]
            manifest.version = version
            atomic_write_json(tmp / MANIFEST_FILE, manifest.model_dump(exclude=DERIVED))
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
    classifier: Classifier | None  # fine-tuned encoder + linear head; None for a model trained without labels
    index: faiss.Index
    labels: np.ndarray  # (N,) int64, -1 where unlabelled
    sources: list[str]
    pixels: np.ndarray  # (N, 3, H, W) uint8, memory-mapped
    # Each item's best (scores, ids), (N, k) each, itself included; precomputed by the service for small indexes.
    id_neighbors: tuple[np.ndarray, np.ndarray] | None = None
    # What the items' label ids name: the classifier's classes, or for a model without a classifier
    # the index's own (a labelled split indexed by a run that was not fine-tuned); empty if unlabelled.
    label_names: list[str] = field(default_factory=list)

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
    has_classifier = manifest.has_classifier
    n_classes = len(manifest.class_names)
    if has_classifier and n_classes < 2:
        raise BundleError(f"bundle {manifest.version}: a classifier needs at least 2 class names, has {n_classes}")
    if not has_classifier and n_classes:
        raise BundleError(f"bundle {manifest.version}: names {n_classes} classes but has no classifier (no fingerprint in the manifest)")
    for name in (*BUNDLE_FILES, CLASSIFIER_FILE) if has_classifier else BUNDLE_FILES:
        if not (path / name).is_file():
            raise BundleError(f"bundle {manifest.version} lacks {name}")
    if not has_classifier and (path / CLASSIFIER_FILE).exists():
        raise BundleError(f"bundle {manifest.version}: has {CLASSIFIER_FILE} but its manifest has no classifier fingerprint or class names")
    for key, name in (("encoder", ENCODER_FILE), ("classifier", CLASSIFIER_FILE)) if has_classifier else (("encoder", ENCODER_FILE),):
        if sha256_file(path / name) != manifest.weights.get(key):
            raise BundleError(f"bundle {manifest.version}: {name} does not match its fingerprint in the manifest")
    spec = manifest.encoder_spec
    dim = feature_dim(spec)
    try:
        items = read_index_dir(path)
    except ValidationError as e:
        raise BundleError(f"bundle {manifest.version}: its index description is not valid: {e}") from e
    except (RuntimeError, ValueError, OSError, KeyError, TypeError) as e:
        raise BundleError(f"bundle {manifest.version}: cannot load its index: {e!r}") from e
    if items.info.encoder_fingerprint != manifest.weights.get("encoder"):
        raise BundleError(f"bundle {manifest.version}: the index was built by another encoder")
    try:
        classifier = None
        if has_classifier:
            check_classes(items.classes, manifest.class_names)
        encoder = build_encoder(spec)
        encoder.load_state_dict(torch.load(path / ENCODER_FILE, map_location="cpu", weights_only=True))
        if has_classifier:
            classifier = load_classifier(path / CLASSIFIER_FILE, spec, n_classes)
    except BundleError as e:
        raise BundleError(f"bundle {manifest.version}: {e}") from e
    except (RuntimeError, ValueError, OSError, KeyError, TypeError) as e:
        raise BundleError(f"bundle {manifest.version}: cannot load its weights: {e!r}") from e
    index, labels, pixels = items.index, items.labels, items.pixels
    checks = {
        "index dimension": (index.d, dim),
        "index size in manifest": (index.ntotal, manifest.index.size),
        "items": (len(labels), index.ntotal),
        "sources": (len(items.sources), index.ntotal),
        "stored images": (pixels.shape[0], index.ntotal),
    }
    for what, (got, want) in checks.items():
        if got != want:
            raise BundleError(f"bundle {manifest.version}: {what} is {got}, expected {want}")
    if pixels.shape[1:] != (3, spec.image_size, spec.image_size) or pixels.dtype != np.uint8:
        want = f"3x{spec.image_size}x{spec.image_size} uint8"
        raise BundleError(f"bundle {manifest.version}: stored images have shape {pixels.shape[1:]}, expected {want}")
    # A model with a classifier: its classes (check_classes: the index's are the same, or none).
    # Without one: the index's own classes, if its items are labelled.
    label_names = list(manifest.class_names) if has_classifier else list(items.classes)
    if labels.size and (labels.max() >= len(label_names) or labels.min() < -1):
        raise BundleError(f"bundle {manifest.version}: item labels must be -1 (none) or below {len(label_names)}")
    encoder.eval()
    if classifier is not None:
        classifier.eval()
    return LoadedBundle(manifest, encoder, classifier, index, labels, items.sources, pixels, label_names=label_names)


def load_current(home: ArtifactHome) -> LoadedBundle | None:
    version = home.current_version()
    return None if version is None else load_bundle(home.bundle_dir(version))
