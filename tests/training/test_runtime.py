"""The CPU runtime settings: malloc thresholds that stop per-step page faults."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

# Counted in a fresh interpreter: ru_minflt is per process, and threads that earlier
# tests left in the pytest process (servers, pools) fault pages of their own.
STEPS = """
import resource, sys
import torch
from training.runtime import keep_freed_memory
torch.set_num_threads(1)
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
x = torch.ones(16 * 2**20)  # float32: 64 MiB, above glibc's default 32 MiB mmap ceiling

def step():
    y = x * 2
    z = y + 1  # two live activation-sized buffers, as in a forward pass
    del y

for _ in range(8):  # the heap grows to its working size
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", STEPS, mode], cwd=root, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_activation_buffers_are_reused_without_page_faults() -> None:
    """64 MiB buffers freed and allocated again cost no fresh page faults (glibc would unmap and re-fault them).

    With glibc's defaults each step faults in both buffers again (32k faults a
    step, 160k over the five measured); with the thresholds raised the heap
    settles after a few steps (aligned allocations fragment it a little) and
    then faults next to nothing: at most one buffer's pages over the five steps
    (on a fresh clone one run in several settles a step late, faulting exactly
    one buffer once), against ten buffers' with the defaults.
    """
    buffer_pages = 64 * 2**20 // 4096
    default, tuned = page_faults("default"), page_faults("tuned")
    assert default > 5 * buffer_pages  # the cost being removed is there: each step re-faults its buffers
    assert tuned <= buffer_pages


def test_warmup_cosine_values() -> None:
    """The learning-rate multiplier of every stage (pretraining, fine-tuning, the linear probe)."""
    from training.runtime import warmup_cosine

    assert warmup_cosine(0.0, 0.1) == 0.0 and warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1) == pytest.approx(1.0)  # the peak, where warm-up ends
    assert warmup_cosine(0.55, 0.1) == pytest.approx(0.5)  # half-way down the cosine
    assert warmup_cosine(1.0, 0.1) == pytest.approx(0.0) and warmup_cosine(2.0, 0.1) == pytest.approx(0.0)
    assert warmup_cosine(-1.0, 0.0) == 1.0 and warmup_cosine(0.5, 0.0) == pytest.approx(0.5)
    assert [round(warmup_cosine(p, 0.0), 6) for p in (0.0, 0.25, 0.75)] == [1.0, round(0.5 * (1 + 2**-0.5), 6), round(0.5 * (1 - 2**-0.5), 6)]


def test_bf16_on_cuda_only_where_the_chosen_device_runs_it_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    """A T4 (compute capability 7.5) or V100 (7.0) emulates bf16, slower than fp32: fp32 there. An A100 (8.0)
    or H100 (9.0) runs it natively. The device training runs on decides, not the current one:
    ``torch.cuda.is_bf16_supported()`` answers for the current device and counts emulation as support."""
    import torch

    from training.runtime import bf16_supported

    capability = {0: (7, 5), 1: (9, 0)}  # a T4 as cuda:0 (the current device), an H100 as cuda:1
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # what a T4 answers
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: capability[torch.device(device).index if device is not None else 0])
    assert not bf16_supported(torch.device("cuda", 0))
    assert bf16_supported(torch.device("cuda", 1))
