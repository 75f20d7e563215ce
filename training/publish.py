"""The ``publish`` stage: a finished run (encoder, classifier, index) -> a servable bundle."""

from __future__ import annotations

from core.bundles import publish_bundle
from core.home import ArtifactHome
from core.runs import FinetuneRecord, RunPaths
from training.config import run_config


def run_metrics(run: RunPaths) -> tuple[FinetuneRecord, dict[str, float]]:
    """The run's fine-tune record and the metrics it has measured: fine-tune accuracy, last kNN, loss."""
    record = run.read_finetune()
    if record is None or not run.classifier.exists():
        raise FileNotFoundError(f"run {run.run_id} has no fine-tuned classifier; run `simclr finetune --run {run.run_id}`")
    if not run.index_dir.exists():
        raise FileNotFoundError(f"run {run.run_id} has no index; run `simclr index --run {run.run_id}`")
    metrics = {k: float(v) for k, v in record.metrics.items()}
    history = run.metrics_history()
    if history:
        last = history[-1]
        metrics["pretrain_epochs"] = float(last["epoch"])
        metrics["pretrain_loss"] = float(last["loss"])
        metrics["pretrain_seconds"] = float(last["train_seconds"])
        if "knn_top1" in last:
            metrics["knn_top1"] = float(last["knn_top1"])
    return record, metrics


def publish_run(home: ArtifactHome, run: RunPaths, make_current: bool = True) -> str:
    """Pack ``run`` into ``models/<version>/`` (refused if its index and classifier disagree); returns the version."""
    cfg = run_config(run)
    record, metrics = run_metrics(run)
    return publish_bundle(
        home,
        encoder_file=run.encoder,
        classifier_file=run.classifier,
        index_dir=run.index_dir,
        spec=cfg.encoder_spec,
        class_names=record.classes,
        metrics=metrics,
        metrics_split=record.eval_split,
        run_id=run.run_id,
        make_current=make_current,
    )
