"""Train/inference mismatch: importance weights between the rollout engine and the learner.

An engine such as vLLM samples with kernels, precision and batching that differ from the
learner's, so the tokens come from a behaviour policy mu (the engine) while the loss assumes
they came from pi_old (the learner's weights at rollout time). The policy gradient is
corrected with the ratio pi_old / mu, computed from log-probs both sides already have:

    rho_t = exp(logp_old_t - logp_rollout_t)

- token truncation (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings you
  off-policy RL training"): w_t = min(rho_t, C), C = 2 by default; no gradient flows through w.
- sequence mask (masked IS): a sample whose geometric-mean ratio
  exp(mean_t log rho_t) lies outside [low, high] gets w = 0 on every token. The geometric mean
  keeps the bound independent of the response length (a product of 500 ratios of 1.01 is 145).

Both only multiply the per-token policy-gradient loss; the KL term is left as it is.
"""

from __future__ import annotations

import torch


def rollout_is_weights(
    old_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    token_cap: float | None,
    sequence_mask: tuple[float, float] | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token importance weights [B, T] (detached, zero on padding) and per-token indicators.

    old_logprobs, rollout_logprobs, mask: [B, T]. Indicators (each [B, T], zero on padding, for
    token-mean metrics): is_weight (the weight), is_truncated (rho_t > cap), is_masked (the
    token's sample was masked).
    Example: log rho = [0.0, 1.0, -0.5] on one sample, cap 2 -> rho = [1, 2.718, 0.607],
    w = [1, 2, 0.607]; with sequence_mask (0.5, 2): mean log rho = 0.167, exp = 1.18, kept.
    """
    log_rho = ((old_logprobs - rollout_logprobs) * mask).detach().clamp(-20.0, 20.0)
    rho = torch.exp(log_rho)
    w = rho.clamp(max=token_cap) if token_cap is not None else torch.ones_like(rho)
    keep = torch.ones_like(mask)
    if sequence_mask is not None:
        low, high = sequence_mask
        geo = torch.exp((log_rho * mask).sum(-1) / mask.sum(-1).clamp(min=1.0))  # [B]
        keep = ((geo >= low) & (geo <= high)).to(mask.dtype).unsqueeze(-1).expand_as(mask)
    w = w * keep * mask
    stats = {
        "is_weight": w,
        "is_truncated": (rho > token_cap).to(mask.dtype) * mask if token_cap is not None else torch.zeros_like(mask),
        "is_masked": (1.0 - keep) * mask,
    }
    return w, stats


def mismatch_stats(learner_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    """Per-token gap between learner and engine log-probs [B, T] each, zero on padding.

    rollout_logprob_diff = |d| and mismatch_k3 = r - 1 - log r (r = exp(d), d = learner - engine):
    the k3 estimate of KL(mu || pi) from the engine's own samples, >= 0 and 0 only when equal.
    Example: d = 0.1 -> |d| = 0.1, k3 = exp(0.1) - 1.1 = 0.00517.
    """
    d = (learner_logprobs - rollout_logprobs).detach().clamp(-20.0, 20.0) * mask
    return {"rollout_logprob_diff": d.abs(), "mismatch_k3": (torch.exp(d) - 1.0 - d) * mask}
