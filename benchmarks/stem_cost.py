"""The encoder's forward cost by input size and stem (core.models.STEMS): 32 px with the CIFAR stem, 64 px
with the stride-2 stem (the default from 64 px), with the pool stem, and with the CIFAR stem.

usage: python benchmarks/stem_cost.py [--widths 16,64] [--rounds 3] [--batches 3] [--batch-size 256]

Each configuration runs ResNet-18 forward passes on random uint8 images of its size,
normalised as ``core.models.embed`` does, channels_last, under the bf16 autocast training
uses (``training.runtime.autocast``: bf16 where the CPU or GPU does it natively), in eval
mode without gradients. The configurations alternate within each round, so a machine that
slows down mid-run slows all of them alike, and each measurement first waits (``--idle-wait``)
for the CPUs to be idle, since a second busy process slows a 2-thread forward pass many times
over. Reported: images/s per configuration (the median and the best over rounds) and its cost
relative to 32 px with the CIFAR stem (by the medians), in benchmarks/results/stem_cost.json
with the machine and command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from core.devices import pick_device, set_threads
from core.models import EncoderSpec, build_encoder, normalize
from training.runtime import autocast, bf16_supported

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import result_header  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (name, image size, stem)
CONFIGS = [("32 px, cifar stem", 32, "cifar"), ("64 px, stride2 stem", 64, "stride2"), ("64 px, pool stem", 64, "pool"),
           ("64 px, cifar stem", 64, "cifar")]


def encoder(width: int, size: int, stem: str, device: torch.device) -> nn.Module:
    net = build_encoder(EncoderSpec(width=width, image_size=size, stem=stem))
    return net.eval().to(device).to(memory_format=torch.channels_last)


@torch.inference_mode()
def images_per_s(net: nn.Module, images: torch.Tensor, batches: int, device: torch.device) -> float:
    def forward() -> None:
        x = normalize(images).contiguous(memory_format=torch.channels_last)
        with autocast(device):
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    forward()  # warm-up: oneDNN primitives, allocator
    start = time.perf_counter()
    for _ in range(batches):
        forward()
    return batches * len(images) / (time.perf_counter() - start)


def cpu_busy(seconds: float = 1.0) -> float:
    """The fraction of CPU time not idle over ``seconds`` (Linux /proc/stat; 0.0 elsewhere)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except OSError:
        return 0.0
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_until_idle(limit: float = 60.0, busy: float = 0.1) -> float:
    """Wait (at most ``limit`` seconds) for a second with the CPUs at most ``busy`` busy; returns the last reading."""
    deadline = time.monotonic() + limit
    load = cpu_busy()
    while load > busy and time.monotonic() < deadline:
        load = cpu_busy()
    return load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="16,64", help="ResNet-18 base widths, comma-separated (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds over the configurations (default: %(default)s)")
    p.add_argument("--batches", type=int, default=3, help="timed forward passes per configuration and round (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: %(default)s)")
    p.add_argument("--idle-wait", type=float, default=60, help="seconds to wait at most for idle CPUs before each measurement (default: %(default)s)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stem_cost.json"), help="(default: %(default)s)")
    a = p.parse_args()
    set_threads()
    device = pick_device(a.device)
    torch.manual_seed(0)
    rows = []
    for width in (int(w) for w in a.widths.split(",")):
        nets = {name: encoder(width, size, stem, device) for name, size, stem in CONFIGS}
        inputs = {size: torch.randint(0, 256, (a.batch_size, 3, size, size), dtype=torch.uint8, device=device) for _, size, _ in CONFIGS}
        runs: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
        busy: list[float] = []
        for r in range(a.rounds):
            for name, size, _ in CONFIGS:
                if device.type == "cpu":
                    busy.append(wait_until_idle(a.idle_wait))
                runs[name].append(images_per_s(nets[name], inputs[size], a.batches, device))
            print(f"width {width}, round {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f}/s" for n, v in runs.items()), flush=True)
        base = statistics.median(runs[CONFIGS[0][0]])
        for name, size, stem in CONFIGS:
            median = statistics.median(runs[name])
            rows.append({"width": width, "config": name, "image_size": size, "stem": stem, "images_per_s": round(median, 1),
                         "best_images_per_s": round(max(runs[name]), 1), "rounds": [round(v, 1) for v in runs[name]],
                         "cost_vs_32px_cifar": round(base / median, 2)})
        if busy:
            print(f"CPU busy before the measurements: max {max(busy):.0%}", flush=True)
    print("\n| width | configuration | images/s (median) | best | cost vs 32 px |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['width']} | {row['config']} | {row['images_per_s']:,.0f} | {row['best_images_per_s']:,.0f} | "
              f"{row['cost_vs_32px_cifar']:.2f}x |")
    result = {
        **result_header("stem_cost", sys.argv),
        "model": "resnet18 encoder (no head), eval mode, inference_mode, channels_last",
        "device": str(device),
        "bf16_autocast": bf16_supported(device),
        "batch_size": a.batch_size,
        "batches_per_round": a.batches,
        "rows": rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
