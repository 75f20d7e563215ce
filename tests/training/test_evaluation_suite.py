"""`simclr evaluate` on the shared tiny run (width-8 ResNet, 400 train / 100 test images): every row of the seed's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.home import ArtifactHome
from simclr.cli import main as simclr
from training.evaluation_suite import ALL_ROWS, parse_groups

DEFAULT_ROWS = tuple(row for row in ALL_ROWS if row != "random_distill_10")  # `--rows distill` is asked for (tests/training/test_distill.py)

ROW_KEYS = {"row", "top1", "top3", "n_train", "n_test", "encoder", "method", "label_fraction", "seconds", "classes"}


def test_every_row_is_well_formed(evaluated_home: Path) -> None:
    run = ArtifactHome(evaluated_home).run()
    for row in DEFAULT_ROWS:
        result = json.loads(run.eval_result(row).read_text())
        assert ROW_KEYS <= result.keys(), row
        assert result["row"] == row and result["n_test"] == 100
        assert 0.0 <= result["top1"] <= result["top3"] <= 1.0, row
    sizes = {row: json.loads(run.eval_result(row).read_text())["n_train"] for row in DEFAULT_ROWS}
    assert sizes["simclr_linear_10"] == sizes["simclr_finetune_10"] == sizes["supervised_10"] == 40
    assert sizes["simclr_linear_100"] == sizes["supervised_100"] == sizes["simclr_knn"] == 400
    supervised_10 = json.loads(run.eval_result("supervised_10").read_text())
    assert supervised_10["same_as"] == "random_finetune_10" and supervised_10["method"] == "supervised"
    assert set(run.eval_rows()) == set(DEFAULT_ROWS)


def test_unknown_rows_are_refused(tmp_path: Path) -> None:
    assert parse_groups("knn, linear") == ["knn", "linear"]
    with pytest.raises(SystemExit) as e:
        simclr(["evaluate", "--home", str(tmp_path), "--rows", "linear,bogus"])
    assert "unknown evaluation rows" in str(e.value)
