"""NT-Xent, the normalized temperature-scaled cross entropy loss of SimCLR (Chen et al. 2020, eq. 1)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F


def _gather(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows of ``z`` (gradient-preserving: backward sends each rank its rows' gradient) and this rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    return torch.cat(dist_fn.all_gather(z)), dist.get_rank()


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean NT-Xent over the 2N views of a batch; under torch.distributed, of the global batch.

    Args:
        z1, z2: ``(N, D)`` projections of the two views; row i of each comes from image i.
        temperature: tau in ``exp(sim(z_i, z_j) / tau)``.

    For view i with positive j, "the loss function for a positive pair of examples (i, j)":
    ``l(i, j) = -log( exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau) )`` with ``s`` the
    cosine similarity; every other view in the batch is a negative. With several
    processes, each rank scores its own rows against the views of all ranks (so
    the negatives are global) and DDP's gradient averaging makes the result equal
    to one process on the whole batch. For identical embeddings every logit is
    equal, so the loss is ``log(2N - 1)``.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    all1, rank = _gather(z1)
    all2, _ = _gather(z2)
    total = all1.shape[0]
    logits = torch.cat([z1, z2]) @ torch.cat([all1, all2]).T / temperature  # (2n, 2N)
    mine = torch.arange(n, device=z1.device) + rank * n  # this rank's images among the N
    self_cols = torch.cat([mine, mine + total])
    positive_cols = torch.cat([mine + total, mine])
    # A view is never its own negative: -inf at its own column drops it from the softmax.
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(2 * n, device=z1.device), self_cols] = True
    return F.cross_entropy(logits.masked_fill(self_mask, float("-inf")), positive_cols)


def multi_crop_nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, small: list[torch.Tensor], temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent with multi-crop (Caron et al. 2020, SwAV: "two standard resolution crops and sample V
    additional low resolution crops"): the mean of :func:`nt_xent_loss` over the pair of full views
    and every (full view, small view) pair, each small view's positive being a full view of its image.

    Args:
        z1, z2: ``(N, D)`` projections of the two full views.
        small: ``V`` tensors ``(N, D)``, the projections of each small view (row i: image i).

    Small views are never paired with each other, as in SwAV, whose small crops only predict the
    full views' codes. With no small views this is ``nt_xent_loss(z1, z2)``.
    """
    losses = [nt_xent_loss(z1, z2, temperature)]
    losses += [nt_xent_loss(full, s, temperature) for s in small for full in (z1, z2)]
    return torch.stack(losses).mean()
