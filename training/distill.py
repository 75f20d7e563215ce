"""Distillation: the fine-tuned classifier teaches a student on every training image.

SimCLRv2 (Chen et al. 2020, "Big Self-Supervised Models are Strong Semi-Supervised
Learners", section 2.3): after fine-tuning on the labelled fraction, "we further leverage
the unlabeled examples" by training a student to match the teacher's predictions,
``L = -sum_x sum_y P_T(y|x; tau) log P_S(y|x; tau)``, here plus the true labels of the
labelled fraction (their targets are one-hot instead of the teacher's). As in Noisy
Student (Xie et al. 2020) the teacher predicts on clean images (and their mirror images,
averaged) once, before training, and the student learns from augmented ones (crop, flip,
Cutout): targets cost one pass instead of a teacher forward per step.

The student has the teacher's architecture and starts from the teacher's weights
(self-distillation), so the time budget goes to using the unlabelled images rather
than to relearning what the teacher knows. The validation split is never trained on.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from core.atomic import atomic_torch_save
from core.datasets import ImageSet, TrainSplit
from core.devices import pick_device, set_threads
from core.home import ArtifactHome
from core.models import Classifier, load_classifier, model_outputs
from core.runs import FinetuneRecord, RunPaths
from training.config import DistillConfig, run_config, with_run_seed
from training.finetune import finetune, stage_data
from training.runtime import keep_freed_memory


@torch.no_grad()  # not inference_mode: the labelled rows are then overwritten in place
def teacher_targets(teacher: Classifier, images: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``(N, C)`` class probabilities ``softmax(logits / temperature)`` of uint8 ``(N, 3, H, W)``
    ``images``, averaged over each image and its mirror image; on the images' device."""
    device = images.device
    probs = []
    for flip in (False, True):
        x = images.flip(3) if flip else images
        logits = torch.cat(list(model_outputs(teacher, x, device=device)))
        probs.append(F.softmax(logits.float() / temperature, dim=1))
    return (probs[0] + probs[1]) / 2


def distill_targets(teacher: Classifier, train: ImageSet, split: TrainSplit, temperature: float) -> ImageSet:
    """The student's training set: every image outside the validation split, with the teacher's
    soft targets, and one-hot targets for the labelled fraction."""
    pool = train.subset(split.unlabelled_pool)
    targets = teacher_targets(teacher, pool.images, temperature)
    labelled = torch.searchsorted(split.unlabelled_pool.to(targets.device), split.labelled.to(targets.device))
    targets[labelled] = F.one_hot(train.labels[split.labelled.to(train.labels.device)], targets.shape[1]).to(targets)
    return ImageSet(pool.images, targets, train.classes, [])


def distill(
    teacher: Classifier, train: ImageSet, split: TrainSplit, test: ImageSet, cfg: DistillConfig, validation: ImageSet | None = None
) -> tuple[Classifier, dict[str, float]]:
    """A student distilled from ``teacher`` on ``train`` (as ``split`` divides it), scored on ``test``
    (and ``validation``). Metrics ``distill_top1``, ``distill_val_top1``, ``distill_seconds``, ...;
    the teacher's targets count against a time budget (their pass is part of the stage)."""
    device = train.images.device
    teacher = teacher.to(device).eval()
    start = time.perf_counter()
    data = distill_targets(teacher, train, split, cfg.temperature)
    targets_s = time.perf_counter() - start
    if cfg.time_budget:
        cfg = replace(cfg, time_budget=max(1.0, cfg.time_budget - targets_s))
    student = copy.deepcopy(teacher)
    model, metrics = finetune(student, student.fc.in_features, data, test, cfg, validation, prefix="distill")
    metrics["distill_images"] = metrics.pop("distill_labelled")  # fine-tuning's name for its training images
    metrics["distill_targets_seconds"] = targets_s
    metrics["distill_seconds"] += targets_s
    metrics["distill_unlabelled"] = float(len(data) - len(split.labelled))
    return model, metrics


def main(cfg: DistillConfig, home: ArtifactHome, run: RunPaths, data: str | None = None, limit: int | None = None) -> dict[str, float]:
    """Distil the run's fine-tuned classifier; write ``student.pt`` and ``distill.json`` into the run
    (what publishing serves from then on)."""
    set_threads()
    keep_freed_memory()
    record = run.read_finetune()
    if record is None or not run.classifier.exists():
        raise FileNotFoundError(f"run {run.run_id} has no fine-tuned classifier to distil; run `simclr finetune --run {run.run_id}` first")
    device = pick_device(cfg.device)
    pcfg = run_config(run)
    cfg = with_run_seed(cfg, pcfg)
    src = data or record.data
    train, split, scored, name, validation = stage_data(home, pcfg, src, limit, float(record.config["label_fraction"]), device,
                                                        "distillation needs the labelled fraction")
    teacher = load_classifier(run.classifier, pcfg.encoder_spec, len(record.classes))
    n_pool = len(split.unlabelled_pool)
    if n_pool == len(split.labelled):
        print(
            f"skipping distillation: every training image outside the validation split is in the labelled fraction "
            f"({record.config['label_fraction']:.0%}), so there is nothing for the teacher to label; the fine-tuned classifier is served"
        )
        return {}
    print(f"distilling on {n_pool} images ({len(split.labelled)} labelled), scoring on {len(scored)} ({name})")
    student, metrics = distill(teacher, train.to(device), split, scored.to(device), cfg, validation)
    atomic_torch_save(student.cpu().state_dict(), run.student)
    run.write_distill(FinetuneRecord(config=cfg.as_dict(), data=src, eval_split=name, classes=record.classes, metrics=metrics))
    val = f"; validation top-1 {metrics['distill_val_top1']:.1%}" if validation is not None else ""
    print(f"distilled: {name} top-1 {metrics['distill_top1']:.1%}, top-3 {metrics['distill_top3']:.1%}{val}")
    return metrics
