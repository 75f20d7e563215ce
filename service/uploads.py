"""Uploaded bytes to the uint8 array the models see, with every failure mapped to its status code.

400 broken image or empty upload, 413 too many bytes or pixels, 415 not an image.
Nothing is decoded on the event loop: thumbnails are decoded by the model thread
with the rest of their batch, bigger images in the threadpool (``prepare_upload``).
Conversion is ``training.images.to_array``, so an upload gets exactly the pixels
the same image would have had as training data.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from fastapi import HTTPException, Request
from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.concurrency import run_in_threadpool

from training.images import to_array

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


# The request body of the upload routes, for the OpenAPI document: the routes read it
# themselves (``receive_upload``), so FastAPI cannot infer it from their signature.
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": "an image in any common format and mode"}},
                }
            }
        },
    }
}


class _FilePart:
    """python-multipart callbacks that keep one named file part's bytes, refusing more than ``limit``."""

    def __init__(self, field: str, limit: int) -> None:
        self.field, self.limit = field.encode(), limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.found = self.is_file = self._in_field = False
        self._header_name = self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._headers, self._in_field = {}, False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") == self.field and not self.found:
            self.found = self._in_field = True
            self.is_file = b"filename" in params  # a plain form value is not an upload

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_field:
            self.size += end - start
            if self.size > self.limit:
                raise HTTPException(413, f"upload too large: over the limit of {self.limit} bytes")
            self.chunks.append(data[start:end])


async def receive_upload(request: Request, limit: int, field: str = "file") -> bytes:
    """The bytes of the multipart file field ``field``, parsed as the body streams in.

    This is what FastAPI's ``UploadFile`` gives, with less work on the event loop
    (no form object, spooled temporary file or per-field validation; with the
    routes' direct state reads, /classify went from 666 to 785 requests/s at 32
    connections on one process), and the size limit is enforced as the bytes
    arrive. Errors read like FastAPI's own: 422 when the field is missing or
    not a file, 413 over ``limit``, 400 for an empty upload or a broken body.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise HTTPException(422, f"invalid request: form field `{field}`: an image upload is required (multipart/form-data)")
    part = _FilePart(field, limit)
    parser = MultipartParser(boundary, part.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except HTTPException:
        raise
    except Exception as e:  # noqa: BLE001 - python-multipart's MultipartParseError and friends
        raise HTTPException(400, f"malformed multipart body: {e}") from e
    if parser.state != MultipartState.END:  # python-multipart accepts a body cut short; we do not
        raise HTTPException(400, "malformed multipart body: it ends before the closing boundary")
    if not part.found:
        raise HTTPException(422, f"invalid request: form field `{field}`: Field required")
    if not part.is_file:
        raise HTTPException(422, f"invalid request: form field `{field}`: expected an uploaded file, got a plain value")
    if part.size == 0:
        raise HTTPException(400, f"empty upload: the `{field}` field has no bytes")
    return b"".join(part.chunks)


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
    a batch's thumbnails back to back, right before the forward pass that needs them.
    Size and format are checked here, before any pixel is decoded (413, 415); the
    header parse is quick for inputs this small.
    """
    if len(data) <= INLINE_BYTES:
        img = open_image(data, max_pixels)
        if img.width * img.height <= INLINE_PIXELS:
            return img
        return await run_in_threadpool(to_pixels, img, size)
    return await run_in_threadpool(decode_image, data, size, max_pixels)


def on_decoded(uploads: Sequence[Upload], size: int, fn: Callable[[np.ndarray, list[int]], Sequence[Out]]) -> list[Out | HTTPException]:
    """``fn(pixels, rows)`` on the uploads that decode, stacked into one ``(B, 3, size, size)``
    uint8 array (``rows``: their positions in ``uploads``); one result per upload, in order,
    where an upload that does not decode gets its HTTPException instead (a broken image
    fails its own request, not its batch). Blocking: the model thread calls it.
    """
    decoded: list[np.ndarray | HTTPException] = []
    for upload in uploads:
        if isinstance(upload, np.ndarray):
            decoded.append(upload)
            continue
        try:
            decoded.append(to_pixels(upload, size))
        except HTTPException as e:
            decoded.append(e)
    rows = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
    results = fn(np.stack([decoded[i] for i in rows]), rows) if rows else []
    by_row = dict(zip(rows, results))
    return [by_row[i] if i in by_row else d for i, d in enumerate(decoded)]  # type: ignore[misc]
