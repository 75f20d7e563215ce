"""benchmarks/seed_table.py counts a pretraining killed outright (its wall clock up to its last checkpoint) and
refuses to mix kinds of machine in one table."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import seed_table  # noqa: E402


def test_a_killed_pretraining_adds_its_time_to_the_last_checkpoint_and_is_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "seed-0"
    run = home / "runs" / "20261202-000000"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoint.pt").write_bytes(b"")
    os.utime(run / "checkpoint.pt", (1000.0 + 600, 1000.0 + 600))  # the last checkpoint, 10 min after the start
    (home / "stages.json").write_text(json.dumps({"seconds": {}, "done": [], "running": {"stage": "pretrain", "since": 1000.0}}))
    calls: list[list[str]] = []

    def fake_stage(simclr: str, args: list[str]) -> float:
        calls.append(args)
        return 60.0

    monkeypatch.setattr(seed_table, "run_stage", fake_stage)
    monkeypatch.setattr(seed_table, "figures", lambda run, seed, seconds: dict(seconds))
    seconds: dict[str, Any] = seed_table.seed_run("simclr", home, 0, "data", "linear")
    assert calls[0][:3] == ["pretrain", "--resume", "20261202-000000"]
    assert [c[0] for c in calls] == ["pretrain", "finetune", "distill", "evaluate"]
    assert seconds["pretrain"] == 600.0 + 60.0  # the killed attempt to its checkpoint, then the resumed one
    state = json.loads((home / "stages.json").read_text())
    assert "running" not in state and state["interrupted"] == [{"stage": "pretrain", "seconds_to_last_checkpoint": 600.0}]


def test_stages_that_ran_on_another_kind_of_machine_are_refused(tmp_path: Path) -> None:
    here = seed_table.machine_kind()
    (tmp_path / "seed-0").mkdir()
    (tmp_path / "seed-0" / "stages.json").write_text(json.dumps({"seconds": {}, "done": ["pretrain"], "machine": here}))
    seed_table.check_machines(tmp_path, here)  # the same kind: goes on
    (tmp_path / "seed-1").mkdir()
    other = {**here, "cpu_capability": "AVX512" if here["cpu_capability"] != "AVX512" else "AVX2"}
    (tmp_path / "seed-1" / "stages.json").write_text(json.dumps({"seconds": {}, "done": [], "machine": other}))
    with pytest.raises(SystemExit, match="seed-1 ran on .* not be comparable"):
        seed_table.check_machines(tmp_path, here)
