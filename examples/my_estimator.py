"""A user's own advantage estimator, used from YAML with no edit inside rlvr:

    advantage: {name: examples/my_estimator.py:MedianBaseline, scale: 1.0}

The contract (rlvr.types): called with an AdvantageInput (the whole step batch: group ids,
rewards, reward components, lengths, prompt uids, step), returns an AdvantageOutput (one advantage
per sample, optionally a per-sample loss weight, and metrics). Constructor keyword arguments come
from YAML and are checked against the annotations before any model loads.
"""

from typing import Annotated

import torch
from pydantic import Field

from rlvr.types import AdvantageInput, AdvantageOutput


class MedianBaseline:
    """A = scale * (r - median of the prompt's group): a baseline robust to one outlier reward.

    Example: rewards [1, 0, 0, 0] in one group -> median 0 -> A = [1, 0, 0, 0].
    """

    def __init__(self, scale: Annotated[float, Field(gt=0)] = 1.0):
        self.scale = scale

    def __call__(self, inp: AdvantageInput) -> AdvantageOutput:
        adv = torch.zeros_like(inp.rewards)
        for g in inp.group.unique():
            rows = inp.group == g
            adv[rows] = inp.rewards[rows] - inp.rewards[rows].median()
        return AdvantageOutput(self.scale * adv, None, {"advantage/median_nonzero_frac": float((adv != 0).float().mean())})
