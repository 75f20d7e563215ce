"""Embeddings: the encoder's pooled features, L2-normalised, so inner product = cosine similarity."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.evaluate import features


def embed(
    encoder: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """uint8 ``(N, 3, H, W)`` images -> float32 ``(N, D)`` unit-norm embeddings (encoder in eval mode)."""
    return features(encoder, images, batch_size=batch_size, device=device).cpu().numpy()
