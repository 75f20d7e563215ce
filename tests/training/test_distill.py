"""Distillation (``simclr distill``, refresh's --distill-*), the validation split through every stage,
and the distillation baseline row of ``simclr evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.bundles import load_current, sha256_file
from core.datasets import ImageSet, split_train
from core.home import ArtifactHome
from core.models import Classifier, EncoderSpec, build_encoder
from simclr.cli import main as simclr
from training.distill import distill_targets, teacher_targets
from training.evaluate import predict


def tiny_classifier(n_classes: int = 3) -> Classifier:
    torch.manual_seed(0)
    return Classifier(build_encoder(EncoderSpec("resnet18", 8)), 64, n_classes).eval()


def test_teacher_targets_are_the_mean_of_the_image_and_its_mirror_softened_by_the_temperature() -> None:
    teacher = tiny_classifier()
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    targets = teacher_targets(teacher, images)
    logits, mirrored = predict(teacher, images), predict(teacher, images.flip(3))
    expected = (F.softmax(logits, 1) + F.softmax(mirrored, 1)) / 2
    torch.testing.assert_close(targets, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(targets.sum(1), torch.ones(12))
    softer = teacher_targets(teacher, images, temperature=4.0)
    entropy = lambda p: -(p * p.log()).sum(1)  # noqa: E731
    assert (entropy(softer) > entropy(targets)).all()


def test_the_student_learns_the_labels_of_the_labelled_fraction_and_never_sees_the_validation_split() -> None:
    labels = torch.arange(3).repeat_interleave(20)
    images = torch.arange(60, dtype=torch.uint8).view(60, 1, 1, 1).expand(60, 3, 32, 32).contiguous()
    split = split_train(labels, 0.1, validation=6)
    data = distill_targets(tiny_classifier(), ImageSet(images, labels, ["a", "b", "c"], []), split, 1.0)
    assert len(data) == 54 and data.labels.shape == (54, 3)
    seen = set(data.images[:, 0, 0, 0].tolist())
    assert not seen & set(split.validation.tolist())
    for i in split.labelled.tolist():  # the true class, one-hot
        row = data.labels[data.images[:, 0, 0, 0] == i][0]
        assert row.tolist() == F.one_hot(labels[i], 3).float().tolist()
    torch.testing.assert_close(data.labels.sum(1), torch.ones(54))


def test_distill_writes_the_student_that_publish_then_serves(trained_home_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ArtifactHome(trained_home_copy)
    common = ["--home", str(home.root)]
    run = home.run()
    simclr(["distill", *common, "--distill-epochs", "1"])
    assert "distilling on 400 images (40 labelled)" in capsys.readouterr().out
    record = json.loads(run.distill.read_text())
    assert record["eval_split"] == "test" and record["config"]["epochs"] == 1
    assert {"distill_top1", "distill_top3", "distill_seconds", "distill_unlabelled"} <= record["metrics"].keys()
    assert record["metrics"]["distill_unlabelled"] == 360
    simclr(["publish", *common])
    bundle = load_current(home)
    assert bundle.manifest.weights["classifier"] == sha256_file(run.student)  # the student is served
    assert bundle.manifest.metrics["distill_top1"] == pytest.approx(record["metrics"]["distill_top1"])
    # A new fine-tune makes the student stale: it is removed, and the new classifier is served.
    simclr(["finetune", *common, "--epochs", "1"])
    assert not run.student.exists() and not run.distill.exists()
    simclr(["publish", *common])
    assert load_current(home).manifest.weights["classifier"] == sha256_file(run.classifier)


def test_distill_needs_a_fine_tuned_run(tiny_folder: Path, tmp_path: Path) -> None:
    common = ["--home", str(tmp_path)]
    simclr(["pretrain", *common, "--data", str(tiny_folder), "--width", "8", "--batch-size", "100", "--epochs", "1", "--knn-every", "0"])
    with pytest.raises(SystemExit) as e:
        simclr(["distill", *common])
    assert "no fine-tuned classifier" in str(e.value)


def test_a_run_with_a_validation_split_holds_it_out_of_every_stage_and_scores_it(
    tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """refresh --validation 100 --distill-epochs 1: pretraining, fine-tuning and distillation train on the
    300 other images, and each scores the 100 (kNN monitor, fine-tune, student); so does evaluate."""
    common = ["--home", str(tmp_path)]
    simclr(
        [
            "refresh",
            *common,
            "--data",
            str(tiny_folder),
            "--validation",
            "100",
            "--width",
            "8",
            "--batch-size",
            "100",
            "--epochs",
            "1",
            "--proj-dim",
            "16",
            "--ft-epochs",
            "1",
            "--distill-epochs",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "pretraining resnet18 (width 8) on 300 images" in out
    assert "fine-tuning on 40 labelled images (10%), scoring on 100 (test), validation 100" in out
    assert "distilling on 300 images (40 labelled)" in out
    run = ArtifactHome(tmp_path).run()
    finetuned = json.loads(run.finetune.read_text())["metrics"]
    distilled = json.loads(run.distill.read_text())["metrics"]
    assert 0 <= finetuned["finetune_val_top1"] <= finetuned["finetune_val_top3"] <= 1
    assert 0 <= distilled["distill_val_top1"] <= 1 and distilled["distill_unlabelled"] == 260
    metrics = load_current(ArtifactHome(tmp_path)).manifest.metrics
    assert "knn_val_top1" in metrics and "knn_top1" not in metrics  # the monitor scored validation, not test

    simclr(["evaluate", *common, "--rows", "knn,linear,distill", "--epochs", "1", "--distill-epochs", "1"])
    rows = run.eval_rows()
    assert set(rows) == {"simclr_knn", "simclr_linear_10", "simclr_linear_100", "random_finetune_10", "random_distill_10"}
    for name, row in rows.items():
        assert row["n_val"] == 100 and 0 <= row["val_top1"] <= row["val_top3"] <= 1, name
    assert rows["simclr_knn"]["n_train"] == rows["simclr_linear_100"]["n_train"] == 300
    assert rows["random_distill_10"]["teacher"] == "random_finetune_10" and rows["random_distill_10"]["method"] == "distill"
