"""BNPO: Beta Normalization Policy Optimization (Xiao, Zhang, Cao; arXiv 2506.02864).

Spec: shared/spec/algorithms.md section 4. Reference code: changyi7231/BNPO@a9c51b98.

Rewards are mapped to [0, 1]; each prompt's mean p_j is the baseline; the centred reward is divided
by the density at p_j of a Beta(alpha, beta) fitted (by moments, then shrunk towards 1) to the
batch's p_j values:
    A_{j,i} = (r~_{j,i} - p_j) * min(1 / Beta_pdf(p_j; alpha, beta), 1e6)
alpha = beta = 1 is REINFORCE with a group-mean baseline (Dr. GRPO); alpha = beta = 3/2 is GRPO's
std normalisation (binary rewards, population std) times pi/8. (alpha, beta) are refitted on every
batch: no state across steps.

Two modes. `reference_compat` reproduces the reference, faults included: NaN advantages when every
prompt has the same mean 0 < p < 1, ValueError when it is 0 or 1, and A = r~ * 1e6 (or r~ / beta)
for a prompt with one sample. The default (guarded) mode falls back to alpha = beta = 1 when the fit
is degenerate and gives single-sample groups A = 0; everything else is identical.

The moment fit runs in float32 as in the reference (its clamp at 1 decides whether a single-sample
group's density at 0 is 0 or beta, so the fit's rounding must match); the density runs in float64.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, NamedTuple

import torch
from pydantic import Field

from rlvr.advantage.grpo import group_stats, zero_std_fraction
from rlvr.registry import ADVANTAGE
from rlvr.types import AdvantageInput, AdvantageOutput

logger = logging.getLogger(__name__)

VAR_FLOOR = 1e-12  # variances of group means at or below this count as 0 (float64 noise of equal means)
WEIGHT_CAP = 1e6  # cap on 1 / pdf: binds where the density is 0 (p = 0 with alpha > 1, p = 1 with beta > 1)


class BetaFit(NamedTuple):
    """Moment fit of the group means (spec section 4.1 steps 3-4), before any guard."""

    mean: float  # m
    var: float  # v (unbiased; 0 when <= VAR_FLOOR)
    a: float
    b: float
    alpha: float  # max(1 + a/3, 1): inf or nan when v = 0
    beta: float

    @property
    def degenerate(self) -> bool:
        """True where the fit has no finite Beta (every group mean equal)."""
        return not (math.isfinite(self.alpha) and math.isfinite(self.beta))


@dataclass
class BnpoResult:
    advantages: torch.Tensor  # [N] float32
    group_mean: torch.Tensor  # [P] float32, p_j in ascending group-id order (0 for single-sample groups)
    fit: BetaFit  # the reference's fit, unguarded
    alpha_used: float  # the Beta actually used for the weights
    beta_used: float
    guarded: bool  # the degenerate-fit fallback to alpha = beta = 1 was applied
    singletons: int  # groups of one sample


def normalise_rewards(rewards: torch.Tensor, min_value: float = 0.0, max_value: float = 1.0) -> torch.Tensor:
    """Affine map of rewards onto [0, 1] (spec 4.1 step 1): r~ = (r - min_value) / (max_value - min_value).

    rewards [N] -> [N] float32. Example: rewards [1, -1, 1] with bounds [-1, 1] -> [1, 0, 1].
    """
    if not max_value > min_value:
        raise ValueError(
            f"BNPO needs max_value > min_value, got min_value={min_value}, max_value={max_value}"
        )
    return (rewards.float() - min_value) / (max_value - min_value)


def bnpo_group_means(r_norm: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline p of each sample and of each group (spec 4.1 step 2).

    r_norm [N], group [N] long -> (p per sample [N], p per group [P] in ascending group-id order).
    p is the group mean, except that a group of one sample gets p = 0 (the reference's convention;
    it still enters the moment fit).
    Example: r~ [1, 0, 1], group [0, 0, 1] -> p [0.5, 0.5, 0], per group [0.5, 0].
    """
    mean, _, count = group_stats(r_norm, group)
    p = torch.where(count > 1, mean, torch.zeros_like(mean))
    _, inv = torch.unique(group, return_inverse=True)
    per_group = torch.zeros(int(inv.max()) + 1 if inv.numel() else 0, dtype=p.dtype).scatter_(0, inv, p)
    return p, per_group


