"""Fine-tuning: parameter groups, the LP-FT head, and what the classifier is scored on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.bundles import load_current
from core.datasets import ImageSet, TrainSplit, outside
from core.home import ArtifactHome
from core.models import Classifier, EncoderSpec, build_encoder
from simclr.cli import main as simclr
from training.config import FinetuneConfig, PretrainConfig
from training.finetune import evaluation_split, finetune_groups, probe_head


@pytest.mark.parametrize("hidden", [0, 32])
def test_finetune_scales_the_encoder_learning_rate_only(hidden: int) -> None:
    """The encoder's rate (and a pretrained hidden layer's, which SimCLRv2 counts as the encoder's) is scaled; the head's is not."""
    spec = EncoderSpec("resnet18", 8)
    model = Classifier(build_encoder(spec), 64, 10, hidden=hidden)
    groups = finetune_groups(model, FinetuneConfig(lr=1e-3, encoder_lr_scale=0.1, weight_decay=1e-4))
    encoder_params = {id(p) for p in (*model.encoder.parameters(), *model.neck.parameters())}
    for group in groups:
        in_encoder = {id(p) in encoder_params for p in group["params"]}
        assert len(in_encoder) == 1  # a group is all encoder or all head
        assert group["base_lr"] == pytest.approx(1e-4 if in_encoder == {True} else 1e-3)
        assert group["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in group["params"]) else 1e-4)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_probe_head_folds_the_standardisation_into_the_layer() -> None:
    """LP-FT's head on raw encoder outputs scores exactly as the probe does on standardised features."""
    from training.evaluate import predict
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


def test_without_a_test_split_the_images_outside_the_labelled_fraction_are_scored(tmp_path: Path) -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    train = ImageSet(images, torch.arange(10) % 2, ["a", "b"], [])
    (tmp_path / "data" / "a").mkdir(parents=True)  # a folder source without train/ and test/
    parts = TrainSplit(validation=torch.tensor([5]), labelled=torch.tensor([0, 3]), unlabelled_pool=outside(torch.tensor([5]), 10))
    scored, split = evaluation_split(str(tmp_path / "data"), train, parts, ArtifactHome(tmp_path), PretrainConfig(), None)
    assert split == "held-out train"  # neither the labelled images nor the validation split
    assert scored.images[:, 0, 0, 0].tolist() == [1, 2, 4, 6, 7, 8, 9] and scored.classes == ["a", "b"]
    everything = TrainSplit(torch.zeros(0, dtype=torch.long), torch.arange(10), torch.arange(10))
    scored, split = evaluation_split(str(tmp_path / "data"), train, everything, ArtifactHome(tmp_path), PretrainConfig(), None)
    assert split == "train (labelled)" and len(scored) == 10  # nothing else to score on: said so


def test_data_without_a_test_split_is_scored_and_published_as_held_out_train(
    trained_home_copy: Path, tiny_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ArtifactHome(trained_home_copy)
    common = ["--home", str(home.root)]
    no_test = tiny_folder / "train"  # class subfolders only: a folder that is its own train split
    simclr(["finetune", *common, "--data", str(no_test), "--epochs", "1"])
    assert "scoring on 360 (held-out train)" in capsys.readouterr().out  # 400 images, 40 of them labelled
    record = json.loads(home.run().finetune.read_text())
    assert record["eval_split"] == "held-out train" and "test_split" not in record
    assert record["data"] == str(no_test)
    simclr(["index", *common, "--data", str(no_test), "--limit", "20"])
    simclr(["publish", *common])
    manifest = load_current(home).manifest
    assert manifest.metrics_split == "held-out train"
    assert manifest.metrics["finetune_top1"] == pytest.approx(record["metrics"]["finetune_top1"])


def test_finetuning_from_the_projection_head_starts_from_its_first_layer() -> None:
    """head_from="projection": the pretrained Linear and BatchNorm sit between the encoder and the head
    (at lr 0 they stay exactly as pretrained); without pretrained weights the same layer starts at random."""
    from training.finetune import finetune
    from training.simclr_model import ProjectionHead

    torch.manual_seed(0)
    spec = EncoderSpec("resnet18", 8)
    g = ProjectionHead(64, 64, 16)
    with torch.no_grad():
        g.net[1].weight.uniform_(0.5, 1.5)
    projection = {k.removeprefix("net."): v for k, v in g.state_dict().items() if k.startswith(("net.0.", "net.1."))}
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    data = ImageSet(images, torch.arange(40) % 4, ["a", "b", "c", "d"], [])
    cfg = FinetuneConfig(epochs=1, batch_size=20, lr=0.0, head_from="projection")
    model, metrics = finetune(build_encoder(spec), 64, data, data, cfg, projection=projection)
    assert Classifier.hidden_of(model.state_dict()) == 64 and metrics["finetune_epochs"] == 1
    torch.testing.assert_close(model.neck[0].weight, g.net[0].weight)
    torch.testing.assert_close(model.neck[1].weight, g.net[1].weight)
    model, _ = finetune(build_encoder(spec), 64, data, data, cfg)  # a random-init baseline: the same architecture
    assert Classifier.hidden_of(model.state_dict()) == 64
    with pytest.raises(ValueError, match="unknown head_from"):
        finetune(build_encoder(spec), 64, data, data, FinetuneConfig(epochs=1, head_from="middle"))


def test_a_classifier_fine_tuned_from_the_projection_head_is_published_and_served(trained_home_copy: Path, tiny_folder: Path) -> None:
    """Pretraining saves the projection head; `simclr finetune --head-from projection` fine-tunes from its first
    layer; the bundle's classifier is rebuilt with that layer from its weights alone and predicts as fine-tuned."""
    home = ArtifactHome(trained_home_copy)
    run = home.run()
    assert set(run.load_projection_layer()) == {"0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    common = ["--home", str(home.root), "--data", str(tiny_folder)]
    simclr(["finetune", *common, "--epochs", "1", "--head-from", "projection"])
    assert json.loads(run.finetune.read_text())["config"]["head_from"] == "projection"
    simclr(["publish", "--home", str(home.root)])
    served = load_current(home).classifier
    assert served is not None and Classifier.hidden_of(served.state_dict()) > 0
    saved = torch.load(run.classifier, weights_only=True)
    torch.testing.assert_close(served.state_dict()["neck.0.weight"], saved["neck.0.weight"])


def test_a_run_without_a_saved_projection_head_is_refused_with_a_message(trained_home_copy: Path, tiny_folder: Path) -> None:
    home = ArtifactHome(trained_home_copy)
    home.run().projection.unlink()
    with pytest.raises(SystemExit, match="no projection.pt"):
        simclr(["finetune", "--home", str(home.root), "--data", str(tiny_folder), "--epochs", "1", "--head-from", "projection"])
