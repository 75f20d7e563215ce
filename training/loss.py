"""NT-Xent, the normalized temperature-scaled cross entropy loss of SimCLR (Chen et al. 2020, eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean NT-Xent over the 2N views of a batch.

    Args:
        z1, z2: ``(N, D)`` projections of the two views; row i of each comes from image i.
        temperature: tau in ``exp(sim(z_i, z_j) / tau)``.

    For view i with positive j, "the loss function for a positive pair of examples (i, j)":
    ``l(i, j) = -log( exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau) )`` with ``s`` the
    cosine similarity; the 2(N-1) other views of the batch are the negatives. For
    identical embeddings every logit is equal, so the loss is ``log(2N - 1)``.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    # A view is never its own negative: -inf on the diagonal drops it from the softmax.
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)
