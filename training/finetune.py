"""End-to-end fine-tuning of a pretrained encoder plus a linear head on a labelled fraction.

As in the seed, the classifier trains on a stratified 10% of the training labels
(fixed seed) and is scored top-1 / top-3 on the whole test split (for data without one,
on the training images outside the labelled fraction, and recorded as such).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.atomic import atomic_torch_save
from core.datasets import DataError, ImageSet, TrainSplit, has_split, load_split, split_train
from core.devices import pick_device, set_threads
from core.home import ArtifactHome
from core.models import Classifier, feature_dim, model_outputs
from core.runs import FinetuneRecord, RunPaths
from training.augment import crop_flip
from training.config import FinetuneConfig, PretrainConfig, run_config, with_run_seed
from training.evaluate import predict, topk_accuracy
from training.linear_eval import fit_linear
from training.runtime import autocast, keep_freed_memory, param_groups, seeded_generator, warmup_cosine


def finetune_groups(model: Classifier, cfg: FinetuneConfig) -> list[dict[str, object]]:
    """Parameter groups with their peak ``base_lr``: the encoder's (and a pretrained neck's) scaled by ``cfg.encoder_lr_scale``.

    Norms and biases get no weight decay, as in pretraining.
    """
    groups = []
    for part, scale in ((model.encoder, cfg.encoder_lr_scale), (model.neck, cfg.encoder_lr_scale), (model.fc, 1.0)):
        for group in param_groups(part, cfg.weight_decay):
            if group["params"]:
                groups.append({**group, "base_lr": cfg.lr * scale})
    return groups


@torch.no_grad()
def probe_head(encoder: torch.nn.Module, data: ImageSet, n_classes: int) -> torch.nn.Linear:
    """A linear head fitted on ``encoder``'s frozen features of ``data``, for LP-FT.

    ``fit_linear`` works on standardised features; its mean and std are folded
    into the layer, so the head takes the encoder's raw ``(B, D)`` output as the
    classifier does.
    """
    device = data.images.device
    # The encoder's raw output in eval mode, kept on the device where the labels are (``predict``
    # would bring it to the CPU, and the probe would then mix CPU features with CUDA labels).
    h = torch.cat(list(model_outputs(encoder, data.images, device=device)))
    with torch.enable_grad():
        head, mean, std = fit_linear(h, data.labels, n_classes)
    folded = torch.nn.Linear(h.shape[1], n_classes, device=device)
    folded.weight.copy_(head.weight / std)
    folded.bias.copy_(head.bias - (folded.weight * mean).sum(1))
    return folded


def train_step(model: Classifier, optimizer: torch.optim.Optimizer, data: ImageSet, idx: torch.Tensor, cfg: FinetuneConfig,
               generator: torch.Generator, lr_scale: float) -> torch.Tensor:
    """One step on ``data[idx]`` with random crop + flip (+ cutout), each group at ``base_lr * lr_scale``.
    Returns the loss on the device, unread (reading it every step would sync the host with a GPU)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * lr_scale
    x = crop_flip(data.images[idx], generator=generator, cutout=cfg.cutout).contiguous(memory_format=torch.channels_last)
    with autocast(x.device):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), data.labels[idx], label_smoothing=cfg.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_one_epoch(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    data: ImageSet,
    cfg: FinetuneConfig,
    progress_at: Callable[[], float],
    generator: torch.Generator,
) -> float:
    """One shuffled pass with random crop + flip (+ cutout); returns the mean cross-entropy."""
    model.train()
    device = data.images.device
    order = torch.randperm(len(data), device=device, generator=generator)
    n_batches = max(1, len(data) // cfg.batch_size)  # small labelled sets still get a step
    loss_sum = torch.zeros((), device=device)
    for i in range(n_batches):
        progress = progress_at()
        if progress >= 1 and i > 0:  # a time budget ends mid-epoch, not an epoch late
            n_batches = i
            break
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        loss_sum += train_step(model, optimizer, data, idx, cfg, generator, warmup_cosine(progress, 0.0))
    return (loss_sum / n_batches).item()


def finetune(
    encoder: torch.nn.Module | Classifier,
    spec_dim: int,
    train: ImageSet,
    test: ImageSet,
    cfg: FinetuneConfig,
    validation: ImageSet | None = None,
    prefix: str = "finetune",
    projection: dict[str, torch.Tensor] | None = None,
) -> tuple[Classifier, dict[str, float]]:
    """Fine-tune ``encoder`` + a new linear head on ``train``, or a whole ``Classifier`` as it is;
    score on ``test`` (``<prefix>_top1``, ...) and on ``validation`` if given (``<prefix>_val_top1``).
    All on one device.

    With ``cfg.head_from == "projection"`` a hidden layer sits between the encoder and the head,
    initialised from ``projection`` (``RunPaths.load_projection_layer``), or at random without it
    (the random-init baselines: the same architecture).

    ``train.labels`` are class ids ``(N,)``, or class probabilities ``(N, C)`` (distillation's
    soft targets: cross-entropy takes either).
    """
    device = train.images.device
    seed = cfg.seed if cfg.seed is not None else 0  # the stages' main() give the run's seed (with_run_seed)
    torch.manual_seed(seed)
    generator = seeded_generator(device, seed)
    start = time.perf_counter()  # the probe of LP-FT counts against a time budget too
    if isinstance(encoder, Classifier):
        model = encoder.to(device).to(memory_format=torch.channels_last)
    else:
        if cfg.head_from not in ("encoder", "projection"):
            raise ValueError(f"unknown head_from {cfg.head_from!r}; choose encoder or projection")
        hidden = 0
        if cfg.head_from == "projection":  # the random-init baselines (no projection) get a neck as wide as the features
            hidden = projection["0.weight"].shape[0] if projection is not None else spec_dim
        model = Classifier(encoder, spec_dim, len(train.classes), hidden=hidden)
        if hidden and projection is not None:
            model.neck.load_state_dict(projection)
        model = model.to(device).to(memory_format=torch.channels_last)
        head = probe_head(torch.nn.Sequential(model.encoder, model.neck), train, len(train.classes)) if cfg.head_init == "probe" else None
        if head is not None:
            model.fc.load_state_dict(head.state_dict())
        elif cfg.head_init != "random":
            raise ValueError(f"unknown head_init {cfg.head_init!r}; choose random or probe")
    optimizer = torch.optim.Adam(finetune_groups(model, cfg), lr=cfg.lr)
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    state = {"epoch": 0}

    def progress_at() -> float:  # by epochs, the cosine steps once per epoch: fine for a few dozen
        return cfg.budget.progress(state["epoch"], time.perf_counter() - start)

    bar = tqdm(desc=prefix.replace("finetune", "fine-tuning"), unit="epoch", total=None if cfg.time_budget else cfg.epochs)
    while progress_at() < 1:
        loss = train_one_epoch(model, optimizer, train, cfg, progress_at, generator)
        state["epoch"] += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()
    train_seconds = time.perf_counter() - start
    metrics = {f"{prefix}_{k}": v for k, v in accuracy(model, test).items()}
    if validation is not None:
        metrics |= {f"{prefix}_val_{k}": v for k, v in accuracy(model, validation).items()}
    metrics |= {
        f"{prefix}_epochs": float(state["epoch"]),
        f"{prefix}_seconds": train_seconds,
        f"{prefix}_labelled": float(len(train)),
        f"{prefix}_steps_per_epoch": float(steps_per_epoch),
    }
    return model, metrics


def accuracy(model: Classifier, data: ImageSet) -> dict[str, float]:
    """``{"top1", "top3"}`` of ``model`` on ``data`` (class-id labels)."""
    scores = predict(model, data.images, device=data.images.device)
    return topk_accuracy(scores, data.labels.cpu(), (1, 3))


def evaluation_split(src: str, train: ImageSet, split: TrainSplit, home: ArtifactHome, pcfg: PretrainConfig,
                     limit: int | None) -> tuple[ImageSet, str]:
    """The images a classifier is scored on, and what to call them: the test split when the data
    has one; otherwise the training images outside the labelled fraction and the validation split
    ("held-out train"), never images it was trained on unless there are no others ("train (labelled)", said so)."""
    if has_split(src, "test"):
        return load_split(src, "test", data_dir=home.data, image_size=pcfg.image_size, limit=limit, seed=pcfg.seed), "test"
    held_out = torch.ones(len(train), dtype=torch.bool)
    held_out[split.labelled] = False
    held_out[split.validation] = False
    if held_out.any():
        return train.subset(torch.nonzero(held_out).flatten()), "held-out train"
    return train.subset(split.labelled), "train (labelled)"


def stage_data(home: ArtifactHome, pcfg: PretrainConfig, src: str, limit: int | None, label_fraction: float, device: torch.device,
               why_labels: str) -> tuple[ImageSet, TrainSplit, ImageSet, str, ImageSet | None]:
    """What a stage that trains a classifier reads: the training split (refused without labels, saying
    ``why_labels``), how it divides (``split_train``), the images it is scored on and their name
    (``evaluation_split``), and the validation split on ``device`` (None without one)."""
    lim = limit if limit is not None else pcfg.limit
    train = load_split(src, "train", data_dir=home.data, image_size=pcfg.image_size, limit=lim, seed=pcfg.seed)
    if not train.labelled:
        raise DataError(f"{why_labels}: {src} must have one subfolder per class")
    split = split_train(train.labels, label_fraction, pcfg.validation)
    scored, name = evaluation_split(src, train, split, home, pcfg, lim)
    validation = train.subset(split.validation).to(device) if len(split.validation) else None
    return train, split, scored, name, validation


def main(cfg: FinetuneConfig, home: ArtifactHome, run: RunPaths, data: str | None = None, limit: int | None = None) -> dict[str, float]:
    """Fine-tune the run's encoder; write ``classifier.pt`` and ``finetune.json`` into the run."""
    set_threads()
    keep_freed_memory()
    device = pick_device(cfg.device)
    pcfg = run_config(run)
    cfg = with_run_seed(cfg, pcfg)
    src = data or pcfg.data
    train, split, scored, name, validation = stage_data(home, pcfg, src, limit, cfg.label_fraction, device, "fine-tuning needs labels")
    labelled = train.subset(split.labelled).to(device)
    held = f", validation {len(validation)}" if validation is not None else ""
    print(f"fine-tuning on {len(labelled)} labelled images ({cfg.label_fraction:.0%}), scoring on {len(scored)} ({name}){held}")
    projection = run.load_projection_layer() if cfg.head_from == "projection" else None
    model, metrics = finetune(run.load_encoder(), feature_dim(pcfg.encoder_spec), labelled, scored.to(device), cfg, validation,
                              projection=projection)
    run.distill.unlink(missing_ok=True)  # a student of the previous classifier is stale (record first: see publish)
    run.student.unlink(missing_ok=True)
    atomic_torch_save(model.cpu().state_dict(), run.classifier)
    run.write_finetune(FinetuneRecord(config=cfg.as_dict(), data=src, eval_split=name, classes=train.classes, metrics=metrics))
    val = f"; validation top-1 {metrics['finetune_val_top1']:.1%}" if validation is not None else ""
    print(f"fine-tuned: {name} top-1 {metrics['finetune_top1']:.1%}, top-3 {metrics['finetune_top3']:.1%}{val}")
    return metrics
