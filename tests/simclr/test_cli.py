"""The ``simclr`` command: argument refusals, one-line errors, presets and flags, an instant ``--help``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simclr.cli import build_parser, duration, finetune_config, pretrain_config
from simclr.cli import main as simclr


def test_negative_expansion_is_refused_by_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        simclr(["pretrain", "--data", str(tmp_path), "--home", str(tmp_path), "--expand", "-1"])
    assert e.value.code == 2 and "--expand: must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--width", "0", "must be >= 1, got 0"),
    ("--batch-size", "-5", "must be >= 1, got -5"),
    ("--time-budget", "soon", "not a duration: 'soon'"),
    ("--image-size", "8", "must be >= 16 pixels, got 8"),
])  # fmt: skip
def test_bad_pretrain_flags_are_refused_before_anything_runs(
    flag: str, value: str, says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as e:
        simclr(["pretrain", "--data", str(tmp_path), "--home", str(tmp_path), flag, value])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cli_reports_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        simclr(["pretrain", "--home", str(tmp_path), "--data", str(tmp_path / "missing")])
    assert "neither 'cifar10' nor an existing folder" in str(e.value)
    with pytest.raises(SystemExit) as e:
        simclr(["publish", "--home", str(tmp_path)])
    assert "no pretraining run" in str(e.value)
    assert str(e.value).startswith("simclr publish: error: ") and "\n" not in str(e.value)


def test_durations() -> None:
    assert duration("90m") == 5400 and duration("1.5h") == 5400 and duration("300s") == 300 and duration("300") == 300


def test_a_preset_then_the_flags_given() -> None:
    parser = build_parser()
    quick = pretrain_config(parser.parse_args(["pretrain", "--preset", "quick", "--lr", "0.1"]))
    assert quick.width == 16 and quick.optimizer == "sgd" and quick.lr == 0.1 and quick.time_budget == 330.0
    # An epoch count without a time budget drops the preset's budget: the epochs are what was asked for.
    epochs = pretrain_config(parser.parse_args(["pretrain", "--preset", "quick", "--epochs", "5"]))
    assert epochs.epochs == 5 and epochs.time_budget is None and epochs.budget.seconds is None
    ft = finetune_config(parser.parse_args(["finetune", "--preset", "cpu", "--label-smoothing", "0.2"]))
    assert ft.time_budget == 900.0 and ft.cutout == 16 and ft.label_smoothing == 0.2
    refresh = finetune_config(parser.parse_args(["refresh", "--ft-epochs", "3", "--epochs", "7"]))
    assert refresh.epochs == 3 and pretrain_config(parser.parse_args(["refresh", "--ft-epochs", "3", "--epochs", "7"])).epochs == 7


def test_image_size_and_stem_and_a_presets_view_size_scaled_to_the_image() -> None:
    parser = build_parser()
    cpu64 = pretrain_config(parser.parse_args(["refresh", "--preset", "cpu", "--image-size", "64"]))
    assert cpu64.image_size == 64 and cpu64.crop_size == 48 and cpu64.encoder_spec.stem == "stride2"  # the preset's 24 px at 32
    assert pretrain_config(parser.parse_args(["pretrain", "--preset", "cpu"])).crop_size == 24
    given = pretrain_config(parser.parse_args(["pretrain", "--preset", "cpu", "--image-size", "64", "--crop-size", "40", "--stem", "cifar"]))
    assert given.crop_size == 40 and given.encoder_spec.stem == "cifar"
    assert pretrain_config(parser.parse_args(["pretrain"])).encoder_spec.stem == "cifar"


def test_help_imports_nothing_heavy() -> None:
    """``simclr --help`` answers at once: building the parser imports no torch, FAISS, FastAPI or matplotlib."""
    code = ("import sys; from simclr.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'faiss', 'fastapi', 'matplotlib', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("given", [[], ["--device", "cuda:1"]])
def test_every_stage_that_computes_takes_device_and_refresh_passes_it_to_each(
    given: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``--device`` rule (default auto) for pretrain, finetune, evaluate and index. ``refresh --device cuda:1``
    once pretrained there and fine-tuned and indexed wherever the default put them."""
    from core.home import ArtifactHome
    from core.runs import RunPaths
    from index import build
    from simclr import cli
    from training import evaluation_suite, finetune, pretrain, publish

    seen: dict[str, str] = {}
    run = RunPaths(tmp_path / "run")
    monkeypatch.setattr(pretrain, "main", lambda cfg, home, run_=None: seen.__setitem__("pretrain", cfg.device) or run)
    monkeypatch.setattr(finetune, "main", lambda cfg, home, run_, **kw: seen.__setitem__("finetune", cfg.device))
    monkeypatch.setattr(evaluation_suite, "main", lambda cfg, home, run_, groups, **kw: seen.__setitem__("evaluate", cfg.device))
    monkeypatch.setattr(build, "main", lambda run_, data_dir, device, **kw: seen.__setitem__("index", device))
    monkeypatch.setattr(publish, "publish_run", lambda home, run_, **kw: "v1")
    monkeypatch.setattr(cli, "missing_labels", lambda home, run_: None)
    monkeypatch.setattr(ArtifactHome, "run", lambda self, run_id=None: run)
    want = given[-1] if given else "auto"
    simclr(["refresh", "--home", str(tmp_path), "--data", str(tmp_path), *given])
    assert seen == {"pretrain": want, "finetune": want, "index": want}
    seen.clear()
    for stage in ("finetune", "evaluate", "index"):
        simclr([stage, "--home", str(tmp_path), *given])
    assert seen == {"finetune": want, "evaluate": want, "index": want}
