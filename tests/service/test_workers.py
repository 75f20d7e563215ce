"""Several worker processes on one port (``SIMCLR_WORKERS=2``), over TCP, and their supervisor.

Each worker has its own model and poller, so the things one process got for free
must still hold: every request answered, metrics summed over the workers whichever
one is scraped, and a newly published model reaching every worker. The supervisor
restarts a worker that dies while serving, and gives up on one that dies while starting.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import RandomRun, make_images, random_run
from service_testkit import REPO, chw_png, metric, start_server, stop_server
from tests_support import free_port

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


def supervisor(factory: str, workers: int, **limits: float) -> list[str]:
    """The command that runs ``supervise`` on ``factory`` in a process of its own (it handles signals),
    logging to stderr as ``run`` does."""
    code = f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
        from service.workers import supervise
        supervise({factory!r}, {workers}, "127.0.0.1", {free_port()}, {{"log_level": "warning"}}, **{limits!r})
    """
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_a_worker_that_dies_while_starting_is_not_restarted_forever() -> None:
    """A worker whose app cannot even be imported dies again at every restart: the supervisor backs off,
    then gives up within a bounded time, naming the exit code and pointing at the worker's own log."""
    command = supervisor("no_such_module:create_app", 2, min_uptime=30, restart_delay=0.2, max_quick_failures=3)
    start = time.monotonic()
    r = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("service.workers.WorkerStartupError: worker "), r.stderr
    assert re.search(r"exited with exit code [1-9]", last) and "3 workers in a row" in last and "log lines above" in last
    assert 'Could not import module "no_such_module"' in r.stderr  # the workers' own reason (uvicorn's), in the same stream
    # Backed off, doubling: each worker slot was restarted after 0.2 s, then after 0.4 s.
    assert "starting another in 0.2 s" in r.stderr and "starting another in 0.4 s" in r.stderr
    assert "starting another in 0.8 s" not in r.stderr


def test_a_worker_that_dies_while_serving_is_restarted_as_before(tmp_path: Path) -> None:
    """A worker that served for ``min_uptime`` and then died is replaced at once, however often that
    happens: only failures while starting count towards giving up."""
    (tmp_path / "short_lived_app.py").write_text(textwrap.dedent("""
        import os, threading

        def create_app():
            threading.Timer(0.5, os._exit, (7,)).start()  # serves for half a second, then dies

            async def app(scope, receive, send):
                if scope["type"] == "lifespan":
                    while (await receive())["type"] != "lifespan.shutdown":
                        await send({"type": "lifespan.startup.complete"})
                    await send({"type": "lifespan.shutdown.complete"})

            return app
    """))
    command = supervisor("short_lived_app:create_app", 1, min_uptime=0.2, restart_delay=5, max_quick_failures=2)
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                               stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        assert process.poll() is None, process.communicate()[1]  # still supervising
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert stderr.count("exited with exit code 7; starting another") >= 2, stderr
    assert "giving up" not in stderr and "starting another in" not in stderr
