"""Uploaded bytes to the uint8 pixels the models see, with every failure mapped to its status code.

400 broken image or empty upload, 413 too many bytes or pixels, 415 not an image.
Nothing is decoded on the event loop: an upload to a model route is decoded with the
rest of its batch, in the model thread, right before the forward pass
(:func:`decode_batch`), over as many threads as the process's share of the cores
(:func:`decode_pool`); POST /items decodes its stored copies in the threadpool
(:func:`prepare_copies`). Conversion
is ``core.images.to_array``, so an upload gets exactly the pixels the same image
would have had as training data.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from typing import TypeVar

import numpy as np
from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from core.images import draft, to_array

log = logging.getLogger("service")

INLINE_BYTES = 1 << 16  # uploads whose header is read on the event loop (prepare_upload): at most this many bytes
INLINE_PIXELS = 64 * 64  # thumbnails, decoded back to back in the model thread: at most this many pixels (decode_batch)
# Formats people upload. Restricting Image.open keeps PIL's long tail of exotic
# decoders off the request path, and EPS in particular: it shells out to Ghostscript.
Image.init()
# Our own max_image_pixels is the policy (checked below); PIL's warning between its
# limit and twice it would only be noise on stderr, so it is silenced.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO", "AVIF") if f in Image.OPEN)


def _claimed_format(data: bytes) -> str | None:
    """The format whose signature the bytes start with, if any: tells broken images (400) from non-images (415)."""
    prefix = data[:16]
    for fmt in FORMATS:
        accept = Image.OPEN[fmt][1]
        if accept is not None and accept(prefix):
            return fmt
    return None


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The image in ``data`` with only its header read, its size checked against ``max_pixels``."""
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"image too large: {e}") from e
    except Exception as e:  # noqa: BLE001 - UnidentifiedImageError, or whatever a plugin raises on a bad header
        claimed = _claimed_format(data)
        if claimed is None:
            raise HTTPException(415, f"not an image: not in any supported format ({', '.join(FORMATS)})") from e
        reason = "its header is broken" if isinstance(e, UnidentifiedImageError) else str(e)
        raise HTTPException(400, f"cannot decode the {claimed} image: {reason}") from e
    w, h = img.size
    # Checked before any pixel is decoded: a tiny file can declare a huge canvas.
    if w * h > max_pixels:
        img.close()
        raise HTTPException(413, f"image too large: {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
    return img


def to_pixels(img: Image.Image, size: int) -> np.ndarray:
    """An opened image decoded to a ``(3, size, size)`` uint8 array (a JPEG at a reduced scale, as
    training data is: ``core.images.draft``); closes it."""
    with img:
        try:
            draft(img, size)
            img.load()
            return to_array(img, size)
        except Image.DecompressionBombError as e:
            raise HTTPException(413, f"image too large: {e}") from e
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error... on bad data
            log.info("undecodable %s upload: %s: %s", img.format, type(e).__name__, e)
            raise HTTPException(400, f"cannot decode the {img.format} image: {e}") from e


def decode_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Encoded image bytes to a ``(3, size, size)`` uint8 array. Blocking: run it in a thread."""
    return to_pixels(open_image(data, max_pixels), size)


@dataclass(frozen=True)
class Encoded:
    """A bigger upload's bytes, left whole for its batch: opened (its header checked against
    ``max_pixels``) and decoded in the model thread, with the rest of the batch."""

    data: bytes
    max_pixels: int


# What the batchers take: a thumbnail with only its header read, a bigger upload's bytes, or
# pixels decoded already (``(3, H, W)`` uint8).
Upload = Image.Image | Encoded | np.ndarray
Out = TypeVar("Out")


def prepare_upload(data: bytes, max_pixels: int) -> Upload:
    """An upload made ready for a batch, which decodes it (:func:`decode_batch`): a thumbnail (at most
    ``INLINE_BYTES``, e.g. a 32x32 CIFAR PNG) with its header read here, so its size and format are
    checked before it joins a batch (413, 415); anything bigger as its bytes, header unread.

    Why nothing is decoded here or in a threadpool of its own: decoding on the event loop
    stalls every other request (a 32x32 PNG: ~40 us in a tight loop, ~90-120 us of event-loop
    time between requests), and a hop to a threadpool and back costs the event loop more than
    decoding a thumbnail (~100-400 us). Photos paid for the threadpool more than the hop: a
    1600x1200 JPEG on /classify, 2 workers, 32 connections, each process's ~16 uploads decoding
    in as many threads that took turns with the GIL cost 10.2-10.3 core-ms per request (1.4 of
    them on the event loop) for 184 and 191 requests/s; decoded in their batch, 7.7-8.4 core-ms
    (0.7-0.8) for 258 and 235 (2-core Intel Xeon, the two codes alternating). A big upload's
    header is parsed in the batch too: walking a large file's metadata is not the event loop's job.
    """
    if len(data) <= INLINE_BYTES:
        return open_image(data, max_pixels)
    return Encoded(data, max_pixels)


def decode_pool(threads: int) -> Executor | None:
    """Threads for :func:`decode_batch` to spread a batch's big uploads over: ``threads``, the
    process's share of the cores (its torch threads), or none when that is one (the model thread
    decodes them itself). PIL lets go of the GIL while it decodes, so the threads run in parallel."""
    return ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None


def to_pixel_copies(data: bytes, sizes: Sequence[int], max_pixels: int) -> dict[int, np.ndarray]:
    """Encoded image bytes decoded to ``(3, s, s)`` uint8 arrays, one per size in ``sizes``. Each is
    exactly ``to_array`` of the image at ``s`` (a JPEG decoded once per size, each at its own reduced
    scale), so the copy at the model's size is what an upload of the image to any other route gets.
    Errors as :func:`to_pixels`."""
    return {s: decode_image(data, s, max_pixels) for s in sizes}


async def prepare_copies(data: bytes, sizes: Sequence[int], max_pixels: int) -> dict[int, np.ndarray]:
    """An upload decoded to pixels at each of ``sizes`` (``POST /items``: the copies the collection
    stores), in the threadpool whatever the size: a write waits for its fsync anyway. Each decode
    checks the header first (``decode_image``: 413, 415, 400), off the event loop as in a batch."""
    return await run_in_threadpool(to_pixel_copies, data, sizes, max_pixels)


@dataclass(frozen=True)
class DecodedBatch:
    """A batch's uploads decoded: the pixels of those that decode, stacked, and why the others did not."""

    pixels: np.ndarray  # (len(rows), 3, size, size) uint8
    rows: list[int]  # the position in the batch of each row of ``pixels``
    errors: dict[int, HTTPException]  # position in the batch -> why that upload did not decode

    def answers(self, results: Sequence[Out]) -> list[Out | HTTPException]:
        """One answer per upload, in batch order: ``results[j]`` (computed from ``pixels[j]``)
        for the upload at ``rows[j]``, its error for an upload that did not decode."""
        if not self.errors:
            return list(results)
        by_row = dict(zip(self.rows, results))
        return [by_row[i] if i in by_row else self.errors[i] for i in range(len(self.rows) + len(self.errors))]


