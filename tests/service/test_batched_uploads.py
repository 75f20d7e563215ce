"""Dynamic batching over TCP: concurrent uploads share forward passes, and get the answers they would get alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from conftest import Bundle
from service_testkit import Server, chw_png, metric, start_server, stop_server

N = 16


@pytest.fixture(scope="module")
def batch_server(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Its own server, so the batch-size histogram counts only this module's requests; a longer
    # wait than the default 5 ms so that a burst from 16 threads reliably lands in shared batches.
    s = start_server(bundle.home, tmp_path_factory.mktemp("batch") / "server.log", SIMCLR_MAX_BATCH_WAIT_MS="30", SIMCLR_RELOAD_INTERVAL="0")
    yield s
    stop_server(s)


def batches(server: Server, kind: str) -> tuple[float, float]:
    """(number of batches, images in them) so far for ``kind``."""
    with server.client() as c:
        text = c.get("/metrics").text
    return metric(text, "simclr_batch_size_count", kind=kind), metric(text, "simclr_batch_size_sum", kind=kind)


def ask(client: httpx.Client, kind: str, png: bytes) -> dict:
    path, params = ("/classify", {"top_k": 10}) if kind == "classify" else ("/neighbors", {"k": 8})
    r = client.post(path, params=params, files={"file": ("q.png", png, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def burst(server: Server, kind: str, pngs: list[bytes]) -> list[dict]:
    """All uploads at once, one connection each, released together by a barrier."""
    start = threading.Barrier(len(pngs))
    clients = [server.client() for _ in pngs]
    for c in clients:
        c.get("/healthz")  # connect first, so the burst is only the uploads

    def one(i: int) -> dict:
        start.wait()
        return ask(clients[i], kind, pngs[i])

    try:
        with ThreadPoolExecutor(len(pngs)) as pool:
            return list(pool.map(one, range(len(pngs))))
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("kind", ["classify", "neighbors"])
def test_concurrent_uploads_are_batched_and_equal_unbatched(batch_server: Server, bundle: Bundle, kind: str) -> None:
    items = list(range(0, 8 * N, 8))
    pngs = [chw_png(bundle.images[i]) for i in items]

    n0, s0 = batches(batch_server, kind)
    with batch_server.client() as c:
        alone = [ask(c, kind, png) for png in pngs]
    n1, s1 = batches(batch_server, kind)
    assert (n1 - n0, s1 - s0) == (N, N)  # one at a time: batches of one

    together = burst(batch_server, kind, pngs)
    n2, s2 = batches(batch_server, kind)
    assert s2 - s1 == N and n2 - n1 < N, f"{N} concurrent uploads ran in {n2 - n1} batches: none was shared"

    for item, a, t in zip(items, alone, together):
        assert a["model_version"] == t["model_version"] == bundle.version
        if kind == "classify":
            probs = [np.array([p["probability"] for p in sorted(r["predictions"], key=lambda p: p["class_id"])]) for r in (a, t)]
            np.testing.assert_allclose(probs[1], probs[0], atol=1e-4, err_msg=f"image {item}")
        else:
            # Scores agree within float tolerance; ids only where scores are apart (near-ties may swap).
            scores = [np.array([n["score"] for n in r["neighbors"]]) for r in (a, t)]
            np.testing.assert_allclose(scores[1], scores[0], atol=1e-4, err_msg=f"image {item}")
            assert a["neighbors"][0]["id"] == t["neighbors"][0]["id"] == item  # an indexed image finds itself
            gaps = np.diff(scores[0]) < -1e-3
            ids = [[n["id"] for n in r["neighbors"]] for r in (a, t)]
            for rank in range(1, len(ids[0])):
                if gaps[rank - 1] and (rank == len(gaps) or gaps[rank]):
                    assert ids[0][rank] == ids[1][rank], f"image {item}, rank {rank}"
