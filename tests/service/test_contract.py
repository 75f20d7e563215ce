"""The OpenAPI document is the contract: a Schemathesis run against the live server (every check, a bounded
number of examples per operation, a fixed seed) finds no server error and no mismatch between what the
document declares (bounds, statuses, methods, media types, response schemas) and what the server does.

The stateful phase is left out: its request chains generate file parts without the registered image media
types (a ZIP sent as ``image/png``), which reads as a valid request rejected. The other phases cover every
operation alone: examples, coverage (boundaries, missing and invalid parts, other methods) and fuzzing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Bundle
from service_testkit import Server, start_server, stop_server

WRITE_TOKEN = "contract-token"
HERE = Path(__file__).resolve().parent
EXAMPLES = 15  # per operation and phase: about 20 s for the whole document on two cores


@pytest.fixture(scope="module")
def contract_server(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("contract")
    shutil.copytree(bundle.home, tmp / "home")  # the fuzzer adds and deletes items: its own copy
    s = start_server(tmp / "home", tmp / "server.log", SIMCLR_WRITE_TOKEN=WRITE_TOKEN, SIMCLR_RELOAD_INTERVAL="0")
    yield s
    stop_server(s)


def test_the_server_keeps_its_openapi_contract(contract_server: Server) -> None:
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{contract_server.url}/openapi.json", "--checks", "all",
           "--phases", "examples,coverage,fuzzing", "--max-examples", str(EXAMPLES), "--seed", "1", "--workers", "1",
           "-H", f"Authorization: Bearer {WRITE_TOKEN}"]
    path = os.pathsep.join([str(HERE), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])  # the hooks import service
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": path}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Server error" not in run.stdout and "Traceback" not in contract_server.log_text()
