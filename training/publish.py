"""The ``publish`` stage: a finished run (encoder, classifier, index) -> a servable bundle."""

from __future__ import annotations

import json

from training.artifacts import ArtifactHome, RunPaths, publish_bundle
from training.finetune import run_config


def run_metrics(run: RunPaths) -> tuple[list[str], dict[str, float]]:
    """The class names and the metrics a run has measured: fine-tune accuracy, last kNN, loss."""
    if not run.classifier.exists() or not run.finetune.exists():
        raise FileNotFoundError(f"run {run.run_id} has no fine-tuned classifier; run `simclr finetune --run {run.run_id}`")
    if not run.index_dir.exists():
        raise FileNotFoundError(f"run {run.run_id} has no index; run `simclr index --run {run.run_id}`")
    finetuned = json.loads(run.finetune.read_text())
    metrics = {k: float(v) for k, v in finetuned["metrics"].items()}
    if run.metrics.exists():
        lines = [json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()]
        if lines:
            last = lines[-1]
            metrics["pretrain_epochs"] = float(last["epoch"])
            metrics["pretrain_loss"] = float(last["loss"])
            metrics["pretrain_seconds"] = float(last["train_seconds"])
            if "knn_top1" in last:
                metrics["knn_top1"] = float(last["knn_top1"])
    return list(finetuned["classes"]), metrics


def publish_run(home: ArtifactHome, run: RunPaths, make_current: bool = True) -> str:
    cfg = run_config(run)
    classes, metrics = run_metrics(run)
    return publish_bundle(
        home,
        encoder_file=run.encoder,
        classifier_file=run.classifier,
        index_dir=run.index_dir,
        spec=cfg.encoder_spec,
        class_names=classes,
        metrics=metrics,
        run_id=run.run_id,
        make_current=make_current,
    )
