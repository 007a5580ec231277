"""Uniform prompt sampler: seeded epochs of shuffled prompts, resumable mid-epoch."""

from __future__ import annotations

from typing import Any

import torch

from rlvr.registry import SAMPLER


@SAMPLER.register("uniform")
class UniformSampler:
    """Visit every prompt once per epoch in a seeded random order (or in file order).

    The order of epoch e is randperm(num_prompts) from a generator seeded with seed + e, so the
    state is just (epoch, position) and a resumed run continues the same sequence.
    Example: 5 prompts, 2 per step -> step 0 gets perm_0[0:2], step 1 perm_0[2:4],
    step 2 perm_0[4] + perm_1[0].
    """

    def __init__(self, num_prompts: int, seed: int, *, shuffle: bool = True):
        if num_prompts < 1:
            raise ValueError("the training set has no prompts")
        self.num_prompts = num_prompts
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_prompts))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_prompts, generator=g).tolist()

    def sample(self, count: int) -> list[int]:
        """The next `count` dataset indices of the epoch order, running into the next epoch(s) when needed."""
        out: list[int] = []
        while len(out) < count:
            if self.position == self.num_prompts:
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
            take = min(count - len(out), self.num_prompts - self.position)
            out += self._order[self.position : self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict[str, Any]:
        """(epoch, position): the order itself is re-derived from the seed."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the saved epoch and position, rebuilding that epoch's order."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)
