"""What a benchmark ran on, recorded next to every result."""

from __future__ import annotations

import os
import platform
import subprocess


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
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
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info
