"""How long a training stage runs: the one stopping rule of pretraining and fine-tuning (no torch here:
the CLI's ``--help`` imports it through the configs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Turns this process's (elapsed seconds, stop requested) into the values every process agrees on.
# Under torchrun it is one collective (``training.distributed.agreement``); alone it is the identity.
Agree = Callable[[float, bool], tuple[float, bool]]


def alone(seconds: float, stop: bool) -> tuple[float, bool]:
    """One process: its own clock and stop flag are the agreed ones."""
    return seconds, stop


@dataclass(frozen=True)
class Decision:
    """What every process does after a step: the same values on every rank, so they stop together."""

    seconds: float  # elapsed training seconds, agreed (the furthest clock: the rank that spent the most)
    progress: float  # fraction of the schedule done at ``seconds`` (the learning rate follows it)
    stop_requested: bool  # SIGTERM/SIGINT on any rank
    out_of_budget: bool

    @property
    def stop(self) -> bool:
        return self.stop_requested or self.out_of_budget


@dataclass(frozen=True)
class Budget:
    """How long a stage trains, the one rule every stage uses: ``epochs``, or ``seconds`` of wall clock.

    With a time budget the schedule (warm-up, cosine) is fitted to the clock and the
    stage stops after the step that crosses it; otherwise it runs ``epochs`` epochs.
    """

    epochs: int
    seconds: float | None = None

    def progress(self, epochs_done: float, seconds: float) -> float:
        """Fraction of the schedule done: ``seconds / budget`` or ``epochs_done / epochs``."""
        if self.seconds:
            return seconds / self.seconds
        return epochs_done / max(1, self.epochs)

    def done(self, epochs_done: float, seconds: float) -> bool:
        return self.progress(epochs_done, seconds) >= 1

    def decide(self, epochs_done: float, seconds: float, stop_requested: bool, agree: Agree = alone) -> Decision:
        """The decision point of a step or an epoch: the clock and the stop flag are agreed first
        (``agree``: one collective under torchrun), then progress and stopping are computed from the
        agreed values, so that every process sets the same learning rate and stops on the same step.

        Each process reading its own clock would drift: ranks differ by the time rank 0 alone
        spends on the kNN monitor, and one rank stopping while another starts a step hangs NCCL.
        ``epochs_done`` needs no agreeing: every rank counts the same steps.
        """
        seconds, stop_requested = agree(seconds, stop_requested)
        progress = self.progress(epochs_done, seconds)
        return Decision(seconds=seconds, progress=progress, stop_requested=stop_requested, out_of_budget=progress >= 1)
