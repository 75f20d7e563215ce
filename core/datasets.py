"""Image sets decoded once into a cached uint8 tensor.

A source is either ``cifar10`` (torchvision's download) or a folder. A folder
with ``train/`` and ``test/`` subfolders has those splits; any other folder is
its own ``train`` split. Inside a split, subfolders are classes (ImageFolder
layout); images directly in it are unlabelled (label -1).

The training loop never opens an image: it indexes the ``(N, 3, H, W)`` uint8
tensor this module returns. The decoded tensor is cached under ``<home>/data/cache``, keyed
by the options and every image file's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from core.atomic import atomic_torch_save
from core.images import to_array

DECODE_VERSION = 2  # bumped when core.images changes the pixels a file decodes to (2: reduced-scale JPEG decoding)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLITS = ("train", "test")


class DataError(RuntimeError):
    """A data source that cannot be read; the message says what to do."""


@dataclass
class ImageSet:
    """Decoded images of one split.

    images: ``(N, 3, H, W)`` uint8. labels: ``(N,)`` int64, -1 where unknown.
    classes: class names, index = label. sources: where each image came from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    sources: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def labelled(self) -> bool:
        return bool(self.classes) and bool((self.labels >= 0).all())

    def subset(self, idx: torch.Tensor) -> ImageSet:
        """The images at ``idx`` (on the tensors' device), same classes; sources are not carried."""
        return ImageSet(self.images[idx], self.labels[idx], self.classes, [])

    def to(self, device: torch.device | str) -> ImageSet:
        """The same images and labels on ``device``, same classes; sources are not carried."""
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes, [])


def split_root(src: Path, split: str) -> Path | None:
    """The folder holding ``split`` of a folder source, or None if it has none."""
    if (src / split).is_dir():
        return src / split
    if split == "train" and not any((src / s).is_dir() for s in SPLITS):
        return src
    return None


def has_split(src: str, split: str) -> bool:
    return src == "cifar10" or split_root(Path(src), split) is not None


def _list_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(root / name)):
            for fn in sorted(names):
                if fn.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(Path(dirpath) / fn)
                    labels.append(label)
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS))
    files += loose
    labels += [-1] * len(loose)
    return files, labels, classes


