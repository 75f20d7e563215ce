"""SimCLR pretraining: ``train_one_epoch``, ``knn_monitor`` and ``main(cfg, home)``.

The whole split lives on the training device as uint8; every step indexes a
batch, makes two views with batched augmentations and runs one forward pass
over both (2B images), so BatchNorm sees both views as SimCLR does.

Under ``torchrun`` each rank takes its slice of every global batch (the same
shuffled order on all ranks), and NT-Xent gathers the projections of all ranks,
so the negatives and the effective batch are global.
"""

from __future__ import annotations

import signal
import time
from dataclasses import asdict, dataclass, field
from types import FrameType

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from core.atomic import atomic_torch_save
from core.datasets import ImageSet, has_split, load_split
from core.devices import set_threads
from core.home import ArtifactHome
from core.models import embed
from core.runs import RunPaths
from training.augment import simclr_views
from training.config import PretrainConfig
from training.distributed import DistEnv, any_rank, barrier, init_distributed, shutdown
from training.evaluate import weighted_knn_predict
from training.lars import LARS
from training.loss import nt_xent_loss
from training.runtime import autocast, keep_freed_memory, param_groups, warmup_cosine
from training.simclr_model import SimCLRModel


class Interrupted(RuntimeError):
    """Training stopped on SIGTERM/SIGINT after writing a checkpoint."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message says why."""


