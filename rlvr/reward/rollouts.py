"""Stage 2 on stage records: score `Rollouts` into `ScoredRollouts`."""

from __future__ import annotations

from rlvr.reward.runner import RewardRunner
from rlvr.types import Rollouts, ScoredRollouts


def score_rollouts(runner: RewardRunner, rollouts: Rollouts) -> ScoredRollouts:
    """Score every sample against its own prompt's text and dataset row.

    An episode (rollouts with `contexts`) is scored on its whole trajectory: the reward's prompt is
    the prompt followed by every turn before the last (the model's and the environment's), its
    completion the last model turn (the answer), and its row holds one more key, "episode": the
    episode's record (turns, tool calls, why it ended, and what the environment's `finish` added,
    e.g. the reward of an environment that scores its own episodes; see the `env` reward).
    """
    prompts = [rollouts.prompts[int(g)] for g in rollouts.group]
    texts = [p.text for p in prompts]
    if rollouts.contexts is not None:
        texts = [t + c for t, c in zip(texts, rollouts.contexts)]
    rows = [p.row for p in prompts]
    if rollouts.episodes is not None:
        rows = [{**row, "episode": ep} for row, ep in zip(rows, rollouts.episodes)]
    res = runner.score(texts, rollouts.texts, rows)
    return ScoredRollouts(rollouts, res.total, res.components, res.correct, res.metrics)
