"""Service load: /classify and /neighbors?id= under 1, 8 and 32 connections, against the raw model, same run.

usage: python benchmarks/service_load.py [--home artifacts] [--seconds 10] [--out benchmarks/results/service_load.json]

1. Raw batched classifier throughput, no HTTP: the function the server's batcher
   runs (``service.model_thread.classify``) on batches of
   ``--max-batch-size`` images, with the server's thread settings, in this process,
   before the server starts, again between the /classify and /neighbors runs (the
   server idle) and after it stops; with ``--workers N``, also N processes side by
   side, each with the server's share of the cores (how the workers run their
   models). The ratio uses the highest: on this shared machine one 10 s measurement
   can be 10% low, and a low raw number would flatter the server.
2. ``python -m service`` on the bundle CURRENT names in ``--home``, then ``wrk``
   (``apt-get install -y wrk``) with ``benchmarks/service_load.lua``: a multipart
   POST /classify of one indexed image (as PNG), and GET /neighbors?id= with random
   ids, each for ``--seconds`` at each concurrency, after a warm-up.

Recorded per run: requests/s, latency p50/p95/p99, errors (non-2xx answers, from
the server's /metrics, and wrk's socket errors and timeouts), the mean batch size,
and the CPU used by wrk and by the server (cores busy, from rusage and
/proc/<pid>/stat) -- on a small machine the load generator competes with the
server. The project's bars: /classify at 32 connections >= 70% of the raw throughput;
/neighbors by id >= 1500 requests/s.

3. Then, in the same run (``benchmarks/load_comparisons.py``; ``--no-comparisons`` skips them):
   a photo-size JPEG on /classify; default logging against logging off; the peer, LitServe
   (``benchmarks/peer_litserve.py``, ``pip install litserve``), on the PNG and the photo; and a
   full-width ResNet-18 bundle's /classify at 32 connections against its raw throughput. Their
   ratios are top-level keys of the result: ``peer_ratio_png_c32``, ``peer_ratio_photo_c32``,
   ``photo_requests_per_s_c32``, ``default_log_ratio``, ``heavy_model_classify_over_raw_c32``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from machine import result_header, scrub_paths  # noqa: E402
from tests_support import free_port  # noqa: E402  (the tests' helper: one free_port in the project)

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "benchmarks" / "service_load.lua"
CLASSIFY_BAR, NEIGHBORS_BAR = 0.70, 1500.0
TICKS = os.sysconf("SC_CLK_TCK")


def raw_classifier(bundle, image: np.ndarray, batch: int, threads: int | None, seconds: float) -> dict[str, object]:
    """Images/s of the server's batched classify function on full batches, no HTTP."""
    import torch

    from service.model_thread import classify
    from service.threads import set_threads

    set_threads(threads)
    images = [image] * batch
    for _ in range(3):  # warm-up: allocator, oneDNN kernels
        classify(bundle, images)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        classify(bundle, images)
        n += 1
    return {"batch_size": batch, "batches": n, "seconds": round(elapsed, 3), "images_per_s": round(n * batch / elapsed, 1),
            "torch_threads": torch.get_num_threads()}


def _raw_worker(bundle_dir: str, batch: int, threads: int, seconds: float, start: Barrier, results: Queue[float]) -> None:
    """One of ``raw_as_workers``' processes: load and freeze the model, wait for the others, measure."""
    from core.bundles import load_bundle
    from service.frozen import for_serving

    bundle = for_serving(load_bundle(Path(bundle_dir)))
    start.wait()
    results.put(raw_classifier(bundle, np.asarray(bundle.pixels[0]), batch, threads, seconds)["images_per_s"])


