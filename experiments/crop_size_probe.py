"""Pretraining view size at a fixed wall-clock budget: kNN accuracy of --preset cpu with 32 px and smaller views.

usage: python experiments/crop_size_probe.py [--minutes 25] [--sizes 32,24] [--expand N] [--home-prefix DIR]
                                             [--out experiments/results/crop_size_probe.json]

For each size, one after the other on an otherwise idle machine:

    simclr pretrain --preset cpu --time-budget <minutes>m --crop-size <size> --home <prefix><size>

then ``simclr evaluate --rows linear`` on it (unless ``--no-linear``), and reads the run's
metrics.jsonl: epochs done, views/s and the weighted kNN accuracy (k=200, T=0.1, 32 px) after
every second epoch, on the preset's validation split (on the test split for runs made before
the preset held one out), and the linear eval on 10% labels (validation and test). ``--expand``
passes through (the committed results were measured with ``--expand 0``, the
preset of their day; the preset now adds a 512-channel layer). A run whose
home already holds a finished run is read, not rerun (so a probe interrupted
between sizes resumes). About ``minutes`` + 2 per size; never part of the tests.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from core.home import ArtifactHome
from core.runs import RunPaths

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import result_header, scrub_paths  # noqa: E402


def finished_run(home: Path) -> RunPaths | None:
    """The newest run under ``home`` whose pretraining finished (it wrote encoder.pt)."""
    runs = ArtifactHome(home).runs
    done = sorted(p.parent for p in runs.glob("*/encoder.pt")) if runs.exists() else []
    return RunPaths(done[-1]) if done else None


def summarize(run: RunPaths) -> dict[str, object]:
    rows = run.metrics_history()
    knn = [{"epoch": r["epoch"], "train_minutes": round(r["train_seconds"] / 60, 1), "knn_top1": round(r["knn_top1"], 4)}
           for r in rows if r.get("knn_top1") is not None]
    views = [r["views_per_s"] for r in rows if r.get("views_per_s")]
    linear = run.eval_rows().get("simclr_linear_10", {})
    scored = "validation" if run.pretrain_config().get("validation") else "test"
    return {
        "run": run.run_id,
        "knn_scored_on": scored,
        **({"linear_10_val_top1": linear.get("val_top1"), "linear_10_test_top1": linear["top1"]} if linear else {}),
        "epochs": rows[-1]["epoch"] if rows else 0,
        "median_views_per_s": round(sorted(views)[len(views) // 2], 1) if views else None,
        "final_knn_top1": knn[-1]["knn_top1"] if knn else None,
        "knn_curve": knn,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"), help="(default: %(default)s)")
    p.add_argument("--minutes", type=float, default=25, help="pretraining budget per size (default: %(default)s)")
    p.add_argument("--sizes", default="32,24", help="comma-separated view sizes in pixels (default: %(default)s)")
    p.add_argument("--expand", type=int, default=None, help="passed to simclr pretrain; 0: no expansion layer (default: the preset's)")
    p.add_argument("--home-prefix", default="/tmp/crop-probe-h", help="homes are <prefix><size> (default: %(default)s)")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "crop_size_probe.json"), help="(default: %(default)s)")
    p.add_argument("--no-linear", action="store_true", help="skip the linear evaluation of each run (default: run it)")
    a = p.parse_args()
    simclr = str(Path(sys.executable).with_name("simclr"))
    results, commands = [], []
    for size in (int(s) for s in a.sizes.split(",")):
        home = Path(f"{a.home_prefix}{size}")
        args = [simclr, "pretrain", "--preset", "cpu", "--time-budget", f"{a.minutes:g}m", "--crop-size", str(size),
                "--data", a.data, "--home", str(home)]
        if a.expand is not None:
            args += ["--expand", str(a.expand)]
        commands.append(" ".join(shlex.quote(x) for x in ["simclr", *args[1:]]))
        if finished_run(home) is None:
            print("$ " + " ".join(shlex.quote(x) for x in args), flush=True)
            subprocess.run(args, check=True)
        run = finished_run(home)
        assert run is not None, f"no finished run under {home}"
        if not a.no_linear and "simclr_linear_10" not in run.eval_rows():
            subprocess.run([simclr, "evaluate", "--rows", "linear", "--home", str(home), "--run", run.run_id], check=True)
        results.append({"crop_size": size, **summarize(run)})
        print(f"{size} px: {results[-1]['epochs']} epochs, kNN {results[-1]['final_knn_top1']}", flush=True)
    # The homes' folder as <home>: /tmp/crop-probe-h24 -> <home>/crop-probe-h24.
    prefix_dir = Path(a.home_prefix).parent
    paths = {a.data: "<data>", **({str(prefix_dir): "<home>"} if prefix_dir != Path(".") else {})}
    out = {
        **result_header("crop_size_probe", sys.argv, paths),
        "pretrain_commands": commands,
        "minutes_each": a.minutes,
        "results": results,
    }
    out = scrub_paths(out, paths)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
