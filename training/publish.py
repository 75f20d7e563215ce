"""The ``publish`` stage: a finished run (encoder, index, and a classifier if it was fine-tuned) -> a servable bundle."""

from __future__ import annotations

from core.bundles import publish_bundle
from core.home import ArtifactHome
from core.runs import FinetuneRecord, RunPaths


def run_metrics(run: RunPaths) -> tuple[FinetuneRecord | None, dict[str, float]]:
    """The run's fine-tune record (None for a run that was not fine-tuned: it publishes without a
    classifier) and the metrics it has measured: fine-tune accuracy, last kNN, loss."""
    record = run.read_finetune()
    if (record is None) != (not run.classifier.exists()):  # a fine-tune that stopped between its two files
        have, lacks = (run.classifier.name, run.finetune.name) if record is None else (run.finetune.name, run.classifier.name)
        raise FileNotFoundError(f"run {run.run_id} has {have} but no {lacks}; run `simclr finetune --run {run.run_id}` again")
    if not run.index_dir.exists():
        raise FileNotFoundError(f"run {run.run_id} has no index; run `simclr index --run {run.run_id}`")
    metrics = {k: float(v) for k, v in record.metrics.items()} if record is not None else {}
    student = served_student(run)
    if student is not None:
        metrics |= {k: float(v) for k, v in student.metrics.items()}
    history = run.metrics_history()
    if history:
        last = history[-1]
        metrics["pretrain_epochs"] = float(last["epoch"])
        metrics["pretrain_loss"] = float(last["loss"])
        metrics["pretrain_seconds"] = float(last["train_seconds"])
        if "knn_top1" in last:  # on the validation split when the run held one out (training.pretrain.load_data)
            held_out = run.pretrain_config().get("validation", 0)
            metrics["knn_val_top1" if held_out else "knn_top1"] = float(last["knn_top1"])
    return record, metrics


def served_student(run: RunPaths) -> FinetuneRecord | None:
    """The run's distillation record when its student is complete (both files); it is then the
    classifier published. A distillation that stopped between its files leaves the teacher served."""
    record = run.read_distill()
    return record if record is not None and run.student.exists() else None


def publish_run(home: ArtifactHome, run: RunPaths, make_current: bool = True) -> str:
    """Pack ``run`` into ``models/<version>/`` (refused if its index and classifier disagree); returns the version.

    A run that was not fine-tuned (data without labels) publishes a bundle without a classifier:
    it serves embeddings and neighbours, and ``/classify`` answers 409.
    """
    record, metrics = run_metrics(run)
    if record is not None:
        split = record.eval_split
    else:  # no classifier: the only accuracy is pretraining's kNN monitor, which runs on the test split
        split = "test" if "knn_top1" in metrics else "none"
    return publish_bundle(
        home,
        encoder_file=run.encoder,
        classifier_file=(run.student if served_student(run) else run.classifier) if record is not None else None,
        index_dir=run.index_dir,
        spec=run.encoder_spec(),
        class_names=record.classes if record is not None else [],
        metrics=metrics,
        metrics_split=split,
        run_id=run.run_id,
        make_current=make_current,
    )
