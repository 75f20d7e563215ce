"""Uploads to pixels: every upload decoded in its batch by ``decode_batch`` (thumbnails with their header
read first, bigger ones from their bytes, over a pool of threads or not), the same pixels every way (and
as training data), and a broken upload failing alone."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi import HTTPException
from PIL import Image

from core.datasets import load_split
from core.images import to_array
from service.decoding import INLINE_BYTES, INLINE_PIXELS, Encoded, decode_batch, decode_image, decode_pool, prepare_upload, to_pixel_copies


def _png(side: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("threads", [1, 2])
def test_prepared_uploads_decode_to_the_same_pixels_and_a_broken_one_fails_alone(threads: int) -> None:
    """A thumbnail comes with its header read, a bigger upload as its bytes; ``decode_batch`` decodes
    both (the big ones over a pool when it has one): the same pixels as ``decode_image``. An upload
    whose data is broken after a good header, or whose bytes are no image, gets its own error; the
    rest of its batch is decoded and stacked."""
    pngs = {side: _png(side) for side in (32, 200)}  # 32x32 is a thumbnail, 200x200 is not
    for side in pngs:
        assert (side * side <= INLINE_PIXELS) == (side == 32)
    assert len(pngs[200]) > INLINE_BYTES
    thumb, big = (prepare_upload(pngs[s], 10**6) for s in (32, 200))
    assert isinstance(thumb, Image.Image) and isinstance(big, Encoded)
    broken = prepare_upload(pngs[32][: len(pngs[32]) // 2], 10**6)  # the header survives
    not_an_image = prepare_upload(b"x" * (INLINE_BYTES + 1), 10**6)
    too_many_pixels = prepare_upload(pngs[200], 199 * 199)
    pool = decode_pool(threads)
    assert (pool is None) == (threads == 1)

    batch = decode_batch([thumb, broken, big, not_an_image, big, too_many_pixels], 32, pool)
    assert batch.rows == [0, 2, 4]
    assert batch.pixels.shape == (len(batch.rows), 3, 32, 32) and batch.pixels.dtype == np.uint8
    got = batch.answers(list(batch.pixels))  # one result per decoded row, back in batch order
    assert np.array_equal(got[0], decode_image(pngs[32], 32, 10**6))
    assert np.array_equal(got[2], decode_image(pngs[200], 32, 10**6)) and np.array_equal(got[4], got[2])
    assert {i: e.status_code for i, e in batch.errors.items()} == {1: 400, 3: 415, 5: 413}
    assert all(isinstance(got[i], HTTPException) for i in (1, 3, 5))
    if pool is not None:
        pool.shutdown()


def test_a_batch_that_all_decodes_or_none_does() -> None:
    pixels = [decode_image(_png(32, seed), 32, 10**6) for seed in (1, 2)]
    batch = decode_batch(pixels, 32)
    assert batch.rows == [0, 1] and not batch.errors and np.array_equal(batch.pixels, np.stack(pixels))
    assert batch.answers(["a", "b"]) == ["a", "b"]

    broken = [prepare_upload(_png(32, seed)[:60], 10**6) for seed in (3, 4)]
    batch = decode_batch(broken, 32)
    assert batch.rows == [] and batch.pixels.shape == (0, 3, 32, 32)
    answers = batch.answers([])
    assert [type(a) for a in answers] == [HTTPException, HTTPException] and {a.status_code for a in answers} == {400}


def photo_jpeg(path: Path, w: int = 1600, h: int = 1200, seed: int = 0) -> bytes:
    """A photo-size JPEG with detail at every scale (noise over a gradient), written to ``path``."""
    rng = np.random.default_rng(seed)
    grad = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    arr = np.clip(grad * 0.6 + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)
    return path.read_bytes()


def test_an_upload_gets_exactly_the_pixels_the_same_photo_has_as_training_data(tmp_path: Path) -> None:
    folder = tmp_path / "photos" / "train" / "beach"
    folder.mkdir(parents=True)
    data = photo_jpeg(folder / "a.jpg")
    for size in (32, 64):
        trained = load_split(str(tmp_path / "photos"), "train", data_dir=tmp_path / "cache", image_size=size).images[0].numpy()
        np.testing.assert_array_equal(decode_image(data, size, 40_000_000), trained)  # the upload routes
        np.testing.assert_array_equal(to_pixel_copies(data, (32, 64), 40_000_000)[size], trained)  # POST /items' stored copies
        with Image.open(io.BytesIO(data)) as full:
            full.load()  # decoded at full size first: draft no longer applies
            assert not np.array_equal(to_array(full, size), trained)  # so the reduced decode was really taken
