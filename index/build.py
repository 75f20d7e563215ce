"""The ``index`` stage: embed an image split with a run's SimCLR encoder into a FAISS index."""

from __future__ import annotations

import time

import torch

from index.embed import embed
from index.faiss_index import EXACT, build_index
from training.artifacts import ArtifactHome, RunPaths, sha256_file, write_index_dir
from training.data import has_split, load_split
from training.finetune import load_encoder, run_config
from training.runtime import pick_device, set_threads


def main(home: ArtifactHome, run: RunPaths, data: str | None = None, split: str = "test", limit: int | None = None) -> dict[str, float]:
    """Index ``split`` of ``data`` (default: the run's data; its train split if it has no test split)."""
    set_threads()
    cfg = run_config(run)
    src = data or cfg.data
    if not has_split(src, split):
        split = "train"
    items = load_split(src, split, data_dir=home.data, image_size=cfg.image_size, limit=limit, seed=cfg.seed)
    device = pick_device(cfg.device)
    encoder = load_encoder(run, cfg).to(device).to(memory_format=torch.channels_last)
    t = time.perf_counter()
    vectors = embed(encoder, items.images, device=device)
    index = build_index(vectors)
    write_index_dir(
        run.index_dir,
        index,
        kind=EXACT,
        encoder_fingerprint=sha256_file(run.encoder),
        labels=items.labels.tolist(),
        sources=[f"{split}/{s}" for s in items.sources],
        pixels=items.images.numpy(),
    )
    seconds = time.perf_counter() - t
    print(f"indexed {index.ntotal} images of {src} ({split}) in {seconds:.1f}s -> {run.index_dir}")
    return {"index_size": float(index.ntotal), "index_seconds": seconds}
