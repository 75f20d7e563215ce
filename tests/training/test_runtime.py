"""The CPU runtime settings: malloc thresholds that stop per-step page faults."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from training.runtime import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_activation_buffers_are_reused_without_page_faults() -> None:
    """64 MiB buffers freed and allocated again cost no fresh page faults (glibc would unmap and re-fault them).

    With glibc's defaults each step below faults in both buffers again (32k
    faults a step); with the thresholds raised the heap settles after a few
    steps (aligned allocations fragment it a little) and then faults nothing.
    """
    assert keep_freed_memory()
    x = torch.ones(16 * 2**20)  # float32: 64 MiB, above glibc's default 32 MiB mmap ceiling

    def step() -> None:
        y = x * 2
        z = y + 1  # noqa: F841 -- two live activation-sized buffers, as in a forward pass
        del y

    for _ in range(8):  # the heap grows to its working size
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 64 * 2**20 // 4096  # less than one buffer's pages over five steps (defaults: ten buffers')
