"""The one entry point: ``service.serve``'s flags and ``main``, shared by ``python -m service`` and ``simclr serve``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import serve
from service.settings import Settings
from service.workers import WorkerStartupError
from service_testkit import REPO


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test")
    serve.add_arguments(p)
    return p


def test_importing_it_loads_nothing_heavy() -> None:
    """The ``simclr`` command imports it to build its parser: ``simclr --help`` must not wait for torch."""
    code = "import sys, service.serve; heavy = {'torch', 'faiss', 'fastapi', 'numpy', 'pydantic'} & set(sys.modules); assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_python_m_service_help_names_the_flags_and_their_environment() -> None:
    r = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for flag, env in (("--home", "$SIMCLR_HOME"), ("--host", "$SIMCLR_HOST"), ("--port", "$SIMCLR_PORT"), ("--workers", "$SIMCLR_WORKERS")):
        assert flag in r.stdout and env in r.stdout


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--port", "70000"], ["--port", "eighty"]])
def test_bad_flags_are_refused_by_the_parser(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2


def test_main_overrides_the_environment_with_the_given_flags_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ran: list[Settings] = []
    monkeypatch.setattr("service.app.run", ran.append)
    monkeypatch.setenv("SIMCLR_HOST", "0.0.0.0")
    monkeypatch.setenv("SIMCLR_PORT", "9001")
    args = parser().parse_args(["--home", str(tmp_path), "--port", "9002"])
    args.command, args.func = "serve", print  # what a bigger CLI's namespace also holds: ignored
    serve.main(args)
    (settings,) = ran
    assert settings.home == tmp_path and settings.port == 9002  # given
    assert settings.host == "0.0.0.0" and settings.workers == 1  # from the environment, and the default


def test_workers_that_cannot_start_end_main_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(settings: Settings) -> None:
        raise WorkerStartupError("worker 42 exited with exit code 3 ...")

    monkeypatch.setattr("service.app.run", run)
    with pytest.raises(SystemExit, match="error: worker 42 exited with exit code 3"):
        serve.main(parser().parse_args([]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
@pytest.mark.parametrize("given", [None, "4"])
def test_a_server_process_and_its_workers_get_one_malloc_arena_unless_the_user_chose(given: str | None) -> None:
    """The model thread's own arena page-faulted its freed activations back in every forward pass (service.threads)."""
    code = ("import os; from service.threads import process_defaults; process_defaults(); "
            "print(os.environ.get('MALLOC_ARENA_MAX'), os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "OMP_WAIT_POLICY")}
    if given is not None:
        env["MALLOC_ARENA_MAX"] = given
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert out == [given or "1", "PASSIVE"]
