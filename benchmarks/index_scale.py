"""Search at scale: exact, HNSW and IVF over 1M real embeddings, and a 200k-item bundle under load.

usage: python benchmarks/index_scale.py [--home artifacts] [--data DIR] [--work DIR] [--crops 20]
           [--stages embed,indexes,service] [--out benchmarks/results/index_scale.json]

1. ``embed``: the published encoder (CURRENT in ``--home``) embeds ``--crops`` random resized
   crops (scale 0.2-1, flips: SimCLR's crop) of each CIFAR-10 training image: 1,000,000
   vectors at 20 crops. The CIFAR-10 test images (whole) are the queries. Cached in ``--work``
   per round of crops, so a rerun resumes.
2. ``indexes``: for exact (``IndexFlatIP``), HNSW and IVF (``index.faiss_index.build``, the
   knob tuned to recall@10 >= 0.95 on indexed items, as ``simclr index`` does): build seconds
   (2 threads), bytes per vector (the serialised index), and for a ladder of the knob, on the
   10,000 test queries: recall@10 against exact search, single-query latency p50/p99 with one
   thread, and batched queries per second (all queries in one call, 2 threads).
3. ``service``: a bundle of the first ``--bundle-items`` crops (``auto`` index), published into
   a fresh home and served by ``python -m service --workers 2``; wrk at 1, 8 and 32 connections on
   ``GET /neighbors?id=`` (random ids) and ``POST /neighbors`` (a 32x32 PNG), while a probe
   requests ``/healthz`` every 20 ms and records its latency (it must not stall).

Timed stages need quiet cores: nothing else heavy on the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import httpx
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from service_load import measure, start_server  # noqa: E402

from core import models  # noqa: E402
from core.bundles import load_bundle, publish_bundle, sha256_file  # noqa: E402
from core.datasets import load_split  # noqa: E402
from core.home import ArtifactHome  # noqa: E402
from core.index_files import write_index_dir  # noqa: E402
from index.faiss_index import EF_SEARCH_LADDER, NPROBE_LADDER, build, recall_at, set_knob  # noqa: E402
from machine import result_header, scrub_paths  # noqa: E402
from tests_support import free_port  # noqa: E402
from training.augment import crop_flip_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K = 10
LATENCY_QUERIES = 1000  # single queries timed per operating point (exact: LATENCY_QUERIES_EXACT)
LATENCY_QUERIES_EXACT = 100
BAR_RECALL, BAR_P50_MS, BAR_RPS, BAR_HEALTHZ_P99_MS, BAR_BUILD_S = 0.95, 1.0, 1500.0, 20.0, 600.0


def crops(images: torch.Tensor, round_: int, batch: int = 2048) -> torch.Tensor:
    """One random resized crop (scale 0.2-1) with a random flip of each uint8 image, same size, uint8."""
    g = torch.Generator().manual_seed(1000 + round_)
    out = torch.empty_like(images)
    size = images.shape[-1]
    for s in range(0, len(images), batch):
        x = images[s : s + batch].float()
        grid = crop_flip_grid(len(x), size, scale=(0.2, 1.0), device=torch.device("cpu"), generator=g)
        view = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        out[s : s + batch] = view.round().clamp(0, 255).to(torch.uint8)
    return out


def stage_embed(a: argparse.Namespace, work: Path) -> None:
    from service.frozen import freeze

    home = ArtifactHome(a.home)
    bundle = load_bundle(home.bundle_dir(home.current_version()))
    size, norm = bundle.manifest.image_size, bundle.manifest.normalization
    encoder = freeze(bundle.encoder, size)  # the traced model the server runs: ~1.6x the eager one on CPU

    def embed(pixels: torch.Tensor) -> np.ndarray:
        return models.embed(encoder, pixels, batch_size=256, mean=norm.mean, std=norm.std).numpy()

    if not (work / "queries.npy").exists():
        test = load_split(a.data, "test", data_dir=home.data, image_size=size)
        np.save(work / "queries.npy", embed(test.images))
    train = load_split(a.data, "train", data_dir=home.data, image_size=size)
    (work / "train.json").write_text(json.dumps({"labels": train.labels.tolist(), "sources": train.sources, "classes": train.classes}))
    for r in range(a.crops):
        if (work / f"vectors_{r:02d}.npy").exists():
            continue
        t = time.perf_counter()
        pixels = crops(train.images, r)
        if r * len(pixels) < a.bundle_items:
            np.save(work / f"pixels_{r:02d}.npy", pixels.numpy())
        vectors = embed(pixels)
        np.save(work / f"vectors_{r:02d}.tmp.npy", vectors)
        (work / f"vectors_{r:02d}.tmp.npy").rename(work / f"vectors_{r:02d}.npy")
        print(f"crops round {r + 1}/{a.crops}: {len(vectors)} vectors in {time.perf_counter() - t:.0f}s", flush=True)


def load_vectors(work: Path, crops_: int) -> np.ndarray:
    return np.concatenate([np.load(work / f"vectors_{r:02d}.npy") for r in range(crops_)])


def latency(index: faiss.Index, queries: np.ndarray, n: int) -> dict[str, float]:
    """Single-query latency in ms over the first ``n`` queries, one thread."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times = []
    for q in queries[:n]:
        t = time.perf_counter()
        index.search(q[None], K)
        times.append((time.perf_counter() - t) * 1e3)
    faiss.omp_set_num_threads(threads)
    return {"p50_ms": round(float(np.percentile(times, 50)), 4), "p99_ms": round(float(np.percentile(times, 99)), 4)}


