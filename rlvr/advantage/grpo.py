"""Group-relative advantages: GRPO (DeepSeekMath, arXiv 2402.03300) and Dr. GRPO (arXiv 2503.20783).

For prompt j with rewards r_{j,1..G_j}:
    GRPO:     A_{j,i} = (r_{j,i} - mean_j) / (std_j + eps)     std with ddof=1 (torch.std default)
    Dr. GRPO: A_{j,i} =  r_{j,i} - mean_j                       (no std division)
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from rlvr.registry import ADVANTAGE
from rlvr.types import AdvantageInput, AdvantageOutput


def group_stats(values: torch.Tensor, group: torch.Tensor, ddof: int = 1):
    """Per-sample group mean, std and group size, vectorised over groups.

    values [N] float, group [N] long (any ids) -> (mean [N], std [N], count [N]).
    std uses `ddof` (1 = unbiased); groups of size <= ddof get std 0.
    Example: values [1, 0, 0, 5], group [0, 0, 0, 7] -> mean [1/3, 1/3, 1/3, 5],
    std [0.5774, 0.5774, 0.5774, 0], count [3, 3, 3, 1].
    """
    _, inv = torch.unique(group, return_inverse=True)
    k = int(inv.max()) + 1 if inv.numel() else 0
    x = values.float()
    count = torch.zeros(k, dtype=x.dtype).index_add_(0, inv, torch.ones_like(x))
    mean = torch.zeros(k, dtype=x.dtype).index_add_(0, inv, x) / count
    sq = torch.zeros(k, dtype=x.dtype).index_add_(0, inv, (x - mean[inv]) ** 2)
    std = torch.where(count > ddof, sq / (count - ddof).clamp(min=1), torch.zeros_like(sq)).sqrt()
    # a group whose values are all equal has exactly zero spread, whatever the rounding of its mean
    lo = torch.full((k,), float("inf"), dtype=x.dtype).scatter_reduce_(0, inv, x, "amin")
    hi = torch.full((k,), float("-inf"), dtype=x.dtype).scatter_reduce_(0, inv, x, "amax")
    std = torch.where(lo == hi, torch.zeros_like(std), std)
    return mean[inv], std[inv], count[inv]


def group_relative_advantages(
    rewards: torch.Tensor,
    group: torch.Tensor,
    *,
    scale_by_std: bool = True,
    epsilon: float = 1e-6,
    singleton: Literal["raw", "zero"] = "raw",
) -> torch.Tensor:
    """GRPO / Dr. GRPO advantage per sample.

    rewards [N], group [N] -> advantages [N].
    Zero-variance groups get exactly 0. A group of one sample has no baseline: "raw" follows
    verl (mean 0, std 1, so A = r / (1 + eps), or r for Dr. GRPO); "zero" gives 0.
    Example (GRPO, eps 1e-6): rewards [1, 0, 0], one group -> mean 1/3, std 0.5774,
    A = [1.1547, -0.5774, -0.5774].
    """
    mean, std, count = group_stats(rewards, group)
    r = rewards.float()
    centred = torch.where(std > 0, r - mean, torch.zeros_like(r))
    adv = centred / (std + epsilon) if scale_by_std else centred
    single = count == 1
    if single.any():
        raw = r / (1.0 + epsilon) if scale_by_std else r
        adv = torch.where(single, raw if singleton == "raw" else torch.zeros_like(r), adv)
    return adv


def zero_std_fraction(rewards: torch.Tensor, group: torch.Tensor) -> float:
    """Fraction of groups (of size > 1) whose rewards are all equal: they carry no gradient."""
    _, std, count = group_stats(rewards, group)
    _, first = torch.unique(group, return_inverse=True)
    per_group_std = torch.zeros(int(first.max()) + 1).scatter_(0, first, std)
    per_group_n = torch.zeros(int(first.max()) + 1).scatter_(0, first, count)
    multi = per_group_n > 1
    return float((per_group_std[multi] == 0).float().mean()) if multi.any() else 0.0


class _GroupRelative:
    scale_by_std: bool
    scope = "group"  # a sample's advantage needs only its own group (see rlvr.types.advantage_scope)

    def __init__(self, epsilon: Annotated[float, Field(ge=0)] = 1e-6, singleton: Literal["raw", "zero"] = "raw"):
        self.epsilon = epsilon
        self.singleton = singleton

    def __call__(self, inp: AdvantageInput) -> AdvantageOutput:
        adv = group_relative_advantages(
            inp.rewards, inp.group, scale_by_std=self.scale_by_std, epsilon=self.epsilon, singleton=self.singleton
        )
        return AdvantageOutput(adv, None, {"advantage/zero_std_frac": zero_std_fraction(inp.rewards, inp.group)})


@ADVANTAGE.register("grpo")
class GRPO(_GroupRelative):
    """(r - group mean) / (group std + epsilon)."""

    scale_by_std = True


@ADVANTAGE.register("dr_grpo")
class DrGRPO(_GroupRelative):
    """r - group mean: no std division, so easy and hard prompts are not re-weighted."""

    scale_by_std = False
