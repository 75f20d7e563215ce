"""`simclr report` on the evaluated shared run: the seed's table beside ours, and the figures."""

from __future__ import annotations

import shutil
from pathlib import Path

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
