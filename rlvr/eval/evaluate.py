"""Held-out evaluation: greedy accuracy, and pass@k / mean@k from sampled completions."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from accelerate.utils import gather_object

from rlvr.metrics import summarize_eval
from rlvr.reward import RewardRunner, score_rollouts
from rlvr.rollout import RolloutEngine, SamplingParams
from rlvr.types import Prompt, PromptBatch, Rollouts


def _gather(values: list[Any], distributed: bool) -> list[Any]:
    return gather_object(values) if distributed else values


def evaluate(
    engine: RolloutEngine,
    prompts: list[Prompt],
    rewards: RewardRunner,
    *,
    max_new_tokens: int,
    stop: tuple[str, ...] = (),
    samples: int = 0,
    ks: list[int] | None = None,
    temperature: float = 1.0,
    process_index: int = 0,
    num_processes: int = 1,
    generate: Callable[[PromptBatch, SamplingParams], Rollouts] | None = None,
) -> dict[str, float]:
    """eval/accuracy (greedy, with its standard error), eval/len_mean, and with samples > 0
    eval/pass@k, eval/mean@n (unbiased estimators over `samples` draws per prompt). `generate`:
    how a batch becomes rollouts (default the engine's; a run with an environment plays episodes)."""
    generate = generate or engine.generate
    local = prompts[process_index::num_processes]
    dist = num_processes > 1
    metrics: dict[str, float] = {}
    greedy = SamplingParams(max_new_tokens=max_new_tokens, greedy=True, stop=stop)
    ro = generate(PromptBatch(local, [1] * len(local)), greedy)
    res = score_rollouts(rewards, ro)
    correct = _gather(res.correct.tolist(), dist)
    lengths = _gather(ro.lengths.tolist(), dist)
    n = max(len(correct), 1)
    acc = sum(correct) / n
    metrics["eval/accuracy"] = acc
    metrics["eval/accuracy_se"] = math.sqrt(acc * (1 - acc) / max(n - 1, 1))
    metrics["eval/reward_mean"] = sum(_gather(res.rewards.tolist(), dist)) / n
    metrics["eval/len_mean"] = sum(lengths) / n
    if samples:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)
        ro = generate(PromptBatch(local, [samples] * len(local)), params)
        flags = score_rollouts(rewards, ro).correct.view(len(local), samples).tolist()
        metrics.update(summarize_eval(_gather(flags, dist), ks or [1]))
    return metrics
