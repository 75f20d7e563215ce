"""The seed's table on this machine: the CPU recipe end to end, every row, wall-clock per stage.

usage: python benchmarks/seed_table.py [--data DIR] [--home DIR] [--out benchmarks/results/seed_table.json]

Runs, in a fresh home (a temporary one unless --home is given):

    simclr pretrain --preset cpu --data DIR      (103 min on a time budget)
    simclr evaluate --preset cpu                 (every row; end-to-end rows 15 min each)
    simclr report

and writes every evaluation row, the seconds of each stage, the machine and the
commands to --out. ``--resume --home H --rows supervised`` adds rows to the run that
--out records (pretraining is not repeated; the new evaluation seconds are added).
The bar (pretrain + fine-tune within 120 minutes) is checked on
pretraining plus the SimCLR fine-tune row. Takes about three hours
on two cores; never part of the tests.
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

from core.home import ArtifactHome

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import result_header, scrub_paths  # noqa: E402


def run_stage(simclr: str, args: list[str]) -> float:
    print("$ simclr " + " ".join(shlex.quote(a) for a in args), flush=True)
    t = time.perf_counter()
    subprocess.run([simclr, *args], check=True)
    return round(time.perf_counter() - t, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/datasets/cifar10-jpeg", help="image folder or cifar10 (default: %(default)s)")
    p.add_argument("--home", help="artifacts folder to keep the run in (default: a temporary folder, deleted after)")
    p.add_argument("--pretrain-budget", default=None, help="override the preset's pretraining time budget, e.g. 90m (default: the preset's)")
    p.add_argument("--crop-size", default=None, help="pretraining view size in pixels, e.g. 24 (default: the preset's, the image size)")
    p.add_argument("--expand", default=None, help="channels of the encoder's 1x1 expansion before pooling, e.g. 512 (default: the preset's)")
    p.add_argument("--eval-budget", default=None, help="override each end-to-end row's time budget, e.g. 25m (default: the preset's)")
    p.add_argument("--rows", default="linear,finetune,random,supervised,knn", help="row groups to evaluate (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results/seed_table.json", help="result file (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="add --rows to the run in --home that --out already records, without pretraining again (default: off)")
    a = p.parse_args()
    previous = None
    if a.resume:
        if not a.home or not Path(a.out).exists():
            p.error("--resume needs --home and an existing --out from a run in that home")
        previous = json.loads(Path(a.out).read_text())
    simclr = str(Path(sys.executable).parent / "simclr")
    with tempfile.TemporaryDirectory() as tmp:
        home = a.home or tmp
        pretrain = ["pretrain", "--preset", "cpu", "--data", a.data, "--home", home]
        evaluate = ["evaluate", "--preset", "cpu", "--rows", a.rows, "--home", home]
        if a.pretrain_budget:
            pretrain += ["--time-budget", a.pretrain_budget]
        if a.crop_size:
            pretrain += ["--crop-size", a.crop_size]
        if a.expand:
            pretrain += ["--expand", a.expand]
        if a.eval_budget:
            evaluate += ["--time-budget", a.eval_budget]
        report = ["report", "--home", home]
        if previous is None:
            seconds = {name: run_stage(simclr, args) for name, args in (("pretrain", pretrain), ("evaluate", evaluate), ("report", report))}
        else:
            seconds = previous["stage_wall_seconds"]
            seconds["evaluate"] = round(seconds["evaluate"] + run_stage(simclr, evaluate), 1)
            seconds["report"] = run_stage(simclr, report)
        run = ArtifactHome(home).run()  # the newest run: the one pretrained above (or by the run --out records)
        rows = run.eval_rows()
        history = run.metrics_history()
        report_text = run.report.read_text()
        config = run.pretrain_config()
    for row in rows.values():
        row.pop("classes", None)
        row.pop("data", None)
    finetune_s = rows.get("simclr_finetune_10", {}).get("seconds")

    paths = {home: "<home>", a.data: "<data>"}

    def fmt(args: list[str]) -> str:
        return " ".join(["simclr", *args])

    result = {
        **result_header("seed_table", sys.argv, paths),
        # Every stage run for this result, in order: a --resume appends its evaluate and report.
        "stage_commands": (previous["stage_commands"] if previous else [fmt(pretrain)]) + [fmt(evaluate), fmt(report)],
        **({"first_command": previous.get("first_command", previous["command"])} if previous else {}),
        "stage_wall_seconds": seconds,
        "pretrain_train_seconds": history[-1].get("train_seconds") if history else None,
        "pretrain_epochs": history[-1]["epoch"] if history else 0,
        "pretrain_plus_finetune_minutes": round((seconds["pretrain"] + (finetune_s or 0)) / 60, 1),
        "pretrain_config": config,
        "rows": rows,
        "seed": {"simclr_finetune_10": [0.774, 0.948], "simclr_linear_10": [0.713, 0.936],
                 "random_finetune_10": [0.382, 0.601], "random_linear_10": [0.156, 0.344]},
        "report": report_text,
    }
    result = scrub_paths(result, paths)  # no machine-local path: the home and data as <home>, <data>
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name:20s} top-1 {row['top1']:.1%}  top-3 {row['top3']:.1%}")
    print(f"stages: {seconds} -> {a.out}")


if __name__ == "__main__":
    main()
