"""Checkpoints: straight runs equal interrupted-and-resumed ones; bad checkpoints are refused; budgets hold."""

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

from core.home import ArtifactHome
from core.runs import RunPaths
from training import pretrain
from training.config import PretrainConfig
from training.distributed import DistEnv
from training.pretrain import CheckpointError, Interrupted
from training.runtime import warmup_cosine
from training.simclr_model import SimCLRModel


def tiny_config(data: Path, **kw: object) -> PretrainConfig:
    base = {"data": str(data), "width": 8, "batch_size": 100, "epochs": 3, "proj_dim": 16, "temperature": 0.2, "knn_bank": 100}
    return PretrainConfig(**{**base, **kw})


def encoder_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "encoder.pt", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def straight(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = ArtifactHome(tmp_path_factory.mktemp("straight"))
    return pretrain.main(tiny_config(tiny_folder), home).dir


def test_stop_mid_epoch_then_resume_equals_straight_run(
    straight: Path, tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = ArtifactHome(tmp_path)
    cfg = tiny_config(tiny_folder)
    steps = {"n": 0}
    original = pretrain.nt_xent_loss

    def loss_then_sigterm(*args: object, **kw: object) -> torch.Tensor:
        steps["n"] += 1
        if steps["n"] == 6:  # epoch 2, batch 2 of 4
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kw)

    monkeypatch.setattr(pretrain, "nt_xent_loss", loss_then_sigterm)
    with pytest.raises(Interrupted, match="--resume"):
        pretrain.main(cfg, home)
    run = home.run()
    ckpt = torch.load(run.checkpoint, weights_only=True)
    assert (ckpt["progress"]["epoch"], ckpt["progress"]["batch"]) == (1, 2)
    monkeypatch.setattr(pretrain, "nt_xent_loss", original)
    pretrain.main(cfg, home, run)
    assert_same_weights(encoder_weights(run.dir), encoder_weights(straight))
    history = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_sigkill_then_resume_equals_straight_run(straight: Path, tiny_folder: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "simclr", "pretrain", "--home", str(tmp_path), "--data", str(tiny_folder),
           "--width", "8", "--batch-size", "100", "--epochs", "3", "--proj-dim", "16", "--temperature", "0.2",
           "--knn-bank", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("runs/*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, whatever step it was in
    proc.wait()
    run_id = next(tmp_path.glob("runs/*")).name
    epochs_done = torch.load(tmp_path / "runs" / run_id / "checkpoint.pt", weights_only=True)["progress"]["epoch"]
    assert epochs_done >= 1
    r = subprocess.run([sys.executable, "-m", "simclr", "pretrain", "--home", str(tmp_path), "--resume", run_id],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_weights(encoder_weights(tmp_path / "runs" / run_id), encoder_weights(straight))


def test_corrupt_checkpoint_is_refused(straight: Path, tiny_folder: Path, tmp_path: Path) -> None:
    home = ArtifactHome(tmp_path)
    run = home.new_run()
    data = (straight / "checkpoint.pt").read_bytes()
    run.checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        pretrain.main(tiny_config(tiny_folder), home, run)


def test_checkpoint_from_another_config_is_refused(straight: Path, tiny_folder: Path, tmp_path: Path) -> None:
    home = ArtifactHome(tmp_path)
    run = home.new_run()
    run.checkpoint.write_bytes((straight / "checkpoint.pt").read_bytes())
    with pytest.raises(CheckpointError, match="another config.*width"):
        pretrain.main(tiny_config(tiny_folder, width=16), home, run)


def test_time_budget_stops_on_time(tiny_folder: Path, tmp_path: Path) -> None:
    budget = 6.0
    t = time.perf_counter()
    run = pretrain.main(tiny_config(tiny_folder, epochs=1000, time_budget=budget), ArtifactHome(tmp_path))
    wall = time.perf_counter() - t
    history = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    last = history[-1]
    # It stops after the step that crosses the budget, however long a step takes on a busy machine.
    assert last["last_step_start_seconds"] < budget <= last["train_seconds"]
    assert wall < budget + 20  # plus data loading, model set-up and the final plot
    # The cosine runs on seconds: the last step's lr is the schedule's at the second it started.
    peak = tiny_config(tiny_folder).lr
    assert last["lr"] == pytest.approx(peak * warmup_cosine(last["last_step_start_seconds"] / budget, tiny_config(tiny_folder).warmup))
    cfg = tiny_config(tiny_folder, time_budget=budget)
    assert pretrain.schedule_progress(cfg, pretrain.Progress(step=1, train_seconds=0.9 * budget), 10) == pytest.approx(0.9)


def copy_of_run(straight: Path, tmp_path: Path) -> tuple[ArtifactHome, RunPaths]:
    home = ArtifactHome(tmp_path)
    run = home.new_run()
    shutil.copyfile(straight / "checkpoint.pt", run.checkpoint)
    return home, run


def test_a_checkpoint_holds_host_tensors_and_every_ranks_rng_state(straight: Path) -> None:
    ckpt = torch.load(straight / "checkpoint.pt", weights_only=True)
    tensors = [t for t in torch.utils._pytree.tree_leaves(ckpt) if isinstance(t, torch.Tensor)]
    assert {t.device.type for t in tensors} == {"cpu"}
    assert ckpt["world_size"] == 1 and len(ckpt["rng"]["augment"]) == 1 and ckpt["rng_device"] == "cpu"


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")  # meta holds no values
def test_resume_on_a_device_restores_nothing_device_bound_from_the_map_location(
    straight: Path, tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume on CUDA loaded the checkpoint with ``map_location=device``: ``Generator.set_state`` then got a
    CUDA tensor (TypeError: it takes a CPU ByteTensor, a CUDA generator's too) and Adam's step counters
    stayed on the GPU (a host read per parameter per step). Here the model lives on ``meta``, a device
    that is not the CPU and needs no GPU: the checkpoint is read to the CPU whatever the device, the
    weights and Adam's moments go to their parameters' device, the step counters and RNG states stay
    on the host."""
    cfg = tiny_config(tiny_folder)
    _, run = copy_of_run(straight, tmp_path)
    locations = []
    real_load = torch.load

    def recording_load(*args: object, **kwargs: object) -> object:
        locations.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    meta = torch.device("meta")
    model = SimCLRModel(cfg.encoder_spec, cfg.proj_dim).to(meta)
    optimizer = pretrain.build_optimizer(model, cfg)
    rngs = {"order": torch.Generator(), "augment": torch.Generator()}
    p, order = pretrain.resume(run, cfg, model, optimizer, rngs, DistEnv(), meta)
    assert locations == ["cpu"]
    saved = real_load(run.checkpoint, weights_only=True)
    assert p == pretrain.Progress(**saved["progress"]) and p.epoch == 3 and order is None
    assert torch.equal(rngs["order"].get_state(), saved["rng"]["order"])
    assert torch.equal(rngs["augment"].get_state(), saved["rng"]["augment"][0])
    state = optimizer.state_dict()["state"]
    assert state and all(s["step"].device.type == "cpu" for s in state.values())
    assert all(s["exp_avg"].device == meta and s["exp_avg_sq"].device == meta for s in state.values())
    assert all(t.device == meta for t in model.state_dict().values())


def test_a_resume_with_another_number_of_processes_is_refused(straight: Path, tiny_folder: Path, tmp_path: Path) -> None:
    """Each process's augmentation RNG state is saved; another count of processes cannot continue exactly."""
    cfg = tiny_config(tiny_folder)
    _, run = copy_of_run(straight, tmp_path)
    model = SimCLRModel(cfg.encoder_spec, cfg.proj_dim)
    rngs = {"order": torch.Generator(), "augment": torch.Generator()}
    with pytest.raises(CheckpointError, match=r"made by 1 process\(es\).*--nproc_per_node 1\), not 2"):
        pretrain.resume(run, cfg, model, pretrain.build_optimizer(model, cfg), rngs, DistEnv(rank=1, world_size=2), torch.device("cpu"))


def test_a_resume_on_another_device_type_is_refused(straight: Path, tiny_folder: Path, tmp_path: Path) -> None:
    """A CUDA generator's state (16 bytes: seed and offset) does not fit a CPU generator (5056 bytes):
    torch said only "RNG state is wrong size"; the refusal says where the run can continue."""
    home, run = copy_of_run(straight, tmp_path)
    ckpt = torch.load(run.checkpoint, weights_only=True)
    ckpt["rng_device"] = "cuda"
    ckpt["rng"] = {"order": torch.zeros(16, dtype=torch.uint8), "augment": [torch.zeros(16, dtype=torch.uint8)]}
    torch.save(ckpt, run.checkpoint)
    with pytest.raises(CheckpointError, match="made on cuda.*resume it on cuda, not cpu"):
        pretrain.main(tiny_config(tiny_folder), home, run)
