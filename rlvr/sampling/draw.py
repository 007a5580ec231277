"""Stage 0 of a step: the sampler picks prompts, the allocator their sample counts."""

from __future__ import annotations

from typing import Any


def draw(sampler: Any, allocator: Any, count: int, share: int, world: int, tries: int = 100
         ) -> tuple[list[int], list[int]]:
    """`count` prompt indices and their sample counts (G_j each), for all processes at once.

    Redrawn while some process's share of `share` consecutive prompts would get no samples at
    all: an allocator such as GVM gives 0 to prompts it skips, and a process with nothing to
    generate would leave the others waiting. Every process draws the same (same seeds).
    Example: count 4, world 2, counts [0, 0, 3, 5] -> process 0 has nothing, so draw again.
    """
    for _ in range(tries):
        chosen = sampler.sample(count)
        counts = allocator.allocate(chosen)
        if all(sum(counts[r * share : (r + 1) * share]) for r in range(world)):
            return chosen, counts
    raise RuntimeError(f"sampling.allocator: {tries} draws in a row allocated no samples to some process's prompts")
