"""Loss aggregation (the `aggregation` seam): per-token loss [B, T] -> this micro-batch's share.

Every mode divides by step-global normalisers (`LossNorm`, summed over all micro-batches and
processes before the update) instead of per-micro-batch counts. Summing the returned values of
all micro-batches therefore gives exactly the loss of the whole mini-batch, and the gradient does
not depend on how it was split (the learner multiplies by the process count to undo DDP's mean).

Each declares `row_separable`: True when the value is a sum over rows divided by those normalisers
alone, so a row whose loss is 0 adds nothing and may be left out of the passes
(`rlvr.learner.batching.skip_is_exact`). All six built-ins are.
"""

from __future__ import annotations

import torch

from rlvr.registry import AGGREGATION
from rlvr.types import LossNorm


@AGGREGATION.register("token_mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, norm: LossNorm) -> torch.Tensor:
    """sum_{i,t} m*l / sum_{i,t} m  (DAPO). Longer responses weigh more.

    Example: rows [1, 2 | 3, pad] -> (1 + 2 + 3) / 3 = 2.
    """
    return (loss * mask).sum() / max(norm.tokens, 1.0)


@AGGREGATION.register("seq_mean_token_mean")
def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, norm: LossNorm) -> torch.Tensor:
    """(1/N) sum_i (1/L_i) sum_t m*l  (original GRPO). Every response weighs the same.

    Example: rows [1, 2 | 3, pad] -> (1.5 + 3) / 2 = 2.25.
    """
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.sum() / max(norm.sequences, 1.0)


@AGGREGATION.register("seq_mean_token_sum")
def seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, norm: LossNorm) -> torch.Tensor:
    """(1/N) sum_{i,t} m*l.

    Example: rows [1, 2 | 3, pad] -> (3 + 3) / 2 = 3.
    """
    return (loss * mask).sum() / max(norm.sequences, 1.0)


@AGGREGATION.register("dr_grpo")
def dr_grpo(loss: torch.Tensor, mask: torch.Tensor, norm: LossNorm) -> torch.Tensor:
    """sum_{i,t} m*l / (N * L_max) with L_max = rollout.max_new_tokens, a constant (Dr. GRPO).

    Example: rows [1, 2 | 3, pad], L_max 4 -> 6 / (2 * 4) = 0.75.
    """
    return (loss * mask).sum() / max(norm.sequences * norm.max_response_tokens, 1.0)


@AGGREGATION.register("delta_l")
def delta_l(loss: torch.Tensor, mask: torch.Tensor, norm: LossNorm) -> torch.Tensor:
    """sum_{i,t} m*l / (N * T), T = max_response_tokens, the configured constant (ΔL, arXiv 2509.07558).

    The aggregation half of ΔL Normalization; it must be enabled together with the advantage
    `delta_l` (rlvr/advantage/delta_l.py), which folds w_i = N x_i into each advantage. The pair
    gives sample i the gradient x_i g_i / T with x_i = L_i^-a / sum_j L_j^-a (the paper's form).
    N is the step-global sample count, T never the tensor's padded width. Same formula as
    `dr_grpo`; registered apart so a recipe says which method it runs.
    Example: rows [1, 2 | 3, pad], T 4 -> 6 / (2 * 4) = 0.75.
    """
    return (loss * mask).sum() / max(norm.sequences * norm.max_response_tokens, 1.0)


@AGGREGATION.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(loss: torch.Tensor, mask: torch.Tensor, norm: LossNorm) -> torch.Tensor:
    """sum_{i,t} m*l / T with T = max_response_tokens and NO 1/N: verl's compat mode (spec §1.3).

    Only for reproducing verl runs: the loss scale grows with the batch size. verl divides by
    `loss_scale_factor` if set, else the padded width of the tensor; here T is always the
    configured constant, which equals verl's default when responses are padded to max length.
    Example: rows [1, 2 | 3, pad], T 4 -> 6 / 4 = 1.5.
    """
    return (loss * mask).sum() / max(float(norm.max_response_tokens), 1.0)


for _mode in (token_mean, seq_mean_token_mean, seq_mean_token_sum, dr_grpo, delta_l, seq_mean_token_sum_norm):
    _mode.row_separable = True  # type: ignore[attr-defined]
del _mode
