"""How training runs: mixed precision, memory, the learning-rate schedule and parameter groups."""

from __future__ import annotations

import contextlib
import logging
import math

import torch

from core.malloc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, is_glibc, mallopt

NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere (A100, RTX 30xx) and later have bf16 tensor cores


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast only where the hardware does bf16 natively; fp32 elsewhere.

    On CPUs without AVX512-BF16/AMX, oneDNN emulates bf16 and a ResNet step gets
    ~10x slower than fp32 (measured on this project's AMD build machines). On CUDA
    the compute capability of ``device`` itself decides: ``torch.cuda.is_bf16_supported()``
    looks at the current device, not the one chosen, and counts emulation (T4, V100:
    no bf16 tensor cores) as support.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``, the one way training makes its generators:
    a random op on a device takes a generator of that device (CUDA refuses a CPU one)."""
    return torch.Generator(device=device).manual_seed(seed)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    if bf16_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# glibc mallopt parameters (malloc.h).


def keep_freed_memory(mmap_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc reuse freed activation buffers instead of returning them to the kernel.

    By default glibc serves every block over 32 MiB with a fresh ``mmap`` and
    unmaps it on free, so each training step page-faults (and the kernel
    zeroes) its multi-GB working set again: ~3.6M minor faults over 6 steps of
    ResNet-18 at batch 256. Raising the mmap and trim thresholds keeps that
    memory in the heap; measured on the 2-core build machine it cut the faults
    5.5x and made a step 10-15% faster (what PyTorch's CPU tuning guide gets
    from jemalloc/tcmalloc, without an LD_PRELOAD). The price is that the
    process keeps its peak heap until it exits, which suits a training run.
    Returns whether glibc accepted the settings; elsewhere it does nothing.
    """
    if not is_glibc():
        return False
    accepted = mallopt(M_MMAP_THRESHOLD, mmap_threshold)
    accepted = mallopt(M_TRIM_THRESHOLD, 2**31 - 1) and accepted
    if not accepted:
        logging.getLogger(__name__).info("glibc refused the malloc thresholds; training runs with its defaults")
    return accepted


def warmup_cosine(progress: float, warmup: float) -> float:
    """LR multiplier at ``progress`` in [0, 1]: linear warm-up for ``warmup``, then cosine to 0."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    return 0.5 * (1 + math.cos(math.pi * (progress - warmup) / max(1e-8, 1 - warmup)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Weight decay on conv/linear weights only; none on norms and biases (as in SimCLR/LARS practice)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
