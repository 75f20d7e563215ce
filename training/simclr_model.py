"""The SimCLR model of pretraining: an encoder f plus the projection head g (Chen et al. 2020)."""

from __future__ import annotations

import torch
from torch import nn

from core.models import EncoderSpec, build_encoder, feature_dim


class ProjectionHead(nn.Module):
    """g(.) of SimCLR: "a MLP with one hidden layer" mapping h to z where the loss is applied.

    ``(B, in_dim) -> (B, out_dim)``; Linear -> BatchNorm -> ReLU -> Linear.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class SimCLRModel(nn.Module):
    """Encoder f plus projection head g: ``(B, 3, H, W) -> (B, proj_dim)``."""

    def __init__(self, spec: EncoderSpec, proj_dim: int = 1024) -> None:
        super().__init__()
        self.encoder = build_encoder(spec)
        d = feature_dim(spec)
        self.head = ProjectionHead(d, d, proj_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
