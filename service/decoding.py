"""Uploaded bytes to the uint8 pixels the models see, with every failure mapped to its status code.

400 broken image or empty upload, 413 too many bytes or pixels, 415 not an image.
Nothing is decoded on the event loop: thumbnails are decoded by the model thread
with the rest of their batch (:func:`decode_batch`), bigger images in the
threadpool (:func:`prepare_upload`). Conversion is ``core.images.to_array``, so an
upload gets exactly the pixels the same image would have had as training data.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from core.images import draft, to_array

log = logging.getLogger("service")

INLINE_BYTES = 1 << 16  # uploads decoded by the model thread, in their batch: at most this many bytes ...
INLINE_PIXELS = 64 * 64  # ... and pixels (see prepare_upload)
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


# What the batchers take: pixels decoded in the threadpool, or a thumbnail opened (its
# header checked) for the model thread to decode with the rest of its batch.
Upload = np.ndarray | Image.Image
Out = TypeVar("Out")


async def prepare_upload(data: bytes, size: int, max_pixels: int) -> Upload:
    """An upload made ready for a batch: a thumbnail (at most ``INLINE_BYTES`` and
    ``INLINE_PIXELS``, e.g. a 32x32 CIFAR image) with only its header read, anything
    bigger decoded to pixels in the threadpool.

    Why thumbnails go to the model thread: a hop to the threadpool and back costs more
    event-loop time than decoding one (~100-400 us), yet decoding on the event loop
    stalls every other request (a 32x32 PNG: ~40 us in a tight loop, ~90-120 us of
    event-loop time between requests; 2-core build machine). The model thread decodes
    a batch's thumbnails back to back, right before the forward pass that needs them
    (:func:`decode_batch`). Size and format are checked here, before any pixel is
    decoded (413, 415); the header parse is quick for inputs this small.
    """
    if len(data) <= INLINE_BYTES:
        img = open_image(data, max_pixels)
        if img.width * img.height <= INLINE_PIXELS:
            return img
        return await run_in_threadpool(to_pixels, img, size)
    return await run_in_threadpool(decode_image, data, size, max_pixels)


def to_pixel_copies(data: bytes, sizes: Sequence[int], max_pixels: int) -> dict[int, np.ndarray]:
    """Encoded image bytes decoded to ``(3, s, s)`` uint8 arrays, one per size in ``sizes``. Each is
    exactly ``to_array`` of the image at ``s`` (a JPEG decoded once per size, each at its own reduced
    scale), so the copy at the model's size is what an upload of the image to any other route gets.
    Errors as :func:`to_pixels`."""
    return {s: decode_image(data, s, max_pixels) for s in sizes}


async def prepare_copies(data: bytes, sizes: Sequence[int], max_pixels: int) -> dict[int, np.ndarray]:
    """An upload decoded to pixels at each of ``sizes`` (``POST /items``: the copies the collection
    stores). The header is checked here, as :func:`prepare_upload` does (413, 415, 400); the decoding
    runs in the threadpool whatever the size: a write waits for its fsync anyway."""
    open_image(data, max_pixels).close()
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


def decode_batch(uploads: Sequence[Upload], size: int) -> DecodedBatch:
    """The uploads of one batch as one ``(B, 3, size, size)`` uint8 array: thumbnails decoded
    here, back to back, pixels decoded earlier taken as they are. An upload that does not
    decode is left out of the array with its HTTPException (a broken image fails its own
    request, not its batch). Blocking: the model thread calls it, right before the forward pass.
    """
    decoded: list[np.ndarray] = []
    rows: list[int] = []
    errors: dict[int, HTTPException] = {}
    for i, upload in enumerate(uploads):
        if isinstance(upload, np.ndarray):
            decoded.append(upload)
            rows.append(i)
            continue
        try:
            decoded.append(to_pixels(upload, size))
            rows.append(i)
        except HTTPException as e:
            errors[i] = e
    pixels = np.stack(decoded) if decoded else np.empty((0, 3, size, size), dtype=np.uint8)
    return DecodedBatch(pixels, rows, errors)
