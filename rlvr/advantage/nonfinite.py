"""The guard every estimator's output passes: a NaN or inf advantage never reaches the loss."""

from __future__ import annotations

import torch

from rlvr.types import AdvantageOutput


def zero_nonfinite(out: AdvantageOutput) -> float:
    """Set each sample whose advantage or weight ([N]) is NaN/inf to 0 in both, in place; returns
    the fraction of samples affected (logged as advantage/nonfinite_frac, watched by an alarm).

    Some estimators produce them on purpose (a reference-compatible mode dividing by a zero
    standard deviation). Example: advantages [1, nan, 2], weights [1, 1, inf] -> [1, 0, 0],
    [1, 0, 0], returns 2/3.
    """
    bad = ~torch.isfinite(out.advantages)
    if out.weights is not None:
        bad |= ~torch.isfinite(out.weights)
        out.weights = torch.where(bad, torch.zeros_like(out.weights), out.weights)
    out.advantages = torch.where(bad, torch.zeros_like(out.advantages), out.advantages)
    return float(bad.float().mean()) if bad.numel() else 0.0
