"""torchrun: two gloo processes on halves of a batch equal one process on the whole batch; the ranks
agree on the clock and on stopping; a two-process run stopped with SIGTERM resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.datasets import ImageSet
from core.home import ArtifactHome
from tests_support import free_port
from training import distributed, pretrain
from training.config import PretrainConfig
from training.distributed import DistEnv
from training.loss import nt_xent_loss
from training.pretrain import Interrupted
from training.runtime import warmup_cosine

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


def torchrun_pretrain(*args: str) -> list[str]:
    """The command line of ``simclr pretrain`` in two gloo processes on this machine."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    return [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "simclr", "pretrain", *args]


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_a_time_budgeted_two_process_run_with_the_knn_monitor_ends_on_both_ranks(tiny_folder: Path, tmp_path: Path) -> None:
    """The issue's failure, shrunk: rank 0 alone adds the kNN monitor's time to its clock, so with each rank
    reading its own clock rank 0 stopped while rank 1 started another epoch ("Connection closed by
    peer", exit 1; a hang until the timeout on NCCL). One-step epochs give many epoch ends to disagree at.
    (Also the plain two-process run: it completes, and only rank 0 writes.)"""
    cmd = torchrun_pretrain("--home", str(tmp_path), "--data", str(tiny_folder), "--limit", "400", "--width", "8",
                            "--time-budget", "12s")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=TORCHRUN_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()  # only rank 0 writes
    assert (run / "checkpoint.pt").exists() and (run / "encoder.pt").exists()
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) >= 2 and all("knn_top1" in h for h in history)
    assert history[-1]["last_step_start_seconds"] < 12 <= history[-1]["train_seconds"]


def test_a_two_process_run_stopped_with_sigterm_resumes_to_the_uninterrupted_runs_weights(tiny_folder: Path, tmp_path: Path) -> None:
    """SIGTERM to torchrun reaches both ranks; they stop on the same step and rank 0 checkpoints every rank's
    augmentation RNG state. Resumed, each rank continues its own stream: the weights, and each rank's
    generator state at the end, equal those of an uninterrupted run (restoring rank 0's state on every
    rank, as before, made the ranks augment alike after a resume)."""
    flags = ["--data", str(tiny_folder), "--width", "8", "--batch-size", "100", "--epochs", "5", "--proj-dim", "16",
             "--knn-bank", "100"]
    straight = subprocess.run(torchrun_pretrain("--home", str(tmp_path / "straight"), *flags), capture_output=True, text=True,
                              timeout=180, env=TORCHRUN_ENV)
    assert straight.returncode == 0, straight.stderr[-3000:]

    home = tmp_path / "stopped"
    proc = subprocess.Popen(torchrun_pretrain("--home", str(home), *flags), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=TORCHRUN_ENV)
    deadline = time.monotonic() + 120
    while not list(home.glob("runs/*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and err.count("stopped at epoch") == 2, err[-3000:]  # both ranks, at the same step
    (run,) = (home / "runs").iterdir()
    stopped = torch.load(run / "checkpoint.pt", weights_only=True)
    assert stopped["progress"]["step"] < 5 * 4  # stopped early
    assert stopped["world_size"] == 2 and not torch.equal(*stopped["rng"]["augment"])  # two distinct streams

    resumed = subprocess.run(torchrun_pretrain("--home", str(home), "--resume", run.name), capture_output=True, text=True,
                             timeout=180, env=TORCHRUN_ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (straight_run,) = (tmp_path / "straight" / "runs").iterdir()
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (run, straight_run))
    assert a["progress"]["step"] == b["progress"]["step"] == 5 * 4
    for rank in (0, 1):
        assert torch.equal(a["rng"]["augment"][rank], b["rng"]["augment"][rank])
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5, msg=k)


def test_every_step_follows_the_agreed_clock_and_stop_flag(tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank used to read its own clock and its own stop flag: learning rates differed per rank and the
    ranks disagreed on when to stop. Here one process is rank 0 of two and ``agreement`` is its peer,
    whose clock runs 2 s further at every exchange and which is sent SIGTERM before its 6th: the
    learning rates follow the agreed clock, and the run stops where the peer asked (at epoch 1's end)."""
    exchanges: list[float] = []

    def peer(seconds: float, stop: bool) -> tuple[float, bool]:
        exchanges.append(seconds)
        return seconds + 2.0, stop or len(exchanges) == 6

    monkeypatch.setattr(pretrain, "agreement", lambda env: peer)
    cfg = PretrainConfig(data=str(tiny_folder), width=8, batch_size=100, epochs=1000, time_budget=600.0, proj_dim=16, knn_every=0)
    home = ArtifactHome(tmp_path)
    with pytest.raises(Interrupted, match="stopped at epoch 1 batch 0"):
        pretrain.main(cfg, home)
    assert len(exchanges) == 6  # before training, after each of the 4 steps, at the epoch's end
    (record,) = home.run().metrics_history()
    # Step 4 started after 4 exchanges, each 2 s ahead of this process's own clock.
    assert record["last_step_start_seconds"] >= 8.0
    assert record["lr"] == pytest.approx(cfg.lr * warmup_cosine(record["last_step_start_seconds"] / 600.0, cfg.warmup))


def test_only_local_rank_zero_downloads_and_decodes_the_others_read_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--data cifar10`` under torchrun: every rank downloaded and unpacked at once into the same folder.
    Now local rank 0 loads first (and the test split for the kNN monitor, on rank 0); the others wait
    at a barrier, then read the cache it wrote."""
    events: list[tuple[object, ...]] = []

    def load_split(src: str, split: str, **kw: object) -> ImageSet:
        events.append(("load", rank, split))
        return ImageSet(torch.zeros(200, 3, 32, 32, dtype=torch.uint8), torch.zeros(200, dtype=torch.int64), ["a"], [])

    monkeypatch.setattr(pretrain, "load_split", load_split)
    monkeypatch.setattr(distributed, "barrier", lambda env: events.append(("barrier", env.rank)))
    cfg = PretrainConfig(data="cifar10", batch_size=100)
    for rank in (0, 1):
        pretrain.load_data(cfg, ArtifactHome(tmp_path), DistEnv(rank=rank, world_size=2, local_rank=rank), torch.device("cpu"))
    assert events == [("load", 0, "train"), ("load", 0, "test"), ("barrier", 0), ("barrier", 1), ("load", 1, "train")]


def test_sync_bn_on_cpu_processes_is_refused_with_a_message(tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's SyncBatchNorm runs on CUDA only; gloo processes raised at the first step, deep in the
    forward pass. They are refused before any data is loaded, with what to do instead."""
    monkeypatch.setattr(pretrain, "init_distributed", lambda name: (DistEnv(rank=0, world_size=2), torch.device("cpu")))
    cfg = PretrainConfig(data=str(tiny_folder), width=8, batch_size=100, epochs=1, sync_bn=True)
    with pytest.raises(ValueError, match="--sync-bn needs CUDA.*leave it off"):
        pretrain.main(cfg, ArtifactHome(tmp_path))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