def raw_as_workers(bundle_dir: Path, batch: int, workers: int, threads: int, seconds: float) -> dict[str, object]:
    """Images/s of ``workers`` processes, each running the classify function with ``threads``
    torch threads, side by side and started together: how ``--workers`` runs its models. On 2-core
    build machines two one-thread processes did 9-12% more than one two-thread process (batch 32:
    2,733 against at best 2,510 images/s with AVX-512; 1,375 against at best 1,225 with AVX2 only,
    benchmarks/results/service_load_workers2.json as of 2026-12-02), so the ratio divides by the highest of both kinds."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_raw_worker, args=(str(bundle_dir), batch, threads, seconds, start, results)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    each = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join()
    return {"batch_size": batch, "seconds": seconds, "images_per_s": round(sum(each), 1), "torch_threads": threads,
            "processes": workers, "images_per_s_per_process": each}


def raw_best(bundle_dir: Path, batch: int = 32, seconds: float = 10.0, workers: int = 2) -> float:
    """The highest raw classify throughput of a bundle: one process with every core, or ``workers``
    one-thread processes side by side (how ``--workers`` runs it); images/s."""
    from core.bundles import load_bundle
    from service.frozen import for_serving

    bundle = for_serving(load_bundle(bundle_dir))
    one = raw_classifier(bundle, np.asarray(bundle.pixels[0]), batch, None, seconds)["images_per_s"]
    return max(one, raw_as_workers(bundle_dir, batch, workers, 1, seconds)["images_per_s"])


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (uvicorn's worker processes under --workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15 of stat)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        try:
            total += cpu_seconds(int(child))
        except (FileNotFoundError, ProcessLookupError):
            pass  # exited between the listing and the read
    return total


def scrape(url: str) -> dict[str, float]:
    """Request counts by status class, and batch count/sum per kind, from the server's /metrics."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for s in family.samples:
            if s.name == "simclr_http_requests_total" and s.labels["route"] != "/metrics":
                key = "2xx" if s.labels["status"].startswith("2") else "non_2xx"
                out[key] = out.get(key, 0.0) + s.value
            elif s.name in ("simclr_batch_size_count", "simclr_batch_size_sum"):
                out[f"{s.name}/{s.labels['kind']}"] = s.value
    return out


