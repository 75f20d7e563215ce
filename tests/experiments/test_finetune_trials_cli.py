"""experiments/finetune_trials.py refuses a validation size it cannot honour before loading anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "finetune_trials.py"


@pytest.mark.parametrize("n", ["0", "-5"])
def test_validation_images_below_one_is_refused(tmp_path: Path, n: str) -> None:
    out = tmp_path / "trials.json"
    cmd = [sys.executable, str(SCRIPT), "--home", str(tmp_path), "--run", "r", "--trial", "a:", "--validation-images", n, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"--validation-images must be at least 1, got {n}" in proc.stderr
    assert not out.exists()  # nothing written
