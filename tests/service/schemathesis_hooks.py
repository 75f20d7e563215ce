"""Schemathesis hooks for the contract test (``SCHEMATHESIS_HOOKS=schemathesis_hooks``): real images for the
upload routes' file part, for each media type its OpenAPI encoding declares (``service.fastpath.UPLOAD_MEDIA_TYPES``).

Without them a fuzzer sends arbitrary bytes as ``format: binary``, which no schema can tell from an image, and
every 415 would read as a rejected valid request."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

from service.fastpath import UPLOAD_MEDIA_TYPES

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/bmp": "BMP", "image/tiff": "TIFF", "image/webp": "WEBP"}


def encoder(fmt: str) -> Callable[[int, int, int], bytes]:
    def encode(width: int, height: int, seed: int) -> bytes:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt)
        return buf.getvalue()

    return encode


sides, seeds = st.integers(1, 96), st.integers(0, 2**31 - 1)
for media_type in UPLOAD_MEDIA_TYPES:
    schemathesis.openapi.media_type(media_type, st.builds(encoder(FORMATS[media_type]), sides, sides, seeds))
# A part with other fields beside it is generated from its schema, not its media type: every binary
# string in this API is an image upload, so the format gets images too.
schemathesis.openapi.format("binary", st.one_of([st.builds(encoder(f), sides, sides, seeds) for f in FORMATS.values()]))


@schemathesis.hook
def filter_body(ctx: schemathesis.HookContext, body: object) -> bool:
    """Leave out multipart bodies with an empty list for a field: multipart sends a list as one part per
    element, so an empty one is no part at all -- the same bytes as an absent optional field, which the
    server rightly accepts, although the generator meant them as an invalid ``id``."""
    return not (isinstance(body, dict) and any(value == [] for value in body.values()))
