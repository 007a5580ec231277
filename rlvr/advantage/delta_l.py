"""ΔL Normalization: He, Luo, Zhang, Yang, Qiu, arXiv 2509.07558 (shared/spec/algorithms.md §5).

Why: the token-summed policy gradient g_i of a response of L_i tokens has variance growing with
L_i. ΔL combines the per-response gradients with weights x_i (sum 1 over the step batch) chosen
to keep the estimate unbiased and make its variance small:
    x_i = L_i^(-alpha) / sum_j L_j^(-alpha),     gradient = (1 / M) sum_i x_i g_i(A_i),  M constant
alpha = 1 is the minimum-variance choice when Var(g_i) ∝ L_i; alpha = 0 gives x_i = 1/N, the
Dr. GRPO-style sum / (N * M).

As in the authors' code this is two halves that must be enabled TOGETHER:
  1. advantage `delta_l` (here): the GRPO advantage (std-normalised) plus a per-sample loss
     weight w_i = N x_i, which the learner multiplies into the advantage;
  2. aggregation `delta_l` (rlvr/learner/aggregation.py): sum_{i,t} m l / (N * max_response_tokens).
Either half alone is a different method: the weights under token-mean are not ΔL, and the
aggregation with unit weights is Dr. GRPO's (with std-normalised advantages: "Dr. GRPO Norm").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from rlvr.advantage.grpo import group_relative_advantages, zero_std_fraction
from rlvr.registry import ADVANTAGE
from rlvr.types import AdvantageInput, AdvantageOutput


def _length_powers(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """(L_i / L̄)^(-alpha) in float64 with L̄ the mean non-empty length; 0 for empty responses.

    Dividing by L̄ keeps the powers near 1 whatever the lengths (the authors' form); it cancels
    in every normalised weight below.
    """
    length = lengths.double()
    live = length > 0
    if not live.any():
        return torch.zeros_like(length)
    ratio = length / length[live].mean()
    return torch.where(live, ratio ** (-alpha), torch.zeros_like(length))


def paper_form_weights(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """x_i = L_i^(-alpha) / sum_j L_j^(-alpha) over the whole step batch (ΔL paper, §5.1).

    lengths [N] response tokens -> x [N] float32, sum 1 over the responses that have tokens.
    An empty response (L = 0, L^(-alpha) = inf) carries no gradient, so it is masked out:
    x = 0, and it takes no share of the sum (spec §5.3). All empty -> all 0.
    Example, lengths [1, 2, 4]: alpha 1 -> [4/7, 2/7, 1/7]; alpha 0 -> [1/3, 1/3, 1/3].
    """
    p = _length_powers(lengths, alpha)
    total = p.sum()
    return (p / total if total > 0 else p).float()


def delta_l_weights(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-sample ΔL loss weight in the authors' code form, over the WHOLE step batch (§5.1).

        w_i = (L_i / L̄)^(-alpha) / mean_j (L_j / L̄)^(-alpha)  = N x_i,   L̄ = mean length

    lengths [N] -> w [N] float32, mean 1. With the aggregation sum m l / (N * T) the gradient of
    sample i is x_i g_i / T, the paper's form. Normalise over the full step even when the learner
    splits it into mini-batches (the per-mini-batch sums then differ from the row count; that is
    the reference behaviour). Empty responses get w = 0 and are left out of L̄ and of the sum, so
    that sum_i w_i = N still holds (see `paper_form_weights`).
    Example, lengths [1, 2, 4], alpha 1: L̄ = 7/3, (L/L̄)^-1 = [7/3, 7/6, 7/12], mean 49/36
        -> w = [12/7, 6/7, 3/7] = [1.7143, 0.8571, 0.4286]; alpha 0 -> [1, 1, 1].
    """
    p = _length_powers(lengths, alpha)
    total = p.sum()
    return (p * (p.numel() / total) if total > 0 else p).float()


@ADVANTAGE.register("delta_l")
class DeltaL:
    """ΔL Normalization, advantage half: GRPO advantage + loss weight w_i = (L_i/L̄)^-α / mean(·).

    Must be paired with `loss.aggregation: delta_l` (sum m l / (N * max_new_tokens)); see the
    module docstring. alpha: 1 = minimum variance (CountDown in the paper), 0.75 = the authors'
    default (math), 0 = uniform weights ("Dr. GRPO Norm"). epsilon and singleton as in `grpo`.
    Metrics: advantage/zero_std_frac, advantage/length_weight_min, advantage/length_weight_max.
    """

    @staticmethod
    def problems(cfg: Any) -> list[str]:
        """Checked by `rlvr config validate`: the two halves of ΔL go together (spec §5)."""
        got = cfg.loss.aggregation.name
        if got == "delta_l":
            return []
        return [f"advantage.name: delta_l needs loss.aggregation.name: delta_l (got {got}); its length "
                "weights give ΔL's unbiased minimum-variance gradient only with that constant-denominator "
                "aggregation"]

    def __init__(
        self,
        alpha: Annotated[float, Field(ge=0, le=1)] = 0.75,
        epsilon: Annotated[float, Field(ge=0)] = 1e-6,
        singleton: Literal["raw", "zero"] = "raw",
    ):
        self.alpha = alpha
        self.epsilon = epsilon
        self.singleton = singleton

    def __call__(self, inp: AdvantageInput) -> AdvantageOutput:
        adv = group_relative_advantages(inp.rewards, inp.group, epsilon=self.epsilon, singleton=self.singleton)
        w = delta_l_weights(inp.lengths, self.alpha)
        metrics: dict[str, float] = {}
        if w.numel():
            metrics = {
                "advantage/zero_std_frac": zero_std_fraction(inp.rewards, inp.group),
                "advantage/length_weight_min": float(w.min()),
                "advantage/length_weight_max": float(w.max()),
            }
        return AdvantageOutput(adv, w, metrics)
