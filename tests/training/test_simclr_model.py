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


def test_a_step_with_small_views_runs_their_own_forward_pass_and_the_multi_crop_loss() -> None:
    """Multi-crop (small_views): one more forward pass at the small size per step, the loss of every
    full/small pair; progressive views pass their size in; both train the model."""
    from unittest import mock

    from training.config import PretrainConfig
    from training.pretrain import SMALL_VIEW_SCALE, build_optimizer, train_step

    torch.manual_seed(0)
    cfg = PretrainConfig(width=8, proj_dim=16, batch_size=8, crop_size=24, small_views=2, small_view_size=12, channels_last=False)
    model = SimCLRModel(cfg.encoder_spec, cfg.proj_dim)
    optimizer = build_optimizer(model, cfg)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    sizes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _, args: sizes.append(tuple(args[0].shape)))
    before = [p.detach().clone() for p in model.parameters()]
    with mock.patch("training.pretrain.simclr_views", wraps=__import__("training.augment", fromlist=["simclr_views"]).simclr_views) as views:
        loss = train_step(model, optimizer, images, torch.arange(8), cfg, torch.Generator().manual_seed(0), lr=0.1, size=20)
    assert sizes == [(16, 3, 20, 20), (16, 3, 12, 12)]  # full views at the step's size, then both small views in one pass
    assert [c.kwargs.get("scale") for c in views.call_args_list] == [None, None, SMALL_VIEW_SCALE, SMALL_VIEW_SCALE]
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
