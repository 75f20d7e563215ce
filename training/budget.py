"""How long a training stage runs: the one stopping rule of pretraining and fine-tuning (no torch here:
the CLI's ``--help`` imports it through the configs)."""

from __future__ import annotations

from dataclasses import dataclass


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
