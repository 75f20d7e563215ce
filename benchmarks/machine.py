"""What a benchmark ran on, and the keys every results file starts with.

Every results file (``benchmarks/results/*.json``, ``experiments/results/*.json``) begins with
``benchmark``, ``created``, ``command`` and ``machine``, in that order (:func:`result_header`),
and holds no machine-local path: the project's checkout appears as paths relative to it, and
the artifact home and data folder a run was given as ``<home>`` and ``<data>`` (:func:`scrub_paths`).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        # Whether bf16 autocast runs natively (AVX512-BF16/AMX): it decides the CPU's training speed.
        info["cpu_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def _replacements(paths: dict[str | Path | None, str] | None) -> list[tuple[re.Pattern[str], str]]:
    """(pattern, placeholder) pairs, longest path first: each given path as typed and resolved, then the checkout."""
    pairs: dict[str, str] = {}
    for path, placeholder in (paths or {}).items():
        if not path:
            continue
        text = str(path)
        if "/" not in text and not Path(text).exists():
            continue  # not a path: e.g. --data cifar10, a dataset name
        if Path(text).resolve() in (ROOT, *ROOT.parents):
            continue  # the checkout itself or above it: shown relative instead
        pairs.setdefault(text, placeholder)
        pairs.setdefault(str(Path(text).resolve()), placeholder)
    pairs.setdefault(str(ROOT) + "/", "")
    pairs.setdefault(str(ROOT), ".")
    out = []
    for text, placeholder in sorted(pairs.items(), key=lambda kv: -len(kv[0])):
        end = "" if text.endswith("/") else r"(?![\w.~-])"
        out.append((re.compile(r"(?<![\w.~/-])" + re.escape(text) + end), placeholder))
    return out


def scrub_paths(value: Any, paths: dict[str | Path | None, str] | None = None) -> Any:
    """``value`` (str, or lists and dicts of them) with each of ``paths`` ({path: placeholder}, e.g.
    ``{args.home: "<home>", args.data: "<data>"}``) shown as its placeholder and the project's
    checkout as relative paths. A value that is not a path (``cifar10``) is left alone."""
    subs = _replacements(paths)

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            for pattern, placeholder in subs:
                v = pattern.sub(placeholder, v)
            return v
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    return walk(value)


def command_line(argv: list[str], paths: dict[str | Path | None, str] | None = None) -> str:
    """``argv`` (``sys.argv``) as the command a user types from the project's root:
    ``python benchmarks/x.py ...``, with ``paths`` shown as their placeholders."""
    script = Path(argv[0]).resolve()
    try:
        shown = script.relative_to(ROOT).as_posix()
    except ValueError:
        shown = script.name
    return scrub_paths(" ".join(["python", shlex.quote(shown), *(shlex.quote(a) for a in argv[1:])]), paths)


def result_header(benchmark: str, argv: list[str], paths: dict[str | Path | None, str] | None = None) -> dict[str, object]:
    """The keys every results file starts with, in this order: the script's name, when, the
    command (:func:`command_line`) and the machine (:func:`machine`)."""
    return {
        "benchmark": benchmark,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(argv, paths),
        "machine": machine(),
    }
