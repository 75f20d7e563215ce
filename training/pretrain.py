"""SimCLR pretraining: ``train_one_epoch``, ``knn_monitor`` and ``main(cfg, home)``.

The whole split lives on the training device as uint8; every step indexes a
batch, makes two views with batched augmentations and runs one forward pass
over both (2B images), so BatchNorm sees both views as SimCLR does.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from training.artifacts import ArtifactHome, RunPaths
from training.atomic import atomic_torch_save, atomic_write_json
from training.augment import simclr_views
from training.config import PretrainConfig
from training.data import ImageSet, has_split, load_split
from training.evaluate import features, weighted_knn_predict
from training.loss import nt_xent_loss
from training.models import EncoderSpec, SimCLRModel
from training.runtime import autocast, param_groups, pick_device, set_threads, warmup_cosine


@dataclass
class Progress:
    """Where a run is: saved in checkpoints so a resumed run continues the schedule."""

    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adam or sgd")


def schedule_progress(cfg: PretrainConfig, p: Progress, steps_per_epoch: int) -> float:
    """Fraction of the schedule done: by steps for an epoch count, by seconds for a time budget."""
    if cfg.time_budget:
        return p.train_seconds / cfg.time_budget
    return p.step / max(1, cfg.epochs * steps_per_epoch)


def train_one_epoch(
    model: SimCLRModel,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    cfg: PretrainConfig,
    p: Progress,
    generator: torch.Generator,
    deadline: float | None,
) -> dict[str, float]:
    """One pass over ``images`` (uint8, on the device) in shuffled batches; returns mean loss and views/s."""
    model.train()
    device = images.device
    n_batches = len(images) // cfg.batch_size
    order = torch.randperm(len(images), device=device, generator=generator)
    loss_sum = torch.zeros((), device=device)  # summed on-device: no host sync per step
    done = 0
    t0 = prev = time.perf_counter()
    bar = tqdm(range(n_batches), desc=f"epoch {p.epoch + 1}", unit="step", leave=False)
    for i in bar:
        lr = cfg.lr * warmup_cosine(schedule_progress(cfg, p, n_batches), cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = images[order[i * cfg.batch_size : (i + 1) * cfg.batch_size]]
        views = torch.cat([simclr_views(batch, generator), simclr_views(batch, generator)])
        if cfg.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            z = model(views)
        z1, z2 = z.float().chunk(2)
        loss = nt_xent_loss(z1, z2, cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
        done += 1
        p.step += 1
        now = time.perf_counter()
        p.train_seconds += now - prev
        prev = now
        if i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")
        if deadline is not None and p.train_seconds >= deadline:
            break
    bar.close()
    elapsed = time.perf_counter() - t0
    return {
        "loss": (loss_sum / max(done, 1)).item(),
        "lr": lr if done else 0.0,
        "steps": done,
        "views_per_s": 2 * done * cfg.batch_size / max(elapsed, 1e-9),
    }


def knn_monitor(encoder: torch.nn.Module, bank: ImageSet, test: ImageSet, cfg: PretrainConfig) -> float:
    """Weighted kNN top-1 on the test split with train images as the memory bank."""
    device = bank.images.device
    bank_feats = features(encoder, bank.images, device=device)
    test_feats = features(encoder, test.images, device=device)
    scores = weighted_knn_predict(
        bank_feats,
        bank.labels.to(device),
        test_feats,
        n_classes=len(bank.classes),
        k=cfg.knn_k,
        temperature=cfg.knn_temperature,
    )
    return (scores.argmax(1).cpu() == test.labels).float().mean().item()


def save_checkpoint(run: RunPaths, model: SimCLRModel, optimizer: torch.optim.Optimizer, cfg: PretrainConfig, p: Progress, generator: torch.Generator) -> None:
    atomic_torch_save(
        {
            "config": cfg.as_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "progress": {"epoch": p.epoch, "step": p.step, "train_seconds": p.train_seconds, "history": p.history},
            "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state()},
        },
        run.checkpoint,
    )
    # The encoder alone is what fine-tuning, indexing and the bundle use.
    atomic_torch_save(model.encoder.state_dict(), run.encoder)


def plot_loss(run: RunPaths, history: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NT-Xent loss")
    ax.set_title("SimCLR contrastive loss")
    knn = [(h["epoch"], h["knn_top1"]) for h in history if "knn_top1" in h]
    if knn:
        ax2 = ax.twinx()
        ax2.plot(*zip(*knn), color="tab:orange", marker="s")
        ax2.set_ylabel("kNN top-1 (test)", color="tab:orange")
    fig.tight_layout()
    fig.savefig(run.loss_plot, dpi=100)
    plt.close(fig)


def main(cfg: PretrainConfig, home: ArtifactHome, run: RunPaths | None = None) -> RunPaths:
    """Pretrain (or resume ``run``) and return the run's paths. Writes a checkpoint every epoch."""
    set_threads()
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    train = load_split(cfg.data, "train", data_dir=home.data, image_size=cfg.image_size, limit=cfg.limit, seed=cfg.seed)
    if len(train) < cfg.batch_size:
        raise ValueError(f"{len(train)} training images is fewer than one batch ({cfg.batch_size}); lower --batch-size")
    test = None
    if has_split(cfg.data, "test") and train.labelled:
        test = load_split(cfg.data, "test", data_dir=home.data, image_size=cfg.image_size, limit=cfg.limit, seed=cfg.seed)
    images = train.images.to(device)
    bank = train
    if cfg.knn_bank is not None and cfg.knn_bank < len(train):
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.knn_bank]
        bank = ImageSet(train.images[keep], train.labels[keep], train.classes, [])
    bank = ImageSet(bank.images.to(device), bank.labels, bank.classes, [])
    if test is not None:
        test = ImageSet(test.images.to(device), test.labels, test.classes, [])

    model = SimCLRModel(EncoderSpec(cfg.arch, cfg.width, cfg.image_size), cfg.proj_dim).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    p = Progress()
    if run is None:
        run = home.new_run()
        atomic_write_json(run.config, {"pretrain": cfg.as_dict()})
    elif run.checkpoint.exists():
        ckpt = torch.load(run.checkpoint, map_location=device, weights_only=False)
        if ckpt["config"] != cfg.as_dict():
            raise ValueError(f"checkpoint in {run.dir} was made with another config; resume with the same flags")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        p = Progress(**ckpt["progress"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        generator.set_state(ckpt["rng"]["generator"])

    steps_per_epoch = len(images) // cfg.batch_size
    max_epochs = math.inf if cfg.time_budget else cfg.epochs
    print(f"pretraining {cfg.arch} (width {cfg.width}) on {len(train)} images, {device}, run {run.run_id}")
    while p.epoch < max_epochs and schedule_progress(cfg, p, steps_per_epoch) < 1:
        stats = train_one_epoch(model, optimizer, images, cfg, p, generator, cfg.time_budget)
        p.epoch += 1
        record: dict[str, float] = {"epoch": p.epoch, "step": p.step, **stats, "train_seconds": p.train_seconds}
        if test is not None:
            t = time.perf_counter()
            record["knn_top1"] = knn_monitor(model.encoder, bank, test, cfg)
            p.train_seconds += time.perf_counter() - t if cfg.time_budget else 0.0
        p.history.append(record)
        with open(run.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
        save_checkpoint(run, model, optimizer, cfg, p, generator)
        knn = f", kNN top-1 {record['knn_top1']:.1%}" if "knn_top1" in record else ""
        tqdm.write(f"epoch {p.epoch}: loss {stats['loss']:.4f}, {stats['views_per_s']:.0f} views/s{knn}")
    plot_loss(run, p.history)
    return run
