"""The seed's table on this machine over several seeds: the CPU recipe end to end, distillation included.

usage: python benchmarks/seed_table.py --seeds 2 [--data DIR] [--home DIR] [--time-left MIN] [--out FILE]

For each seed s (0, 1, ...), in its own home ``<home>/seed-<s>`` (pretraining and fine-tuning
seeds differ between runs; the labelled 10% and the validation split are the same images):

    simclr pretrain --preset cpu --seed s     (103 min on a time budget; 5,000 images held out)
    simclr finetune --preset cpu              (15 min)
    simclr distill --preset cpu               (30 min: the student, what the service would serve)
    simclr evaluate --preset cpu --rows linear,knn
                                              (linear eval, kNN: a few minutes)

then, for every seed, the baseline, which needs none of those weights:

    simclr evaluate --preset cpu --rows distill
                                              (the random-init fine-tune distilled the same way, 45 min)

About 3 h 20 min per seed on two cores; never part of the tests. A stage already finished in the
home is not run again, and an interrupted pretraining resumes from its checkpoint, so the script
can be stopped and started again (``--home`` then). Each stage's wall-clock seconds are kept in
``<home>/seed-<s>/stages.json`` (a pretraining killed outright, the machine stopped, adds its wall
clock up to its last checkpoint).

A table takes longer than one machine may be kept. After each seed's chain and each baseline, its state and its
run's JSON files (no weights) are copied to ``--keep`` (committed with the results), and a later
machine starts from there: the baselines and any seed whose chain has ended carry over, a chain
cut short starts again. ``--time-left`` (the minutes this machine is kept) leaves a chain or a
baseline that would not end in time for later instead of starting it.

Writes ``--out`` once every stage of every seed is done: at the top level ``runs`` (one object per
seed), ``mean`` (the same figures averaged), the seed's column, and ``command``, ``machine``,
``created``; top-1 / top-3 in percent on all 10,000 test images, and the validation figures beside
them (``*_val_top1``), the ones recipe choices are made on. Until then the seeds so far go to
``<keep>/partial.json`` (``"complete": false``), which the finished table replaces.

Every stage of every seed runs on one kind of machine (CPU model, cores, torch's CPU capability,
native bf16): the stages are timed, and on two cores without AVX-512 the same 103 minutes pretrain
about a third of the epochs (~500 against ~1,400 views/s). A home whose stages ran on another kind
is refused (``--any-machine`` to mix them anyway); each run records its kind.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_bytes, atomic_write_json
from core.home import ArtifactHome
from core.runs import RunPaths
from training.evaluation_suite import GROUPS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine, result_header, scrub_paths  # noqa: E402

# The seed's Table 1 (ResNet-50 on a GPU, 50 epochs), top-1 / top-3 in percent.
SEED = {"finetune": (77.4, 94.8), "linear": (71.3, 93.6)}
# The stages that need the weights the one before wrote on this machine, in order; the baseline
# (the random-init fine-tune, distilled) needs only the run's config and can run on another.
WEIGHT_CHAIN = ("pretrain", "finetune", "distill", "evaluate")
EVAL_ROWS = {"evaluate": "linear,knn", "baseline": "distill"}
NEEDS = {"finetune": "encoder", "distill": "classifier", "evaluate": "encoder", "baseline": "config"}  # the run's file each reads
# Minutes per stage on two AVX-512 cores: the preset's budgets plus loading and scoring. Used only to
# leave a stage for later when it would not end within --time-left.
STAGE_MINUTES = {"pretrain": 105, "finetune": 16, "distill": 31, "evaluate": 8, "baseline": 47}


def machine_kind() -> dict[str, object]:
    """What decides how far a timed stage gets here: the CPU, its cores, torch's kernels for it."""
    info = machine()
    return {k: info.get(k) for k in ("cpu", "cores", "cpu_capability", "cpu_bf16")}


def check_machines(root: Path, kind: dict[str, object]) -> None:
    """Refuse to go on with a seed table whose finished or started stages ran on another kind of machine."""
    for state_file in sorted(root.glob("seed-*/stages.json")):
        ran_on = json.loads(state_file.read_text()).get("machine")
        if ran_on is not None and ran_on != kind:
            raise SystemExit(f"{state_file.parent.name} ran on {ran_on}, this machine is {kind}: the timed stages would not "
                             "be comparable. Run the table on that kind of machine, start a new --home, or pass --any-machine.")


