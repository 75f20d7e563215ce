"""Zero-downtime refresh: new bundles are published (and one broken one) while clients hammer the service.

Every answer must succeed and carry a valid published version, and must be what
*that* version's models compute: a batch that mixed bundles, or a version label
taken from another bundle than the one that answered, would show up as wrong numbers.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest
import torch

from conftest import Bundle, random_run
from core.bundles import CLASSIFIER_FILE, load_bundle
from core.home import MANIFEST_FILE, ArtifactHome
from core.models import normalize
from service_testkit import Server, chw_png, metric, start_server, stop_server

PROBE_IMAGES = (3, 17, 42, 99)  # uploaded to /classify
PROBE_IDS = (0, 5, 11, 150)  # asked of GET /neighbors
K = 5
CLIENTS = 4


@dataclass
class Expected:
    probs: dict[int, np.ndarray]  # probe image -> class probabilities
    neighbors: dict[int, list[int]]  # probe id -> neighbour ids


def expected_answers(classifier: torch.nn.Module, index: faiss.Index, images: np.ndarray) -> Expected:
    """What a bundle of these models answers to the probes, computed here, one image at a time."""
    with torch.inference_mode():
        probs = {i: classifier(normalize(torch.from_numpy(images[i : i + 1]))).softmax(1)[0].numpy() for i in PROBE_IMAGES}
    neighbors = {}
    for i in PROBE_IDS:
        _, ids = index.search(index.reconstruct(i).reshape(1, -1), K + 1)
        neighbors[i] = [j for j in ids[0].tolist() if j != i][:K]
    return Expected(probs, neighbors)


@dataclass
class Load:
    """Client threads alternating POST /classify and GET /neighbors?id= until stopped."""

    server: Server
    images: np.ndarray
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[tuple[str, int, httpx.Response]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        uploads = {i: chw_png(self.images[i]) for i in PROBE_IMAGES}
        with self.server.client() as c:
            while not self.stop.is_set():
                try:
                    if rng.random() < 0.5:
                        probe = rng.choice(PROBE_IMAGES)
                        r = c.post("/classify", params={"top_k": 10}, files={"file": ("p.png", uploads[probe], "image/png")})
                        kind = "classify"
                    else:
                        probe = rng.choice(PROBE_IDS)
                        r = c.get("/neighbors", params={"id": probe, "k": K})
                        kind = "neighbors"
                except httpx.HTTPError as e:
                    with self.lock:
                        self.failures.append(f"{type(e).__name__}: {e}")
                    continue
                with self.lock:
                    self.answers.append((kind, probe, r))

    def versions_seen(self) -> set[str]:
        with self.lock:
            return {r.json()["model_version"] for _, _, r in self.answers if r.status_code == 200}


def wait_until(what: str, check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.05)


def publish_broken(home: ArtifactHome, valid_version: str) -> str:
    """A copy of a valid bundle under a new version whose classifier.pt no longer matches its fingerprint."""
    broken = f"{valid_version}-tampered"
    tmp = home.models / f".tmp-{broken}"
    shutil.copytree(home.bundle_dir(valid_version), tmp)
    manifest = json.loads((tmp / MANIFEST_FILE).read_text())
    manifest["version"] = broken
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest))
    with open(tmp / CLASSIFIER_FILE, "ab") as f:
        f.write(b"tampered")
    tmp.rename(home.bundle_dir(broken))  # complete before CURRENT names it
    home.set_current(broken)  # only checks that the manifest exists: the service must refuse it
    return broken


def test_refresh_under_load(bundle: Bundle, tmp_path: Path) -> None:
    home = ArtifactHome(tmp_path / "home")
    shutil.copytree(bundle.home, home.root)
    first = load_bundle(home.bundle_dir(bundle.version))
    expected = {bundle.version: expected_answers(first.classifier, first.index, bundle.images)}
    # Models and indexes are made before the load starts; publishing itself (copy, verify, move CURRENT) runs under it.
    runs = {seed: random_run(tmp_path / f"run{seed}", bundle.images, bundle.labels, seed=seed) for seed in (1, 2, 3)}
    server = start_server(home.root, tmp_path / "server.log", SIMCLR_RELOAD_INTERVAL="0.2")
    load = Load(server, bundle.images)
    threads = [threading.Thread(target=load.client, args=(n,), daemon=True) for n in range(CLIENTS)]
    try:
        with server.client() as c:

            def serving(version: str) -> bool:
                return c.get("/readyz").json()["model_version"] == version and version in load.versions_seen()

            for t in threads:
                t.start()
            wait_until(f"{bundle.version} answers", lambda: serving(bundle.version))

            def publish_valid(seed: int) -> str:
                run = runs[seed]
                version = run.publish(home.root)
                expected[version] = expected_answers(run.classifier, run.index, bundle.images)
                wait_until(f"{version} answers under load", lambda: serving(version))
                return version

            for seed in (1, 2):
                last_valid = publish_valid(seed)

            broken = publish_broken(home, last_valid)
            wait_until(f"{broken} is refused", lambda: broken in (c.get("/readyz").json()["last_error"] or ""))
            ready = c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["model_version"] == last_valid
            assert "fingerprint" in ready.json()["last_error"]
            time.sleep(0.5)  # the broken version stays current for a while, under load
            metrics = c.get("/metrics").text
            assert metric(metrics, "simclr_model_refusals_total") >= 1
            assert metric(metrics, "simclr_model_load_error", version=broken) == 1
            assert metric(metrics, "simclr_model_info", version=last_valid) == 1

            last_valid = publish_valid(3)
            assert c.get("/readyz").json() == {"status": "ready", "model_version": last_valid, "last_error": None}
            metrics = c.get("/metrics").text
            assert metric(metrics, "simclr_model_load_error", version=broken) == 0
            assert metric(metrics, "simclr_model_reloads_total") == 4  # the first load + 3 published
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
        stop_server(server)

    assert not load.failures, load.failures[:5]
    assert len(load.answers) > 20
    bad = [(kind, probe, r.status_code, r.text[:200]) for kind, probe, r in load.answers if r.status_code != 200]
    assert not bad, bad[:5]
    for kind, probe, r in load.answers:
        body = r.json()
        version = body["model_version"]
        assert version in expected, f"{kind} answered with {version}, not a valid published version"
        if kind == "classify":
            got = np.array([p["probability"] for p in sorted(body["predictions"], key=lambda p: p["class_id"])])
            np.testing.assert_allclose(got, expected[version].probs[probe], atol=1e-4, err_msg=f"classify on {version}")
        else:
            assert [n["id"] for n in body["neighbors"]] == expected[version].neighbors[probe], f"neighbours on {version}"
    assert set(expected) == load.versions_seen()
    log = server.log_text()
    assert f"model {broken} could not be loaded" in log and "Traceback" not in log
