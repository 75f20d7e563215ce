"""Where computation runs: the device and how many threads this process may use."""

from __future__ import annotations

import os

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; any other name as torch spells it (``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def available_cores() -> int:
    """The cores this process may run on (affinity aware), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads() -> None:
    """Use every core the process may run on (cgroup/affinity aware), not torch's guess."""
    torch.set_num_threads(available_cores())