def run_stage(simclr: str, args: list[str]) -> float:
    print("$ simclr " + " ".join(shlex.quote(a) for a in args), flush=True)
    t = time.perf_counter()
    subprocess.run([simclr, *args], check=True)
    return round(time.perf_counter() - t, 1)


class Deadline:
    """``--time-left``: whether a stage (or a chain of them) still ends before the machine is given up."""

    def __init__(self, minutes: float | None) -> None:
        self.end = None if minutes is None else time.monotonic() + 60 * minutes

    def fits(self, minutes: float) -> bool:
        return self.end is None or time.monotonic() + 60 * minutes <= self.end


def stage_args(name: str, seed: int, data: str, run_id: str | None) -> list[str]:
    if name == "pretrain":
        return ["pretrain", "--preset", "cpu", "--seed", str(seed), "--data", data]
    assert run_id is not None
    if name in ("finetune", "distill"):
        return [name, "--preset", "cpu", "--run", run_id]
    # --data given again: a run restored from --keep holds its data folder only as "<data>".
    return ["evaluate", "--preset", "cpu", "--rows", EVAL_ROWS[name], "--run", run_id, "--data", data]


def rows_done(run: RunPaths | None, name: str) -> bool:
    """An evaluation stage whose rows are all written is done (each row is written whole when it ends)."""
    if run is None or name not in EVAL_ROWS:
        return False
    rows = run.eval_rows()
    return all(row in rows for group in EVAL_ROWS[name].split(",") for row in GROUPS[group])


def run_ids(home: ArtifactHome) -> list[str]:
    """The home's runs that have begun (a config written), oldest first: the ids sort by time."""
    return sorted(p.parent.name for p in home.runs.glob("*/config.json")) if home.runs.is_dir() else []


def seed_run(simclr: str, home_dir: Path, seed: int, data: str, stages: tuple[str, ...], deadline: Deadline) -> bool:
    """Every one of ``stages`` of one seed's run that is not done yet, in order, each only if it (and,
    in the chain that needs this machine's weights, the ones after it) ends before ``deadline``.
    Returns whether all of ``stages`` are done."""
    state_file = home_dir / "stages.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {"seconds": {}, "done": []}
    state.setdefault("machine", machine_kind())
    home = ArtifactHome(home_dir)
    started = run_ids(home)
    killed = state.pop("running", None)
    if killed and killed["stage"] == "pretrain" and started:
        # A pretraining killed without a word (the machine stopped) keeps what it did up to its last
        # checkpoint, and the resumed one starts from there: that attempt's wall clock up to that
        # checkpoint counts (what it did after it is redone, and counted, by the resumed one).
        checkpoint = RunPaths(home.runs / started[-1]).checkpoint
        spent = max(0.0, checkpoint.stat().st_mtime - killed["since"]) if checkpoint.exists() else 0.0
        state["seconds"]["pretrain"] = round(state["seconds"].get("pretrain", 0.0) + spent, 1)
        state.setdefault("interrupted", []).append({"stage": "pretrain", "seconds_to_last_checkpoint": round(spent, 1)})
        atomic_write_json(state_file, state)
    for i, name in enumerate(stages):
        run = RunPaths(home.runs / started[-1]) if started else None  # by id: a restored run has no checkpoint
        if name in state["done"]:
            continue
        if rows_done(run, name):  # the rows were written by an attempt stopped before it could say so
            state["done"].append(name)
            atomic_write_json(state_file, state)
            continue
        chain = [s for s in stages[i:] if s in WEIGHT_CHAIN] if name in WEIGHT_CHAIN else [name]
        minutes = sum(STAGE_MINUTES[s] for s in chain)
        if not deadline.fits(minutes):
            print(f"seed {seed}: {' + '.join(chain)} (~{minutes} min) would not end within --time-left: left for later", flush=True)
            return False
        needs = NEEDS.get(name)
        if needs and (run is None or not getattr(run, needs).exists()):
            raise SystemExit(f"seed {seed}: {name} needs the run's {needs}, which is not in {home_dir} (its earlier "
                             "stages ran on a machine that is gone). Delete the seed's folder in --home and --keep to run it again.")
        resume = name == "pretrain" and bool(started)  # stopped mid-way: go on from its checkpoint
        args = ["pretrain", "--resume", started[-1]] if resume else stage_args(name, seed, data, run.run_id if run else None)
        state["running"] = {"stage": name, "since": time.time()}  # what a killed attempt had spent: see above
        atomic_write_json(state_file, state)
        seconds = run_stage(simclr, [*args, "--home", str(home_dir)])
        state["seconds"][name] = round(state["seconds"].get(name, 0.0) + seconds, 1)  # a resumed stage adds up
        state["done"].append(name)
        state.pop("running", None)
        atomic_write_json(state_file, state)
        started = started or run_ids(home)
    return True


