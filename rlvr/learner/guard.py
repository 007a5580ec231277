"""Non-finite updates: what went wrong in one mini-batch, and when the run should stop.

Before an optimiser step the learner checks the mini-batch's loss (summed over processes) and the
gradient norm; if either is NaN or inf on any process, every process drops the gradients and skips
that step. `NonFiniteGuard` counts the skipped steps; the loop stops the run after
`learner.max_nonfinite_steps` RL steps in a row with a skipped update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def nonfinite_part(loss: float, grad_norm: float | None, loss_scaled: bool = False) -> str | None:
    """What went non-finite in one mini-batch: "loss", "gradient norm", "loss and gradient norm",
    or None when the update is safe to apply.

    A norm of None (DeepSpeed with the norm turned off) is not evidence either way. Under fp16
    loss scaling an overflowing gradient with a finite loss is routine (the scaler skips that step
    and lowers the scale), so only the loss counts there.
    Example: nonfinite_part(nan, inf) -> "loss and gradient norm"; nonfinite_part(0.3, 1.2) -> None.
    """
    bad_loss = not math.isfinite(loss)
    bad_norm = grad_norm is not None and not math.isfinite(grad_norm) and not loss_scaled
    if bad_loss and bad_norm:
        return "loss and gradient norm"
    return "loss" if bad_loss else "gradient norm" if bad_norm else None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


@dataclass
class NonFiniteGuard:
    """Counts optimiser steps skipped because the loss or the gradient norm was NaN/inf, and says
    when the run should stop: after `max_steps` RL steps IN A ROW that each skipped at least one
    update. Consecutive rather than total, so that a rare bad batch in a long run costs one update
    while a run whose every step is broken (weights already garbage, a loss that always overflows)
    stops within a few steps. Checkpointed with the learner, so a resumed run keeps its count.
    """

    max_steps: int = 3
    total: int = 0                  # updates skipped since the run began (logged as learner/nonfinite_total)
    streak: int = 0                 # RL steps in a row with a skipped update
    first_step: int | None = None   # first step of the current streak
    what: str = ""                  # what went non-finite in the last skipped update
    values: str = ""                # "loss=nan, grad_norm=inf" of the last skipped update
    step: int = 0                   # the RL step last closed, and its skipped / attempted updates
    skipped: int = 0
    updates: int = 0

    def record(self, part: str | None, loss: float, grad_norm: float | None) -> None:
        """One optimiser step's verdict (`nonfinite_part`), taken alike on every process."""
        self.updates += 1
        if part is not None:
            self.skipped += 1
            self.total += 1
            self.what, self.values = part, f"loss={_fmt(loss)}, grad_norm={_fmt(grad_norm)}"

    def end_step(self, step: int) -> dict[str, float]:
        """Close RL step `step` (its updates were `record`ed): update the streak, return its metrics."""
        if self.skipped:
            self.first_step = step if self.streak == 0 else self.first_step
            self.streak += 1
        else:
            self.streak, self.first_step = 0, None
        self.step = step
        return {"learner/nonfinite_skipped": float(self.skipped), "learner/nonfinite_total": float(self.total)}

    def begin_step(self) -> None:
        """Open an RL step: its skipped and attempted updates start from zero."""
        self.skipped = self.updates = 0

    def warning(self) -> str | None:
        """One line about the step just closed if it skipped an update, else None."""
        if not self.skipped:
            return None
        return (f"learner: step {self.step}: skipped {self.skipped} of {self.updates} update(s), non-finite "
                f"{self.what} ({self.values}); {self.streak} step(s) in a row, the run stops at {self.max_steps} "
                "(learner.max_nonfinite_steps)")

    @property
    def should_stop(self) -> bool:
        """The streak of steps with a skipped update reached `max_steps`."""
        return self.streak >= self.max_steps

    def stop_message(self) -> str:
        """Why the run stops (the loop adds where the last checkpoint is)."""
        span = f"steps {self.first_step}-{self.step}" if self.first_step != self.step else f"step {self.step}"
        return (f"learner: {self.streak} step(s) in a row had a non-finite {self.what} ({span}; last at step "
                f"{self.step}: {self.values}); their updates were skipped and the run stopped "
                f"(learner.max_nonfinite_steps={self.max_steps})")

    def state_dict(self) -> dict[str, Any]:
        """The counts a resumed run continues from (not the limit: that is the recipe's)."""
        return {"total": self.total, "streak": self.streak, "first_step": self.first_step, "what": self.what,
                "values": self.values}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`; missing keys (an older checkpoint) start from zero."""
        self.total, self.streak = int(state.get("total", 0)), int(state.get("streak", 0))
        self.first_step, self.what, self.values = state.get("first_step"), state.get("what", ""), state.get("values", "")
