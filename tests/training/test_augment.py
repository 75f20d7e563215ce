import torch

from core.models import CIFAR_MEAN, CIFAR_STD
from training.augment import color_distort, crop_flip, crop_flip_grid, cutout_square, simclr_views


def images(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def denormalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(CIFAR_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)


def test_views_shape_dtype_and_range() -> None:
    v = simclr_views(images(), torch.Generator().manual_seed(0))
    assert v.shape == (16, 3, 32, 32) and v.dtype == torch.float32
    raw = denormalize(v)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_views_at_a_smaller_crop_size() -> None:
    v = simclr_views(images(), torch.Generator().manual_seed(0), size=24)
    assert v.shape == (16, 3, 24, 24)
    raw = denormalize(v)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_two_samples_of_one_image_get_different_crops() -> None:
    same = images(1).expand(8, -1, -1, -1).contiguous()
    v = simclr_views(same, torch.Generator().manual_seed(0))
    diffs = [(v[0] - v[i]).abs().mean().item() for i in range(1, 8)]
    assert min(diffs) > 1e-3


def test_crop_parameters_are_per_sample() -> None:
    grid = crop_flip_grid(64, 32, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    corners = torch.cat([grid[:, 0, 0], grid[:, -1, -1]], dim=1)  # each sample's crop box
    assert corners.unique(dim=0).shape[0] == 64
    widths = grid[:, 0, -1, 0] - grid[:, 0, 0, 0]  # signed horizontal extent: negative when flipped
    assert (widths < 0).any() and (widths > 0).any()
    assert grid.abs().max() <= 1.0


def test_colour_distortion_probabilities_and_range() -> None:
    x = torch.rand(4000, 3, 2, 2)
    out = color_distort(x, generator=torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert 0.17 < gray.float().mean().item() < 0.23  # grayscale p = 0.2
    unchanged = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert 0.15 < unchanged.float().mean().item() < 0.2  # no jitter and no grayscale: 0.2 * 0.8


def test_identity_when_nothing_applies() -> None:
    x = torch.rand(8, 3, 4, 4)
    out = color_distort(x, jitter_p=0.0, gray_p=0.0)
    assert torch.allclose(out, x, atol=1e-6)


def test_crop_flip_shifts_within_padding() -> None:
    x = images(32)
    out = crop_flip(x, pad=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (32, 3, 32, 32)
    raw = denormalize(out)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert out.std(dim=0).mean() > 0  # samples differ


def test_cutout_blanks_one_square_per_image() -> None:
    x = torch.ones(64, 3, 32, 32)
    out = cutout_square(x, 8, generator=torch.Generator().manual_seed(0))
    blank = (out == 0).all(dim=1)  # (B, H, W): every channel at the mean colour
    assert torch.equal((out == 0).any(dim=1), blank)
    counts = blank.flatten(1).sum(1)
    assert counts.max() == 64 and 0 < counts.min() < 64  # whole squares, and some cut by the border
    for mask in blank[:8]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one rectangle
    assert torch.equal(crop_flip(images(4), generator=torch.Generator().manual_seed(1)),
                       crop_flip(images(4), generator=torch.Generator().manual_seed(1), cutout=0))


def test_64_px_views_and_crop_flip_scale_with_the_image() -> None:
    big = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    v = simclr_views(big, torch.Generator().manual_seed(0))
    assert v.shape == (8, 3, 64, 64) and v.std(dim=0).mean() > 0
    assert simclr_views(big, torch.Generator().manual_seed(0), size=48).shape == (8, 3, 48, 48)
    # The supervised crop's padding is an eighth of the side: shifts of up to 4 px at 32 px, 8 px at 64 px.
    for side in (32, 64):
        white = torch.full((256, 3, side, side), 255, dtype=torch.uint8)
        out = crop_flip(white, generator=torch.Generator().manual_seed(0))
        padded = (out == 0).all(dim=1).all(dim=1).sum(dim=1)  # columns of each sample that are all padding
        assert out.shape == white.shape and padded.max() == side // 8
