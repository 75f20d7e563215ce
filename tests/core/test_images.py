"""Any decoded image to the uint8 RGB array the models see (training data and uploads alike)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.images import draft, to_array


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_any_mode_becomes_uint8_rgb(mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    img = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    arr = to_array(img, 32)
    assert arr.shape == (3, 32, 32) and arr.dtype == np.uint8


def test_sixteen_bit_is_rescaled_not_clipped() -> None:
    img = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert to_array(img, 8).min() == 255
    img = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    assert 126 <= to_array(img, 8).max() <= 129


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert (to_array(img, 4) == 255).all()


def test_exif_rotation_is_applied() -> None:
    img = Image.new("RGB", (64, 32), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 32, 32))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.info["exif"] = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    shown = to_array(Image.open(io.BytesIO(buf.getvalue())), 32)
    # After rotating 90 degrees clockwise the white half is on top: the centre crop is split top/bottom.
    assert shown[:, :8].mean() > shown[:, -8:].mean() + 100


def test_a_photo_jpeg_is_decoded_at_a_reduced_scale_that_still_covers_twice_the_input() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (1600, 1200), (10, 20, 30)).save(buf, format="JPEG")
    for size, decoded in ((32, (200, 150)), (64, (200, 150)), (96, (400, 300)), (300, (800, 600)), (301, (1600, 1200))):
        with Image.open(io.BytesIO(buf.getvalue())) as img:
            draft(img, size)
            img.load()
            assert img.size == decoded, size  # the smallest 1/2^k scale whose shorter side is >= 2 x size
    png = io.BytesIO()
    Image.new("RGB", (1600, 1200)).save(png, format="PNG")
    with Image.open(io.BytesIO(png.getvalue())) as img:
        draft(img, 32)
        assert img.size == (1600, 1200)  # formats without reduced decoding are left alone
