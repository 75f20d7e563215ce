"""Image folders and CIFAR-10 decoded once into cached uint8 tensors; the stratified labelled subset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.datasets import DataError, load_split, split_train, stratified_indices


def test_folder_split_loads_labels_and_classes(tiny_folder: Path, tmp_path: Path) -> None:
    ds = load_split(str(tiny_folder), "train", data_dir=tmp_path)
    assert ds.images.shape == (400, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10
    assert torch.bincount(ds.labels).tolist() == [40] * 10
    assert ds.sources[0].startswith("airplane/")


def test_limit_is_a_fixed_subset_and_is_cached(tiny_folder: Path, tmp_path: Path) -> None:
    a = load_split(str(tiny_folder), "test", data_dir=tmp_path, limit=25, seed=3)
    cached = list((tmp_path / "cache").glob("*.pt"))
    b = load_split(str(tiny_folder), "test", data_dir=tmp_path, limit=25, seed=3)
    assert len(a) == 25 and len(cached) == 1
    assert torch.equal(a.images, b.images) and a.sources == b.sources


def test_subset_and_to_keep_images_labels_and_classes(tiny_folder: Path, tmp_path: Path) -> None:
    ds = load_split(str(tiny_folder), "train", data_dir=tmp_path)
    keep = torch.tensor([3, 0, 41])
    part = ds.subset(keep).to("cpu")
    assert torch.equal(part.images, ds.images[keep]) and part.labels.tolist() == ds.labels[keep].tolist()
    assert part.classes == ds.classes and part.sources == []


def test_folder_without_splits_is_its_own_train_split(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("RGB", (64, 48), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    ds = load_split(str(tmp_path), "train", data_dir=tmp_path / "home")
    assert ds.images.shape == (3, 3, 32, 32)
    assert ds.labels.tolist() == [-1, -1, -1] and not ds.labelled


def test_missing_folder_and_empty_folder_say_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="neither 'cifar10' nor an existing folder"):
        load_split(str(tmp_path / "nope"), "train", data_dir=tmp_path)
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_split(str(tmp_path / "empty"), "train", data_dir=tmp_path)


def test_offline_cifar10_download_says_to_pass_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DataError, match="--data"):
        load_split("cifar10", "train", data_dir=tmp_path)


def test_stratified_split_size_per_class_and_reproducible() -> None:
    labels = torch.arange(10).repeat_interleave(500)
    a = stratified_indices(labels, 0.1, seed=0)
    assert torch.bincount(labels[a]).tolist() == [50] * 10
    assert torch.equal(a, stratified_indices(labels, 0.1, seed=0))
    assert not torch.equal(a, stratified_indices(labels, 0.1, seed=1))


def test_the_validation_split_is_stratified_disjoint_and_the_same_for_every_run() -> None:
    labels = torch.arange(10).repeat_interleave(500)
    split = split_train(labels, 0.1, validation=500)
    assert torch.bincount(labels[split.validation]).tolist() == [50] * 10
    assert torch.bincount(labels[split.labelled]).tolist() == [50] * 10  # 10% of each whole class, outside validation
    assert not set(split.validation.tolist()) & set(split.labelled.tolist())
    assert sorted(split.validation.tolist() + split.unlabelled_pool.tolist()) == list(range(5000))
    assert set(split.labelled.tolist()) <= set(split.unlabelled_pool.tolist())
    again = split_train(labels, 0.1, validation=500)
    assert torch.equal(split.validation, again.validation) and torch.equal(split.labelled, again.labelled)
    # Without a validation split, the labelled fraction is the subset runs have always used.
    none = split_train(labels, 0.1, validation=0)
    assert len(none.validation) == 0 and len(none.unlabelled_pool) == 5000
    assert torch.equal(none.labelled, stratified_indices(labels, 0.1, seed=0))


def test_unlabelled_data_has_no_validation_split_and_a_split_cannot_take_everything() -> None:
    split = split_train(torch.full((50,), -1), 0.1, validation=10)
    assert len(split.validation) == 0 and len(split.labelled) == 0 and len(split.unlabelled_pool) == 50
    with pytest.raises(ValueError, match="leaves none"):
        split_train(torch.arange(10), 0.1, validation=10)


def test_an_image_replaced_in_place_is_decoded_again(tmp_path: Path) -> None:
    """Same name, same folder listing, same file size: only the content (and mtime) changed. The cache
    must not serve the old pixels (it was once keyed by the folder's mtime and entry count)."""
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (10, 20, 30)).save(data / name / f"{i}.bmp")
    target = data / "a" / "0.bmp"
    before = load_split(str(data), "train", data_dir=tmp_path / "home")
    assert before.images[0].flatten(1).float().mean(1).tolist() == [10.0, 20.0, 30.0]
    stat, folder_mtime = target.stat(), (data / "a").stat().st_mtime_ns
    Image.new("RGB", (32, 32), (200, 100, 50)).save(target)  # rewritten in place: an uncompressed BMP, same size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))  # clocks may not tick between writes
    os.utime(data / "a", ns=(folder_mtime, folder_mtime))  # the folder itself looks untouched
    assert target.stat().st_size == stat.st_size
    after = load_split(str(data), "train", data_dir=tmp_path / "home")
    assert after.images[0].flatten(1).float().mean(1).tolist() == [200.0, 100.0, 50.0]
    assert torch.equal(after.images[1:], before.images[1:])
    assert len(list((tmp_path / "home" / "cache").glob("*.pt"))) == 2  # the stale entry is never read again


def test_adding_a_file_is_decoded_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (i, 0, 0)).save(data / f"{i}.png")
    assert len(load_split(str(data), "train", data_dir=tmp_path / "home")) == 2
    Image.new("RGB", (32, 32), (9, 0, 0)).save(data / "2.png")
    assert len(load_split(str(data), "train", data_dir=tmp_path / "home")) == 3