def wrk(url: str, connections: int, seconds: int, threads: int, script_args: list[str]) -> dict[str, object]:
    """One wrk run; its RESULT line, plus the CPU seconds wrk itself used (from wait4's rusage)."""
    cmd = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
           "-s", str(LUA), url, "--", *script_args]
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode(errors="replace")
    match = re.search(r"^RESULT (\{.*\})$", text, re.M)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {shlex.join(cmd)}\n{text}")
    result = json.loads(match.group(1))
    result["wrk_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["wall_s"] = wall
    return result


def measure(url: str, endpoint: str, connections: int, seconds: int, threads: int, script_args: list[str], server_pid: int,
            scrape_errors: bool = True) -> dict[str, object]:
    """One wrk run against ``url``; non-2xx answers from the server's /metrics (``scrape_errors``), else (a
    peer without our metrics) from wrk's own count of 4xx/5xx answers."""
    before, cpu0 = (scrape(url) if scrape_errors else {}), cpu_seconds(server_pid)
    r = wrk(url, connections, seconds, threads, script_args)
    cpu1, after = cpu_seconds(server_pid), (scrape(url) if scrape_errors else {"non_2xx": r["errors"]["status"]})
    kind = "classify" if "POST /classify" in endpoint else "neighbors"  # labels like "ours POST /classify (photo)"
    batches = after.get(f"simclr_batch_size_count/{kind}", 0) - before.get(f"simclr_batch_size_count/{kind}", 0)
    images = after.get(f"simclr_batch_size_sum/{kind}", 0) - before.get(f"simclr_batch_size_sum/{kind}", 0)
    duration = r["duration_us"] / 1e6
    lat = r["latency_us"]
    socket_errors = {k: v for k, v in r["errors"].items() if k != "status"}
    return {
        "endpoint": endpoint,
        "connections": connections,
        "seconds": round(duration, 3),
        "requests": r["requests"],
        "requests_per_s": round(r["requests"] / duration, 1),
        "latency_ms": {k: round(lat[k] / 1000, 2) for k in ("p50", "p95", "p99", "mean", "max")},
        "errors": {
            "total": int(after.get("non_2xx", 0) - before.get("non_2xx", 0)) + sum(socket_errors.values()),
            "non_2xx": int(after.get("non_2xx", 0) - before.get("non_2xx", 0)),
            "wrk_status_4xx_5xx": r["errors"]["status"],
            **socket_errors,
        },
        "mean_batch_size": round(images / batches, 2) if batches and kind == "classify" else None,
        # Cores kept busy (1.0 = one core all the time); the machine has machine()["cores"].
        "load_generator_cpu_cores": round(r["wrk_cpu_s"] / r["wall_s"], 3),
        "server_cpu_cores": round((cpu1 - cpu0) / r["wall_s"], 3),
    }


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 120) -> subprocess.Popen[bytes]:
    """``proc`` once ``url`` answers 200; its log's tail in the error if it exits or is not ready in ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"{url}: not ready within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def start_server(home: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "service", "--home", str(home), "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    return wait_ready(proc, f"http://127.0.0.1:{port}/readyz", log)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default="artifacts", help="artifact home with a published model (default: %(default)s)")
    p.add_argument("--seconds", type=int, default=10, help="whole seconds per endpoint and concurrency (default: %(default)s)")
    p.add_argument("--connections", default="1,8,32", help="comma-separated concurrencies (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="whole warm-up seconds per endpoint, not recorded; 0 = none (default: %(default)s)")
    p.add_argument("--raw-seconds", type=float, default=None, help="seconds of the raw classifier measurement (default: --seconds)")
    p.add_argument("--torch-threads", type=int, default=None, help="SIMCLR_TORCH_THREADS for the server and the raw measurement (default: torch's)")
    p.add_argument("--max-batch-size", type=int, default=32, help="SIMCLR_MAX_BATCH_SIZE, and the raw batch (default: %(default)s)")
    p.add_argument("--max-batch-wait-ms", type=float, default=5, help="SIMCLR_MAX_BATCH_WAIT_MS (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="SIMCLR_WORKERS: server processes on the port (default: %(default)s)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (at most the connections) (default: %(default)s)")
    p.add_argument("--k", type=int, default=5, help="neighbours per /neighbors request (default: %(default)s)")
    p.add_argument("--log-level", default="info", help="server log level: info (the service's default) writes an access-log line per "
                   "request; the comparisons also measure warning (logging off) (default: %(default)s)")
    p.add_argument("--no-comparisons", action="store_true", help="skip the photo, logging, LitServe and heavy-model comparisons")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "service_load.json"), help="(default: %(default)s)")
    a = p.parse_args()
    if a.seconds < 1:
        p.error("--seconds must be at least 1 (wrk runs whole seconds)")
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    connections = [int(c) for c in a.connections.split(",")]

    from core.bundles import load_bundle
    from core.home import ArtifactHome
    from service.frozen import for_serving

    home = ArtifactHome(a.home)
    version = home.current_version()
    if version is None:
        sys.exit(f"no published model under {home.root}: run `simclr refresh --home {home.root} --data SRC` first")
    bundle = for_serving(load_bundle(home.bundle_dir(version)))  # the models exactly as the server runs them
    image = np.asarray(bundle.pixels[0])
    print(f"model {version}: raw classifier throughput, batch {a.max_batch_size} ...", flush=True)

    def measure_raw(when: str) -> dict[str, object]:
        result = raw_classifier(bundle, image, a.max_batch_size, a.torch_threads, a.raw_seconds or a.seconds)
        print(f"  raw classifier, {when}: {result['images_per_s']} images/s", flush=True)
        return result

    raws = [measure_raw("before the server")]
    n_items = bundle.index.ntotal
    manifest = bundle.manifest

    env = {"SIMCLR_MAX_BATCH_SIZE": str(a.max_batch_size), "SIMCLR_MAX_BATCH_WAIT_MS": str(a.max_batch_wait_ms),
           "SIMCLR_LOG_LEVEL": a.log_level}
    if a.torch_threads:
        env["SIMCLR_TORCH_THREADS"] = str(a.torch_threads)
    if a.workers > 1:
        env["SIMCLR_WORKERS"] = str(a.workers)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    runs = []
    comparisons: dict[str, object] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        upload = Path(tmp) / "image.png"
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buf, format="PNG")
        upload.write_bytes(buf.getvalue())
        log = Path(tmp) / "server.log"
        server = start_server(home.root, port, env, log)
        try:
            scenarios = [("POST /classify", ["classify", str(upload)]), ("GET /neighbors?id=", ["neighbors", str(n_items), str(a.k)])]
            for endpoint, script_args in scenarios:
                if a.warmup > 0:
                    wrk(url, max(connections), a.warmup, a.wrk_threads, script_args)
                for c in connections:
                    run = measure(url, endpoint, c, a.seconds, a.wrk_threads, script_args, server.pid)
                    runs.append(run)
                    print(f"  {endpoint:20s} c={c:<3d} {run['requests_per_s']:9.1f} req/s  p50 {run['latency_ms']['p50']} ms"
                          f"  p99 {run['latency_ms']['p99']} ms  errors {run['errors']['total']}", flush=True)
                if endpoint == "POST /classify":
                    raws.append(measure_raw("the server idle"))
            if not a.no_comparisons:
                from load_comparisons import run_comparisons

                comparisons = run_comparisons(
                    url=url, home=home.root, png=upload, image=image, connections=connections, seconds=a.seconds,
                    wrk_threads=a.wrk_threads, warmup=a.warmup, bundle_dir=home.bundle_dir(version), env=env,
                    max_batch_size=a.max_batch_size, wait_ms=a.max_batch_wait_ms,
                    ours_png_c32=max(r["requests_per_s"] for r in runs if r["endpoint"] == "POST /classify" and r["connections"] == max(connections)),
                    measure=measure, wrk=wrk, start_server=start_server, free_port=free_port, raw_heavy=raw_best, server_pid=server.pid)
        finally:
            server.terminate()
            server.wait(30)
        server_log_tail = log.read_text(errors="replace")[-2000:]
    raws.append(measure_raw("the server stopped"))
    if a.workers > 1:  # the models as the workers run them: one process each, the cores shared out
        from service.threads import threads_per_worker

        threads = a.torch_threads or threads_per_worker(a.workers)
        raws.append(raw_as_workers(home.bundle_dir(version), a.max_batch_size, a.workers, threads, a.raw_seconds or a.seconds))
        print(f"  raw classifier, {a.workers} processes x {threads} threads: {raws[-1]['images_per_s']} images/s", flush=True)
    raw = {**max(raws, key=lambda r: r["images_per_s"]), "images_per_s_each": [r["images_per_s"] for r in raws]}

    def best(endpoint: str, c: int | None = None) -> float | None:
        rates = [r["requests_per_s"] for r in runs if r["endpoint"] == endpoint and (c is None or r["connections"] == c)]
        return max(rates) if rates else None

    classify_32 = best("POST /classify", 32)
    neighbors_best = best("GET /neighbors?id=")
    summary = {
        "classify_32_over_raw": round(classify_32 / raw["images_per_s"], 3) if classify_32 else None,
        "classify_bar": CLASSIFY_BAR,
        "neighbors_by_id_best_requests_per_s": neighbors_best,
        "neighbors_bar_requests_per_s": NEIGHBORS_BAR,
        "errors": sum(r["errors"]["total"] for r in runs),
    }
    paths = {a.home: "<home>"}
    keys = ("peer_ratio_png_c32", "peer_ratio_photo_c32", "photo_requests_per_s_c32", "default_log_ratio", "heavy_model_classify_over_raw_c32")
    result = {
        **result_header("service_load", sys.argv, paths),
        **({k: comparisons[k] for k in keys} if comparisons else {}),
        "model": {"version": version, "backbone": manifest.backbone, "image_size": manifest.image_size, "index_size": n_items},
        "server": {"command": f"python -m service --home {home.root} --port {port}", "env": env},
        "load_generator": {"tool": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip(),
                           "threads": a.wrk_threads, "script": str(LUA.relative_to(ROOT))},
        "raw_classifier": raw,
        "runs": runs,
        "summary": summary,
        **({"comparisons": {k: v for k, v in comparisons.items() if k not in keys}} if comparisons else {}),
    }
    if "Traceback" in server_log_tail:
        result["server_log_tail"] = server_log_tail
    result = scrub_paths(result, paths)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
