"""Uploaded bytes to the uint8 array the models see, with every failure mapped to its status code.

400 broken image or empty upload, 413 too many bytes or pixels, 415 not an image.
Decoding runs in the threadpool, but for thumbnails (``decode_upload``).
Conversion is ``training.images.to_array``, so an upload gets exactly the pixels
the same image would have had as training data.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from fastapi import HTTPException, UploadFile
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from training.images import to_array

log = logging.getLogger("service")

CHUNK = 1 << 16
INLINE_BYTES = 1 << 16  # uploads decoded on the event loop: at most this many bytes ...
INLINE_PIXELS = 64 * 64  # ... and pixels (see decode_upload)
# Formats people upload. Restricting Image.open keeps PIL's long tail of exotic
# decoders off the request path, and EPS in particular: it shells out to Ghostscript.
Image.init()
# Our own max_image_pixels is the policy (checked below); PIL's warning between its
# limit and twice it would only be noise on stderr, so it is silenced.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO", "AVIF") if f in Image.OPEN)


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """The upload's bytes, read in chunks that stop as soon as ``limit`` is passed."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await file.read(CHUNK):
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, f"upload too large: over the limit of {limit} bytes")
        chunks.append(chunk)
    if total == 0:
        raise HTTPException(400, "empty upload: the `file` field has no bytes")
    return b"".join(chunks)


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
    """An opened image decoded to a ``(3, size, size)`` uint8 array; closes it."""
    with img:
        try:
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


async def decode_upload(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """``decode_image`` for a request handler: in the threadpool, except for tiny images.

    A thumbnail-sized upload (at most ``INLINE_BYTES`` and ``INLINE_PIXELS``, e.g. a
    32x32 CIFAR image) decodes in ~60 us, while the round trip to a worker thread
    costs ~100-400 us of event-loop time and GIL handoffs (measured, 2-core build
    machine): those decode on the loop. The size limits keep anything slower off it,
    the header parse included.
    """
    if len(data) <= INLINE_BYTES:
        img = open_image(data, max_pixels)
        if img.width * img.height <= INLINE_PIXELS:
            return to_pixels(img, size)
        return await run_in_threadpool(to_pixels, img, size)
    return await run_in_threadpool(decode_image, data, size, max_pixels)
