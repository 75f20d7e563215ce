"""Turning any decoded image into the uint8 RGB array the models see.

Training data and uploaded images go through the same two functions, so an
image gets exactly the same pixels whichever path it came in by.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Tinted background for transparent pixels: white, as browsers show them.
_BACKGROUND = (255, 255, 255)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (RGB, L, LA, RGBA, P, CMYK, I;16, I, F, ...) to 8-bit RGB.

    EXIF orientation is applied first, so a phone photo is upright. Alpha is
    composited on white rather than dropped (dropping it turns transparent
    regions black, whatever colour they were meant to be). 16-bit and float
    greyscale are rescaled to 8 bits from their full range, not clipped.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max()), 1e-12)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def resize_center(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic, antialiased), then a centred square crop.

    CIFAR-sized inputs pass through untouched, so the JPEG copy and the
    torchvision download of CIFAR-10 give the same pixels.
    """
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_array(img: Image.Image, size: int) -> np.ndarray:
    """A PIL image to a ``(3, size, size)`` uint8 array, the way training data is stored."""
    rgb = resize_center(to_rgb(img), size)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
