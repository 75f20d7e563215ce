from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import DataError, load_split, stratified_indices
from training.images import to_array


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


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_any_mode_becomes_uint8_rgb(mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    img = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    arr = to_array(img, 32)
    assert arr.shape == (3, 32, 32) and arr.dtype == np.uint8


def test_sixteen_bit_is_rescaled_not_clipped() -> None:
    img = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert to_array(img, 8).min() == 255
    img = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    assert 126 <= to_array(img, 8).max() <= 129


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert (to_array(img, 4) == 255).all()


def test_exif_rotation_is_applied() -> None:
    img = Image.new("RGB", (64, 32), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 32, 32))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.info["exif"] = exif.tobytes()
    import io

    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    shown = to_array(Image.open(io.BytesIO(buf.getvalue())), 32)
    # After rotating 90 degrees clockwise the white half is on top: the centre crop is split top/bottom.
    assert shown[:, :8].mean() > shown[:, -8:].mean() + 100
