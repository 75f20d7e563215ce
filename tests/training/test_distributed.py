"""DDP with gloo on CPU: two processes on halves of a batch equal one process on the whole batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tests_support import free_port
from training.loss import nt_xent_loss

N, D_IN = 8, 12


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # No BatchNorm: per-rank batch statistics would differ from the global ones by design.
    return nn.Sequential(nn.Linear(D_IN, 16), nn.ReLU(), nn.Linear(16, 6))


def make_views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, D_IN, generator=g), torch.randn(N, D_IN, generator=g)


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = DistributedDataParallel(make_model())
    x1, x2 = make_views()
    n = N // world
    part = slice(rank * n, (rank + 1) * n)
    loss = nt_xent_loss(model(x1[part]), model(x2[part]))
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    if rank == 0:
        torch.save({"loss": mean_loss / world, "grads": [p.grad for p in model.parameters()]}, out)
    dist.destroy_process_group()


def test_two_processes_equal_one_on_the_global_batch(tmp_path: Path) -> None:
    model = make_model()
    x1, x2 = make_views()
    loss = nt_xent_loss(model(x1), model(x2))
    loss.backward()
    out = str(tmp_path / "rank0.pt")
    mp.spawn(worker, args=(2, free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out)
    assert ddp["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    for g_ddp, p in zip(ddp["grads"], model.parameters()):
        torch.testing.assert_close(g_ddp, p.grad, rtol=1e-4, atol=1e-6)


def test_torchrun_pretrains_with_two_cpu_processes(tiny_folder: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "simclr", "pretrain",
           "--home", str(tmp_path), "--data", str(tiny_folder), "--width", "8", "--batch-size", "100",
           "--epochs", "1", "--proj-dim", "16"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1  # only rank 0 writes
    assert (runs[0] / "checkpoint.pt").exists() and (runs[0] / "encoder.pt").exists()
    assert len((runs[0] / "metrics.jsonl").read_text().splitlines()) == 1
