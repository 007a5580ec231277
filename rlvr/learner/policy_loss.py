"""Per-token policy-gradient losses (the `policy_loss` seam) and KL estimators.

A policy loss maps log-probs to a per-token loss [B, T]; the aggregation seam turns it into a
scalar. Both only see tokens through `mask`, so padding never matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field

from rlvr.registry import POLICY_LOSS


@POLICY_LOSS.register("ppo_clip")
def ppo_clip(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: Annotated[float, Field(ge=0, lt=1)] = 0.2,
    clip_high: Annotated[float, Field(ge=0)] = 0.2,
    dual_clip: Annotated[float, Field(gt=1)] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate with asymmetric clip (DAPO clip-higher) and optional dual clip.

    logprobs, old_logprobs, mask [B, T]; advantages [B] (broadcast over tokens).
        rho = exp(clamp(logp - old_logp, -20, 20))
        l   = max(-A * rho, -A * clip(rho, 1 - clip_low, 1 + clip_high))
        where A < 0 and dual_clip = c:  l = min(l, -c * A)
    Returns (loss [B, T] zeroed on padding, per-token indicators [B, T] for metrics:
    clip_frac (the clipped term is active), dual_clip_frac, ppo_kl = old_logp - logp).
    Example: A = 1, rho = 1.5, clip 0.2/0.28 -> l = max(-1.5, -1.28) = -1.28, clipped.
    A = -1, rho = 5, dual_clip 3 -> max(5, 1.2) = 5, then min(5, 3) = 3.
    """
    adv = advantages.unsqueeze(-1).to(logprobs.dtype)
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    stats = {"clip_frac": (clipped > unclipped).float(), "ppo_kl": -log_ratio.detach()}
    if dual_clip is not None:
        bound = -dual_clip * adv
        lower = (adv < 0) & (loss > bound)
        loss = torch.where(adv < 0, torch.minimum(loss, bound), loss)
        stats["dual_clip_frac"] = lower.float()
    return loss * mask, {k: v.detach() * mask for k, v in stats.items()}


ppo_clip.zero_at_zero_advantage = True  # A = 0 gives l = 0 and no gradient: such rows may skip the passes


@dataclass(frozen=True)
class KLSettings:
    """The KL penalty against the reference model (loss.kl); the default is off.

    `in_loss` (where: loss): the learner adds coef x the aggregated `kl_estimate` to the loss.
    Otherwise (where: reward) the loop folds a k1 penalty into the rewards (`kl_in_reward`) and the
    learner only reports the estimate.
    """

    coef: float = 0.0
    estimator: str = "k3"
    in_loss: bool = True


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi || ref) estimators on samples from pi (Schulman's k1/k2/k3), shapes [B, T].

    d = logp - ref_logp; gradients flow through `logp`.
        k1 = d;  abs = |d|;  k2 = d^2 / 2;  k3 = exp(-d) + d - 1 (clamped as in verl: -d to
        [-20, 20], the value to [-10, 10]);  "k3+" = the value of k3 with the gradient of k2.
    Example: d = 0.5 -> k1 0.5, abs 0.5, k2 0.125, k3 exp(-0.5) - 0.5 = 0.1065.
    """
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "abs":
        return d.abs()
    if estimator == "k2":
        return 0.5 * d * d
    neg = (-d).clamp(-20.0, 20.0)
    k3 = (torch.exp(neg) - neg - 1.0).clamp(-10.0, 10.0)
    if estimator == "k3":
        return k3
    if estimator == "k3+":
        k2 = 0.5 * d * d
        return k2 + (k3 - k2).detach()
    raise ValueError(f"unknown KL estimator {estimator!r}; expected k1, abs, k2, k3 or k3+")


def kl_in_reward(
    rewards: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, coef: float
) -> torch.Tensor:
    """Sequence reward with a k1 KL penalty on every response token (classic RLHF shaping).

    rewards [N], log-probs and mask [N, T] -> [N]: r - coef * sum_t k1_t. For outcome advantages
    this equals putting r on the last token and -coef * k1 on every token, then summing.
    Example: r = 1, k1 per token [0.1, 0.3], coef 0.5 -> 1 - 0.5 * 0.4 = 0.8.
    """
    return rewards - coef * (kl_estimate(old_logprobs, ref_logprobs, "k1") * mask).sum(-1)
