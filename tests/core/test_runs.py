"""A run's files (core.runs) and the artifact home (core.home): every reader matches its writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.home import ArtifactHome
from core.models import EncoderSpec
from core.runs import FinetuneRecord, RunPaths


def test_run_files_read_back_what_was_written(tmp_path: Path) -> None:
    run = RunPaths(tmp_path / "run")
    run.dir.mkdir()
    assert run.metrics_history() == [] and run.eval_rows() == {} and run.read_finetune() is None
    run.write_config({"arch": "resnet18", "width": 8, "image_size": 32, "expand": 96, "data": "x"})
    assert run.encoder_spec() == EncoderSpec("resnet18", 8, 32, 96)  # written before stems: the CIFAR stem
    run.write_config({"arch": "resnet18", "width": 8, "image_size": 64, "data": "x"})
    assert run.encoder_spec().stem == "cifar"  # even at 64 px: a run made before stems had no other
    run.write_config({"arch": "resnet18", "width": 8, "image_size": 64, "stem": "auto", "data": "x"})
    assert run.encoder_spec() == EncoderSpec("resnet18", 8, 64, 0, "stride2")
    run.write_config({"arch": "resnet18", "width": 8, "image_size": 32, "expand": 96, "data": "x"})
    run.append_metrics({"epoch": 1, "loss": 5.0})
    run.append_metrics({"epoch": 2, "loss": 4.0})
    assert [h["epoch"] for h in run.metrics_history()] == [1, 2]
    record = FinetuneRecord(config={"epochs": 1}, data="x", eval_split="held-out train", classes=["a", "b"], metrics={"finetune_top1": 0.5})
    run.write_finetune(record)
    assert run.read_finetune() == record
    run.write_eval_row("simclr_knn", {"top1": 0.5})
    assert run.eval_rows() == {"simclr_knn": {"top1": 0.5}} and run.eval_result("simclr_knn").exists()


def test_finetune_records_written_before_eval_split_still_read(tmp_path: Path) -> None:
    run = RunPaths(tmp_path)
    old = {"config": {}, "data": "x", "classes": ["a", "b"], "metrics": {}}
    run.finetune.write_text(json.dumps({**old, "test_split": "train"}))
    assert run.read_finetune().eval_split == "train"  # scored on the train split, as it then was
    run.finetune.write_text(json.dumps(old))
    assert run.read_finetune().eval_split == "test"


def test_the_default_run_is_the_newest_with_a_checkpoint(tmp_path: Path) -> None:
    home = ArtifactHome(tmp_path)
    with pytest.raises(FileNotFoundError, match="no pretraining run"):
        home.run()
    older, newer, empty = home.new_run(), home.new_run(), home.new_run()
    assert len({older.run_id, newer.run_id, empty.run_id}) == 3  # one second, three runs: suffixed ids
    older.checkpoint.write_bytes(b"")
    newer.checkpoint.write_bytes(b"")
    os.utime(older.dir, (1, 1))
    assert home.run() == newer  # the newest run without a checkpoint is not resumable
    assert home.run(older.run_id) == older
    with pytest.raises(FileNotFoundError, match="no run"):
        home.run("missing")


def test_current_points_only_at_a_bundle(tmp_path: Path) -> None:
    home = ArtifactHome(tmp_path)
    assert home.current_version() is None
    with pytest.raises(FileNotFoundError, match="no bundle"):
        home.set_current("v1")
    home.bundle_dir("v1").mkdir(parents=True)
    (home.bundle_dir("v1") / "manifest.json").write_text("{}")
    home.set_current("v1")
    assert home.current_version() == "v1" and home.pointer.read_text() == "v1\n"
