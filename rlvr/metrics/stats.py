"""Small tensor reductions the training loop turns into metrics."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is non-zero (mask may hold weights), e.g. over the
    response tokens of a padded [N, T] tensor. An all-zero mask gives 0 rather than NaN, so an
    empty micro-batch cannot poison a logged average.

        >>> x = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]])
        >>> m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
        >>> masked_mean(x, m)          # (1 + 2 + 4) / 3
        tensor(2.3333)
        >>> masked_mean(x, m, dim=-1)  # per row: (1 + 2) / 2, 4 / 1
        tensor([1.5000, 4.0000])
    """
    mask = mask.to(x.dtype)
    total = (x * mask).sum() if dim is None else (x * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    # Where count is 0 the numerator is 0 too, so the clamp turns 0/0 into 0 without a branch.
    return total / count.clamp_min(1e-8)


def tensor_stats(prefix: str, x: torch.Tensor) -> dict[str, float]:
    """Mean, population std, min and max of all elements of x, keyed `{prefix}/mean` etc.

    The population std (ddof=0) is used so a single element gives 0 instead of NaN; an empty
    tensor gives {} so nothing misleading is logged for a step that had no such values.

        >>> tensor_stats("rollout/len", torch.tensor([2, 4, 6]))
        {'rollout/len/mean': 4.0, 'rollout/len/std': 1.632993..., 'rollout/len/min': 2.0, 'rollout/len/max': 6.0}
    """
    if x.numel() == 0:
        return {}
    x = x.detach().float().flatten()
    # One stacked .tolist() is one device sync instead of four .item() calls.
    mean, std, low, high = torch.stack([x.mean(), x.std(correction=0), x.min(), x.max()]).tolist()
    return {f"{prefix}/mean": mean, f"{prefix}/std": std, f"{prefix}/min": low, f"{prefix}/max": high}
