"""SimCLR's augmentations, batched, with independent random parameters per sample.

Chen et al. 2020 (Appendix A): "random cropping with resize, random color
distortions" -- here random resized crop, horizontal flip p=0.5, colour jitter
(brightness, contrast, saturation 0.4, hue 0.1) p=0.8 and grayscale p=0.2, the
seed's set (no blur: it hurts on 32x32 images).

Everything runs on the device that holds the batch, as tensor arithmetic on
``(B, 3, H, W)``: crop, resize and flip are one ``affine_grid``/``grid_sample``;
each colour op is a per-sample scalar or 3x3 matrix. No PIL, no per-image loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from core.models import normalize

# ITU-R 601 luma, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, lo: float, hi: float, device: torch.device, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=g) * (hi - lo) + lo


def crop_flip_grid(
    n: int,
    size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sampling grids ``(n, size, size, 2)`` for RandomResizedCrop + RandomHorizontalFlip.

    Each sample draws an area fraction in ``scale`` and an aspect ratio
    (log-uniform) in ``ratio``; sides that would exceed the image are clipped to
    it (torchvision retries instead; the distribution differs only at the edges).
    """
    area = _uniform(n, *scale, device, generator)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), device, generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the image width
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    # Centre anywhere that keeps the crop inside the image; affine_grid uses [-1, 1] coordinates.
    cx = (torch.rand(n, device=device, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, device=device, generator=generator) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, device=device, generator=generator) < flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return F.affine_grid(theta, [n, 3, size, size], align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _hue_matrices(angle: torch.Tensor) -> torch.Tensor:
    """``(n, 3, 3)`` RGB rotations about the grey axis by ``angle`` radians.

    A hue shift is a rotation of the chroma plane; doing it as a matrix avoids
    an RGB->HSV->RGB round trip per pixel (the same idea as PIL's hue matrix).
    """
    c, s = torch.cos(angle), torch.sin(angle)
    k = 1.0 / 3.0
    sq = math.sqrt(k)
    one = torch.ones_like(c)
    a = c + (one - c) * k
    b = (one - c) * k - sq * s
    d = (one - c) * k + sq * s
    return torch.stack([torch.stack([a, b, d], -1), torch.stack([d, a, b], -1), torch.stack([b, d, a], -1)], 1)


def color_distort(
    x: torch.Tensor,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    jitter_p: float = 0.8,
    gray_p: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Colour jitter (probability ``jitter_p``) then grayscale (``gray_p``) on floats in [0, 1].

    ``(B, 3, H, W) -> (B, 3, H, W)``, values stay in [0, 1]. Samples that skip
    the jitter get factor 1 / angle 0, which leaves them unchanged.
    """
    n, dev = x.shape[0], x.device
    apply = (torch.rand(n, device=dev, generator=generator) < jitter_p).float()

    def factor(amount: float) -> torch.Tensor:
        f = _uniform(n, max(0.0, 1 - amount), 1 + amount, dev, generator)
        return (apply * f + (1 - apply)).view(n, 1, 1, 1)

    x = (x * factor(brightness)).clamp_(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + (x - mean) * factor(contrast)).clamp_(0, 1)
    g = _gray(x)
    x = (g + (x - g) * factor(saturation)).clamp_(0, 1)
    angle = _uniform(n, -hue, hue, dev, generator) * 2 * math.pi * apply
    x = torch.einsum("nij,njhw->nihw", _hue_matrices(angle), x).clamp_(0, 1)
    to_gray = (torch.rand(n, device=dev, generator=generator) < gray_p).view(n, 1, 1, 1)
    return torch.where(to_gray, _gray(x).expand_as(x), x)


def simclr_views(images: torch.Tensor, generator: torch.Generator | None = None, size: int | None = None,
                 scale: tuple[float, float] = (0.08, 1.0)) -> torch.Tensor:
    """One augmented, normalised view per image: uint8 ``(B, 3, H, W)`` -> float ``(B, 3, size, size)``.

    ``size`` defaults to the images' own; the crop (an area fraction in ``scale``) is resampled to it.
    """
    x = images.float().div_(255)
    grid = crop_flip_grid(x.shape[0], size or x.shape[-1], scale=scale, device=x.device, generator=generator)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return normalize(color_distort(x, generator=generator))


def crop_flip(images: torch.Tensor, pad: int | None = None, generator: torch.Generator | None = None, cutout: int = 0) -> torch.Tensor:
    """The supervised augmentation: random crop with ``pad`` zero padding, flip p=0.5; normalised.

    ``pad`` defaults to an eighth of the image side (the CIFAR recipe's 4 px at 32 px, 8 px at
    64 px), so that the shifts are the same fraction of the image at any ``--image-size``.
    uint8 ``(B, 3, H, W)`` -> float ``(B, 3, H, W)``. Padding is applied after
    normalisation, so it is the mean colour. Each sample gets its own offset
    through two batched gathers (rows, then columns). ``cutout`` > 0 then blanks
    a ``cutout`` x ``cutout`` square per image (``cutout_square``).
    """
    n, _, h, w = images.shape
    if pad is None:
        pad = max(1, h // 8)
    x = normalize(images)
    x = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, 3, h, w + 2 * pad)
    x = x.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, 3, h, w)
    x = x.gather(3, cols)
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    return cutout_square(x, cutout, generator=generator) if cutout > 0 else x


def cutout_square(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): set a ``size`` x ``size`` square of each normalised image to 0
    (the mean colour). As in the paper, the square's centre is uniform over the whole image, so a
    square near the border is partly outside it and some images lose little.

    float ``(B, C, H, W)`` -> the same shape; one mask per sample, built by broadcasting.
    """
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = cy - size // 2, cx - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(inside.unsqueeze(1), 0.0)
