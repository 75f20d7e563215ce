"""Budget: the one stopping rule of pretraining and fine-tuning, by epochs or by wall-clock seconds."""

from __future__ import annotations

import pytest

from training.budget import Budget
from training.config import FinetuneConfig, PretrainConfig
from training.pretrain import Progress, schedule_progress


def test_an_epoch_budget_counts_epochs_and_ignores_the_clock() -> None:
    b = Budget(epochs=4)
    assert b.progress(1, 10_000.0) == 0.25 and b.progress(2.5, 0.0) == pytest.approx(0.625)
    assert not b.done(3, 10_000.0) and not b.done(3.99, 0.0)
    assert b.done(4, 0.0) and b.done(5, 0.0)


def test_a_time_budget_counts_seconds_and_ignores_epochs() -> None:
    b = Budget(epochs=4, seconds=60.0)
    assert b.progress(100, 30.0) == 0.5
    assert not b.done(100, 59.9) and b.done(0, 60.0) and b.done(1, 61.0)


def test_every_stage_takes_its_budget_from_its_config() -> None:
    assert PretrainConfig(epochs=7).budget == Budget(7, None)
    assert PretrainConfig(epochs=7, time_budget=90.0).budget == Budget(7, 90.0)
    assert FinetuneConfig(epochs=3, time_budget=None).budget == Budget(3, None)
    assert FinetuneConfig(time_budget=15.0).budget.seconds == 15.0


def test_pretraining_counts_epochs_by_steps_so_the_schedule_moves_every_step() -> None:
    cfg = PretrainConfig(epochs=2)
    assert schedule_progress(cfg, Progress(step=5), steps_per_epoch=10) == 0.25
    assert schedule_progress(cfg, Progress(step=20), steps_per_epoch=10) == 1.0
    timed = PretrainConfig(epochs=2, time_budget=100.0)
    assert schedule_progress(timed, Progress(step=20, train_seconds=40.0), steps_per_epoch=10) == 0.4


def test_a_decision_uses_the_agreed_clock_and_stop_flag_from_one_exchange() -> None:
    """Under torchrun every rank decides from the same numbers: ``agree`` (one collective) returns the
    furthest clock and whether any rank was asked to stop; progress and stopping follow from those."""
    calls: list[tuple[float, bool]] = []

    def peer_ahead(seconds: float, stop: bool) -> tuple[float, bool]:  # another rank's clock reads 45 s
        calls.append((seconds, stop))
        return max(seconds, 45.0), stop

    b = Budget(epochs=4, seconds=60.0)
    d = b.decide(1, 30.0, False, peer_ahead)
    assert calls == [(30.0, False)]  # one exchange per decision
    assert (d.seconds, d.progress, d.stop) == (45.0, 0.75, False)
    d = b.decide(1, 30.0, False, lambda s, stop: (s, True))  # SIGTERM reached another rank
    assert d.stop and d.stop_requested and not d.out_of_budget
    d = b.decide(1, 30.0, False, lambda s, stop: (61.0, stop))
    assert d.stop and d.out_of_budget and not d.stop_requested
    alone = b.decide(1, 30.0, False)  # one process: its own clock
    assert (alone.seconds, alone.progress, alone.stop) == (30.0, 0.5, False)


def test_progressive_views_grow_with_the_schedule_in_steps_of_four_pixels() -> None:
    """The views' side follows the same progress as the learning rate: 16 px at the start, 28 at the end."""
    from training.pretrain import view_size

    cfg = PretrainConfig(crop_size=28, crop_size_start=16)
    sizes = [view_size(cfg, p / 12) for p in range(13)]
    assert sizes[0] == 16 and sizes[-1] == 28 and sizes == sorted(sizes)
    assert set(sizes) == {16, 20, 24, 28}
    assert view_size(cfg, 1.5) == 28 and view_size(cfg, -1.0) == 16  # clamped
    assert view_size(PretrainConfig(crop_size=24), 0.3) == 24 and view_size(PretrainConfig(), 0.3) == 32  # no ramp: the one size
