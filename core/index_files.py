"""The index part of a run (``runs/<id>/index/``) and of a bundle: what ``simclr index`` writes.

    index.faiss   the FAISS index over the items' unit embeddings (id = row number)
    index.json    what built it: kind (exact, hnsw, ivf), its parameters and measured recall@10,
                  metric, size, dimension, the encoder's sha256
    items.json    per item: label id (-1: none) and source; the class names the label ids refer to
    images.npy    per item: the ``(3, H, W)`` uint8 pixels, so ``/images/{id}`` needs no dataset
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from pydantic import BaseModel, field_validator

from core.atomic import atomic_write_bytes, atomic_write_json

INDEX_FILE = "index.faiss"
INDEX_META_FILE = "index.json"
ITEMS_FILE = "items.json"
PIXELS_FILE = "images.npy"
FILES = (INDEX_FILE, INDEX_META_FILE, ITEMS_FILE, PIXELS_FILE)


class IndexInfo(BaseModel):
    kind: str  # exact, hnsw or ivf (index.faiss_index)
    metric: str = "inner_product"
    size: int
    dim: int
    encoder_fingerprint: str
    params: dict[str, int] = {}  # an approximate kind's parameters: {"M", "efConstruction", "efSearch"} or {"nlist", "nprobe"}
    recall_at_10: float | None = None  # measured against exact search at build time; None: exact
    target_recall: float | None = None
    build_seconds: float | None = None

    @field_validator("kind")
    @classmethod
    def _legacy_exact(cls, kind: str) -> str:
        return "exact" if kind == "IndexFlatIP" else kind  # the exact kind's name in folders written before there were others


@dataclass(frozen=True)
class IndexFiles:
    """An index folder read back. ``pixels`` is memory-mapped."""

    index: faiss.Index
    info: IndexInfo
    labels: np.ndarray  # (N,) int64, -1 where unlabelled
    sources: list[str]
    classes: list[str]  # what the label ids name; empty when the items have no labels
    pixels: np.ndarray  # (N, 3, H, W) uint8


def write_index_dir(
    out: Path,
    index: faiss.Index,
    *,
    kind: str,
    encoder_fingerprint: str,
    params: dict[str, int] | None = None,
    recall_at_10: float | None = None,
    target_recall: float | None = None,
    build_seconds: float | None = None,
    labels: list[int],
    sources: list[str],
    classes: list[str],
    pixels: np.ndarray,
) -> None:
    """Write an index folder; every file atomically, the metadata last."""
    out.mkdir(parents=True, exist_ok=True)
    if not (index.ntotal == len(labels) == len(sources) == len(pixels)):
        raise ValueError("index, labels, sources and pixels must have one entry per item")
    atomic_write_bytes(out / INDEX_FILE, faiss.serialize_index(index).tobytes())
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(pixels))
    atomic_write_bytes(out / PIXELS_FILE, buf.getvalue())
    atomic_write_json(out / ITEMS_FILE, {"labels": labels, "sources": sources, "classes": classes})
    info = IndexInfo(kind=kind, size=index.ntotal, dim=index.d, encoder_fingerprint=encoder_fingerprint, params=params or {},
                     recall_at_10=recall_at_10, target_recall=target_recall,
                     build_seconds=None if build_seconds is None else round(build_seconds, 2))
    atomic_write_json(out / INDEX_META_FILE, info.model_dump())


def read_index_info(path: Path) -> IndexInfo:
    return IndexInfo.model_validate_json((path / INDEX_META_FILE).read_text())


def read_index_classes(path: Path) -> list[str]:
    """The class names the items' label ids refer to (empty for unlabelled items)."""
    return list(json.loads((path / ITEMS_FILE).read_text()).get("classes", []))


def read_index_dir(path: Path) -> IndexFiles:
    """Read an index folder. Raises pydantic's ValidationError, OSError, KeyError or ValueError on damage."""
    info = read_index_info(path)
    index = faiss.deserialize_index(np.fromfile(path / INDEX_FILE, dtype=np.uint8))
    items = json.loads((path / ITEMS_FILE).read_text())
    labels = np.asarray(items["labels"], dtype=np.int64)
    sources = [str(s) for s in items["sources"]]
    pixels = np.load(path / PIXELS_FILE, mmap_mode="r")
    return IndexFiles(index, info, labels, sources, list(items.get("classes", [])), pixels)


def copy_index_dir(src: Path, dst: Path) -> None:
    """Copy an index folder's files into ``dst`` (a bundle being assembled)."""
    import shutil

    for name in FILES:
        shutil.copyfile(src / name, dst / name)