def batched(index: faiss.Index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    _, ids = index.search(queries, K)
    return len(queries) / (time.perf_counter() - t), ids


def stage_indexes(a: argparse.Namespace, work: Path) -> dict[str, object]:
    x, queries = load_vectors(work, a.crops), np.load(work / "queries.npy")
    n, d = x.shape
    print(f"{n} vectors of {d} dimensions, {len(queries)} queries", flush=True)
    out: dict[str, object] = {"vectors": n, "dim": d, "queries": len(queries), "k": K, "kinds": {}}
    t = time.perf_counter()
    built = build(x, "exact")
    qps, truth = batched(built.index, queries)
    exact = {"build_seconds": round(time.perf_counter() - t - len(queries) / qps, 2),
             "bytes_per_vector": round(len(faiss.serialize_index(built.index)) / n, 1), "params": {},
             "points": [{"recall_at_10": 1.0, **latency(built.index, queries, LATENCY_QUERIES_EXACT), "batched_qps": round(qps, 1)}]}
    out["kinds"]["exact"] = exact  # type: ignore[index]
    print(f"exact: {exact}", flush=True)
    del built
    for kind in ("hnsw", "ivf"):
        built = build(x, kind, 0.95)
        index = built.index
        name, ladder = ("efSearch", EF_SEARCH_LADDER) if kind == "hnsw" else ("nprobe", NPROBE_LADDER)
        points = []
        for value in ladder:
            set_knob(index, value)
            qps, ids = batched(index, queries)
            recall = recall_at(ids, truth)
            points.append({name: value, "recall_at_10": round(recall, 4), **latency(index, queries, LATENCY_QUERIES), "batched_qps": round(qps, 1)})
            print(f"{kind} {points[-1]}", flush=True)
            if recall >= 0.99:
                break
        met = [p for p in points if p["recall_at_10"] >= BAR_RECALL]
        entry = {"build_seconds": round(built.build_seconds, 1), "bytes_per_vector": round(len(faiss.serialize_index(index)) / n, 1),
                 "params": built.params, "recall_at_10_on_indexed_items": built.recall_at_10, "points": points,
                 "first_point_at_recall_0_95": met[0] if met else None}
        out["kinds"][kind] = entry  # type: ignore[index]
        print(f"{kind}: build {entry['build_seconds']}s, {entry['bytes_per_vector']} B/vector, tuned {built.params}", flush=True)
        del built, index
    return out


def healthz_probe(url: str, stop: threading.Event, times: list[float]) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            t = time.perf_counter()
            client.get(url + "/healthz").raise_for_status()
            times.append((time.perf_counter() - t) * 1e3)
            stop.wait(0.02)


def stage_service(a: argparse.Namespace, work: Path) -> dict[str, object]:
    src = ArtifactHome(a.home)
    src_dir = src.bundle_dir(src.current_version())
    bundle = load_bundle(src_dir)
    train = json.loads((work / "train.json").read_text())
    per_round = len(train["labels"])
    rounds = -(-a.bundle_items // per_round)
    n = min(a.bundle_items, rounds * per_round)
    vectors = load_vectors(work, rounds)[:n]
    pixels = np.concatenate([np.load(work / f"pixels_{r:02d}.npy", mmap_mode="r") for r in range(rounds)])[:n]
    out: dict[str, object] = {"bundle_items": n}
    with tempfile.TemporaryDirectory() as tmp:
        home = ArtifactHome(Path(tmp) / "home")
        built = build(vectors, "auto", 0.95)
        out["index"] = {"kind": built.kind, "params": built.params, "recall_at_10_on_indexed_items": built.recall_at_10,
                        "build_seconds": round(built.build_seconds, 1)}
        print(f"bundle index: {out['index']}", flush=True)
        index_dir = Path(tmp) / "index"
        write_index_dir(index_dir, built.index, kind=built.kind, encoder_fingerprint=sha256_file(src_dir / "encoder.pt"),
                        params=built.params, recall_at_10=built.recall_at_10, target_recall=0.95, build_seconds=built.build_seconds,
                        labels=(train["labels"] * rounds)[:n],
                        sources=[f"train/{s}#crop{r}" for r in range(rounds) for s in train["sources"]][:n],
                        classes=train["classes"], pixels=pixels)
        m = bundle.manifest
        publish_bundle(home, encoder_file=src_dir / "encoder.pt",
                       classifier_file=src_dir / "classifier.pt" if bundle.classifier is not None else None,
                       index_dir=index_dir, spec=m.encoder_spec, class_names=m.class_names, metrics=m.metrics,
                       metrics_split=m.metrics_split)
        upload = Path(tmp) / "image.png"
        buf = io.BytesIO()
        Image.fromarray(np.asarray(pixels[0]).transpose(1, 2, 0)).save(buf, format="PNG")
        upload.write_bytes(buf.getvalue())
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {"SIMCLR_WORKERS": "2", "SIMCLR_LOG_LEVEL": "warning"}
        server = start_server(home.root, port, env, Path(tmp) / "server.log")
        runs = []
        try:
            for endpoint, args in (("GET /neighbors?id=", ["neighbors", str(n), "10"]),
                                   ("POST /neighbors", ["upload", str(upload), "/neighbors?k=10"])):
                for c in (1, 8, 32):
                    httpx.get(url + "/healthz").raise_for_status()
                    stop, times = threading.Event(), []
                    probe = threading.Thread(target=healthz_probe, args=(url, stop, times))
                    probe.start()
                    try:
                        r = measure(url, endpoint, c, a.seconds, 1, args, server.pid)
                    finally:
                        stop.set()
                        probe.join()
                    r["healthz_latency_ms"] = {"probes": len(times), "p50": round(float(np.percentile(times, 50)), 2),
                                               "p99": round(float(np.percentile(times, 99)), 2), "max": round(max(times), 2)}
                    runs.append(r)
                    print(f"{endpoint} c={c}: {r['requests_per_s']} req/s, p99 {r['latency_ms']['p99']} ms, "
                          f"errors {r['errors']['total']}, /healthz p99 {r['healthz_latency_ms']['p99']} ms", flush=True)
        finally:
            server.terminate()
            server.wait(30)
    out["runs"] = runs
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default="artifacts", help="artifact home with a published model (default: %(default)s)")
    p.add_argument("--data", default="../shared/datasets/cifar10-jpeg", help="CIFAR-10 as an image folder (default: %(default)s)")
    p.add_argument("--work", default="benchmarks/.index_scale", help="cache of crops and embeddings (default: %(default)s)")
    p.add_argument("--crops", type=int, default=20, help="random crops per training image (default: %(default)s)")
    p.add_argument("--bundle-items", type=int, default=200_000, help="items of the served bundle (default: %(default)s)")
    p.add_argument("--seconds", type=int, default=10, help="wrk seconds per endpoint and concurrency (default: %(default)s)")
    p.add_argument("--stages", default="embed,indexes,service", help="comma-separated stages to run (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results/index_scale.json", help="result file, updated per stage (default: %(default)s)")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    stages = a.stages.split(",")
    out_path = Path(a.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    paths = {a.home: "<home>", a.data: "<data>", a.work: "<work>"}
    if "embed" in stages:
        stage_embed(a, work)
    if "indexes" in stages:
        result["indexes"] = stage_indexes(a, work)
        result["indexes"]["command"] = result_header("index_scale", sys.argv, paths)["command"]
    if "service" in stages:
        result["service"] = stage_service(a, work)
        result["service"]["command"] = result_header("index_scale", sys.argv, paths)["command"]
    # The header first (every results file starts benchmark, created, command, machine); each stage
    # keeps the command that measured it, as stages can run in separate invocations.
    result = {**result_header("index_scale", sys.argv, paths), **{k: v for k, v in result.items() if k in ("indexes", "service")}}
    result["bars"] = bars(result)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(scrub_paths(result, paths), indent=2) + "\n")
    print(json.dumps(result["bars"], indent=2))


def bars(result: dict[str, object]) -> dict[str, object]:
    """The issue's bars, read from the measurements."""
    out: dict[str, object] = {}
    kinds = result.get("indexes", {}).get("kinds", {})  # type: ignore[union-attr]
    for kind in ("hnsw", "ivf"):
        entry = kinds.get(kind)
        if entry:
            point = entry["first_point_at_recall_0_95"]
            out[f"{kind}_recall_0_95_at_p50_le_1ms"] = bool(point and point["p50_ms"] <= BAR_P50_MS)
            out[f"{kind}_build_under_600s"] = entry["build_seconds"] < BAR_BUILD_S
    runs = result.get("service", {}).get("runs", [])  # type: ignore[union-attr]
    for r in runs:
        if r["endpoint"].startswith("GET") and r["connections"] == 32:
            out["neighbors_by_id_c32_requests_per_s"] = r["requests_per_s"]
            out["neighbors_by_id_c32_ge_1500_zero_errors"] = r["requests_per_s"] >= BAR_RPS and r["errors"]["total"] == 0
    if runs:
        worst = max(r["healthz_latency_ms"]["p99"] for r in runs)
        out["healthz_p99_ms_worst"] = worst
        out["healthz_p99_under_20ms"] = worst < BAR_HEALTHZ_P99_MS
    return out


if __name__ == "__main__":
    main()
