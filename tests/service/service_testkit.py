"""Shared by the service tests: limits, class names, starting and stopping a real server, and encoded
images in every mode and format the HTTP contract promises to accept, plus broken ones."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests_support import free_port

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Small limits for the test server, so limit tests need no big payloads; valid test images are far below them.
MAX_UPLOAD_BYTES = 200_000
MAX_IMAGE_PIXELS = 1_000_000
REPO = Path(__file__).resolve().parents[2]


def photo(w: int = 64, h: int = 48) -> Image.Image:
    """A small RGB image with some structure (a gradient and a block), not flat noise."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1).astype(np.uint8)
    arr[h // 4 : h // 2, w // 4 : w // 2] = (250, 30, 30)
    return Image.fromarray(arr)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A JPEG whose EXIF orientation (6: rotate 90 degrees clockwise) must be applied."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo(), "JPEG", exif=exif.tobytes())


def uploads() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) for each accepted kind of image."""
    img = photo()
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(img.size))
    grey16 = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    assert grey16.mode == "I;16"
    return {
        "jpeg": (encode(img, "JPEG", quality=90), "image/jpeg"),
        "png": (encode(img, "PNG"), "image/png"),
        "rgba_png": (encode(rgba, "PNG"), "image/png"),
        "palette_png": (encode(img.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), "image/png"),
        "greyscale_png": (encode(img.convert("L"), "PNG"), "image/png"),
        "cmyk_jpeg": (encode(img.convert("CMYK"), "JPEG"), "image/jpeg"),
        "16bit_png": (encode(grey16, "PNG"), "image/png"),
        "exif_rotated_jpeg": (exif_rotated_jpeg(), "image/jpeg"),
        "gif": (encode(img.convert("P"), "GIF"), "image/gif"),
        "webp": (encode(img, "WEBP"), "image/webp"),
        "bmp": (encode(img, "BMP"), "image/bmp"),
        "tiff": (encode(img, "TIFF"), "image/tiff"),
    }


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring a huge canvas, with almost no pixel data: a cheap 'bomb'."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def chw_png(chw: np.ndarray) -> bytes:
    """An indexed image's stored pixels, losslessly, as an upload."""
    return encode(Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))), "PNG")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0.0 if absent), e.g. ``metric(t, "x_total", route="/a")``."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@dataclass
class Server:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(home: Path, log: Path, **env: str) -> Server:
    """``python -m service`` on a free port; returns once it answers /healthz."""
    port = free_port()
    environ = {**os.environ, "SIMCLR_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", **env}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--home", str(home), "--port", str(port)],
            cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", home, process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not come up in 60 s:\n{server.log_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
