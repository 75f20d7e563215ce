"""Training throughput: this project's trainer against the reference SimCLR pipeline, same run.

usage: python benchmarks/train_throughput.py [--data DIR] [--seconds 120] [--rounds 1]

Both train torchvision's ResNet-18 with the CIFAR stem and a 512-512-128
projection head with Adam, batch 256 (512 views), on the same images, one after
the other in this process tree, for the same wall time each. The reference is
`../shared/benchmarks/reference_simclr_pipeline.py` (PIL transforms in a
2-worker DataLoader, fp32 NCHW); ours is `simclr pretrain` (uint8 data in
memory, batched augmentations, channels_last, bf16 where the CPU has it).
Reported: augmented views per second of each and their ratio, written to
benchmarks/results/train_throughput.json with the machine and command.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from core.home import ArtifactHome

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import result_header, scrub_paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "benchmarks" / "reference_simclr_pipeline.py"


def reference(data: str, seconds: float) -> float:
    out = subprocess.run([sys.executable, str(REFERENCE), data, "--seconds", str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"reference_pipeline_img_per_s=([\d.]+)", out).group(1))


def ours(data: str, seconds: float, home: str, extra: list[str]) -> tuple[float, list[str]]:
    cmd = [str(Path(sys.executable).parent / "simclr"), "pretrain", "--data", data, "--home", home,
           "--arch", "resnet18", "--width", "64", "--proj-dim", "128", "--batch-size", "256",
           "--optimizer", "adam", "--lr", "1e-3", "--time-budget", f"{seconds}s", "--knn-every", "0", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = ArtifactHome(home).run().metrics_history()  # the run just made: the newest
    # Each epoch's views/s skips its first step, as the reference skips its warm-up step.
    views = sum(max(r["steps"] - 1, 0) for r in records) * 2 * 256
    seconds_used = sum(2 * max(r["steps"] - 1, 0) * 256 / r["views_per_s"] for r in records if r["views_per_s"] > 0)
    return views / seconds_used, cmd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"), help="ImageFolder root (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=120, help="training seconds per pipeline and round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds of reference then ours (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="also pass --compile to our trainer (default: off)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"), help="(default: %(default)s)")
    a = p.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as home:
        for i in range(a.rounds):
            ref = reference(a.data, a.seconds)
            mine, cmd = ours(a.data, a.seconds, home, ["--compile"] if a.compile else [])
            rounds.append({"reference_views_per_s": round(ref, 1), "ours_views_per_s": round(mine, 1), "ratio": round(mine / ref, 2)})
            print(f"round {i + 1}: reference {ref:.1f} views/s, ours {mine:.1f} views/s, ratio {mine / ref:.2f}")
    paths = {home: "<home>", a.data: "<data>"}
    result = {
        **result_header("train_throughput", sys.argv, paths),
        "ours_command": " ".join(["simclr", *cmd[1:]]),
        # The reference script lives outside the project (../shared/benchmarks/ beside the checkout).
        "reference_command": f"python {REFERENCE.name} {a.data} --seconds {a.seconds}",
        "model": "resnet18 (CIFAR stem), head 512-512-128, Adam 1e-3, batch 256 (512 views/step)",
        "seconds_each": a.seconds,
        "rounds": rounds,
        "ratio": round(sum(r["ratio"] for r in rounds) / len(rounds), 2),
    }
    result = scrub_paths(result, paths)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"ratio {result['ratio']} -> {a.out}")


if __name__ == "__main__":
    main()