def keep(home_dir: Path, kept: Path, paths: dict[str | Path | None, str]) -> None:
    """Copy what a later machine needs of one seed's home (its stages' state and the run's JSON files,
    not its weights) to ``kept``, replacing what was there."""
    tmp = kept.with_name(kept.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for src in sorted(home_dir.glob("stages.json")) + sorted(home_dir.glob("runs/*/*.json*")) + sorted(home_dir.glob("runs/*/eval/*.json")):
        dst = tmp / src.relative_to(home_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        text = src.read_text()
        dst.write_text(text if src.suffix == ".jsonl" else json.dumps(scrub_paths(json.loads(text), paths), indent=2) + "\n")
    shutil.rmtree(kept, ignore_errors=True)
    if tmp.exists():
        tmp.rename(kept)


def restore(kept: Path, home_dir: Path) -> None:
    """A seed kept by an earlier machine, into a home that does not have it: only if its pretraining had
    ended (a pretraining cut short cannot resume without its checkpoint, so that seed starts again)."""
    state_file = kept / "stages.json"
    if (home_dir / "stages.json").exists() or not state_file.exists():
        return
    if "pretrain" not in json.loads(state_file.read_text())["done"]:
        print(f"{kept.name}: its pretraining did not end on the machine it ran on: starting it again", flush=True)
        return
    shutil.copytree(kept, home_dir, dirs_exist_ok=True)


def figures(run: RunPaths, seed: int, seconds: dict[str, float]) -> dict[str, Any]:
    """One seed's entry of ``runs``: stage minutes, test and validation top-1/top-3 in percent, of
    the stages that are done (a figure whose stage has not run is left out)."""
    pct = lambda x: round(100 * x, 2)  # noqa: E731
    out: dict[str, Any] = {"seed": seed, "run_id": run.run_id}
    out |= {f"{name}_minutes": round(seconds[name] / 60, 1) for name in ("pretrain", "finetune", "distill") if name in seconds}
    history = run.metrics_history()
    if history:
        out |= {"pretrain_epochs": history[-1]["epoch"], "pretrain_views_per_s": round(history[-1]["views_per_s"])}
    for name, record, val in (("finetune", run.read_finetune(), "finetune_val"), ("distill", run.read_distill(), "distill_val")):
        if record is not None:
            m = record.metrics
            out |= {f"{name}_top1": pct(m[f"{name}_top1"]), f"{name}_top3": pct(m[f"{name}_top3"]), f"{name}_val_top1": pct(m[f"{val}_top1"])}
    rows = run.eval_rows()
    for name, row in (("linear", "simclr_linear_10"), ("baseline_distill", "random_distill_10"), ("knn", "simclr_knn")):
        if row in rows:
            out |= {f"{name}_top1": pct(rows[row]["top1"]), f"{name}_top3": pct(rows[row]["top3"]),
                    f"{name}_val_top1": pct(rows[row]["val_top1"])}
    if "random_finetune_10" in rows:
        out["baseline_finetune_top1"] = pct(rows["random_finetune_10"]["top1"])
    return out


def write_result(result: dict[str, Any], out: Path, kept: Path | None, complete: bool) -> Path:
    """Only a finished table is the result; until then the seeds so far go with the kept stages, and
    the finished one replaces them (a stale ``partial.json`` beside it would say less than it)."""
    target = out if complete or kept is None else kept / "partial.json"
    atomic_write_bytes(target, (json.dumps(result, indent=2) + "\n").encode())  # key order kept: the header first
    if complete and kept is not None:
        (kept / "partial.json").unlink(missing_ok=True)
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2, help="runs, seeded 0 .. N-1 (default: %(default)s)")
    p.add_argument("--data", default="../shared/datasets/cifar10-jpeg", help="image folder or cifar10 (default: %(default)s)")
    p.add_argument("--home", help="folder for the runs, one home per seed (default: a temporary folder, deleted after)")
    p.add_argument("--out", default="benchmarks/results/seed_table_cpu.json", help="result file (default: %(default)s)")
    p.add_argument("--keep", help="folder that carries the seeds' finished stages (JSON, no weights) to a later machine "
                   "(default: --out's name with _state, next to it; 'none' for nothing)")
    p.add_argument("--time-left", type=float, help="minutes this machine is kept: a stage that would not end in them is left "
                   "for later (default: no limit)")
    p.add_argument("--any-machine", action="store_true", help="go on with stages that ran on another kind of machine (default: refuse)")
    a = p.parse_args()
    simclr = str(Path(sys.executable).parent / "simclr")
    out = Path(a.out)
    kept = None if a.keep == "none" else Path(a.keep or out.with_name(out.stem + "_state"))
    paths: dict[str | Path | None, str] = {a.home: "<home>", a.data: "<data>"}
    deadline = Deadline(a.time_left)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.home or tmp)
        homes = [root / f"seed-{s}" for s in range(a.seeds)]
        for home_dir in homes:
            if kept is not None:
                restore(kept / home_dir.name, home_dir)
        if not a.any_machine:
            check_machines(root, machine_kind())
        # Every seed's chain that needs this machine's weights first, the baselines (which need none) last:
        # a machine given up between the two loses nothing that a later one cannot redo.
        work = [(s, WEIGHT_CHAIN) for s in range(a.seeds)] + [(s, ("baseline",)) for s in range(a.seeds)]
        complete = True
        for s, stages in work:
            done = seed_run(simclr, homes[s], s, a.data, stages, deadline)
            complete &= done
            if kept is not None and (homes[s] / "stages.json").exists():
                keep(homes[s], kept / homes[s].name, {**paths, str(homes[s]): "<home>/" + homes[s].name})
        runs = []
        for s, home_dir in enumerate(homes):
            ids = run_ids(ArtifactHome(home_dir))
            if ids:
                state = json.loads((home_dir / "stages.json").read_text())
                runs.append({**figures(RunPaths(home_dir / "runs" / ids[-1]), s, state["seconds"]), "machine": state["machine"]})
    if not runs:
        return
    numeric = [k for k in runs[0] if k not in ("seed", "run_id") and all(isinstance(r.get(k), (int, float)) for r in runs)]
    mean = {k: round(sum(r[k] for r in runs) / len(runs), 2) for k in numeric}
    stages = ["simclr pretrain --preset cpu --seed S --data <data>", "simclr finetune --preset cpu", "simclr distill --preset cpu",
              f"simclr evaluate --preset cpu --rows {EVAL_ROWS['evaluate']}", f"simclr evaluate --preset cpu --rows {EVAL_ROWS['baseline']}"]
    result = {
        **result_header("seed_table", sys.argv, paths),
        "complete": complete,
        "stage_commands": stages,
        "runs": runs,
        "mean": mean,
        "seed_paper": {"finetune_top1": SEED["finetune"][0], "finetune_top3": SEED["finetune"][1],
                       "linear_top1": SEED["linear"][0], "linear_top3": SEED["linear"][1]},
        "bars": {"finetune_top1": 77.4, "linear_top1": 71.3, "distill_top1": 80.0, "pretrain_plus_finetune_minutes": 120,
                 "distill_minutes": 30},
    }
    from training.report import seed_runs_table

    result["report"] = seed_runs_table(result)
    result = scrub_paths(result, paths)
    target = write_result(result, out, kept, complete)
    print(result["report"])
    print(f"-> {target}" + ("" if complete else " (not finished: run the same command again, on the same kind of machine)"))


if __name__ == "__main__":
    main()
