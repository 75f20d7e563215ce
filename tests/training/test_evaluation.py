"""`simclr evaluate` and `simclr report` on a tiny real run (width-8 ResNet, 400 train / 100 test images)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from training.artifacts import ArtifactHome, sha256_file
from training.cli import main as simclr
from training.evaluation_suite import ALL_ROWS, parse_groups
from training.linear_eval import encode, linear_probe
from training.models import EncoderSpec, build_encoder

ROW_KEYS = {"row", "top1", "top3", "n_train", "n_test", "encoder", "method", "label_fraction", "seconds", "classes"}


@pytest.fixture(scope="module")
def evaluated_home(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("eval-home")
    common = ["--home", str(home)]
    simclr(["pretrain", *common, "--data", str(tiny_folder), "--width", "8", "--batch-size", "100",
            "--epochs", "2", "--proj-dim", "16"])
    run = ArtifactHome(home).run()
    before = sha256_file(run.encoder)
    simclr(["evaluate", *common, "--epochs", "1"])
    assert sha256_file(run.encoder) == before  # evaluation never writes the run's encoder
    simclr(["index", *common])
    simclr(["report", *common])
    return home


def test_every_row_is_well_formed(evaluated_home: Path) -> None:
    run = ArtifactHome(evaluated_home).run()
    for row in ALL_ROWS:
        result = json.loads(run.eval_result(row).read_text())
        assert ROW_KEYS <= result.keys(), row
        assert result["row"] == row and result["n_test"] == 100
        assert 0.0 <= result["top1"] <= result["top3"] <= 1.0, row
    sizes = {row: json.loads(run.eval_result(row).read_text())["n_train"] for row in ALL_ROWS}
    assert sizes["simclr_linear_10"] == sizes["simclr_finetune_10"] == sizes["supervised_10"] == 40
    assert sizes["simclr_linear_100"] == sizes["supervised_100"] == sizes["simclr_knn"] == 400
    supervised_10 = json.loads(run.eval_result("supervised_10").read_text())
    assert supervised_10["same_as"] == "random_finetune_10" and supervised_10["method"] == "supervised"


def test_linear_eval_leaves_the_encoder_bit_identical(evaluated_home: Path) -> None:
    from training.data import load_split

    run = ArtifactHome(evaluated_home).run()
    cfg = json.loads(run.config.read_text())["pretrain"]
    data = load_split(cfg["data"], "train", data_dir=ArtifactHome(evaluated_home).data)
    torch.manual_seed(0)
    encoder = build_encoder(EncoderSpec(width=8)).train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:200]
    x, y = encode(encoder, data.images[pick]), data.labels[pick]
    acc = linear_probe(x[:150], y[:150], x[150:], y[150:], 10, steps=20)
    assert 0.0 <= acc["top1"] <= acc["top3"] <= 1.0
    after = encoder.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_linear_probe_chooses_its_penalty_on_train_features_only() -> None:
    """The held-out choice of the L2 penalty never sees the test split: other test sets, same choice."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g)
    y = torch.arange(400) % 4
    x = centers[y] + 1.5 * torch.randn(400, 16, generator=g)
    picks = set()
    for test_seed in (1, 2):
        tg = torch.Generator().manual_seed(test_seed)
        test_y = torch.randint(0, 4, (100,), generator=tg)
        test_x = centers[test_y] + torch.randn(100, 16, generator=tg)
        acc = linear_probe(x, y, test_x, test_y, 4, steps=50)
        assert acc["weight_decay"] in (0.0, 1e-5, 1e-4, 1e-3, 1e-2) and acc["top1"] > 0.6
        picks.add(acc["weight_decay"])
    assert len(picks) == 1
    assert linear_probe(x, y, x[:10], y[:10], 4, steps=5, weight_decays=(3e-3,))["weight_decay"] == 3e-3


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


def test_report_shows_missing_rows_as_not_run(evaluated_home: Path) -> None:
    home = ArtifactHome(evaluated_home)
    run = home.run()
    bare = home.runs / "bare"
    shutil.copytree(run.dir, bare, ignore=shutil.ignore_patterns("eval", "index", "report"))
    simclr(["report", "--home", str(evaluated_home), "--run", "bare"])  # embeds the test split: no index/
    text = (bare / "report" / "REPORT.md").read_text()
    assert text.count("not run") == 9  # 3 + 3 in the seed table, kNN and both supervised rows
    assert "End-to-end rows" not in text  # no end-to-end row ran: no recipe to name
    assert (bare / "report" / "neighbours.png").stat().st_size > 0


def test_unknown_rows_are_refused(tmp_path: Path) -> None:
    assert parse_groups("knn, linear") == ["knn", "linear"]
    with pytest.raises(SystemExit) as e:
        simclr(["evaluate", "--home", str(tmp_path), "--rows", "linear,bogus"])
    assert "unknown evaluation rows" in str(e.value)


def test_finetune_scales_the_encoder_learning_rate_only() -> None:
    from training.config import FinetuneConfig
    from training.finetune import finetune_groups
    from training.models import Classifier

    spec = EncoderSpec("resnet18", 8)
    model = Classifier(build_encoder(spec), 64, 10)
    groups = finetune_groups(model, FinetuneConfig(lr=1e-3, encoder_lr_scale=0.1, weight_decay=1e-4))
    encoder_params = {id(p) for p in model.encoder.parameters()}
    for group in groups:
        in_encoder = {id(p) in encoder_params for p in group["params"]}
        assert len(in_encoder) == 1  # a group is all encoder or all head
        assert group["base_lr"] == pytest.approx(1e-4 if in_encoder == {True} else 1e-3)
        assert group["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in group["params"]) else 1e-4)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_probe_head_folds_the_standardisation_into_the_layer() -> None:
    """LP-FT's head on raw encoder outputs scores exactly as the probe does on standardised features."""
    from training.data import ImageSet
    from training.evaluate import predict
    from training.finetune import probe_head
    from training.linear_eval import fit_linear

    torch.manual_seed(0)
    encoder = build_encoder(EncoderSpec("resnet18", 8)).eval()
    images = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(60) % 3
    head = probe_head(encoder, ImageSet(images, labels, ["a", "b", "c"], []), 3)
    h = predict(encoder, images)
    probe, mean, std = fit_linear(h, labels, 3)  # the same seed: the same fit
    with torch.no_grad():
        torch.testing.assert_close(head(h), probe((h - mean) / std), rtol=1e-4, atol=1e-4)
