"""A persistent pool of worker processes for rewards that must not share the trainer's process.

Why processes: math-verify times itself with signal.alarm (main thread only), a sympy
simplification or a user's regex can hang inside C code where no signal reaches it, and user
code can crash. A worker can be killed; a thread cannot.

How a step runs: each isolated reward's samples are cut into contiguous chunks (about four per
worker, so the load balances and a killed worker loses little), chunks go to idle workers, and a
worker reports every sample as it finishes it. A worker silent for timeout_s + _GRACE_S is
killed: the sample it was on and the rest of its chunk count as timeouts, a fresh process takes
its place, and the step goes on. The worker's own per-sample timer (call.py) normally fires
first, so a kill only happens for hangs that signals cannot interrupt.

Start method: forkserver (spawn where it is missing). Forking the trainer itself would copy its
threads' locks (CUDA, NCCL, tokenizers, vLLM) mid-use; the fork server is a fresh single-threaded
process that imports `__main__` and this module once, after which each worker is a cheap fork of
it (tens of ms), also when a killed worker is replaced. The same start-up rule as for any
spawn-based multiprocessing applies: a training script needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import rlvr.reward.builtins  # noqa: F401  (registers the built-ins that workers resolve by name)
from rlvr.registry import REWARD
from rlvr.reward.call import FAILED, TIMED_OUT, Job, Outcome, RewardError, evaluate

_GRACE_S = 1.0  # past timeout_s, before the parent kills a silent worker
_START_TIMEOUT_S = 120.0  # the first start imports __main__ in the fork server
_CHUNKS_PER_WORKER = 4


def _worker_main(conn: Connection, jobs: list[Job], base_dir: str | Path | None, timeout_s: float) -> None:
    """Worker process: load every job's function once, then score chunks until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it closes the pool
    try:
        fns = [REWARD.get(job.ref, base_dir) for job in jobs]
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    if "torch" in sys.modules:  # many workers each with a full intra-op thread pool would oversubscribe
        sys.modules["torch"].set_num_threads(1)
    conn.send(("ready", ""))
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the trainer is gone
            return
        if task is None:
            return
        job, start, prompts, completions, rows = task
        evaluate(fns[job], jobs[job], start, prompts, completions, rows, timeout_s,
                 lambda *result: conn.send(result))


@dataclass
class _Chunk:
    job: int  # index into the pool's jobs
    start: int  # first sample
    stop: int  # one past the last sample


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    chunk: _Chunk | None = None  # the chunk in progress, None when idle
    next_index: int = 0  # the next sample it will report
    heard_at: float = 0.0  # monotonic time of its last report (or of the chunk's dispatch)


def _context() -> Any:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # No effect once the fork server runs; then each worker imports this module itself.
    ctx.set_forkserver_preload(["__main__", __name__])
    return ctx


