"""SPO's prompt sampler: draw the prompts the policy solves about half the time (spec §2.4).

The weights come from the per-prompt success estimates p̂ of the SPO tracker
(rlvr/advantage/spo_tracker.py), w = sqrt(p̂ (1 − p̂)) + ε (`sampling_weights` in
rlvr/advantage/spo.py); this module holds the draw and the sampler plug-in around it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import torch
from pydantic import Field

from rlvr.advantage.spo import SPO, Floats
from rlvr.registry import SAMPLER
from rlvr.sampling.uniform import UniformSampler


def prioritised_draw(weights: Floats, count: int, generator: torch.Generator | None = None) -> list[int]:
    """Indices of `count` candidates drawn with probability ∝ weights (spec §2.4).

    Without replacement (each draw renormalises over the candidates left, as numpy's sequential
    `choice(replace=False, p=...)` does) unless the pool is smaller than `count`, then with replacement.
    Same distribution as the reference, not the same random stream.

    weights [P] over P candidate prompts -> list of `count` ints in [0, P).
    Example: weights [0.28, 0.55, 0.28, 0.42], count 3 -> three distinct indices, e.g. [1, 3, 0].
    """
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        return []
    if w.numel() == 0:
        raise ValueError("cannot draw from an empty candidate pool")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("sampling weights must be finite and >= 0")
    if float(w.sum()) == 0:
        w = torch.ones_like(w)
    replace = w.numel() < count
    if not replace and int((w > 0).sum()) < count:
        raise ValueError(f"only {int((w > 0).sum())} candidates have positive weight, cannot draw {count}")
    return torch.multinomial(w, count, replacement=replace, generator=generator).tolist()


@SAMPLER.register("spo")
class SPOSampler:
    """Prioritised prompt sampling by the SPO tracker: weight sqrt(p(1-p)) + eps (§2.4).

    A candidate pool of `pool_factor` x count prompts is drawn in shuffled epochs (so every prompt
    keeps being seen), then `count` of them are drawn without replacement by weight.
    Needs `advantage: {name: spo}`, whose tracker it reads.
    """

    @staticmethod
    def problems(cfg: Any) -> list[str]:
        """Checked by `rlvr config validate`: the sampler reads the SPO estimator's tracker."""
        if cfg.advantage.name == "spo":
            return []
        return [f"sampling.sampler.name: spo needs advantage.name: spo (got {cfg.advantage.name}); "
                "the sampler draws by the success estimates the SPO estimator keeps"]

    def __init__(self, num_prompts: int, seed: int, prompt_uids: list[str], advantage: Any, *,
                 pool_factor: Annotated[int, Field(ge=1)] = 4):
        if not isinstance(advantage, SPO):
            raise ValueError("sampling.sampler: 'spo' reads the SPO tracker and needs advantage.name: spo")
        self.pool = UniformSampler(num_prompts, seed)
        self.uids = prompt_uids
        self.advantage = advantage
        self.pool_factor = pool_factor
        self.generator = torch.Generator().manual_seed(seed + 7919)

    def sample(self, count: int) -> list[int]:
        """Dataset indices of the next `count` prompts: a uniform candidate pool, then a draw by weight.

        Example: 10 prompts, pool_factor 4, count 2 -> the next 8 prompts of the shuffled epochs are
        candidates and 2 distinct ones among them are drawn, a prompt with p̂ = ½ most likely.
        """
        pool = self.pool.sample(min(self.pool_factor * count, self.pool.num_prompts))
        weights = self.advantage.tracker.sampling_weights([self.uids[i] for i in pool])
        return [pool[i] for i in prioritised_draw(weights, count, self.generator)]

    def state_dict(self) -> dict[str, Any]:
        """The candidate pool's position and the draw's generator (the weights live in the tracker)."""
        return {"pool": self.pool.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.pool.load_state_dict(state["pool"])
        self.generator.set_state(state["generator"])
