"""SimCLR pretraining: ``train_one_epoch``, ``knn_monitor`` and ``main(cfg, home)``.

The whole split lives on the training device as uint8; every step indexes a
batch, makes two views with batched augmentations and runs one forward pass
over both (2B images), so BatchNorm sees both views as SimCLR does.

Under ``torchrun`` each rank takes its slice of every global batch (the same
shuffled order on all ranks), and NT-Xent gathers the projections of all ranks,
so the negatives and the effective batch are global. After every step the ranks
agree on the clock and on stop requests in one host-side collective
(``Budget.decide``), so they set the same learning rate and stop on the same
step; each rank augments with its own generator, and a checkpoint holds all of
their states.
"""

from __future__ import annotations

import signal
import time
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from core.atomic import atomic_torch_save
from core.datasets import ImageSet, has_split, load_split, outside, validation_indices
from core.devices import set_threads
from core.home import ArtifactHome
from core.models import embed
from core.runs import RunPaths
from training.augment import simclr_views
from training.budget import Agree, Decision
from training.config import PretrainConfig
from training.distributed import DistEnv, agreement, gather_to_main, init_distributed, local_rank_zero_first, shutdown
from training.evaluate import weighted_knn_predict
from training.lars import LARS
from training.loss import multi_crop_nt_xent_loss, nt_xent_loss
from training.runtime import autocast, keep_freed_memory, param_groups, seeded_generator, warmup_cosine
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


# Area fractions of the small views' crops (PretrainConfig.small_views): SwAV's (0.05, 0.14), whose
# full views take (0.14, 1); here they take (0.08, 1), so the two ranges overlap a little.
SMALL_VIEW_SCALE = (0.05, 0.14)


def view_size(cfg: PretrainConfig, progress: float) -> int:
    """The side of the augmented views at ``progress`` (0..1) of the schedule: ``crop_size`` (or the image
    size), or with ``crop_size_start`` a linear ramp up to it rounded to 4 px (few distinct shapes, so
    few kernel plans), as progressive resizing does (Tan & Le 2021, EfficientNetV2: "small image size
    in early epochs", larger later)."""
    end = cfg.crop_size or cfg.image_size
    start = cfg.crop_size_start
    if start is None or start >= end:
        return end
    size = 4 * round((start + (end - start) * min(max(progress, 0.0), 1.0)) / 4)
    return min(max(size, start), end)


def decide(cfg: PretrainConfig, p: Progress, steps_per_epoch: int, stop: StopRequest, agree: Agree) -> Decision:
    """The decision point after a step or an epoch: ``Budget.decide`` on the agreed clock and stop
    flags (one collective under torchrun); ``p`` takes the agreed clock, so every rank carries it."""
    decision = cfg.budget.decide(p.step / max(1, steps_per_epoch), p.train_seconds, stop.requested, agree)
    p.train_seconds = decision.seconds
    return decision


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    idx: torch.Tensor,
    cfg: PretrainConfig,
    augment_rng: torch.Generator,
    lr: float,
    size: int | None = None,
) -> torch.Tensor:
    """One optimizer step on ``images[idx]``: two augmented ``size`` px views of each (default: the
    config's), one forward pass over both (BatchNorm sees both views, as in SimCLR), NT-Xent. Returns
    the loss on the device, unread: reading it would sync the host with the GPU every step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    batch = images[idx]
    size = size or cfg.crop_size
    views = torch.cat([simclr_views(batch, augment_rng, size), simclr_views(batch, augment_rng, size)])
    small = [simclr_views(batch, augment_rng, cfg.small_view_size, scale=SMALL_VIEW_SCALE) for _ in range(cfg.small_views)]
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    with autocast(views.device):
        z = model(views.contiguous(memory_format=memory))
        # The small views in a forward pass of their own: one resolution per pass, and BatchNorm's
        # statistics per resolution, as SwAV's implementation does.
        z_small = model(torch.cat(small).contiguous(memory_format=memory)).float().chunk(len(small)) if small else ()
    z1, z2 = z.float().chunk(2)
    loss = multi_crop_nt_xent_loss(z1, z2, list(z_small), cfg.temperature) if small else nt_xent_loss(z1, z2, cfg.temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


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
    agree: Agree,
) -> tuple[dict[str, float], Decision]:
    """Batches ``p.batch ..`` of one pass over ``images`` in ``order``; stops early, on every rank at the
    same step, on a signal or the time budget. Returns the epoch's stats and the last decision."""
    model.train()
    device = images.device
    n_batches = len(images) // cfg.batch_size
    local = cfg.batch_size // env.world_size
    loss_sum = torch.zeros((), device=device)  # summed on-device: no host sync per step
    done, lr, size = 0, 0.0, view_size(cfg, 0.0)
    decision: Decision | None = None
    step_start = p.train_seconds  # of the latest step: a time budget stops after the step that crosses it
    t0 = prev = time.perf_counter()  # t0 moves to the end of the first step
    bar = tqdm(range(p.batch, n_batches), desc=f"epoch {p.epoch + 1}", unit="step", leave=False, disable=not env.is_main)
    for i in bar:
        step_start = p.train_seconds
        # From the agreed clock: every rank sets the same learning rate.
        progress = schedule_progress(cfg, p, n_batches)
        lr = cfg.lr * warmup_cosine(progress, cfg.warmup)
        size = view_size(cfg, progress)
        start = i * cfg.batch_size + env.rank * local
        loss = train_step(model, optimizer, images, order[start : start + local], cfg, augment_rng, lr, size)
        loss_sum += loss
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
        # Every step: a host-side all-reduce of two numbers under torchrun, where the ranks meet in
        # DDP's gradient all-reduce anyway; it keeps their learning rates equal.
        decision = decide(cfg, p, n_batches, stop, agree)
        if decision.stop:
            break
    bar.close()
    if decision is None:  # nothing left of this epoch (every rank alike: they share p)
        decision = decide(cfg, p, n_batches, stop, agree)
    elapsed = time.perf_counter() - t0
    stats = {
        "loss": (loss_sum / max(done, 1)).item(),
        "lr": lr,
        "view_size": size,
        "steps": done,
        "last_step_start_seconds": step_start,
        "views_per_s": 2 * max(done - 1, 0) * cfg.batch_size / max(elapsed, 1e-9),  # global views: all ranks
    }
    return stats, decision


