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

glibc gives each thread that allocates under contention an arena of its own, and the
model thread's arena hands its freed activation buffers back to the kernel: every
forward pass page-faulted them in again (~10,000 faults/s per worker, full-width
ResNet-18 at 32 connections). With one arena (the main one, whose thresholds adapt
to the buffers) the faults were gone and the model thread served more: measured on
a 2-core AVX2 machine, 2 workers, 32 connections, served over raw 0.862 against
0.812 (means of six samples each, alternating; benchmarks/SERVICE_LOAD.md).
"""

from __future__ import annotations

import os
import sys

from core.malloc import M_ARENA_MAX, is_glibc, mallopt


def passive_openmp() -> None:
    """Make OpenMP threads sleep when idle, unless the user chose a policy or OpenMP is already loaded."""
    if "torch" in sys.modules or "faiss" in sys.modules:
        return  # too late to take effect; leave the environment as it is
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def one_malloc_arena() -> None:
    """One glibc malloc arena for this process and the workers it starts, unless the user set MALLOC_ARENA_MAX.
    Before the server starts its threads: an arena limit counts from a thread's first allocation."""
    if "MALLOC_ARENA_MAX" in os.environ or not is_glibc():
        return
    os.environ["MALLOC_ARENA_MAX"] = "1"  # read by glibc when a worker process starts
    mallopt(M_ARENA_MAX, 1)  # this process has started already


def process_defaults() -> None:
    """A server process's settings that must come before torch, FAISS and threads: :func:`passive_openmp`, :func:`one_malloc_arena`."""
    passive_openmp()
    one_malloc_arena()


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
