"""REINFORCE Leave-One-Out (RLOO): Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740.

Each sample's baseline is the mean reward of the *other* samples of its prompt, so the baseline
never depends on the sample it scores (unbiased, no learned critic):
    A_{j,i} = r_{j,i} - (1 / (G_j - 1)) * sum_{k != i} r_{j,k}  =  G_j / (G_j - 1) * (r_{j,i} - mean_j)
"""

from __future__ import annotations

import torch

from rlvr.advantage.grpo import group_stats, zero_std_fraction
from rlvr.registry import ADVANTAGE
from rlvr.types import AdvantageInput, AdvantageOutput


def leave_one_out_advantages(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """RLOO advantage per sample (Ahmadian et al. 2024, Sec. 3.2, the leave-one-out baseline).

    rewards [N] float, group [N] long (any ids) -> advantages [N] float32.
    A_i = r_i - mean of the other G - 1 rewards of i's group, computed as G/(G-1) * (r_i - mean).
    A group of one sample has no "others", so no baseline exists: it gets A = 0 (no signal),
    unlike verl's GRPO convention. A group whose rewards are all equal gets exactly 0.
    Example: rewards [1, 0, 0], one group -> others' means [0, 0.5, 0.5], A = [1, -0.5, -0.5]
    (= 3/2 * ([1, 0, 0] - 1/3)).
    """
    mean, std, count = group_stats(rewards, group)
    scale = count / (count - 1).clamp(min=1)
    adv = scale * (rewards.float() - mean)
    # singletons have no baseline; equal rewards must give 0 exactly, not rounding noise of the mean
    return torch.where((count > 1) & (std > 0), adv, torch.zeros_like(adv))


@ADVANTAGE.register("rloo")
class RLOO:
    """r - mean of the other samples of the same prompt; singleton groups get 0."""

    scope = "group"

    def __call__(self, inp: AdvantageInput) -> AdvantageOutput:
        if inp.rewards.numel() == 0:
            return AdvantageOutput(torch.zeros(0), None, {"advantage/zero_std_frac": 0.0})
        adv = leave_one_out_advantages(inp.rewards, inp.group)
        return AdvantageOutput(
            adv, None, {"advantage/zero_std_frac": zero_std_fraction(inp.rewards, inp.group)}
        )