def fit_beta_moments(p: torch.Tensor) -> BetaFit:
    """Method-of-moments Beta over the batch's group means, shrunk towards 1 (spec 4.1 steps 3-4).

    p [P] float -> BetaFit. m = mean(p), v = unbiased variance (m = 0, v = 1 when P = 1);
    a = (m(1-m)/v - 1) m, b = (m(1-m)/v - 1)(1-m); alpha = max(1 + a/3, 1), beta = max(1 + b/3, 1).
    Computed in float32 like the reference. v <= VAR_FLOOR counts as 0, so equal means give
    alpha = beta = inf (0 < m < 1) or nan (m in {0, 1}), exactly as the reference does; the caller
    decides what to do with that.
    Example: p [0.25, 0.5, 0.75] -> m 0.5, v 0.0625, a = b = 1.5, alpha = beta = 1.5.
    """
    p = p.float()
    if p.numel() == 1:
        m, v = torch.tensor(0.0), torch.tensor(1.0)
    else:
        m, v = p.mean(), p.var()
    if v <= VAR_FLOOR:
        v = torch.zeros_like(v)
    concentration = m * (1 - m) / v - 1  # the moment estimate of alpha + beta
    a, b = concentration * m, concentration * (1 - m)
    alpha, beta = torch.clamp(1 + a / 3, min=1.0), torch.clamp(1 + b / 3, min=1.0)  # clamp keeps nan
    return BetaFit(*(float(t) for t in (m, v, a, b, alpha, beta)))