def _decode(args: tuple[str, int]) -> np.ndarray | None:
    path, size = args
    try:
        with Image.open(path) as img:
            return to_array(img, size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # unreadable files are skipped, and counted by the caller


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """A fixed random subset of ``limit`` indices (sorted), or all of them."""
    if limit is None or limit >= n:
        return np.arange(n)
    g = np.random.default_rng(seed)
    return np.sort(g.choice(n, size=limit, replace=False))


def _load_folder(root: Path, listing: tuple[list[Path], list[int], list[str]], size: int, limit: int | None, seed: int,
                 workers: int) -> ImageSet:
    files, labels, classes = listing
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    keep = _subset(len(files), limit, seed)
    files = [files[i] for i in keep]
    labels = [labels[i] for i in keep]
    jobs = [(str(f), size) for f in files]
    desc = f"decoding {root.name or root}"
    if workers > 1 and len(jobs) > 2000:
        with ProcessPoolExecutor(workers) as pool:
            arrays = list(tqdm(pool.map(_decode, jobs, chunksize=256), total=len(jobs), desc=desc, unit="img"))
    else:
        arrays = [_decode(j) for j in tqdm(jobs, desc=desc, unit="img")]
    ok = [i for i, a in enumerate(arrays) if a is not None]
    if not ok:
        raise DataError(f"none of the {len(files)} image files under {root} could be decoded")
    if len(ok) < len(files):
        tqdm.write(f"skipped {len(files) - len(ok)} unreadable image(s) under {root}")
    images = torch.from_numpy(np.stack([arrays[i] for i in ok]))
    sources = [str(files[i].relative_to(root)) for i in ok]
    return ImageSet(images, torch.tensor([labels[i] for i in ok], dtype=torch.int64), classes, sources)


def _load_cifar10(split: str, data_dir: Path, size: int, limit: int | None, seed: int) -> ImageSet:
    import torchvision

    try:
        ds = torchvision.datasets.CIFAR10(str(data_dir / "cifar10"), train=split == "train", download=True)
    except Exception as e:  # noqa: BLE001 - any download failure means the same thing to the user
        raise DataError(
            f"could not download CIFAR-10 into {data_dir / 'cifar10'} ({e}). Without a network, pass a "
            "local ImageFolder tree instead, e.g. --data ../shared/datasets/cifar10-jpeg "
            "(folders train/<class>/*.jpg and test/<class>/*.jpg)"
        ) from e
    keep = _subset(len(ds.data), limit, seed)
    pixels = ds.data[keep]  # (N, 32, 32, 3) uint8
    if size == 32:
        images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    else:
        images = torch.from_numpy(np.stack([to_array(Image.fromarray(p), size) for p in pixels]))
    labels = torch.tensor(np.asarray(ds.targets)[keep], dtype=torch.int64)
    return ImageSet(images, labels, list(ds.classes), [f"cifar10/{split}/{i}" for i in keep])


def _cache_key(src: str, split: str, size: int, limit: int | None, seed: int, files: list[Path] | None) -> str:
    """What the decoded tensor depends on: the options and, for a folder, every image file's
    path, size and mtime (so adding, removing, renaming or replacing a file in place all
    invalidate it; the pixels are not hashed, a stat per file is cheap and a read is not)."""
    subset_seed = seed if limit is not None else 0  # the seed picks the subset only: without a limit every seed shares a cache
    h = hashlib.sha256("|".join([src, split, str(size), str(limit), str(subset_seed), f"decode{DECODE_VERSION}"]).encode())
    for f in files or []:
        st = f.stat()
        h.update(f"|{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def load_split(
    src: str,
    split: str,
    *,
    data_dir: Path,
    image_size: int = 32,
    limit: int | None = None,
    seed: int = 0,
    workers: int | None = None,
) -> ImageSet:
    """Load ``split`` of ``src`` as an :class:`ImageSet`, decoding only on the first call.

    ``limit`` keeps a fixed random subset of at most that many images. The
    decoded tensor is cached under ``data_dir/cache`` (written atomically).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    listing = None
    if src != "cifar10":
        path = Path(src)
        if not path.is_dir():
            raise DataError(f"data source {src!r} is neither 'cifar10' nor an existing folder")
        root = split_root(path, split)
        if root is None:
            raise DataError(f"{src} has no {split}/ folder")
        listing = _list_folder(root.resolve())
    key = _cache_key(src, split, image_size, limit, seed, listing[0] if listing else None)
    cache = data_dir / "cache" / f"{split}-{key}.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return ImageSet(blob["images"], blob["labels"], list(blob["classes"]), list(blob["sources"]))
    if src == "cifar10":
        ds = _load_cifar10(split, data_dir, image_size, limit, seed)
    else:
        ds = _load_folder(root.resolve(), listing, image_size, limit, seed, workers or os.cpu_count() or 1)
    atomic_torch_save(
        {"images": ds.images, "labels": ds.labels, "classes": ds.classes, "sources": ds.sources}, cache
    )
    return ds


def stratified_indices(labels: torch.Tensor, fraction: float, seed: int = 0, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of a labelled subset with ``round(fraction * n_c)`` images of every class c.

    Fixed by ``seed``: the same labels and seed always give the same subset. ``exclude``: a
    boolean mask of images never chosen (the count stays a fraction of the whole class).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        in_class = labels == c
        k = max(1, round(fraction * int(in_class.sum())))
        idx = torch.nonzero(in_class if exclude is None else in_class & ~exclude).flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.sort(torch.cat(chosen)).values


# The validation split and the labelled fraction are drawn with this seed, whatever the run's
# seed: every run and every candidate recipe is judged on the same images and trained on the
# same labels, so seeds change only initialisation, augmentation and order.
SPLIT_SEED = 0


@dataclass(frozen=True)
class TrainSplit:
    """What each stage may use of a labelled training split (indices into it, sorted).

    validation: held out of every stage (pretraining, the kNN bank, fine-tuning, distillation)
        and scored, so recipe choices are made on it and the test split is scored once.
    labelled: the labelled fraction classifiers are trained on, outside validation.
    unlabelled_pool: every image outside validation (pretraining and distillation use them without labels).
    """

    validation: torch.Tensor
    labelled: torch.Tensor
    unlabelled_pool: torch.Tensor


def outside(idx: torch.Tensor, n: int) -> torch.Tensor:
    """The indices in ``range(n)`` that are not in ``idx``, sorted."""
    keep = torch.ones(n, dtype=torch.bool)
    keep[idx] = False
    return torch.nonzero(keep).flatten()


def validation_indices(labels: torch.Tensor, validation: int) -> torch.Tensor:
    """A stratified split of ``validation`` training images (drawn with :data:`SPLIT_SEED`); none for 0
    or for data that is not all labelled (a validation split is scored against labels)."""
    n = len(labels)
    if validation <= 0 or not n or not bool((labels >= 0).all()):
        return torch.zeros(0, dtype=torch.long)
    if validation >= n:
        raise ValueError(f"a validation split of {validation} images leaves none of the {n} training images to train on")
    return stratified_indices(labels, validation / n, SPLIT_SEED + 1)


def split_train(labels: torch.Tensor, label_fraction: float, validation: int) -> TrainSplit:
    """:func:`validation_indices`, then ``label_fraction`` of each class's images from the rest
    (drawn with :data:`SPLIT_SEED`; none when the data has no labels).

    With ``validation`` 0 the labelled fraction is ``stratified_indices(labels, label_fraction, 0)``,
    the subset runs without a validation split have always used.
    """
    held = validation_indices(labels, validation)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[held] = True
    has_labels = bool((labels >= 0).any())
    labelled = stratified_indices(labels, label_fraction, SPLIT_SEED, exclude=mask) if has_labels else torch.zeros(0, dtype=torch.long)
    return TrainSplit(held, labelled, outside(held, len(labels)))
