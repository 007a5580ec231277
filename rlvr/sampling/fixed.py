"""Fixed sample allocator: every chosen prompt gets the same number of samples."""

from __future__ import annotations

from typing import Any

from rlvr.registry import ALLOCATOR


@ALLOCATOR.register("fixed")
class FixedAllocator:
    """G samples for every prompt. Example: G = 8, prompts [3, 9] -> [8, 8]."""

    def __init__(self, samples_per_prompt: int):
        self.samples_per_prompt = samples_per_prompt

    def allocate(self, prompt_indices: list[int]) -> list[int]:
        """G for each of the P chosen prompts."""
        return [self.samples_per_prompt] * len(prompt_indices)

    def state_dict(self) -> dict[str, Any]:
        """Empty: the allocation depends on nothing but the config."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (see `state_dict`)."""
        pass