def knn_monitor(encoder: torch.nn.Module, bank: ImageSet, test: ImageSet, cfg: PretrainConfig) -> float:
    """Weighted kNN top-1 (k=200, T=0.1 by default) on the test split with train images as the memory bank.

    ``bank`` and ``test`` are on the training device (``ImageSet.to``), labels included; the
    accuracy is read back once, at the end."""
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


CHECKPOINT_KEYS = frozenset({"config", "model", "optimizer", "progress", "order", "rng", "world_size", "rng_device"})


def host_copy(obj: Any) -> Any:
    """``obj`` with every tensor on the CPU (dicts, lists and tuples walked). A checkpoint holds host
    tensors only, so it loads on a machine without the device it was made on."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device.type == "cpu" else obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(host_copy(v) for v in obj)
    return obj


def checkpoint_state(model: SimCLRModel, optimizer: torch.optim.Optimizer, cfg: PretrainConfig, p: Progress,
                     order: torch.Tensor, rngs: dict[str, torch.Generator], augment_states: list[torch.Tensor]) -> dict[str, Any]:
    """What a checkpoint holds, all on the CPU: weights, optimizer state, progress, the epoch's order,
    the shared order generator's state and every rank's augmentation generator state (rank order)."""
    return host_copy({
        "config": cfg.as_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": asdict(p),
        "order": order,
        "world_size": len(augment_states),
        "rng_device": rngs["augment"].device.type,  # a CPU generator's state is not a CUDA one's
        "rng": {"order": rngs["order"].get_state(), "augment": augment_states},
    })


def write_checkpoint(run: RunPaths | None, model: SimCLRModel, optimizer: torch.optim.Optimizer, cfg: PretrainConfig,
                     p: Progress, order: torch.Tensor, rngs: dict[str, torch.Generator], env: DistEnv) -> None:
    """Gather every rank's augmentation RNG state to rank 0, which writes the checkpoint and the encoder.
    A collective: every rank calls it at the same point."""
    augment_states = gather_to_main(rngs["augment"].get_state(), env)
    if not env.is_main or run is None:
        return
    atomic_torch_save(checkpoint_state(model, optimizer, cfg, p, order, rngs, augment_states), run.checkpoint)
    # The encoder alone is what fine-tuning, indexing and the bundle use; fine-tuning may add the head's first layer.
    atomic_torch_save(host_copy(model.encoder.state_dict()), run.encoder)
    atomic_torch_save(host_copy(model.head.state_dict()), run.projection)


def load_checkpoint(run: RunPaths, cfg: PretrainConfig) -> dict[str, Any]:
    """The run's checkpoint, on the CPU, refused with a clear message if unreadable or made with another config.

    Always to the CPU, whatever the training device: a generator takes its state only as a CPU
    ByteTensor (a CUDA generator too), and Adam leaves its step counters where they were loaded
    (on a GPU, every step would read each one back). What belongs on the device gets there in
    ``resume``."""
    try:
        ckpt = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise CheckpointError(
            f"checkpoint {run.checkpoint} is unreadable (corrupt or truncated: {type(e).__name__}); "
            "delete it to restart the run from scratch"
        ) from e
    if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= ckpt.keys():
        raise CheckpointError(f"{run.checkpoint} is not a pretraining checkpoint of this version")
    if ckpt["config"] != cfg.as_dict():
        diff = {k: (ckpt["config"].get(k), v) for k, v in cfg.as_dict().items() if ckpt["config"].get(k) != v}
        raise CheckpointError(f"checkpoint {run.checkpoint} was made with another config (saved, given): {diff}")
    return ckpt


def resume(run: RunPaths, cfg: PretrainConfig, model: SimCLRModel, optimizer: torch.optim.Optimizer,
           rngs: dict[str, torch.Generator], env: DistEnv, device: torch.device) -> tuple[Progress, torch.Tensor | None]:
    """Restore the run's checkpoint into ``model``, ``optimizer`` and ``rngs`` (this rank's own augmentation
    state); returns the progress and the interrupted epoch's order on ``device`` (None at an epoch's end).

    Refused, with a message, when made by another number of processes (each one's augmentation
    state is saved: another count cannot continue exactly) or on another device type (a CPU
    generator's state does not fit a CUDA one). The checkpoint is read on the CPU; ``load_state_dict``
    copies weights and optimizer moments to their parameters' device and keeps Adam's step counters
    on the CPU, where Adam reads them.
    """
    ckpt = load_checkpoint(run, cfg)
    if ckpt["world_size"] != env.world_size:
        n = ckpt["world_size"]
        raise CheckpointError(
            f"checkpoint {run.checkpoint} was made by {n} process(es) and holds each one's augmentation RNG state; "
            f"resume it with {n} (torchrun --nproc_per_node {n}), not {env.world_size}")
    rng_device = rngs["augment"].device.type
    if ckpt["rng_device"] != rng_device:
        raise CheckpointError(
            f"checkpoint {run.checkpoint} was made on {ckpt['rng_device']} and its RNG states are {ckpt['rng_device']} generators'; "
            f"resume it on {ckpt['rng_device']}, not {rng_device}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    rngs["order"].set_state(ckpt["rng"]["order"])
    rngs["augment"].set_state(ckpt["rng"]["augment"][env.rank])
    p = Progress(**ckpt["progress"])
    return p, ckpt["order"].to(device) if p.batch else None


def refuse_unsupported(cfg: PretrainConfig, env: DistEnv, device: torch.device) -> None:
    """Settings that cannot run here, refused before any data is loaded."""
    if cfg.batch_size % env.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must divide evenly over {env.world_size} processes")
    if cfg.sync_bn and env.enabled and device.type == "cpu":
        raise ValueError(
            "--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU implementation, so gloo processes cannot run it; "
            "on CPU processes leave it off (each process's batch norm then sees its share of the batch)")


def load_data(cfg: PretrainConfig, home: ArtifactHome, env: DistEnv,
              device: torch.device) -> tuple[torch.Tensor, ImageSet | None, ImageSet | None]:
    """The training images on ``device`` (the validation split left out); on rank 0 also the kNN
    monitor's bank and the images it scores (else None): the validation split when the config holds
    one out, else the test split.

    Each machine's local rank 0 downloads and decodes first; the other ranks then read its cache.
    """
    with local_rank_zero_first(env):
        train = load_split(cfg.data, "train", data_dir=home.data, image_size=cfg.image_size, limit=cfg.limit, seed=cfg.seed)
        held = validation_indices(train.labels, cfg.validation)
        scored = None
        if env.is_main and train.labelled:
            if len(held):
                scored = train.subset(held)
            elif has_split(cfg.data, "test"):
                scored = load_split(cfg.data, "test", data_dir=home.data, image_size=cfg.image_size, limit=cfg.limit, seed=cfg.seed)
    if len(held):
        train = train.subset(outside(held, len(train)))
    if len(train) < cfg.batch_size:
        raise ValueError(f"{len(train)} training images is fewer than one batch ({cfg.batch_size}); lower --batch-size")
    bank = None
    if scored is not None:
        keep = torch.arange(len(train))
        if cfg.knn_bank is not None and cfg.knn_bank < len(train):
            keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.knn_bank]
        bank, scored = train.subset(keep).to(device), scored.to(device)
    return train.images.to(device), bank, scored


def build_model(cfg: PretrainConfig, env: DistEnv, device: torch.device) -> SimCLRModel:
    model = SimCLRModel(cfg.encoder_spec, cfg.proj_dim)
    if env.enabled and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def main(cfg: PretrainConfig, home: ArtifactHome, run: RunPaths | None = None) -> RunPaths | None:
    """Pretrain, or resume ``run`` from its checkpoint; returns the run (None on ranks other than 0, which write nothing)."""
    set_threads()
    keep_freed_memory()
    env, device = init_distributed(cfg.device)
    try:
        return pretrain(cfg, home, run, env, device)
    finally:
        shutdown(env)


def pretrain(cfg: PretrainConfig, home: ArtifactHome, run: RunPaths | None, env: DistEnv, device: torch.device) -> RunPaths | None:
    """``main`` inside the process group: the epochs, each ending on rank 0 with the kNN monitor and a
    checkpoint, and on every rank with the same decision to go on or stop."""
    refuse_unsupported(cfg, env, device)
    torch.manual_seed(cfg.seed)
    order_rng = seeded_generator(device, cfg.seed)  # same on every rank
    augment_rng = seeded_generator(device, cfg.seed + 1 + env.rank)  # independent per rank
    rngs = {"order": order_rng, "augment": augment_rng}
    images, bank, test = load_data(cfg, home, env, device)
    model = build_model(cfg, env, device)
    optimizer = build_optimizer(model, cfg)
    p, order = Progress(), None
    if run is None:
        run = home.new_run() if env.is_main else None
        if run is not None:
            run.write_config(cfg.as_dict())
    elif run.checkpoint.exists():
        p, order = resume(run, cfg, model, optimizer, rngs, env, device)
    trained = DistributedDataParallel(model) if env.enabled else model
    if cfg.compile:
        trained = torch.compile(trained)

    steps_per_epoch = len(images) // cfg.batch_size
    agree = agreement(env)
    if env.is_main:
        print(f"pretraining {cfg.arch} (width {cfg.width}) on {len(images)} images, {env.world_size} x {device}, run {run.run_id}")
    with StopRequest() as stop:
        decision = decide(cfg, p, steps_per_epoch, stop, agree)
        while not decision.stop:
            if order is None:
                order = torch.randperm(len(images), device=device, generator=order_rng)
            stats, decision = train_one_epoch(trained, optimizer, images, order, cfg, p, augment_rng, env, stop, agree)
            if p.batch < steps_per_epoch and not decision.out_of_budget:
                break  # stopped mid-epoch: checkpoint below, with the position in this epoch
            p.epoch, p.batch, order = p.epoch + 1, 0, None
            record = end_of_epoch(run, model, cfg, p, stats, bank, test) if env.is_main else {}
            write_checkpoint(run, model, optimizer, cfg, p, torch.zeros(0), rngs, env)
            if env.is_main:
                knn = f", kNN top-1 {record['knn_top1']:.1%}" if "knn_top1" in record else ""
                tqdm.write(f"epoch {p.epoch}: loss {stats['loss']:.4f}, {stats['views_per_s']:.0f} views/s{knn}")
            # Rank 0's kNN time reaches every rank here, before anyone decides to go on.
            decision = decide(cfg, p, steps_per_epoch, stop, agree)
        if decision.stop_requested and not decision.out_of_budget:
            write_checkpoint(run, model, optimizer, cfg, p, order if order is not None else torch.zeros(0), rngs, env)
            raise Interrupted(f"stopped at epoch {p.epoch} batch {p.batch}; " + how_to_continue(home, run, env))
    if env.is_main:
        from training.report_figures import loss_curve  # matplotlib: only when there is a curve to draw

        loss_curve(p.history, run.loss_plot)
    return run


def how_to_continue(home: ArtifactHome, run: RunPaths | None, env: DistEnv) -> str:
    """The command that resumes the run: with as many processes, which the checkpoint requires."""
    if run is None:  # another rank of a new run: rank 0 knows its id and says it
        return "rank 0 wrote the checkpoint and says how to continue"
    launcher = f"torchrun --nproc_per_node {env.world_size} -m simclr" if env.enabled else "simclr"
    return f"continue with `{launcher} pretrain --home {home.root} --resume {run.run_id}`"


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
