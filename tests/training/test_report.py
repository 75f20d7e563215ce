"""`simclr report` on the evaluated shared run: the seed's table beside ours, and the figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.home import ArtifactHome
from simclr.cli import main as simclr


def test_report_has_the_table_and_figures(evaluated_home: Path) -> None:
    run = ArtifactHome(evaluated_home).run()
    text = run.report.read_text()
    assert "| SimCLR |" in text and "| random init |" in text
    assert "77.4% / 94.8%" in text and "71.3% / 93.6%" in text and "38.2% / 60.1%" in text and "15.6% / 34.4%" in text
    assert "supervised from scratch, 100% labels" in text and "weighted kNN" in text
    assert "not run" not in text
    assert "End-to-end rows: Adam lr" in text and "simclr_finetune_10 " in text  # the fine-tune recipe, epochs per row
    for name in ("loss", "accuracy", "neighbours"):
        assert run.report_figure(name).stat().st_size > 0
        assert f"({name}.png)" in text


def test_report_shows_missing_rows_as_not_run(evaluated_home: Path, tmp_path: Path) -> None:
    home = ArtifactHome(shutil.copytree(evaluated_home, tmp_path / "home"))  # adds a run: a copy of the shared home
    run = home.run()
    bare = home.runs / "bare"
    shutil.copytree(run.dir, bare, ignore=shutil.ignore_patterns("eval", "index", "report"))
    simclr(["report", "--home", str(home.root), "--run", "bare"])  # embeds the test split: no index/
    text = (bare / "report" / "REPORT.md").read_text()
    assert text.count("not run") == 9  # 3 + 3 in the seed table, kNN and both supervised rows
    assert "End-to-end rows" not in text  # no end-to-end row ran: no recipe to name
    assert (bare / "report" / "neighbours.png").stat().st_size > 0


def test_a_seed_table_shows_the_mean_each_run_and_the_seeds_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`simclr report --seed-table FILE`: the table benchmarks/seed_table.py writes into its result."""
    run = {"finetune_top1": 77.0, "finetune_top3": 94.0, "linear_top1": 71.0, "linear_top3": 92.0, "distill_top1": 80.0,
           "distill_top3": 95.0, "baseline_distill_top1": 74.0, "knn_top1": 70.0, "finetune_val_top1": 76.5,
           "linear_val_top1": 70.5, "distill_val_top1": 79.5, "baseline_distill_val_top1": 73.5, "knn_val_top1": 69.5,
           "pretrain_minutes": 103.0, "finetune_minutes": 15.0, "distill_minutes": 30.0}
    other = {k: v + 1 for k, v in run.items()}
    mean = {k: (run[k] + other[k]) / 2 for k in run}
    result = {"runs": [{"seed": 0, **run}, {"seed": 1, **other}], "mean": mean,
              "seed_paper": {"finetune_top1": 77.4, "finetune_top3": 94.8, "linear_top1": 71.3, "linear_top3": 93.6}}
    (tmp_path / "table.json").write_text(json.dumps(result))
    simclr(["report", "--seed-table", str(tmp_path / "table.json")])
    text = capsys.readouterr().out
    assert "| | mean of 2 | seed 0 | seed 1 | the seed's (ResNet-50, GPU) |" in text
    assert "| SimCLR, fine-tuned end to end, 10% labels, top-1 | 77.5 | 77.0 | 78.0 | 77.4 |" in text
    assert "| distilled from the SimCLR fine-tune, top-1 | 80.5 | 80.0 | 81.0 |  |" in text
    assert "| validation: fine-tune / linear / distilled / baseline / kNN, top-1 | 77.0 / 71.0 / 80.0 / 74.0 / 70.0 |" in text
    assert "| minutes: pretraining + fine-tuning, distillation | 119, 30 | 118, 30 | 120, 31 |  |" in text
