"""Threads of a server process: OpenMP's wait policy, and how many threads torch and FAISS use.

Light on purpose: importing this module loads neither torch nor FAISS, because
:func:`passive_openmp` must run before they are imported (``service.serve``).

By default OpenMP threads spin for a while after each parallel region, waiting
for more work. In a training loop that is right; in a server the spinning
threads steal the cores that decode uploads and answer HTTP, and starve
everything when another process (say `simclr refresh`) shares the machine.
Measured on the 2-core build machine, 32 connections, quick model, wrk:
with another process busy, /classify 134 -> 245 and /neighbors?id= 406 -> 1144
requests/s with PASSIVE; on an idle machine /classify 221 -> 248 and
/neighbors?id= 1254 -> 1069 (two runs each). PASSIVE is the robust default;
set OMP_WAIT_POLICY=ACTIVE for a dedicated machine that serves mostly ids.
"""

from __future__ import annotations

import os
import sys


def passive_openmp() -> None:
    """Make OpenMP threads sleep when idle, unless the user chose a policy or OpenMP is already loaded."""
    if "torch" in sys.modules or "faiss" in sys.modules:
        return  # too late to take effect; leave the environment as it is
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_threads(n: int | None) -> None:
    """torch's and FAISS's thread counts, for the calling thread (OpenMP settings are per thread).

    The model thread's initializer (``service.app.make_batchers``), and the app's
    lifespan for the event loop's thread. ``None``: leave them as they are.
    """
    if n:
        import faiss
        import torch

        torch.set_num_threads(n)
        faiss.omp_set_num_threads(n)


def threads_per_worker(workers: int) -> int:
    """torch threads for each of ``workers`` processes: the cores shared out (oversubscribed OpenMP threads stall each other)."""
    from core.devices import available_cores

    return max(1, available_cores() // workers)
