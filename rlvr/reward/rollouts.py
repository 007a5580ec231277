"""Stage 2 on stage records: score `Rollouts` into `ScoredRollouts`."""

from __future__ import annotations

from rlvr.reward.runner import RewardRunner
from rlvr.types import Rollouts, ScoredRollouts


def score_rollouts(runner: RewardRunner, rollouts: Rollouts) -> ScoredRollouts:
    """Score every sample against its own prompt's text and dataset row."""
    prompts = [rollouts.prompts[int(g)] for g in rollouts.group]
    res = runner.score([p.text for p in prompts], rollouts.texts, [p.row for p in prompts])
    return ScoredRollouts(rollouts, res.total, res.components, res.correct, res.metrics)