class WorkerPool:
    """`workers` processes that score the given jobs; started on first use, reused across steps."""

    def __init__(self, jobs: list[Job], workers: int, timeout_s: float, base_dir: str | Path | None = None):
        self._jobs = jobs
        self._size = workers
        self._timeout_s = timeout_s
        self._base_dir = base_dir
        self._workers: list[_Worker] = []
        self._queue: deque[_Chunk] = deque()
        self._batch: tuple[list[str], list[str], list[dict[str, Any]]] = ([], [], [])
        self._outcomes: list[Outcome] = []

    def submit(self, prompts: list[str], completions: list[str], rows: list[dict[str, Any]]) -> None:
        """Start scoring a step's samples with every job; `gather` collects the outcomes."""
        if not self._workers:
            self._start()
        for w in self._workers:  # dead while idle, or busy from a call that was interrupted
            if w.chunk is not None or not w.process.is_alive():
                self._replace(w)
        n = len(completions)
        self._batch = (prompts, completions, rows)
        self._outcomes = [Outcome.zeros(n) for _ in self._jobs]
        size = max(1, math.ceil(n / (_CHUNKS_PER_WORKER * self._size)))
        self._queue = deque(_Chunk(job, s, min(s + size, n)) for job in range(len(self._jobs))
                            for s in range(0, n, size))
        for w in self._workers:
            self._dispatch(w)

    def gather(self) -> list[Outcome]:
        """Wait for every chunk of the submitted step; one Outcome per job."""
        limit = self._timeout_s + _GRACE_S
        while busy := [w for w in self._workers if w.chunk is not None]:
            next_deadline = min(w.heard_at for w in busy) + limit
            ready = wait([w.conn for w in busy], timeout=max(0.0, next_deadline - time.monotonic()))
            for w in busy:
                if w.conn in ready:
                    self._receive(w)
                elif time.monotonic() > w.heard_at + limit and not w.conn.poll():
                    self._abandon(w, TIMED_OUT, f"timed out after {self._timeout_s:g}s")
        outcomes, self._outcomes, self._batch = self._outcomes, [], ([], [], [])
        return outcomes

    def close(self) -> None:
        """Ask the workers to exit; kill those that do not within a second."""
        for w in self._workers:
            with contextlib.suppress(OSError):  # already dead
                w.conn.send(None)
        for w in self._workers:
            self._stop(w, wait_s=1.0)
        self._workers = []

    def _start(self) -> None:
        """Start all workers at once and wait for each to load its functions."""
        ctx = _context()
        self._workers = [self._launch(ctx) for _ in range(self._size)]
        for w in self._workers:
            self._await_ready(w)

    def _launch(self, ctx: Any) -> _Worker:
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(child, self._jobs, self._base_dir, self._timeout_s),
                              name="rlvr-reward-worker", daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def _await_ready(self, w: _Worker) -> None:
        ready = wait([w.conn, w.process.sentinel], timeout=_START_TIMEOUT_S)
        if w.conn in ready:
            try:
                kind, text = w.conn.recv()
            except EOFError:
                kind, text = "error", f"exited during start-up (exit code {w.process.exitcode})"
            if kind == "ready":
                return
        else:
            text = (f"did not start within {_START_TIMEOUT_S:g}s" if not ready
                    else f"exited during start-up (exit code {w.process.exitcode})")
        self.close()
        raise RewardError(f"reward worker: {text}")

    def _replace(self, w: _Worker) -> None:
        """Kill a worker and put a freshly started one in its place (same _Worker record)."""
        self._stop(w, wait_s=0.0)
        fresh = self._launch(_context())
        w.process, w.conn, w.chunk = fresh.process, fresh.conn, None
        self._await_ready(w)

    def _stop(self, w: _Worker, wait_s: float) -> None:
        w.process.join(wait_s)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()

    def _dispatch(self, w: _Worker) -> None:
        """Give an idle worker the next chunk, if any is left."""
        if not self._queue:
            return
        c = self._queue.popleft()
        prompts, completions, rows = self._batch
        w.conn.send((c.job, c.start, prompts[c.start:c.stop], completions[c.start:c.stop], rows[c.start:c.stop]))
        w.chunk, w.next_index, w.heard_at = c, c.start, time.monotonic()

    def _receive(self, w: _Worker) -> None:
        """Record every report waiting from `w`; hand it the next chunk when it finishes one."""
        try:
            while w.chunk is not None and w.conn.poll():
                index, value, status, cause, extras = w.conn.recv()
                self._outcomes[w.chunk.job].add(index, value, status, cause, extras)
                w.next_index, w.heard_at = index + 1, time.monotonic()
                if w.next_index == w.chunk.stop:
                    w.chunk = None
                    self._dispatch(w)
        except (EOFError, OSError):
            w.process.join(1.0)
            self._abandon(w, FAILED, f"reward worker died (exit code {w.process.exitcode})")

    def _abandon(self, w: _Worker, status: str, cause: str) -> None:
        """Give up on `w`'s chunk: its unreported samples get `status`; a fresh worker goes on."""
        assert w.chunk is not None
        outcome = self._outcomes[w.chunk.job]
        for i in range(w.next_index, w.chunk.stop):
            outcome.add(i, 0.0, status, cause, None)
        self._replace(w)
        self._dispatch(w)
