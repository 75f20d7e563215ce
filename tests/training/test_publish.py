"""The ``publish`` stage: a run whose index and classifier agree becomes a bundle; one whose index names other classes does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.bundles import BundleError, load_current
from core.home import ArtifactHome
from core.index_files import read_index_classes
from simclr.cli import main as simclr
from training.publish import publish_run


def copy_test_images(tiny_folder: Path, out: Path, classes: list[str], *, labelled: bool, n: int = 2) -> Path:
    """``n`` test images of each of ``classes``: in ``out/test/<class>/``, or loose in ``out`` (unlabelled)."""
    for name in classes:
        dst = out / "test" / name if labelled else out
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted((tiny_folder / "test" / name).iterdir())[:n]:
            shutil.copyfile(f, dst / f"{name}-{f.name}")
    return out


def test_an_index_of_other_classes_is_refused(trained_home_copy: Path, tiny_folder: Path, tmp_path: Path) -> None:
    home = ArtifactHome(trained_home_copy)
    current = home.current_version()
    other = copy_test_images(tiny_folder, tmp_path / "other", ["airplane", "cat"], labelled=True)  # 2 of the classifier's 10 classes
    simclr(["index", "--home", str(home.root), "--data", str(other)])
    with pytest.raises(BundleError) as e:
        publish_run(home, home.run())
    classifier_classes = home.run().read_finetune().classes
    assert "['airplane', 'cat']" in str(e.value) and str(classifier_classes) in str(e.value)
    with pytest.raises(SystemExit) as exit_:
        simclr(["publish", "--home", str(home.root)])
    message = str(exit_.value.code)
    assert message.startswith("simclr publish: error: ") and "\n" not in message  # one line, no traceback
    assert "['airplane', 'cat']" in message and str(classifier_classes) in message
    assert home.current_version() == current and len(list(home.models.iterdir())) == 1


def test_an_index_of_unlabelled_images_publishes(trained_home_copy: Path, tiny_folder: Path, tmp_path: Path) -> None:
    home = ArtifactHome(trained_home_copy)
    before = home.current_version()
    loose = copy_test_images(tiny_folder, tmp_path / "loose", ["airplane", "cat"], labelled=False)
    Image.new("RGB", (50, 40), (0, 128, 0)).save(loose / "a-photo.png")
    simclr(["index", "--home", str(home.root), "--data", str(loose)])
    simclr(["publish", "--home", str(home.root)])
    bundle = load_current(home)
    assert bundle is not None and bundle.version != before
    assert bundle.manifest.index.size == 5 and (bundle.labels == -1).all()
    assert bundle.manifest.class_names == home.run().read_finetune().classes
    assert np.asarray(bundle.pixels).shape == (5, 3, 32, 32)


def test_a_run_without_classifier_or_index_says_which_stage_to_run(trained_home_copy: Path) -> None:
    home = ArtifactHome(trained_home_copy)
    run = home.run()
    shutil.rmtree(run.index_dir)
    with pytest.raises(FileNotFoundError, match="simclr index"):
        publish_run(home, run)
    run.classifier.unlink()
    with pytest.raises(FileNotFoundError, match="simclr finetune"):
        publish_run(home, run)


def test_a_run_that_was_not_fine_tuned_publishes_a_model_without_classifier(trained_home_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ArtifactHome(trained_home_copy)
    run = home.run()
    run.finetune.unlink()
    with pytest.raises(FileNotFoundError, match="has classifier.pt but no finetune.json"):  # a fine-tune cut short
        publish_run(home, run)
    run.classifier.unlink()
    simclr(["publish", "--home", str(home.root)])
    assert "no classifier" in capsys.readouterr().out
    bundle = load_current(home)
    assert bundle is not None and bundle.classifier is None and not bundle.manifest.has_classifier
    assert bundle.manifest.class_names == [] and "classifier" not in bundle.manifest.weights
    # Its index (the labelled test split) keeps its labels: neighbours still name their classes.
    assert bundle.label_names == read_index_classes(run.index_dir) and len(bundle.label_names) == 10 and (bundle.labels >= 0).all()
    assert bundle.manifest.metrics_split == "test" and "knn_top1" in bundle.manifest.metrics  # pretraining's kNN monitor
