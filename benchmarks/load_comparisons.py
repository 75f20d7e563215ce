"""The comparisons ``benchmarks/service_load.py`` runs after its main table, in the same run:

- a photo-size JPEG (a CIFAR image scaled to 1600x1200 with light noise) on ``POST /classify``;
- our server with its default logging (an access-log line per request) against logging off,
  alternating (``ROUNDS`` each; the ratio is of the means);
- the peer, LitServe (``benchmarks/peer_litserve.py``), on the same bundle, PNG and photo: its full
  tables, then ours and the peer's again at the highest concurrency (ratios of ``ROUNDS``-sample means);
- the heavy-model regime: a full-width ResNet-18 bundle (random weights: throughput does not
  depend on them), our ``/classify`` at 32 connections against that model's raw throughput
  (measured before and after each of ``HEAVY_ROUNDS`` served runs; the ratio is their mean).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def photo_jpeg(image: np.ndarray, path: Path, size: tuple[int, int] = (1600, 1200), seed: int = 0) -> Path:
    """``image`` (3, H, W) uint8 scaled to ``size`` with light noise (sigma 3), as a quality-90 JPEG."""
    big = np.asarray(Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).resize(size, Image.Resampling.BICUBIC), np.float32)
    noisy = np.clip(big + np.random.default_rng(seed).normal(0, 3, big.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path, format="JPEG", quality=90)
    return path


def start_peer(bundle_dir: Path, port: int, log: Path, max_batch_size: int, wait_ms: float) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "peer_litserve.py"), "--bundle", str(bundle_dir), "--port", str(port),
           "--max-batch-size", str(max_batch_size), "--batch-timeout-ms", str(wait_ms)]
    with open(log, "wb") as out:  # its own process group: LitServe's workers outlive a terminated parent
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    from service_load import wait_ready  # the script that imports this module, already loaded

    return wait_ready(proc, f"http://127.0.0.1:{port}/health", log, timeout=180)


def stop(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """Stop a server; ``group``: its whole process group (the peer's inference workers, left alone, spin at
    100% CPU and would skew every later measurement)."""
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()
    if group:
        time.sleep(1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # any worker still there
        except ProcessLookupError:
            pass


def heavy_home(root: Path) -> Path:
    """A home publishing a full-width ResNet-18 (``--width 64``, the seed's) with random weights and a small index."""
    from core.bundles import publish_bundle, sha256_file
    from core.home import ArtifactHome
    from core.index_files import write_index_dir
    from core.models import Classifier, EncoderSpec, build_encoder, embed, feature_dim
    from index.faiss_index import build_index

    torch.manual_seed(0)
    spec = EncoderSpec(arch="resnet18", width=64, image_size=32)
    classes = [f"class{i}" for i in range(10)]
    encoder, classifier = build_encoder(spec).eval(), Classifier(build_encoder(spec), feature_dim(spec), len(classes)).eval()
    run = root / "run"
    run.mkdir(parents=True)
    torch.save(encoder.state_dict(), run / "encoder.pt")
    torch.save(classifier.state_dict(), run / "classifier.pt")
    images = np.random.default_rng(0).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    write_index_dir(run / "index", build_index(embed(encoder, torch.from_numpy(images)).numpy()), kind="exact",
                    encoder_fingerprint=sha256_file(run / "encoder.pt"), labels=[i % 10 for i in range(64)],
                    sources=[f"random/{i}" for i in range(64)], classes=classes, pixels=images)
    home = root / "home"
    publish_bundle(ArtifactHome(home), encoder_file=run / "encoder.pt", classifier_file=run / "classifier.pt", index_dir=run / "index",
                   spec=spec, class_names=classes, metrics={})
    return home


Measure = Callable[..., dict[str, object]]
# Three, not two: single 10 s figures of one run move by 15-25% on these machines, and the ratios'
# bars (90% for logging and the heavy model) sit inside that swing.
HEAVY_ROUNDS = 3  # served measurements of the heavy model, each between two raw ones
ROUNDS = 3  # samples of each side of the peer and logging ratios at the highest concurrency


def run_comparisons(*, url: str, home: Path, png: Path, image: np.ndarray, connections: list[int], seconds: int, wrk_threads: int, warmup: int,
                    bundle_dir: Path, env: dict[str, str], max_batch_size: int, wait_ms: float, ours_png_c32: float,
                    measure: Measure, wrk: Callable[..., dict[str, object]], start_server: Callable[..., subprocess.Popen[bytes]],
                    free_port: Callable[[], int], raw_heavy: Callable[[Path], float], server_pid: int) -> dict[str, object]:
    """Photo, logging, peer and heavy-model measurements; ``url``/``server_pid``: our server, running with ``env``."""
    out: dict[str, object] = {"runs": []}
    runs: list[dict[str, object]] = out["runs"]  # type: ignore[assignment]

    def table(label: str, target: str, script_args: list[str], pid: int, peer: bool = False) -> dict[int, float]:
        if warmup > 0:
            wrk(target, max(connections), warmup, wrk_threads, script_args)
        rates = {}
        for c in connections:
            r = measure(target, label, c, seconds, wrk_threads, script_args, pid, scrape_errors=not peer)
            runs.append(r)
            rates[c] = r["requests_per_s"]
            print(f"  {label:34s} c={c:<3d} {r['requests_per_s']:9.1f} req/s  p99 {r['latency_ms']['p99']} ms  errors {r['errors']['total']}",
                  flush=True)
        return rates

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        photo = photo_jpeg(image, tmp_path / "photo.jpg")
        out["photo_bytes"] = photo.stat().st_size
        ours_photo = table("ours POST /classify (photo)", url, ["upload", str(photo), "/classify"], server_pid)

        c = max(connections)
        png_args, photo_args = ["classify", str(png)], ["upload", str(photo), "/classify"]

        def once(target: str, label: str, script_args: list[str], pid: int, peer: bool = False) -> float:
            r = measure(target, label, c, seconds, wrk_threads, script_args, pid, scrape_errors=not peer)
            runs.append(r)
            print(f"  {label:34s} c={c:<3d} {r['requests_per_s']:9.1f} req/s", flush=True)
            return float(r["requests_per_s"])

        # Logging off: a second server of ours with SIMCLR_LOG_LEVEL=warning, PNG at the highest concurrency,
        # alternating with the default one (idle, a server costs next to nothing): on this machine one
        # 10 s figure moves 15-25% between stages of a run, so each ratio is of means over ROUNDS.
        port = free_port()
        quiet = start_server(home, port, {**env, "SIMCLR_LOG_LEVEL": "warning"}, tmp_path / "quiet.log")
        logging_off, logging_default = [], []
        try:
            for _ in range(ROUNDS):
                logging_off.append(once(f"http://127.0.0.1:{port}", "ours POST /classify (logging off)", png_args, quiet.pid))
                logging_default.append(once(url, "ours POST /classify (default logging)", png_args, server_pid))
        finally:
            stop(quiet)

        # The peer runs alone (its idle workers are not known to keep still): its full tables, then ours
        # and the peer's again at the highest concurrency, for ROUNDS samples of each at c.
        ours_png_top, ours_photo_top, peer_png_top, peer_photo_top = [ours_png_c32], [ours_photo[c]], [], []
        for round_ in range(ROUNDS):
            if round_:
                ours_png_top.append(once(url, "ours POST /classify (png)", png_args, server_pid))
                ours_photo_top.append(once(url, "ours POST /classify (photo)", photo_args, server_pid))
            port = free_port()
            peer = start_peer(bundle_dir, port, tmp_path / f"peer{round_}.log", max_batch_size, wait_ms)
            peer_url = f"http://127.0.0.1:{port}"
            try:
                if round_ == 0:
                    peer_png = table("peer POST /classify (png)", peer_url, png_args, peer.pid, peer=True)
                    peer_photo = table("peer POST /classify (photo)", peer_url, photo_args, peer.pid, peer=True)
                    peer_png_top.append(peer_png[c])
                    peer_photo_top.append(peer_photo[c])
                else:
                    if warmup > 0:
                        wrk(peer_url, c, warmup, wrk_threads, png_args)
                    peer_png_top.append(once(peer_url, "peer POST /classify (png)", png_args, peer.pid, peer=True))
                    peer_photo_top.append(once(peer_url, "peer POST /classify (photo)", photo_args, peer.pid, peer=True))
            finally:
                stop(peer, group=True)

        heavy = heavy_home(tmp_path / "heavy")
        from core.home import ArtifactHome

        # Raw and served alternate (raw, served, raw, served, ...) and each served figure is divided by the
        # mean of the raw figures either side: the raw figure of one model moved by 17% between two runs on
        # this machine (174 and 204 images/s) while the served one held (168, 166), so one raw sample
        # would decide the ratio.
        heavy_bundle = ArtifactHome(heavy).bundle_dir(ArtifactHome(heavy).current_version())
        heavy_raws, heavy_served = [raw_heavy(heavy_bundle)], []
        port = free_port()
        server = start_server(heavy, port, env, tmp_path / "heavy.log")
        try:
            heavy_url = f"http://127.0.0.1:{port}"
            c = max(connections)
            for _ in range(HEAVY_ROUNDS):
                if warmup > 0:
                    wrk(heavy_url, c, warmup, wrk_threads, ["classify", str(png)])
                r = measure(heavy_url, "ours POST /classify (ResNet-18 width 64)", c, seconds, wrk_threads, ["classify", str(png)],
                            server.pid, scrape_errors=True)
                runs.append(r)
                heavy_served.append(r["requests_per_s"])
                heavy_raws.append(raw_heavy(heavy_bundle))  # the server idle
                print(f"  heavy model c={c}: {r['requests_per_s']} req/s, raw {heavy_raws[-2]} / {heavy_raws[-1]} images/s "
                      "before / after", flush=True)
        finally:
            stop(server)
        heavy_ratios = [served / ((heavy_raws[i] + heavy_raws[i + 1]) / 2) for i, served in enumerate(heavy_served)]
    top = max(connections)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    out.update({
        "peer": {"server": "litserve", "script": "benchmarks/peer_litserve.py", "png": peer_png, "photo": peer_photo},
        "ours_photo": ours_photo,
        "at_top_concurrency": {"connections": top, "rounds": ROUNDS, "ours_png": ours_png_top, "peer_png": peer_png_top,
                               "ours_photo": ours_photo_top, "peer_photo": peer_photo_top,
                               "order": "ours (main table), peer (its tables), then per round: ours png, ours photo, peer png, peer photo"},
        "logging": {"default_requests_per_s": logging_default, "off_requests_per_s": logging_off, "order": ", ".join(["off, default"] * ROUNDS)},
        "heavy_model": {"backbone": "resnet18 width 64", "raw_images_per_s": heavy_raws, "classify_requests_per_s": heavy_served,
                        "ratios": [round(x, 3) for x in heavy_ratios], "order": "raw, " + ", ".join(["served, raw"] * HEAVY_ROUNDS)},
        "peer_ratio_png_c32": round(mean(ours_png_top) / mean(peer_png_top), 3),
        "peer_ratio_photo_c32": round(mean(ours_photo_top) / mean(peer_photo_top), 3),
        "photo_requests_per_s_c32": round(mean(ours_photo_top), 1),
        "default_log_ratio": round(mean(logging_default) / mean(logging_off), 3),
        "heavy_model_classify_over_raw_c32": round(sum(heavy_ratios) / len(heavy_ratios), 3),
    })
    return out
