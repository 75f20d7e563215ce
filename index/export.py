"""``simclr export``: the current model version's items -- ids, payloads, embeddings -- for users' own tools.

    <out>/embeddings.npy   float32 (N, D): row i is item i's unit embedding under the current version
    <out>/items.jsonl      N lines {"id": int, "payload": object or null}, in the same order (ids ascending)
    <out>/export.json      what was exported: model version, count, dimension, collection log offset

The items are what the service serves: the bundle's indexed images (payload ``{"source",
"label"}``) less those the collection deleted or replaced, plus the collection's live added
items (``core.collection``). An added item whose stored vector was computed under another
version is embedded here with the current encoder, from its stored pixels, as the service
does when it switches versions. Reads the log without its lock (as the service's readers do):
the export is the collection as of the last complete record when it was read.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_write_bytes, atomic_write_json
from core.bundles import LoadedBundle, load_bundle
from core.collection import Collection, PutRecord
from core.home import ArtifactHome
from core.models import embed

EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.jsonl"
SUMMARY_FILE = "export.json"
EMBED_CHUNK = 512


@dataclass(frozen=True)
class Exported:
    version: str
    count: int
    dim: int
    added: int  # of which from the collection
    reembedded: int  # added items embedded here (their stored vector was of another version)


def _reembed(bundle: LoadedBundle, collection: Collection, records: list[PutRecord]) -> np.ndarray:
    size, norm = bundle.manifest.image_size, bundle.manifest.normalization
    out = np.empty((len(records), bundle.index.d), dtype=np.float32)
    for start in range(0, len(records), EMBED_CHUNK):
        chunk = records[start : start + EMBED_CHUNK]
        pixels = torch.from_numpy(np.stack([collection.pixels_at(r, size) for r in chunk]))
        out[start : start + len(chunk)] = embed(bundle.encoder, pixels, batch_size=len(chunk), mean=norm.mean, std=norm.std).numpy()
    return out


def export(home: ArtifactHome, out: Path) -> Exported:
    """Write the current version's items to ``out`` (every file atomically). Raises FileNotFoundError
    when nothing is published, ``BundleError`` / ``CollectionCorrupt`` for a damaged bundle or log."""
    version = home.current_version()
    if version is None:
        raise FileNotFoundError(f"no model published under {home.root}: run `simclr refresh` first")
    bundle = load_bundle(home.bundle_dir(version))
    with Collection(home.collection) as collection:
        collection.catch_up()
        n = bundle.index.ntotal
        base = np.array([i for i in range(n) if i not in collection.named], dtype=np.int64)
        puts = sorted(collection.puts.values(), key=lambda r: r.id)
        stale = [r for r in puts if r.version != version]
        fresh = dict(zip((r.offset for r in stale), _reembed(bundle, collection, stale))) if stale else {}
        vectors = bundle.index.reconstruct_n(0, n)[base] if n else np.empty((0, bundle.index.d), dtype=np.float32)
        added = np.stack([fresh.get(r.offset, r.embedding) for r in puts]) if puts else np.empty((0, bundle.index.d), dtype=np.float32)
        ids = np.concatenate([base, np.array([r.id for r in puts], dtype=np.int64)])
        order = np.argsort(ids, kind="stable")
        embeddings = np.concatenate([vectors, added]).astype(np.float32)[order]
        payloads = {r.id: r.payload for r in puts}
        lines = []
        for i in ids[order].tolist():
            if i in payloads:
                payload = payloads[i]
            else:
                label = int(bundle.labels[i])
                payload = {"source": bundle.sources[i], "label": bundle.label_names[label] if label >= 0 else None}
            lines.append(json.dumps({"id": i, "payload": payload}, ensure_ascii=False))
        offset = collection.offset
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(embeddings))
    atomic_write_bytes(out / EMBEDDINGS_FILE, buf.getvalue())
    atomic_write_bytes(out / ITEMS_FILE, "".join(line + "\n" for line in lines).encode())
    result = Exported(version, len(lines), int(bundle.index.d), len(puts), len(stale))
    atomic_write_json(out / SUMMARY_FILE, {**result.__dict__, "collection_log_bytes": offset})
    return result
