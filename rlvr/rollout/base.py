"""The rollout-engine protocol: every engine returns the same `Rollouts` record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from rlvr.types import PromptBatch, Rollouts


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # learner log-probs use the same temperature
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    greedy: bool = False
    stop: tuple[str, ...] = field(default_factory=tuple)


class RolloutEngine(Protocol):
    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts: ...

    def update_weights(self, model: torch.nn.Module) -> None:
        """Make the engine generate with the learner's current weights."""
        ...
