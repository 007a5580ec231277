"""Held-out evaluation summaries: pass@k and mean accuracy with their standard errors.

Evaluation draws n samples per prompt and checks each one. Reporting only "did any of the first k
pass" wastes the other n - k samples and is noisy; the unbiased estimator below uses all n.
"""

from __future__ import annotations

import math
import statistics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Codex", eq. 1).

        pass@k = 1 - C(n - c, k) / C(n, k)

    i.e. one minus the chance that k samples drawn without replacement from the n are all wrong.
    The binomials overflow floats for large n, so the ratio is taken as a product:

        C(n - c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)

    Worked example, n = 5, c = 2, k = 2: C(3, 2) / C(5, 2) = 3 / 10, so pass@2 = 0.7;
    the product gives (1 - 2/4) * (1 - 2/5) = 0.5 * 0.6 = 0.3, the same 0.7.
    With k = 1 the estimator is c / n (here 0.4). When n - c < k every k-subset holds a correct
    sample and the result is exactly 1.0.

    Raises ValueError when k is not in 1..n or c is not in 0..n.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must be in 0..n={n}, got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in 1..n={n}, got k={k}")
    if n - c < k:
        return 1.0
    all_wrong = math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
    return 1.0 - all_wrong


def _mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean over prompts and its standard error, sample std (ddof=1) / sqrt(P); 0 when P == 1."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def summarize_eval(correct: list[list[bool]], ks: list[int]) -> dict[str, float]:
    """Per-prompt correctness (P prompts, n_j samples each) → eval metrics averaged over prompts.

    Returns `eval/mean@n` (mean per-prompt accuracy c_j / n_j) and, for each k no larger than
    the smallest n_j, `eval/pass@{k}` (mean of pass_at_k over prompts). Each comes with `..._se`,
    the standard error over prompts: sample std (ddof=1) / sqrt(P), 0 when P == 1. The error is
    over prompts because they, not the samples, are the independent draws from the task.

    Worked example, correct = [[T, F], [T, T], [F, F]], ks = [1, 2, 4] (k = 4 > n = 2 is skipped):
        per-prompt accuracy 0.5, 1, 0   → mean@n = 0.5, std = 0.5, se = 0.5 / sqrt(3) ≈ 0.2887
        per-prompt pass@2   1, 1, 0     → pass@2 = 2/3, std ≈ 0.5774, se = 1/3
        pass@1 equals mean@n (and so does its se).
    """
    if not correct or any(len(row) == 0 for row in correct):
        raise ValueError("summarize_eval: need at least one prompt and one sample per prompt")
    accuracy = [sum(row) / len(row) for row in correct]
    metrics: dict[str, float] = {}
    metrics["eval/mean@n"], metrics["eval/mean@n_se"] = _mean_and_se(accuracy)
    n_min = min(len(row) for row in correct)
    for k in ks:
        if k > n_min:
            continue
        per_prompt = [pass_at_k(len(row), sum(row), k) for row in correct]
        metrics[f"eval/pass@{k}"], metrics[f"eval/pass@{k}_se"] = _mean_and_se(per_prompt)
    return metrics
