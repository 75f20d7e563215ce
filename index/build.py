"""The ``index`` stage: embed an image split with a run's SimCLR encoder into a FAISS index."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
from tqdm import tqdm

from core.bundles import sha256_file
from core.datasets import has_split, load_split
from core.devices import pick_device, set_threads
from core.index_files import write_index_dir
from core.models import embed
from core.runs import RunPaths
from index.faiss_index import build


def embed_items(encoder: torch.nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Embeddings of uint8 ``images`` (on the CPU, moved batch by batch) with ``encoder`` on ``device``,
    brought back to the CPU once, at the end, for FAISS."""
    encoder = encoder.to(device).to(memory_format=torch.channels_last)
    vectors = embed(encoder, images, device=device, progress=functools.partial(tqdm, desc="embedding", unit="batch", leave=False))
    return vectors.cpu()


def main(run: RunPaths, data_dir: Path, data: str | None = None, split: str = "test", limit: int | None = None,
         device: str = "auto", kind: str = "auto", target_recall: float = 0.95) -> dict[str, float]:
    """Index ``split`` of ``data`` (default: the run's data; its train split if it has no test split)
    into ``run``'s ``index/``; ``data_dir`` holds downloads and the decoded-image cache.

    ``device``: ``--device``, as every stage that computes takes it (``auto``: CUDA when there is
    one), not the device the run was pretrained on, which another machine may not have.
    ``kind`` and ``target_recall``: the index (``index.faiss_index.build``: ``auto`` picks by size)."""
    set_threads()
    cfg = run.pretrain_config()
    src = data or cfg["data"]
    if not has_split(src, split):
        split = "train"
    items = load_split(src, split, data_dir=data_dir, image_size=cfg["image_size"], limit=limit, seed=cfg["seed"])
    t = time.perf_counter()
    vectors = embed_items(run.load_encoder(), items.images, pick_device(device))
    built = build(vectors.numpy(), kind, target_recall, seed=cfg["seed"])
    index = built.index
    labelled = bool(items.classes) and bool((items.labels >= 0).any())
    write_index_dir(
        run.index_dir,
        index,
        kind=built.kind,
        encoder_fingerprint=sha256_file(run.encoder),
        params=built.params,
        recall_at_10=built.recall_at_10,
        target_recall=built.target_recall,
        build_seconds=built.build_seconds,
        labels=items.labels.tolist(),
        sources=[f"{split}/{s}" for s in items.sources],
        classes=items.classes if labelled else [],
        pixels=items.images.numpy(),
    )
    seconds = time.perf_counter() - t
    how = built.kind if built.recall_at_10 is None else f"{built.kind} {built.params}, recall@10 {built.recall_at_10:.3f}"
    print(f"indexed {index.ntotal} images of {src} ({split}) in {seconds:.1f}s ({how}) -> {run.index_dir}")
    return {"index_size": float(index.ntotal), "index_seconds": seconds}
