"""The buffer between rollout workers and the learner: scored step batches tagged with their policy.

Every entry is one step's worth of complete, scored groups (what `collect` returns), with the
policy version of the weights that generated each sample. The policy version is the number of
learner updates applied to those weights: the learner at step t trains with version t - 1, so a
sample of version v is (t - 1) - v versions stale there. A producer thread puts entries in step
order; the learner takes the entry of its step, waiting for it when generation is behind.

The buffer also remembers what its entries were drawn from (the sampler's picks), so that a
checkpoint can record what is buffered or being generated: a resumed run draws exactly those
prompts again, with the resumed weights, before drawing new ones.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rlvr.types import ScoredRollouts

Draw = tuple[list[int], list[int]]  # (prompt indices, samples per prompt) of one sampler draw


@dataclass
class Entry:
    """One step batch in the buffer."""

    step: int  # the step it was generated for
    scored: ScoredRollouts  # complete groups with rewards
    prompt_indices: list[int]  # dataset index of each group's prompt
    metrics: dict[str, float]  # the producing collect()'s metrics (rewards, dynamic sampling)
    versions: torch.Tensor  # [N] long, policy version of the weights that generated each sample
    draws: list[Draw] = field(default_factory=list)  # the sampler's picks it came from, in order


def staleness(versions: torch.Tensor, step: int) -> torch.Tensor:
    """[N] long: how many policy versions each sample lags the learner of `step` (which holds
    version step - 1). Example: versions [3, 3, 4] at step 5 -> [1, 1, 0]."""
    return (step - 1) - versions


class RolloutBuffer:
    """Thread-safe FIFO of `Entry`s, keyed by step, with the draws of entries still in production."""

    def __init__(self) -> None:
        self._entries: deque[Entry] = deque()
        self._cond = threading.Condition()
        self._producing: list[Draw] = []  # draws of the entry being generated now
        self._error: BaseException | None = None

    def begin(self) -> None:
        """The producer starts a new entry: its draws are recorded from here on."""
        with self._cond:
            self._producing = []

    def record_draw(self, draw: Draw) -> None:
        """The producer drew `draw` for the entry it is generating."""
        with self._cond:
            self._producing.append(draw)

    def put(self, entry: Entry) -> None:
        """Add a finished entry (the producer's draws for it move with it)."""
        with self._cond:
            entry.draws = self._producing
            self._producing = []
            self._entries.append(entry)
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """The producer died: the learner's next `take` raises this error instead of waiting forever."""
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def take(self, step: int, alive: Callable[[], bool]) -> tuple[Entry, float]:
        """The entry generated for `step` (older entries are discarded), and the seconds waited for it.

        `alive()` says whether anything is still producing; when it stops without an entry for
        `step` (and without an error) the wait would never end, so it raises instead.
        """
        t0 = time.perf_counter()
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                while self._entries and self._entries[0].step < step:
                    self._entries.popleft()
                if self._entries:
                    return self._entries.popleft(), time.perf_counter() - t0
                if not alive():
                    raise RuntimeError(f"rollout: nothing is generating the rollouts of step {step}")
                self._cond.wait(timeout=1.0)

    def in_production(self) -> list[Draw]:
        """The draws of the entry being generated now."""
        with self._cond:
            return list(self._producing)

    def pending_draws(self) -> list[Draw]:
        """Every draw of the entries not yet taken, oldest first, then those of the entry in production."""
        with self._cond:
            return [d for e in self._entries for d in e.draws] + list(self._producing)

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)
