"""The collection's promises that need real processes: acknowledged writes survive ``kill -9``; with
``--workers 2`` a write through one process is searched by both within a second (measured); a model
published while clients write and search fails no request and re-embeds every live item."""

from __future__ import annotations

import http.client
import json
import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import N_IMAGES, Bundle, make_images, random_run
from core.collection import LOG_FILE, Collection
from service_testkit import chw_png, start_server, stop_server

WRITE_TOKEN = "durable-token"
AUTH = {"Authorization": f"Bearer {WRITE_TOKEN}"}
VISIBLE_WITHIN = 1.0  # seconds: the bound README and service/collection.py state


def home_copy(bundle: Bundle, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle.home, tmp_path / "home"))


def add(client: httpx.Client, image: np.ndarray, payload: dict, item_id: int | None = None) -> httpx.Response:
    data = {"payload": json.dumps(payload)}
    if item_id is not None:
        data["id"] = str(item_id)
    return client.post("/items", data=data, files={"file": ("i.png", chw_png(image), "image/png")}, headers=AUTH)


def top_hit(client: httpx.Client, image: np.ndarray) -> dict:
    r = client.post("/neighbors", params={"k": 3}, files={"file": ("q.png", chw_png(image), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["neighbors"][0]


@dataclass
class Acked:
    """What the server acknowledged: id -> (payload, image index) of live items, who wrote each; deleted ids.
    A writer replaces and deletes only its own items (and its share of the bundle's), so the order of the
    answers of different writers cannot disagree with the order of their writes."""

    live: dict[int, tuple[dict, int]] = field(default_factory=dict)
    owner: dict[int, int] = field(default_factory=dict)
    uncertain: set[int] = field(default_factory=set)  # ids a write in flight at the kill named: either outcome is right
    deleted: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def test_acknowledged_writes_survive_sigkill(bundle: Bundle, tmp_path: Path) -> None:
    home = home_copy(bundle, tmp_path)
    images = make_images(64, seed=21)[0]
    server = start_server(home, tmp_path / "server.log", SIMCLR_WRITE_TOKEN=WRITE_TOKEN, SIMCLR_RELOAD_INTERVAL="0")
    acked, stop = Acked(), threading.Event()

    def writer(w: int) -> None:
        """Adds (the server picks the id), replaces and deletes. A writer replaces and deletes only ids it
        owns: those the server gave it, and the bundle's ids ``i % 3 == w``."""
        rng = random.Random(w)
        with server.client() as c:
            n = 0
            while not stop.is_set():
                n += 1
                target: int | None = None
                with acked.lock:
                    own = [i for i in acked.live if acked.owner[i] == w] + [rng.randrange(w, N_IMAGES, 3)]
                try:
                    if n % 5 == 0:  # now and then delete one
                        target = rng.choice(own)
                        r = c.delete(f"/items/{target}", headers=AUTH)
                        if r.status_code == 204:
                            with acked.lock:
                                acked.live.pop(target, None)
                                acked.deleted.add(target)
                        continue
                    index = rng.randrange(len(images))
                    target = rng.choice(own) if n % 3 == 0 else None  # replace (or re-add) an id it owns
                    payload = {"writer": w, "n": n}
                    r = add(c, images[index], payload, target)
                except httpx.HTTPError:  # the kill: this write was never acknowledged (yet may be on disk)
                    with acked.lock:
                        if target is not None:
                            acked.uncertain.add(target)
                    return
                if r.status_code in (200, 201):
                    with acked.lock:
                        acked.live[r.json()["id"]] = (payload, index)
                        acked.owner[r.json()["id"]] = w
                        acked.deleted.discard(r.json()["id"])

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked.live) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.process.kill()  # SIGKILL with writes in flight: no shutdown, no flush
    server.process.wait()
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked.live) >= 40, "the writers were too slow"

    restarted = start_server(home, tmp_path / "server2.log", SIMCLR_WRITE_TOKEN=WRITE_TOKEN, SIMCLR_RELOAD_INTERVAL="0")
    try:
        with restarted.client() as c:
            live = {i: v for i, v in acked.live.items() if i not in acked.uncertain}
            deleted = acked.deleted - set(acked.live) - acked.uncertain
            assert len(live) >= 35 and deleted
            for item_id, (payload, _) in live.items():
                r = c.get(f"/items/{item_id}")
                assert r.status_code == 200 and r.json()["payload"] == payload, (item_id, r.text)
            for item_id in deleted:
                assert c.get(f"/items/{item_id}").status_code == 404, item_id
            listed = {i["id"] for i in c.get("/items", params={"offset": 0, "limit": 1000}).json()["items"]}
            assert set(live) <= listed and not deleted & listed
            for _, index in list(live.values())[:5]:  # and they are searched with their vectors
                hit = top_hit(c, images[index])
                assert hit["score"] == pytest.approx(1.0, abs=1e-4)
            assert add(c, images[0], {"after": "restart"}).status_code == 201  # a torn tail, if any, is no obstacle
        log = Collection(home / "collection")
        log.catch_up()
        assert log.offset == (home / "collection" / LOG_FILE).stat().st_size  # nothing half-written remains
    finally:
        stop_server(restarted)
    assert "Traceback" not in restarted.log_text()


def test_two_workers_search_each_others_writes_within_a_second(bundle: Bundle, tmp_path: Path) -> None:
    home = home_copy(bundle, tmp_path)
    images = make_images(8, seed=31)[0]
    server = start_server(home, tmp_path / "server.log", SIMCLR_WORKERS="2", SIMCLR_WRITE_TOKEN=WRITE_TOKEN)
    fresh = 12  # requests per probe, each on a new connection: the kernel spreads them over both processes
    port = int(server.url.rsplit(":", 1)[1])

    def status(path: str) -> int:
        """GET ``path`` on a new connection (http.client: no per-request client to build, unlike httpx.get)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()

    def all_see(path: str, want: int = 200) -> bool:
        return all(status(path) == want for _ in range(fresh))

    delays = []
    try:
        deadline = time.monotonic() + 60
        while not all_see("/readyz"):  # /healthz answered, but is the other process's model loaded too?
            assert time.monotonic() < deadline, "both workers were not ready within 60 s"
            time.sleep(0.1)
        with server.client() as c:
            for n, image in enumerate(images):
                r = add(c, image, {"n": n})
                acked = time.monotonic()
                assert r.status_code == 201, r.text
                item_id = r.json()["id"]
                while not all_see(f"/neighbors?id={item_id}&k=3"):  # searched by both processes
                    assert time.monotonic() - acked < 10, f"item {item_id} not visible everywhere after 10 s"
                    time.sleep(0.01)
                delays.append(time.monotonic() - acked)
                time.sleep(random.Random(n).uniform(0, 0.2))  # writes at every phase of the other process's poll
            with ThreadPoolExecutor(fresh) as pool:  # and searching by image finds them on every process
                firsts = list(pool.map(lambda i: httpx.post(server.url + "/neighbors", params={"k": 1}, timeout=10,
                                                            files={"file": ("q.png", chw_png(images[i % 8]), "image/png")}).json(),
                                       range(2 * fresh)))
            assert all(f["neighbors"][0]["payload"] == {"n": i % 8} for i, f in enumerate(firsts))
            r = c.delete(f"/items/{item_id}", headers=AUTH)
            deleted = time.monotonic()
            while not all_see(f"/items/{item_id}", 404):
                assert time.monotonic() - deleted < 10
                time.sleep(0.01)
            delays.append(time.monotonic() - deleted)
    finally:
        stop_server(server)
    print(f"visible in both processes after (s): {', '.join(f'{d:.3f}' for d in delays)}")
    assert max(delays) < VISIBLE_WITHIN, delays


@pytest.mark.parametrize("backend", ["faiss", "qdrant"])
def test_publishing_while_writing_and_searching_fails_nothing_and_reembeds_every_item(bundle: Bundle, tmp_path: Path,
                                                                                      backend: str) -> None:
    home = home_copy(bundle, tmp_path)
    images = make_images(40, seed=41)[0]
    new_run = random_run(tmp_path / "run", bundle.images, bundle.labels, seed=5)  # made before the load starts
    extra = {"SIMCLR_INDEX_BACKEND": "qdrant", "SIMCLR_QDRANT_PATH": str(tmp_path / "qdrant")} if backend == "qdrant" else {}
    server = start_server(home, tmp_path / "server.log", SIMCLR_WRITE_TOKEN=WRITE_TOKEN, SIMCLR_RELOAD_INTERVAL="0.2", **extra)
    acked: dict[int, int] = {}  # live added id -> image index
    failures: list[str] = []
    versions: set[str] = set()
    stop = threading.Event()
    lock = threading.Lock()

    def record(r: httpx.Response, ok: tuple[int, ...] = (200, 201, 204)) -> bool:
        if r.status_code not in ok:
            with lock:
                failures.append(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:200]}")
            return False
        return True

    def writer() -> None:
        n = 0
        with server.client() as c:
            while not stop.is_set():
                index = n % len(images)
                r = add(c, images[index], {"n": n})
                if record(r):
                    with lock:
                        acked[r.json()["id"]] = index
                        versions.add(r.json()["model_version"])
                if n % 4 == 3:  # and delete one now and then
                    with lock:
                        victim = next(iter(acked))
                    if record(c.delete(f"/items/{victim}", headers=AUTH)):
                        with lock:
                            acked.pop(victim, None)
                n += 1

    def searcher() -> None:
        with server.client() as c:
            while not stop.is_set():
                with lock:
                    some = random.choice(list(acked)) if acked else 0
                record(c.get("/neighbors", params={"id": 0, "k": 10}))
                record(c.post("/neighbors", params={"k": 5}, files={"file": ("q.png", chw_png(images[0]), "image/png")}))
                r = c.get("/neighbors", params={"id": some, "k": 5})
                record(r, (200, 404))  # 404: deleted by the writer since it was picked

    threads = [threading.Thread(target=f, daemon=True) for f in (writer, searcher)]
    try:
        for t in threads:
            t.start()
        with server.client() as c:
            deadline = time.monotonic() + 60
            while len(acked) < 15:
                assert time.monotonic() < deadline and not failures, failures[:5]
                time.sleep(0.05)
            new = new_run.publish(home)
            deadline = time.monotonic() + 60
            while c.get("/readyz").json()["model_version"] != new:
                assert time.monotonic() < deadline, "the new version was not served within 60 s"
                time.sleep(0.05)
            time.sleep(0.5)  # writes and searches go on under the new version
            stop.set()
            for t in threads:
                t.join(30)
            assert not failures, failures[:5]
            assert {bundle.version, new} <= versions  # writes were acknowledged under both versions

            # Every live item is found under the new version with the new encoder's vector: its own image
            # scores 1 only against the vector the new encoder computes for it.
            total = c.get("/items").json()["total"]
            assert total == N_IMAGES + len(acked)
            for item_id, index in acked.items():
                r = c.post("/neighbors", params={"k": 100}, files={"file": ("q.png", chw_png(images[index]), "image/png")})
                assert r.json()["model_version"] == new
                same = [h for h in r.json()["neighbors"] if h["score"] > 0.9999]
                assert item_id in [h["id"] for h in same], (item_id, r.json()["neighbors"][:3])
                assert c.get("/neighbors", params={"id": item_id}).status_code == 200
    finally:
        stop.set()
        stop_server(server)
    assert "Traceback" not in server.log_text()
