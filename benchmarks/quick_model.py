"""The quick model `make serve` trains when nothing is published: wall-clock and test accuracy.

usage: python benchmarks/quick_model.py [--data DIR] [--out benchmarks/results/quick_model.json]

Runs `simclr refresh --preset quick` into a fresh temporary home and records
the wall-clock time of the whole refresh and the accuracies the bundle's
manifest carries (kNN top-1 of the SimCLR encoder, fine-tuned top-1/top-3 on
the full test split).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.bundles import Manifest
from core.home import MANIFEST_FILE, ArtifactHome

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import result_header, scrub_paths  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/datasets/cifar10-jpeg", help="image folder (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results/quick_model.json", help="result file (default: %(default)s)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = ArtifactHome(tmp)
        cmd = ["simclr", "refresh", "--preset", "quick", "--data", a.data, "--home", tmp]
        t = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "simclr"), *cmd[1:]], check=True)
        wall = time.perf_counter() - t
        version = home.current_version()
        assert version is not None, f"simclr refresh published nothing under {tmp}"
        manifest = Manifest.model_validate_json((home.bundle_dir(version) / MANIFEST_FILE).read_text()).model_dump(mode="json")
    paths = {tmp: "<home>", a.data: "<data>"}
    result = {
        **result_header("quick_model", sys.argv, paths),
        "refresh_command": " ".join(cmd),
        "refresh_wall_seconds": round(wall, 1),
        "backbone": manifest["backbone"],
        "metrics": manifest["metrics"],
        "index": manifest["index"],
    }
    result = scrub_paths(result, paths)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    m = manifest["metrics"]
    print(f"refresh {wall:.0f}s: kNN top-1 {m.get('knn_top1', float('nan')):.1%}, "
          f"fine-tune top-1 {m['finetune_top1']:.1%} / top-3 {m['finetune_top3']:.1%} -> {a.out}")


if __name__ == "__main__":
    main()
