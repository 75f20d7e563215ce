"""The seed's table on this machine over several seeds: the CPU recipe end to end, distillation included.

usage: python benchmarks/seed_table.py --seeds 2 [--data DIR] [--home DIR] [--out benchmarks/results/seed_table_cpu.json]

For each seed s (0, 1, ...), in its own home ``<home>/seed-<s>`` (pretraining and fine-tuning
seeds differ between runs; the labelled 10% and the validation split are the same images):

    simclr pretrain --preset cpu --seed s     (103 min on a time budget; 5,000 images held out)
    simclr finetune --preset cpu              (15 min)
    simclr distill --preset cpu               (30 min: the student, what the service would serve)
    simclr evaluate --preset cpu --rows linear,knn,distill
                                              (linear eval, kNN, and the baseline: the random-init
                                               fine-tune distilled the same way, 45 min)

A stage already finished in the home is not run again, and an interrupted pretraining resumes
from its checkpoint, so the script can be stopped and started again (``--home`` then). Each
stage's wall-clock seconds are kept in ``<home>/seed-<s>/stages.json`` (a pretraining killed outright,
the machine stopped, adds its wall clock up to its last checkpoint). Writes ``--out``: at the
top level ``runs`` (one object per seed), ``mean`` (the same figures averaged), the seed's column,
and ``command``, ``machine``, ``created``; top-1 / top-3 in percent on all 10,000 test images, and
the validation figures beside them (``*_val_top1``), the ones recipe choices are made on. Takes
about 3 h 20 min per seed on two cores; never part of the tests.

Every stage of every seed runs on one kind of machine (CPU model, cores, torch's CPU capability,
native bf16): the stages are timed, and on two cores without AVX-512 the same 103 minutes pretrain
about a third of the epochs (~500 against ~1,400 views/s). A home whose stages ran on another kind
is refused (``--any-machine`` to mix them anyway); each run records its kind.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_json
from core.home import ArtifactHome
from core.runs import RunPaths

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine, result_header, scrub_paths  # noqa: E402

# The seed's Table 1 (ResNet-50 on a GPU, 50 epochs), top-1 / top-3 in percent.
SEED = {"finetune": (77.4, 94.8), "linear": (71.3, 93.6)}


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


def seed_run(simclr: str, home_dir: Path, seed: int, data: str, rows: str) -> dict[str, Any]:
    """Every stage of one seed's run that is not done yet; returns its figures."""
    state_file = home_dir / "stages.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {"seconds": {}, "done": []}
    state.setdefault("machine", machine_kind())

    def stage(name: str, args: list[str]) -> None:
        if name in state["done"]:
            return
        state["running"] = {"stage": name, "since": time.time()}  # what a killed attempt had spent: see below
        atomic_write_json(state_file, state)
        seconds = run_stage(simclr, [*args, "--home", str(home_dir)])
        state["seconds"][name] = round(state["seconds"].get(name, 0.0) + seconds, 1)  # a resumed stage adds up
        state["done"].append(name)
        state.pop("running", None)
        atomic_write_json(state_file, state)

    home = ArtifactHome(home_dir)
    started = sorted(p.parent.name for p in home.runs.glob("*/config.json")) if home.runs.is_dir() else []
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
    if started and "pretrain" not in state["done"]:  # stopped mid-way: go on from its checkpoint
        stage("pretrain", ["pretrain", "--resume", started[-1]])
    stage("pretrain", ["pretrain", "--preset", "cpu", "--seed", str(seed), "--data", data])
    run = home.run()
    stage("finetune", ["finetune", "--preset", "cpu", "--run", run.run_id])
    stage("distill", ["distill", "--preset", "cpu", "--run", run.run_id])
    stage("evaluate", ["evaluate", "--preset", "cpu", "--rows", rows, "--run", run.run_id])
    return {**figures(run, seed, state["seconds"]), "machine": state["machine"]}


def figures(run: RunPaths, seed: int, seconds: dict[str, float]) -> dict[str, Any]:
    """One seed's entry of ``runs``: stage minutes, test and validation top-1/top-3 in percent."""
    finetune, distill, rows = run.read_finetune(), run.read_distill(), run.eval_rows()
    assert finetune is not None and distill is not None
    ft, ds = finetune.metrics, distill.metrics
    last_epoch = run.metrics_history()[-1]
    pct = lambda x: round(100 * x, 2)  # noqa: E731
    out: dict[str, Any] = {
        "seed": seed, "run_id": run.run_id,
        "pretrain_minutes": round(seconds["pretrain"] / 60, 1), "finetune_minutes": round(seconds["finetune"] / 60, 1),
        "distill_minutes": round(seconds["distill"] / 60, 1),
        "pretrain_epochs": last_epoch["epoch"],
        "pretrain_views_per_s": round(last_epoch["views_per_s"]),
    }
    for name, top, val in (("finetune", ft, "finetune_val"), ("distill", ds, "distill_val")):
        out |= {f"{name}_top1": pct(top[f"{name}_top1"]), f"{name}_top3": pct(top[f"{name}_top3"]),
                f"{name}_val_top1": pct(top[f"{val}_top1"])}
    for name, row in (("linear", "simclr_linear_10"), ("baseline_distill", "random_distill_10"), ("knn", "simclr_knn")):
        out |= {f"{name}_top1": pct(rows[row]["top1"]), f"{name}_top3": pct(rows[row]["top3"]),
                f"{name}_val_top1": pct(rows[row]["val_top1"])}
    out["baseline_finetune_top1"] = pct(rows["random_finetune_10"]["top1"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2, help="runs, seeded 0 .. N-1 (default: %(default)s)")
    p.add_argument("--data", default="../shared/datasets/cifar10-jpeg", help="image folder or cifar10 (default: %(default)s)")
    p.add_argument("--home", help="folder for the runs, one home per seed (default: a temporary folder, deleted after)")
    p.add_argument("--out", default="benchmarks/results/seed_table_cpu.json", help="result file (default: %(default)s)")
    p.add_argument("--any-machine", action="store_true", help="go on with stages that ran on another kind of machine (default: refuse)")
    a = p.parse_args()
    simclr = str(Path(sys.executable).parent / "simclr")
    rows = "linear,knn,distill"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.home or tmp)
        if not a.any_machine:
            check_machines(root, machine_kind())
        runs = [seed_run(simclr, root / f"seed-{s}", s, a.data, rows) for s in range(a.seeds)]
    numeric = [k for k in runs[0] if k not in ("seed", "run_id") and all(isinstance(r.get(k), (int, float)) for r in runs)]
    mean = {k: round(sum(r[k] for r in runs) / len(runs), 2) for k in numeric}
    stages = ["simclr pretrain --preset cpu --seed S --data <data>", "simclr finetune --preset cpu", "simclr distill --preset cpu",
              f"simclr evaluate --preset cpu --rows {rows}"]
    result = {
        **result_header("seed_table", sys.argv, {a.home: "<home>", a.data: "<data>"}),
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
    result = scrub_paths(result, {a.home: "<home>", a.data: "<data>"})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(result["report"])
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
