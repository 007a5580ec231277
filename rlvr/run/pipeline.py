"""Asynchronous rollouts: a producer thread fills the buffer ahead of the learner, at most k policy
versions ahead (`rollout.mode: disaggregated`, `rollout.max_staleness: k`).

Versions: the engine's weights after the push at the end of step t are version t, so the
learner of step t trains with version t - 1. The producer may start the batch of step s once
the learner has asked for step s - k (everything before it is done, its `observe` hooks
included), with whatever weights the engine holds then, at least version s - 1 - k:

    k = 0: step s is generated when the learner asks for it, with version s - 1 -> the synchronous run.
    k = 1: step s + 1 is generated while step s trains, with version s - 1 -> one version stale.

New weights and requests in flight (`rollout.in_flight`): with `finish` the push waits until the
batch being generated is done (its samples keep their older version); with `abort` the engine is
told to stop, the push goes in at once, and the aborted batch is generated again from the same
prompts with the new weights. Either way every sample's version is known, and a batch that is
still older than k when the learner reaches it (never, by the rule above, unless a resume or an
engine breaks it) is dropped or generated again (`rollout.stale`), and counted.

With several learner processes, process 0 produces every process's groups and hands each its
share at the start of the step; the others only take part in the weight push (collective under
FSDP2/ZeRO-3). A checkpoint records the prompts drawn for batches not yet trained; a resumed run
generates those again first (with the resumed weights), so it trains the same prompts in the
same order as a run that was never stopped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import broadcast_object_list

from rlvr.advantage.filters import select_groups
from rlvr.buffer.rollouts import Draw, Entry, RolloutBuffer, staleness
from rlvr.rollout.base import GenerationAborted
from rlvr.types import AdvantageOutput, ScoredRollouts

# one step batch of every process's groups: (scored, prompt indices, metrics); `pick` draws prompts
Produce = Callable[[Callable[[int, int, int], Draw]], tuple[ScoredRollouts, list[int], dict[str, float]]]
# the advantages of a produced batch for `step`, when the estimator needs only each sample's group
Estimate = Callable[[ScoredRollouts, int], AdvantageOutput]


class Pipeline:
    """The producer thread, the buffer it fills and the learner's side of it (`take`, `push`)."""

    def __init__(self, produce: Produce, draw: Callable[[int, int, int], Draw], engine: Any, *, k: int, stale: str,
                 in_flight: str, steps: int, rank: int, world: int, plugin_lock: threading.RLock,
                 estimate: Estimate | None = None):
        self.produce, self.draw, self.engine, self.estimate = produce, draw, engine, estimate
        self.k, self.stale, self.in_flight = k, stale, in_flight
        self.rank, self.world = rank, world
        self.steps = steps
        self.buffer = RolloutBuffer()
        self.plugin_lock = plugin_lock  # the sampler's state: drawn here, observed and saved by the learner
        self.generating = threading.Lock()  # held while a batch is generated (a `finish` push waits for it)
        self.cond = threading.Condition()
        self.version = 0  # the engine's weights (set by `push`)
        self.released = 0  # the learner asked for step released + 1: every step up to `released` is done
        self.first = 1  # the first step to generate
        self.replay: deque[Draw] = deque()  # draws to make again before new ones (resume, aborted batches)
        self.counts = {"stale_dropped": 0, "stale_regenerated": 0, "aborted": 0}
        self.busy_s = self.idle_s = 0.0  # the producer's time generating / waiting for the learner
        self._seen = (0.0, 0.0, time.perf_counter())  # busy, idle, wall at the last take
        self._stop = False
        self._pushes = 0  # pushes waiting or under way: the producer starts no batch meanwhile
        self._thread: threading.Thread | None = None

    # ---- the producer's side ----------------------------------------------------------------------

    def start(self, done: int) -> None:
        """Start the producer after step `done` (0, or the checkpoint's step); process 0 only, the
        others receive their share in `take`."""
        self.released, self.first = done, done + 1
        if self.rank == 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rlvr-rollouts", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            step = self.first
            while step <= self.steps:
                t0 = time.perf_counter()
                with self.cond:
                    # a push waiting for `generating` goes first: the lock is not fair, and a producer
                    # taking it back at once would start batches on weights about to be replaced (and,
                    # with `abort`, be aborted again and again until the push got in)
                    while not self._stop and (self.released < step - 1 - self.k or self._pushes):
                        self.cond.wait()
                    if self._stop:
                        return
                self.idle_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                entry = self._generate(step)
                self.busy_s += time.perf_counter() - t0
                if entry is not None:
                    self.buffer.put(entry)
                    step += 1
        except BaseException as e:  # the learner raises it again in `take`
            self.buffer.fail(e)

    def _generate(self, step: int) -> Entry | None:
        """The batch of `step` with the engine's current weights; None when an abort cut it short
        (its draws are queued to be made again)."""
        self.buffer.begin()
        with self.generating:
            version = self.version
            try:
                scored, indices, metrics = self.produce(self._pick)
            except GenerationAborted:
                with self.plugin_lock:
                    self.replay.extendleft(reversed(self.buffer.in_production()))
                self.counts["aborted"] += 1
                return None
        return self._entry(step, scored, indices, metrics, version)

    def _entry(self, step: int, scored: ScoredRollouts, indices: list[int], metrics: dict[str, float],
               version: int, draws: list[Draw] | None = None) -> Entry:
        """A produced batch as a buffer entry: every sample tagged with `version`, and the
        advantages computed now when the estimator needs only each sample's group."""
        if self.estimate is not None:
            scored.estimated = self.estimate(scored, step)
        versions = torch.full((len(scored.rollouts),), version, dtype=torch.long)
        return Entry(step, scored, indices, metrics, versions, draws if draws is not None else [])

    def _pick(self, count: int, share: int, world: int) -> Draw:
        """The next draw: a recorded one first (resume, abort), else the sampler's; recorded in the buffer."""
        with self.plugin_lock:
            picked = self.replay.popleft() if self.replay else self.draw(count, share, world)
            self.buffer.record_draw(picked)
        return picked

    def stop(self) -> None:
        """Stop the producer (an aborted generation ends at once; a running one at its end)."""
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        abort = getattr(self.engine, "abort", None)
        if callable(abort):
            abort()
        if self._thread is not None:
            self._thread.join(timeout=600)
            self._thread = None

    # ---- the learner's side ----------------------------------------------------------------------

    def take(self, step: int) -> tuple[ScoredRollouts, list[int], dict[str, float]]:
        """This process's scored groups of `step`, their prompts' dataset indices and the metrics
        (the producing round's, staleness, buffer and idle time). Collective with several processes."""
        with self.cond:
            self.released = step - 1
            self.cond.notify_all()
        shares = None
        if self.rank == 0:
            entry, waited = self.buffer.take(step, alive=lambda: self._thread is not None and self._thread.is_alive())
            entry, metrics = self._within_cap(entry, step)
            metrics.update(self._idle_metrics(waited))
            if callable(engine_metrics := getattr(self.engine, "metrics", None)):
                metrics.update(engine_metrics())  # remote workers: alive, failures, resubmitted, restarts
            shares = split_shares(entry.scored, entry.prompt_indices, self.world), metrics
        if self.world > 1:
            shares = broadcast_object_list([shares])[0]
        (scored, indices), metrics = shares[0][self.rank], shares[1]
        scored.metrics = metrics
        return scored, indices, dict(metrics)

    def _within_cap(self, entry: Entry, step: int) -> tuple[Entry, dict[str, float]]:
        """The entry with no sample older than k: stale groups dropped, or the batch generated again
        from the same draws with the current weights (`rollout.stale`); with its metrics."""
        lag = staleness(entry.versions, step)
        if int(lag.max()) > self.k:
            old = sorted({int(g) for g in entry.scored.rollouts.group[lag > self.k]})
            keep = [g for g in range(len(entry.prompt_indices)) if g not in old]
            if self.stale == "drop" and keep:
                self.counts["stale_dropped"] += len(old)
                rows = torch.cat([(entry.scored.rollouts.group == g).nonzero().flatten() for g in keep])
                entry = Entry(step, select_groups(entry.scored, keep), [entry.prompt_indices[g] for g in keep],
                              entry.metrics, entry.versions[rows], entry.draws)
            else:  # regenerate (or drop would leave nothing): the same prompts, the current weights
                self.counts["stale_regenerated"] += len(old)
                entry = self._regenerate(entry)
            lag = staleness(entry.versions, step)
        metrics = {**entry.metrics,
                   "rollout/staleness_mean": float(lag.float().mean()), "rollout/staleness_max": float(lag.max()),
                   "rollout/buffered": float(len(self.buffer)), "rollout/version": float(self.version)}
        metrics.update({f"rollout/{k}": float(v) for k, v in self.counts.items()})
        return entry, metrics

    def _regenerate(self, entry: Entry) -> Entry:
        """`entry`'s batch generated again from the same draws with the engine's current weights."""
        draws = deque(entry.draws)

        def pick(count: int, share: int, world: int) -> Draw:
            with self.plugin_lock:  # more rounds than before (dynamic sampling) draw anew
                return draws.popleft() if draws else self.draw(count, share, world)

        with self.generating:
            version = self.version
            scored, indices, metrics = self.produce(pick)
        return self._entry(entry.step, scored, indices, metrics, version, entry.draws)

    def _idle_metrics(self, waited: float) -> dict[str, float]:
        """perf/learner_wait_s (this take), perf/producer_idle_frac and _busy_frac since the last take."""
        busy, idle, wall = self.busy_s, self.idle_s, time.perf_counter()
        b0, i0, w0 = self._seen
        self._seen = (busy, idle, wall)
        span = max(wall - w0, 1e-9)
        return {"perf/learner_wait_s": waited, "perf/producer_busy_frac": min((busy - b0) / span, 1.0),
                "perf/producer_idle_frac": min((idle - i0) / span, 1.0)}

    def push(self, step: int, push: Callable[[], dict[str, float]]) -> dict[str, float]:
        """Put the learner's weights of `step` into the engine (every process calls it): with
        `finish` after the batch being generated is done, with `abort` at once (it is generated again)."""
        t0 = time.perf_counter()
        with self.cond:
            self._pushes += 1
        try:
            if self.in_flight == "abort" and self.rank == 0:
                abort = getattr(self.engine, "abort", None)
                if callable(abort):
                    abort()
            with self.generating:
                waited = time.perf_counter() - t0
                resume = getattr(self.engine, "resume", None)
                if callable(resume):
                    resume()  # an aborted engine takes requests again (with the new weights)
                metrics = push()
                self.version = step
        finally:
            with self.cond:
                self._pushes -= 1
                self.cond.notify_all()
        metrics.update({"perf/push_wait_s": waited, "rollout/update_s": time.perf_counter() - t0 - waited})
        return metrics

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No generation for the buffer meanwhile (evaluation uses the same engine)."""
        with self.generating:
            yield

    # ---- checkpoint ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The draws of every batch not yet trained (call under the plugin lock, with the sampler's
        state) and the counters."""
        draws = list(self.replay) + self.buffer.pending_draws()
        return {"pending_draws": [[list(c), list(n)] for c, n in draws], "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Queue a checkpoint's pending draws to be generated first, and continue its counters."""
        self.replay = deque((list(c), list(n)) for c, n in state.get("pending_draws", []))
        self.counts.update(state.get("counts", {}))


def split_shares(scored: ScoredRollouts, indices: list[int], world: int) -> list[tuple[ScoredRollouts, list[int]]]:
    """Every process's groups of a step batch: process r gets groups r * P/world .. (r + 1) * P/world - 1.

    Example: 4 groups, world 2 -> process 0 groups [0, 1], process 1 groups [2, 3] (renumbered 0, 1).
    """
    if world == 1:
        return [(scored, indices)]
    per = len(indices) // world
    return [(select_groups(scored, list(range(r * per, (r + 1) * per))), indices[r * per:(r + 1) * per])
            for r in range(world)]
