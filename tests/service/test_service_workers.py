"""Several worker processes on one port (``SIMCLR_WORKERS=2``), over TCP.

Each worker has its own model and poller, so the things one process got for free
must still hold: every request answered, metrics summed over the workers whichever
one is scraped, and a newly published model reaching every worker.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import RandomRun, make_images, random_run
from service_testkit import chw_png, metric, start_server, stop_server

REQUESTS = 40


@pytest.fixture(scope="module")
def workers_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RandomRun, RandomRun, np.ndarray]:
    images, labels = make_images(64, seed=3)
    home = tmp_path_factory.mktemp("workers_home")
    first = random_run(tmp_path_factory.mktemp("w1"), images, labels, seed=1)
    second = random_run(tmp_path_factory.mktemp("w2"), images, labels, seed=2)
    return home, first, second, images


def test_two_workers_answer_count_and_refresh(workers_home, tmp_path: Path) -> None:
    home, first, second, images = workers_home
    v1 = first.publish(home)
    server = start_server(home, tmp_path / "server.log", SIMCLR_WORKERS="2", SIMCLR_RELOAD_INTERVAL="0.5")
    try:
        with server.client() as client:
            upload = chw_png(images[0])

            def classify(_: int) -> tuple[int, str]:
                r = client.post("/classify", files={"file": ("a.png", upload, "image/png")})
                return r.status_code, r.json().get("model_version", r.text)

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(classify, range(REQUESTS)))
            assert answers == [(200, v1)] * REQUESTS

            # Whichever worker answers the scrape, the counts are the sum over both.
            for _ in range(6):
                text = client.get("/metrics").text
                assert metric(text, "simclr_http_requests_total", method="POST", route="/classify", status="200") == REQUESTS
                assert metric(text, "simclr_batch_size_sum", kind="classify") == REQUESTS
                assert metric(text, "simclr_model_info", version=v1) == 1

            # A refresh reaches every worker through its own poller.
            v2 = second.publish(home)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with ThreadPoolExecutor(8) as pool:
                    versions = {v for _, v in pool.map(classify, range(16))}
                if versions == {v2}:
                    break
                time.sleep(0.2)
            assert versions == {v2}, f"after 30 s some workers still answer with {versions - {v2}}"
        assert "Traceback" not in server.log_text()
    finally:
        stop_server(server)


def test_workers_refuse_a_port_another_server_listens_on() -> None:
    """SO_REUSEPORT would let a second server share the port silently; it is refused instead."""
    import socket

    from service.workers import supervise

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="already listens"):
            supervise("service.app:create_worker_app", 2, "127.0.0.1", port, {})


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc to find the workers")
def test_workers_exit_when_the_supervisor_is_killed(workers_home, tmp_path: Path) -> None:
    """SIGKILL gives the parent no chance to stop its workers: the kernel must (PR_SET_PDEATHSIG)."""
    import httpx

    home, first, _, _ = workers_home
    first.publish(home)
    server = start_server(home, tmp_path / "server.log", SIMCLR_WORKERS="2")
    workers = _children(server.process.pid)
    try:
        assert len(workers) >= 2, workers  # the two workers (and multiprocessing's resource tracker)
        server.process.kill()
        server.process.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(map(_alive, workers)):
            time.sleep(0.2)
        alive = [w for w in workers if _alive(w)]
        assert not alive, f"processes {alive} outlived their supervisor"
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url + "/healthz", timeout=2)
    finally:
        for w in filter(_alive, workers):  # nothing left if the test passed
            os.kill(w, signal.SIGKILL)
        stop_server(server)


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
