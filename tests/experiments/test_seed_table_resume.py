"""benchmarks/seed_table.py counts a pretraining killed outright (its wall clock up to its last checkpoint),
refuses to mix kinds of machine in one table, and carries finished stages (no weights) to a later machine."""

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

    monkeypatch.setattr(seed_table, "run_stage", fake_stages(calls))
    assert seed_table.seed_run("simclr", home, 0, "data", seed_table.WEIGHT_CHAIN, seed_table.Deadline(None))
    assert calls[0][:3] == ["pretrain", "--resume", "20261202-000000"]
    assert [c[0] for c in calls] == ["pretrain", "finetune", "distill", "evaluate"]
    state = json.loads((home / "stages.json").read_text())
    assert state["seconds"]["pretrain"] == 600.0 + 60.0  # the killed attempt to its checkpoint, then the resumed one
    assert "running" not in state and state["interrupted"] == [{"stage": "pretrain", "seconds_to_last_checkpoint": 600.0}]


def fake_stages(calls: list[list[str]]) -> Any:
    """``run_stage`` that writes what each stage would leave in the run (weights, rows) and takes a minute."""

    def run_stage(simclr: str, args: list[str]) -> float:
        calls.append(args)
        home = Path(args[args.index("--home") + 1])
        run = sorted((home / "runs").glob("*"))[-1]
        out = {"pretrain": ["encoder.pt", "checkpoint.pt"], "finetune": ["classifier.pt"], "distill": ["student.pt"]}.get(args[0], [])
        for name in out:
            (run / name).write_bytes(b"")
        if args[0] == "evaluate":
            for row in {"linear,knn": ["simclr_linear_10", "simclr_linear_100", "simclr_knn"]}.get(args[args.index("--rows") + 1],
                                                                                                    ["random_distill_10"]):
                (run / "eval").mkdir(exist_ok=True)
                (run / "eval" / f"{row}.json").write_text(json.dumps({"top1": 0.5}))
        return 60.0

    return run_stage


def finished_chain(home: Path) -> Path:
    """A seed home whose chain (pretrain .. evaluate) ran here, the baseline not yet."""
    run = home / "runs" / "20261202-000000"
    (run / "eval").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"pretrain": {"data": "/somewhere/cifar", "home": str(home)}}))
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    for row in ("simclr_linear_10", "simclr_linear_100", "simclr_knn"):
        (run / "eval" / f"{row}.json").write_text(json.dumps({"top1": 0.7, "data": "/somewhere/cifar"}))
    for name in ("checkpoint.pt", "encoder.pt", "classifier.pt", "student.pt"):
        (run / name).write_bytes(b"weights")
    state = {"seconds": {"pretrain": 6200.0}, "done": list(seed_table.WEIGHT_CHAIN), "machine": seed_table.machine_kind()}
    (home / "stages.json").write_text(json.dumps(state))
    return run


def test_the_kept_stages_carry_no_weights_nor_paths_and_a_later_machine_runs_only_the_baseline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, kept = tmp_path / "a" / "seed-0", tmp_path / "kept" / "seed-0"
    finished_chain(home)
    seed_table.keep(home, kept, {str(home): "<home>/seed-0", "/somewhere/cifar": "<data>"})
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert files == ["runs/20261202-000000/config.json", "runs/20261202-000000/eval/simclr_knn.json",
                     "runs/20261202-000000/eval/simclr_linear_10.json", "runs/20261202-000000/eval/simclr_linear_100.json",
                     "runs/20261202-000000/metrics.jsonl", "stages.json"]
    assert str(tmp_path) not in "".join(p.read_text() for p in kept.rglob("*.json*")) and "/somewhere" not in (kept / files[0]).read_text()

    later = tmp_path / "b" / "seed-0"  # another machine: an empty home
    seed_table.restore(kept, later)
    calls: list[list[str]] = []
    monkeypatch.setattr(seed_table, "run_stage", fake_stages(calls))
    assert seed_table.seed_run("simclr", later, 0, "/there/cifar", seed_table.WEIGHT_CHAIN, seed_table.Deadline(None))
    assert calls == []  # the chain ended on the first machine
    assert seed_table.seed_run("simclr", later, 0, "/there/cifar", ("baseline",), seed_table.Deadline(None))
    assert calls == [["evaluate", "--preset", "cpu", "--rows", "distill", "--run", "20261202-000000", "--data", "/there/cifar",
                      "--home", str(later)]]


def test_a_chain_cut_short_is_not_carried_and_a_stage_without_its_weights_is_refused(tmp_path: Path) -> None:
    home, kept = tmp_path / "a" / "seed-0", tmp_path / "kept" / "seed-0"
    run = finished_chain(home)
    state = json.loads((home / "stages.json").read_text())
    (home / "stages.json").write_text(json.dumps({**state, "done": [], "running": {"stage": "pretrain", "since": 0.0}}))
    seed_table.keep(home, kept, {})
    seed_table.restore(kept, tmp_path / "b" / "seed-0")
    assert not (tmp_path / "b" / "seed-0").exists()  # the pretraining had not ended: that seed starts again

    (home / "stages.json").write_text(json.dumps({**state, "done": ["pretrain"]}))
    (run / "encoder.pt").unlink()
    with pytest.raises(SystemExit, match="finetune needs the run's encoder"):
        seed_table.seed_run("simclr", home, 0, "data", seed_table.WEIGHT_CHAIN, seed_table.Deadline(None))


def test_what_would_not_end_in_the_time_left_is_left_for_later_and_written_rows_count_as_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(seed_table, "run_stage", fake_stages(calls))
    fresh = tmp_path / "seed-1"
    assert not seed_table.seed_run("simclr", fresh, 1, "data", seed_table.WEIGHT_CHAIN, seed_table.Deadline(150))
    assert calls == []  # pretraining to evaluation takes longer than 150 minutes: not started

    home = tmp_path / "seed-0"
    finished_chain(home)
    state = json.loads((home / "stages.json").read_text())
    (home / "stages.json").write_text(json.dumps({**state, "done": ["pretrain", "finetune", "distill"],
                                                  "running": {"stage": "evaluate", "since": 0.0}}))
    assert not seed_table.seed_run("simclr", home, 0, "data", (*seed_table.WEIGHT_CHAIN, "baseline"), seed_table.Deadline(20))
    assert calls == []  # the evaluation's rows were all written; the 47-minute baseline does not fit in 20
    assert json.loads((home / "stages.json").read_text())["done"][-1] == "evaluate"


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


def test_the_finished_table_is_the_result_and_replaces_the_kept_partial_one(tmp_path: Path) -> None:
    out, kept = tmp_path / "results" / "seed_table.json", tmp_path / "results" / "seed_table_state"
    assert seed_table.write_result({"complete": False}, out, kept, complete=False) == kept / "partial.json"
    assert not out.exists()
    assert seed_table.write_result({"complete": True}, out, kept, complete=True) == out
    assert json.loads(out.read_text()) == {"complete": True} and not (kept / "partial.json").exists()
