"""torchrun support: one process per device, NCCL on GPUs and gloo on CPUs; only rank 0 writes.

Besides the training backend every run has a CPU (gloo) group for control: the per-step
agreement on the clock and stop flags, RNG-state gathers and barriers. Its tensors live on
the host, so asking the other ranks never waits for the GPU's queue (an NCCL all-reduce read
back with ``.item()`` would sync the host every step).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from training.budget import Agree, alone


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # The gloo group of the control messages; None: the default group (already gloo on CPUs).
    control: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> tuple[DistEnv, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        from core.devices import pick_device

        return DistEnv(), pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        from core.devices import available_cores

        device = torch.device("cpu")
        # torchrun's processes would otherwise each claim every core and thrash.
        torch.set_num_threads(max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    control = dist.new_group(backend="gloo") if cuda else None
    return DistEnv(rank, world, local_rank, control), device


def agreement(env: DistEnv) -> Agree:
    """``Budget.decide``'s agreement: the furthest clock and any rank's stop request, in one all-reduce.

    The maximum of the clocks, not rank 0's: a rank that waited (for rank 0's kNN monitor, a
    slower device) has spent that time too, and every rank then carries the same number.
    """
    if not env.enabled:
        return alone

    def agree(seconds: float, stop: bool) -> tuple[float, bool]:
        t = torch.tensor([seconds, 1.0 if stop else 0.0], dtype=torch.float64)  # host tensor: no device sync
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=env.control)
        agreed_seconds, agreed_stop = t.tolist()
        return agreed_seconds, agreed_stop > 0

    return agree


def gather_to_main(t: torch.Tensor, env: DistEnv) -> list[torch.Tensor]:
    """Every rank's host tensor ``t`` (the same shape and dtype on each), on rank 0 in rank order; ``[]`` elsewhere."""
    if not env.enabled:
        return [t]
    t = t.cpu().contiguous()
    out = [torch.empty_like(t) for _ in range(env.world_size)] if env.is_main else None
    dist.gather(t, out, dst=0, group=env.control)
    return out or []


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier(group=env.control)


@contextlib.contextmanager
def local_rank_zero_first(env: DistEnv) -> Iterator[None]:
    """The block runs on each machine's local rank 0 first, then on the other ranks.

    For work with a shared on-disk result, such as downloading and decoding a dataset into
    its cache: the other ranks wait at a barrier and then read what local rank 0 wrote,
    instead of every process downloading and unpacking at once into the same folder.
    Every rank passes the barrier exactly once, before (others) or after (local rank 0) the block.
    """
    if env.local_rank != 0:
        barrier(env)
    try:
        yield
    finally:
        if env.local_rank == 0:
            barrier(env)


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
