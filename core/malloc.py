"""glibc's malloc tuning (``mallopt``), shared by training and the server; imports nothing heavy."""

from __future__ import annotations

import ctypes
import platform

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8


def is_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; whether it was accepted (False off glibc)."""
    if not is_glibc():
        return False
    try:
        return ctypes.CDLL("libc.so.6").mallopt(param, value) == 1
    except (OSError, AttributeError):
        return False
