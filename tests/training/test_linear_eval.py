"""Linear evaluation: a softmax regression on frozen features, its L2 penalty chosen on held-out train features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.datasets import load_split
from core.models import EncoderSpec, build_encoder, embed
from training import linear_eval
from training.linear_eval import fit_linear, linear_probe
from training.runtime import warmup_cosine


def test_linear_eval_leaves_the_encoder_bit_identical(tiny_folder: Path, tmp_path: Path) -> None:
    data = load_split(str(tiny_folder), "train", data_dir=tmp_path)
    torch.manual_seed(0)
    encoder = build_encoder(EncoderSpec(width=8)).train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:200]
    x, y = embed(encoder, data.images[pick]), data.labels[pick]
    acc = linear_probe(x[:150], y[:150], x[150:], y[150:], 10, steps=20)
    assert 0.0 <= acc["top1"] <= acc["top3"] <= 1.0
    after = encoder.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_linear_probe_chooses_its_penalty_on_train_features_only() -> None:
    """The held-out choice of the L2 penalty never sees the test split: other test sets, same choice."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g)
    y = torch.arange(400) % 4
    x = centers[y] + 1.5 * torch.randn(400, 16, generator=g)
    picks = set()
    for test_seed in (1, 2):
        tg = torch.Generator().manual_seed(test_seed)
        test_y = torch.randint(0, 4, (100,), generator=tg)
        test_x = centers[test_y] + torch.randn(100, 16, generator=tg)
        acc = linear_probe(x, y, test_x, test_y, 4, steps=50)
        assert acc["weight_decay"] in (0.0, 1e-5, 1e-4, 1e-3, 1e-2) and acc["top1"] > 0.6
        picks.add(acc["weight_decay"])
    assert len(picks) == 1
    assert linear_probe(x, y, x[:10], y[:10], 4, steps=5, weight_decays=(3e-3,))["weight_decay"] == 3e-3


def test_the_probe_follows_the_shared_cosine_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """fit_linear's learning rate is ``lr * training.runtime.warmup_cosine(step / steps, 0)``, the schedule of every stage."""
    seen: list[tuple[float, float]] = []

    def recording(progress: float, warmup: float) -> float:
        seen.append((progress, warmup))
        return warmup_cosine(progress, warmup)

    monkeypatch.setattr(linear_eval, "warmup_cosine", recording)
    x, y = torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), torch.arange(20) % 2
    fit_linear(x, y, 2, steps=4)
    assert seen == [(0.0, 0.0), (0.25, 0.0), (0.5, 0.0), (0.75, 0.0)]
