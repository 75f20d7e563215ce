"""Accuracy measures: weighted kNN on embeddings, top-k of a classifier."""

from __future__ import annotations

import torch
from torch import nn

from core.models import model_outputs


def weighted_knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    *,
    n_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores ``(Q, n_classes)`` by similarity-weighted kNN (Wu et al. 2018, the usual SSL monitor).

    bank: ``(N, D)`` and queries ``(Q, D)``, both L2-normalised. Each of the k
    nearest bank items votes ``exp(cos / temperature)`` for its label.
    """
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start : start + chunk] @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], n_classes, device=sim.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        out.append(votes)
    return torch.cat(out)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 3)) -> dict[str, float]:
    """``{"top1": .., "top3": ..}``: the fraction of rows whose label is among the k highest scores."""
    ranked = scores.topk(max(ks), dim=1).indices
    hits = ranked == labels.view(-1, 1)
    return {f"top{k}": hits[:, :k].any(dim=1).float().mean().item() for k in ks}


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 512, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits ``(N, C)`` of a classifier over uint8 ``(N, 3, H, W)`` images, on the CPU."""
    return torch.cat([out.cpu() for out in model_outputs(model, images, batch_size=batch_size, device=device)])