@dataclass
class Progress:
    """Where a run is; saved in checkpoints so a resumed run continues exactly."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps
    batch: int = 0  # batches done in the current, unfinished epoch
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and stops."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"{signal.Signals(signum).name}: stopping after this step and writing a checkpoint")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """Adam (the seed's), SGD with Nesterov momentum, or LARS; no weight decay on norms and biases."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "lars":
        groups[1]["adapt"] = False  # SimCLR excludes biases and BatchNorm from LARS adaptation
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adam, sgd or lars")


def schedule_progress(cfg: PretrainConfig, p: Progress, steps_per_epoch: int) -> float:
    """Fraction of the schedule done (``Budget.progress``), counting epochs by steps so that the
    learning rate moves every step."""
    return cfg.budget.progress(p.step / max(1, steps_per_epoch), p.train_seconds)


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    order: torch.Tensor,
    cfg: PretrainConfig,
    p: Progress,
    augment_rng: torch.Generator,
    env: DistEnv,
    stop: StopRequest,
) -> dict[str, float]:
    """Batches ``p.batch ..`` of one pass over ``images`` in ``order``; stops early on a signal or the time budget."""
    model.train()
    device = images.device
    n_batches = len(images) // cfg.batch_size
    local = cfg.batch_size // env.world_size
    loss_sum = torch.zeros((), device=device)  # summed on-device: no host sync per step
    done, lr = 0, 0.0
    step_start = p.train_seconds  # of the latest step: a time budget stops after the step that crosses it
    t0 = prev = time.perf_counter()  # t0 moves to the end of the first step
    bar = tqdm(range(p.batch, n_batches), desc=f"epoch {p.epoch + 1}", unit="step", leave=False, disable=not env.is_main)
    for i in bar:
        step_start = p.train_seconds
        lr = cfg.lr * warmup_cosine(schedule_progress(cfg, p, n_batches), cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        start = i * cfg.batch_size + env.rank * local
        batch = images[order[start : start + local]]
        views = torch.cat([simclr_views(batch, augment_rng, cfg.crop_size), simclr_views(batch, augment_rng, cfg.crop_size)])
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
        p.batch = i + 1
        now = time.perf_counter()
        p.train_seconds += now - prev
        prev = now
        if done == 1:
            t0 = now  # views/s skips each epoch's first step (warm-up, compilation), as the reference does
        if env.is_main and i % 10 == 0 and device.type == "cpu":  # .item() would sync a GPU every step
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")
        out_of_time = cfg.budget.done(p.step / n_batches, p.train_seconds)
        # Ranks must agree on the step they stop at; asking costs an all-reduce, so not every step.
        if (not env.enabled or i % 10 == 0) and any_rank(stop.requested or out_of_time, env, device):
            break
    bar.close()
    elapsed = time.perf_counter() - t0
    return {
        "loss": (loss_sum / max(done, 1)).item(),
        "lr": lr,
        "steps": done,
        "last_step_start_seconds": step_start,
        "views_per_s": 2 * max(done - 1, 0) * cfg.batch_size / max(elapsed, 1e-9),  # global views: all ranks
    }


def knn_monitor(encoder: torch.nn.Module, bank: ImageSet, test: ImageSet, cfg: PretrainConfig) -> float:
    """Weighted kNN top-1 (k=200, T=0.1 by default) on the test split with train images as the memory bank.

    ``bank`` and ``test`` are on the training device (``ImageSet.to``), labels included."""
    device = bank.images.device
    scores = weighted_knn_predict(
        embed(encoder, bank.images, device=device),
        bank.labels,
        embed(encoder, test.images, device=device),
        n_classes=len(bank.classes),
        k=cfg.knn_k,
        temperature=cfg.knn_temperature,
    )
    return (scores.argmax(1) == test.labels).float().mean().item()


def save_checkpoint(run: RunPaths, model: SimCLRModel, optimizer: torch.optim.Optimizer, cfg: PretrainConfig,
                    p: Progress, order: torch.Tensor, rngs: dict[str, torch.Generator]) -> None:
    atomic_torch_save(
        {
            "config": cfg.as_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "progress": asdict(p),
            "order": order.cpu(),
            "rng": {name: g.get_state() for name, g in rngs.items()},
        },
        run.checkpoint,
    )
    # The encoder alone is what fine-tuning, indexing and the bundle use.
    atomic_torch_save(model.encoder.state_dict(), run.encoder)


def load_checkpoint(run: RunPaths, cfg: PretrainConfig, device: torch.device) -> dict[str, object]:
    """The run's checkpoint, refused with a clear message if unreadable or made with another config."""
    try:
        ckpt = torch.load(run.checkpoint, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise CheckpointError(
            f"checkpoint {run.checkpoint} is unreadable (corrupt or truncated: {type(e).__name__}); "
            "delete it to restart the run from scratch"
        ) from e
    if not isinstance(ckpt, dict) or not {"config", "model", "optimizer", "progress", "order", "rng"} <= ckpt.keys():
        raise CheckpointError(f"{run.checkpoint} is not a pretraining checkpoint of this version")
    if ckpt["config"] != cfg.as_dict():
        diff = {k: (ckpt["config"].get(k), v) for k, v in cfg.as_dict().items() if ckpt["config"].get(k) != v}
        raise CheckpointError(f"checkpoint {run.checkpoint} was made with another config (saved, given): {diff}")
    return ckpt


def main(cfg: PretrainConfig, home: ArtifactHome, run: RunPaths | None = None) -> RunPaths | None:
    """Pretrain, or resume ``run`` from its checkpoint; returns the run (None on ranks other than 0, which write nothing)."""
    set_threads()
    keep_freed_memory()
    env, device = init_distributed(cfg.device)
    if cfg.batch_size % env.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must divide evenly over {env.world_size} processes")
    torch.manual_seed(cfg.seed)
    order_rng = torch.Generator(device=device).manual_seed(cfg.seed)  # same on every rank
    augment_rng = torch.Generator(device=device).manual_seed(cfg.seed + 1 + env.rank)  # independent per rank
    rngs = {"order": order_rng, "augment": augment_rng}

    train = load_split(cfg.data, "train", data_dir=home.data, image_size=cfg.image_size, limit=cfg.limit, seed=cfg.seed)
    if len(train) < cfg.batch_size:
        raise ValueError(f"{len(train)} training images is fewer than one batch ({cfg.batch_size}); lower --batch-size")
    test = bank = None
    if env.is_main and has_split(cfg.data, "test") and train.labelled:
        test = load_split(cfg.data, "test", data_dir=home.data, image_size=cfg.image_size, limit=cfg.limit, seed=cfg.seed).to(device)
        keep = torch.arange(len(train))
        if cfg.knn_bank is not None and cfg.knn_bank < len(train):
            keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.knn_bank]
        bank = train.subset(keep).to(device)
    images = train.images.to(device)

    model = SimCLRModel(cfg.encoder_spec, cfg.proj_dim)
    if env.enabled and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    p, order = Progress(), None
    if run is None:
        run = home.new_run() if env.is_main else None
        if env.is_main:
            run.write_config(cfg.as_dict())
    elif run.checkpoint.exists():
        ckpt = load_checkpoint(run, cfg, device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        p = Progress(**ckpt["progress"])
        order = ckpt["order"].to(device) if p.batch else None
        for name, g in rngs.items():
            g.set_state(ckpt["rng"][name])
    trained = DistributedDataParallel(model) if env.enabled else model
    if cfg.compile:
        trained = torch.compile(trained)

    steps_per_epoch = len(images) // cfg.batch_size
    if env.is_main:
        print(f"pretraining {cfg.arch} (width {cfg.width}) on {len(train)} images, {env.world_size} x {device}, run {run.run_id}")
    try:
        with StopRequest() as stop:
            while schedule_progress(cfg, p, steps_per_epoch) < 1 and not stop.requested:
                if order is None:
                    order = torch.randperm(len(images), device=device, generator=order_rng)
                stats = train_one_epoch(trained, optimizer, images, order, cfg, p, augment_rng, env, stop)
                if p.batch < steps_per_epoch and not cfg.budget.done(p.step / steps_per_epoch, p.train_seconds):
                    break  # interrupted mid-epoch: checkpoint below, with the position in this epoch
                p.epoch, p.batch, order = p.epoch + 1, 0, None
                if env.is_main:
                    record = end_of_epoch(run, model, cfg, p, stats, bank, test)
                    knn = f", kNN top-1 {record['knn_top1']:.1%}" if "knn_top1" in record else ""
                    tqdm.write(f"epoch {p.epoch}: loss {stats['loss']:.4f}, {stats['views_per_s']:.0f} views/s{knn}")
                    save_checkpoint(run, model, optimizer, cfg, p, torch.zeros(0), rngs)
                barrier(env)
            if stop.requested:
                if env.is_main:
                    save_checkpoint(run, model, optimizer, cfg, p, order if order is not None else torch.zeros(0), rngs)
                raise Interrupted(f"stopped at epoch {p.epoch} batch {p.batch}; continue with "
                                  f"`simclr pretrain --home {home.root} --resume {run.run_id if run else '?'}`")
    finally:
        shutdown(env)
    if env.is_main:
        from training.report_figures import loss_curve  # matplotlib: only when there is a curve to draw

        loss_curve(p.history, run.loss_plot)
    return run


def end_of_epoch(run: RunPaths, model: SimCLRModel, cfg: PretrainConfig, p: Progress, stats: dict[str, float],
                 bank: ImageSet | None, test: ImageSet | None) -> dict[str, float]:
    """Log the epoch (JSONL) with its kNN accuracy; the kNN time counts against a time budget."""
    record: dict[str, float] = {"epoch": p.epoch, "step": p.step, **stats}
    last = not cfg.time_budget and p.epoch == cfg.epochs
    if bank is not None and test is not None and cfg.knn_every and (p.epoch % cfg.knn_every == 0 or last):
        t = time.perf_counter()
        record["knn_top1"] = knn_monitor(model.encoder, bank, test, cfg)
        if cfg.time_budget:
            p.train_seconds += time.perf_counter() - t
    record["train_seconds"] = p.train_seconds
    p.history.append(record)
    run.append_metrics(record)
    return record
