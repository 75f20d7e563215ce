"""A tiny real bundle (random-init weights, generated images: no training) and a real server over it.

The server is the actual entry point, ``python -m service``, run as a subprocess
and spoken to over TCP, so these tests see what a client sees: uvicorn, the
lifespan, the middleware and the error handlers included. ``server`` runs with the
default settings; ``ops_server`` with admin enabled, CORS open to one origin, no polling.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest
import torch

from core.bundles import publish_bundle, sha256_file
from core.home import ArtifactHome
from core.index_files import write_index_dir
from core.models import Classifier, EncoderSpec, build_encoder, embed, feature_dim
from index.faiss_index import build_index
from service_testkit import CLASS_NAMES, MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES, Server, start_server, stop_server

N_IMAGES = 200
SPEC = EncoderSpec(arch="resnet18", width=8, image_size=32)


def make_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distinct 32x32 images: a random 4x4 colour layout blown up, plus noise; labels 0..9 in turn."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, 3, 4, 4)).astype(np.float32)
    images = np.kron(coarse, np.ones((1, 1, 8, 8), dtype=np.float32)) + rng.normal(0, 20, size=(n, 3, 32, 32))
    labels = np.arange(n) % len(CLASS_NAMES)
    return np.clip(images, 0, 255).astype(np.uint8), labels


@dataclass(frozen=True)
class Bundle:
    home: Path
    version: str
    images: np.ndarray  # (N, 3, 32, 32) uint8, as indexed
    labels: np.ndarray


@dataclass(frozen=True)
class RandomRun:
    """What publishing needs, as `simclr` leaves it in a run folder, from random-init models (eval mode)."""

    encoder: torch.nn.Module
    classifier: Classifier
    index: faiss.Index
    encoder_file: Path
    classifier_file: Path
    index_dir: Path

    def publish(self, home: Path, make_current: bool = True) -> str:
        return publish_bundle(
            ArtifactHome(home),
            encoder_file=self.encoder_file,
            classifier_file=self.classifier_file,
            index_dir=self.index_dir,
            spec=SPEC,
            class_names=CLASS_NAMES,
            metrics={"test_top1": 0.1},
            make_current=make_current,
        )


def random_run(work: Path, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> RandomRun:
    """Random-init encoder and classifier (from ``seed``) and an index of ``images``, written under ``work``.
    No training: about a second."""
    torch.manual_seed(seed)
    work.mkdir(parents=True, exist_ok=True)
    encoder = build_encoder(SPEC).eval()
    classifier = Classifier(build_encoder(SPEC), feature_dim(SPEC), len(CLASS_NAMES)).eval()
    encoder_file, classifier_file = work / "encoder.pt", work / "classifier.pt"
    torch.save(encoder.state_dict(), encoder_file)
    torch.save(classifier.state_dict(), classifier_file)
    index = build_index(embed(encoder, torch.from_numpy(images)).numpy())
    write_index_dir(
        work / "index",
        index,
        kind="exact",
        encoder_fingerprint=sha256_file(encoder_file),
        labels=labels.tolist(),
        sources=[f"generated/{i:04d}.png" for i in range(len(images))],
        classes=CLASS_NAMES,
        pixels=images,
    )
    return RandomRun(encoder, classifier, index, encoder_file, classifier_file, work / "index")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    torch.set_num_threads(1)  # the build machine's 2 cores are shared
    images, labels = make_images(N_IMAGES)
    labels[-1] = -1  # one unlabelled item: its neighbours' label must come back null
    home = tmp_path_factory.mktemp("home")
    version = random_run(tmp_path_factory.mktemp("run"), images, labels, seed=0).publish(home)
    return Bundle(home, version, images, labels)


@pytest.fixture(scope="session")
def server(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(
        bundle.home,
        tmp_path_factory.mktemp("logs") / "server.log",
        SIMCLR_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        SIMCLR_MAX_IMAGE_PIXELS=str(MAX_IMAGE_PIXELS),
    )
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


TOKEN = "s3cret-admin-token"  # ops_server's SIMCLR_ADMIN_TOKEN
UI = "http://ui.example"  # the one origin ops_server's CORS is open to


@pytest.fixture(scope="session")
def ops_server(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Admin enabled, CORS open to one origin, no polling: only /admin/reload notices a new version.
    Its own copy of the home: test_admin publishes into it."""
    tmp = tmp_path_factory.mktemp("ops")
    shutil.copytree(bundle.home, tmp / "home")
    s = start_server(tmp / "home", tmp / "server.log", SIMCLR_ADMIN_TOKEN=TOKEN, SIMCLR_CORS_ORIGINS=UI, SIMCLR_RELOAD_INTERVAL="0")
    yield s
    stop_server(s)


LABEL_FREE_TOKEN = "label-free-writes"


@pytest.fixture(scope="session")
def label_free_server(label_free_home, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default server over ``label_free_home`` (tests/conftest.py): a 64 px model trained without labels, no classifier."""
    s = start_server(label_free_home.home, tmp_path_factory.mktemp("label-free-logs") / "server.log", SIMCLR_WRITE_TOKEN=LABEL_FREE_TOKEN)
    yield s
    stop_server(s)