def _decode_one(upload: Upload, size: int) -> np.ndarray | HTTPException:
    try:
        if isinstance(upload, np.ndarray):
            return upload
        if isinstance(upload, Encoded):
            return decode_image(upload.data, size, upload.max_pixels)
        return to_pixels(upload, size)
    except HTTPException as e:
        return e


def _is_big(upload: Upload) -> bool:
    return isinstance(upload, Encoded) or (isinstance(upload, Image.Image) and upload.width * upload.height > INLINE_PIXELS)


def decode_batch(uploads: Sequence[Upload], size: int, pool: Executor | None = None) -> DecodedBatch:
    """The uploads of one batch as one ``(B, 3, size, size)`` uint8 array, pixels decoded earlier
    taken as they are. Decoded here, back to back, or over ``pool`` when it is given and the batch
    holds more than one upload bigger than a thumbnail (``INLINE_PIXELS``). An upload that does not
    decode is left out of the array with its HTTPException (a broken image fails its own request,
    not its batch). Blocking: the model thread calls it, right before the forward pass.
    """
    parallel = pool is not None and sum(map(_is_big, uploads)) > 1
    outs = pool.map(_decode_one, uploads, repeat(size)) if parallel else (_decode_one(u, size) for u in uploads)  # type: ignore[union-attr]
    decoded: list[np.ndarray] = []
    rows: list[int] = []
    errors: dict[int, HTTPException] = {}
    for i, out in enumerate(outs):
        if isinstance(out, HTTPException):
            errors[i] = out
        else:
            decoded.append(out)
            rows.append(i)
    pixels = np.stack(decoded) if decoded else np.empty((0, 3, size, size), dtype=np.uint8)
    return DecodedBatch(pixels, rows, errors)