def beta_pdf(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Density of Beta(alpha, beta) at x, in float64, with 0 * log 0 = 0.

    x [N] in [0, 1] -> [N] float64. Beta(1, beta) has density beta at 0; alpha > 1 gives 0 at 0;
    non-finite parameters give nan (as torch.distributions.Beta does for alpha = beta = inf).
    Example: alpha = beta = 1.5, x [0, 0.25, 0.5] -> [0, 1.1027, 1.2732] (= (8/pi) sqrt(x(1-x))).
    """
    x = x.double()
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        return torch.full_like(x, math.nan)
    log_norm = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    one = torch.ones_like(x)
    return torch.exp(torch.xlogy((alpha - 1) * one, x) + torch.xlogy((beta - 1) * one, 1 - x) - log_norm)


def bnpo_advantages(
    rewards: torch.Tensor,
    group: torch.Tensor,
    *,
    min_value: float = 0.0,
    max_value: float = 1.0,
    reference_compat: bool = False,
) -> BnpoResult:
    """BNPO advantage per sample (arXiv 2506.02864; spec 4.1 step 5 and the guards of 4.3).

    rewards [N], group [N] long -> BnpoResult with advantages [N] float32, in normalised-reward units.
    A = (r~ - p) * min(1 / Beta_pdf(p; alpha, beta), 1e6); groups of >= 2 equal rewards get exactly 0.
    Raises AssertionError (both modes) if a group mean falls outside [0, 1] after the map: the
    bounds do not bracket the rewards. In reference_compat mode a fit with nan parameters raises
    ValueError and one with infinite parameters gives nan advantages; the guarded mode uses
    alpha = beta = 1 (A = r~ - p) there, and gives single-sample groups A = 0.
    Example: rewards [1, 0, 1], group [0, 0, 1] -> p per group [0.5, 0], m 0.25, v 0.125,
    a 0.125, b 0.375, alpha 1.0417, beta 1.125, pdf(0.5) 1.0474, A = [0.4774, -0.4774, x] with
    x = 0 (guarded) or 1e6 (reference_compat: the pdf at p = 0 is 0 since alpha > 1).
    """
    r = normalise_rewards(rewards, min_value, max_value)
    p, per_group = bnpo_group_means(r, group)
    outside = (per_group < 0) | (per_group > 1) | per_group.isnan()
    if outside.any():
        raise AssertionError(
            f"BNPO: group mean rewards must lie in [0, 1] after mapping with min_value={min_value}, "
            f"max_value={max_value}; got {per_group[outside].tolist()}: set min_value/max_value to the "
            "reward range (a weighted sum of components may exceed 1; see decompose)"
        )
    fit = fit_beta_moments(per_group)
    guarded = fit.degenerate and not reference_compat
    if fit.degenerate and reference_compat and (math.isnan(fit.alpha) or math.isnan(fit.beta)):
        raise ValueError(
            f"BNPO: the Beta fit has nan parameters (alpha={fit.alpha}, beta={fit.beta}): every group "
            f"mean equals {fit.mean}, so their variance is 0 (reference behaviour; the guarded mode "
            "falls back to alpha = beta = 1)"
        )
    alpha, beta = (1.0, 1.0) if guarded else (fit.alpha, fit.beta)

    _, std, count = group_stats(r, group)
    centred = torch.where((count > 1) & (std == 0), torch.zeros_like(r), r - p)
    if not reference_compat:
        centred = torch.where(count == 1, torch.zeros_like(r), centred)
    weight = (1.0 / beta_pdf(p, alpha, beta)).clamp(max=WEIGHT_CAP)  # 1/0 = inf -> cap; nan stays nan
    adv = (centred.double() * weight).float()
    return BnpoResult(adv, per_group, fit, alpha, beta, guarded, singletons=int((count == 1).sum()))


def decomposed_bnpo_advantages(
    components: Mapping[str, torch.Tensor],
    group: torch.Tensor,
    *,
    min_value: float = 0.0,
    max_value: float = 1.0,
    reference_compat: bool = False,
) -> tuple[torch.Tensor, dict[str, BnpoResult]]:
    """Advantage decomposition (spec 4.2): the mean of the BNPO advantages of each reward component.

    components: name -> [N] unweighted rewards (K of them), group [N] -> (advantages [N], result per
    component). Each component gets its own p, alpha and beta; A = (1/K) sum_k A^(k). A component
    whose fit is degenerate (e.g. always 0) contributes 0 in guarded mode and still counts in K.
    Example: acc [1, 0, 1], format [1, 1, 1], group [0, 0, 1], guarded -> A_acc [0.4774, -0.4774, 0]
    (bnpo_advantages' example), A_format = [0, 0, 0] (p [1, 0], v 0.5, a = b = -0.25, alpha = beta = 1;
    group 0's rewards are equal, group 1 is a singleton), so A = [0.2387, -0.2387, 0].
    """
    if not components:
        raise ValueError("BNPO decompose=true needs reward components, got none")
    results = {}
    for name, values in components.items():
        try:
            results[name] = bnpo_advantages(
                values, group, min_value=min_value, max_value=max_value, reference_compat=reference_compat
            )
        except (AssertionError, ValueError) as e:
            raise type(e)(f"reward component {name!r}: {e}") from e
    return torch.stack([res.advantages for res in results.values()]).mean(0), results


@ADVANTAGE.register("bnpo")
class BNPO:
    """Group-mean baseline scaled by 1 / Beta density of the group mean; Beta fitted per batch.

    min_value/max_value: the reward range, mapped onto [0, 1]. decompose: average the BNPO
    advantages of each reward component (AdvantageInput.components) instead of using the
    weighted total. reference_compat: reproduce the reference's nan/error/1e6 behaviour.
    """

    def __init__(
        self,
        min_value: Annotated[float, Field(allow_inf_nan=False)] = 0.0,
        max_value: Annotated[float, Field(allow_inf_nan=False)] = 1.0,
        decompose: bool = False,
        reference_compat: bool = False,
    ):
        if not max_value > min_value:
            raise ValueError(
                f"bnpo: max_value must be greater than min_value, got {min_value} and {max_value}"
            )
        self.min_value = min_value
        self.max_value = max_value
        self.decompose = decompose
        self.reference_compat = reference_compat
        self._warned = False

    def __call__(self, inp: AdvantageInput) -> AdvantageOutput:
        if inp.rewards.numel() == 0:
            return AdvantageOutput(torch.zeros(0), None, {"advantage/zero_std_frac": 0.0})
        kw = dict(min_value=self.min_value, max_value=self.max_value, reference_compat=self.reference_compat)
        if self.decompose:
            adv, results = decomposed_bnpo_advantages(inp.components, inp.group, **kw)
        else:
            res = bnpo_advantages(inp.rewards, inp.group, **kw)
            adv, results = res.advantages, {"": res}
        n_groups = int(torch.unique(inp.group).numel())
        metrics = {
            "advantage/zero_std_frac": zero_std_fraction(inp.rewards, inp.group),
            "advantage/bnpo_guarded_frac": sum(r.guarded for r in results.values()) / len(results),
            "advantage/bnpo_singleton_frac": next(iter(results.values())).singletons / n_groups,
            "advantage/bnpo_nan_frac": float(adv.isnan().float().mean()),
        }
        for name, r in results.items():
            suffix = f"/{name}" if name else ""
            metrics[f"advantage/bnpo_alpha{suffix}"] = r.alpha_used
            metrics[f"advantage/bnpo_beta{suffix}"] = r.beta_used
        if metrics["advantage/bnpo_guarded_frac"] > 0 and not self._warned:
            self._warned = True
            logger.warning(
                "BNPO: every prompt has the same mean reward%s, so the Beta fit is degenerate; using "
                "alpha = beta = 1 (group-mean baseline). Counted in advantage/bnpo_guarded_frac; not "
                "repeated.",
                "" if not self.decompose else " for some reward component",
            )
        return AdvantageOutput(adv, None, metrics)
