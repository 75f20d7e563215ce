"""The SimCLR model of pretraining: encoder f, then the projection head g."""

from __future__ import annotations

import torch

from core.models import EncoderSpec, build_encoder, feature_dim
from training.simclr_model import ProjectionHead, SimCLRModel


def test_projection_head_maps_the_encoder_features_to_the_loss_space() -> None:
    spec = EncoderSpec(width=8, expand=32)
    model = SimCLRModel(spec, proj_dim=16).eval()
    x = torch.randn(3, 3, 32, 32)
    assert model.encoder(x).shape == (3, feature_dim(spec))
    assert model(x).shape == (3, 16)
    assert isinstance(model.head, ProjectionHead) and model.head.net[0].in_features == feature_dim(spec)
    # The encoder's weights are what encoder.pt holds: the same names as core.models.build_encoder's.
    assert model.encoder.state_dict().keys() == build_encoder(spec).state_dict().keys()
