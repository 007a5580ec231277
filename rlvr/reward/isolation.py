"""A persistent pool of worker processes for rewards that must not share the trainer's process.

Why processes: user code can call `os._exit`, crash in C (a segfault), hang inside C code where
no signal reaches it, or leak memory; math-verify can spend seconds in sympy. A worker can be
killed and replaced; the trainer's own process cannot.

How a step runs: each isolated reward's samples are cut into contiguous chunks (about four per
worker for per-sample rewards, one per worker for batched ones) and chunks go to idle workers.
Before each sample a worker writes the sample's index and start time into a small shared array,
and it sends its results in a few messages per chunk (one message per sample would cost more
than a cheap reward itself). So the parent always knows which sample a worker is on, and when
something goes wrong only that sample is lost:

- the worker dies (os._exit, segfault, killed by the OS): that sample fails with the cause (exit
  code or signal, and for a crash the reward's line, from faulthandler); the rest of the chunk,
  and the samples it had scored but not sent yet, go back to the front of the queue, and a fresh
  worker starts in the background;
- its current sample has run for timeout_s + _GRACE_S: it is stuck where its own per-sample timer
  (call.py) cannot reach, so it is killed; that sample times out with the measured time and the
  rest is re-queued the same way;
- the worker passes its memory ceiling or its task count (`Limits`): it finishes the sample,
  sends what it has with the reason, and exits; the rest of its chunk is re-queued and the
  runner warns.

Start method: forkserver (spawn where it is missing). Forking the trainer itself would copy its
threads' locks (CUDA, NCCL, tokenizers, vLLM) mid-use; the fork server is a fresh single-threaded
process that imports this module once (and with it the rlvr.reward package, torch included: that
is why the package import stays eager), after which each worker is a cheap fork of it (tens of
ms), also when a crashed or recycled worker is replaced. The same start-up rule as for any
spawn-based multiprocessing applies: a training script needs an `if __name__ == "__main__":` guard,
and each worker re-runs the script's top-level imports (the fork server of CPython 3.11 does not preload
`__main__`), so `rlvr train` / `python -m rlvr train` start workers faster than a script does.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any
from weakref import WeakSet

import rlvr.reward.builtins  # noqa: F401  (registers the built-ins that workers resolve by name)
from rlvr.processes import child_context
from rlvr.registry import REWARD
from rlvr.reward.call import FAILED, OK, TIMED_OUT, Job, Outcome, RewardError, evaluate, timeout_cause

_GRACE_S = 1.0  # past timeout_s, before the parent kills a silent worker
_START_TIMEOUT_S = 120.0  # the first start imports __main__ in the fork server
_CHUNKS_PER_WORKER = 4
# A worker sends its results after this many samples or seconds, whichever comes first (and at once
# after a failure, at the end of a chunk, or when it retires). Results not yet sent when it crashes
# are lost with it and scored again by the next worker: at most _FLUSH_SAMPLES - 1 per crash.
_FLUSH_SAMPLES = 16
_FLUSH_S = 0.02
_PAGE_MB = (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096) / 2**20


_statm: tuple[int, int] | None = None  # (pid, fd of /proc/self/statm), opened once per process


def rss_mb() -> float | None:
    """This process's resident memory in MiB, or None where it cannot be read.

    Linux: /proc/self/statm through a descriptor kept open (about 2 microseconds a read, cheap
    enough after every sample); elsewhere psutil when it is installed.
    """
    global _statm
    try:
        if _statm is None or _statm[0] != os.getpid():  # /proc/self means the opener: reopen after a fork
            _statm = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY))
        return int(os.pread(_statm[1], 128, 0).split()[1]) * _PAGE_MB
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20


@dataclass(frozen=True)
class Limits:
    """When a worker retires itself (between samples) so that a fresh one takes over."""

    max_tasks: int | None = None  # samples scored by one worker; None: no limit
    max_memory_mb: float | None = None  # its resident memory; None: no limit

    def exceeded(self, tasks: int) -> tuple[str, float | None] | None:
        """(reason, resident MiB) when a worker that has scored `tasks` samples should retire now."""
        rss = rss_mb() if self.max_memory_mb is not None else None
        if rss is not None and self.max_memory_mb is not None and rss > self.max_memory_mb:
            return "memory", rss
        if self.max_tasks is not None and tasks >= self.max_tasks:
            return "tasks", rss
        return None


@dataclass(frozen=True)
class Recycle:
    """Sent with a worker's last result when it retires on a limit; it exits right after."""

    job: int  # the job it was running (names the reward in the warning)
    reason: str  # "memory" or "tasks"
    rss_mb: float | None
    tasks: int  # samples it scored in its life


class _Retire(BaseException):
    """Ends a worker's chunk early once it passed a limit; not an Exception, so nothing swallows it."""


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def _ignore_stop_signals() -> None:
    """Ctrl-C and a scheduler's SIGTERM/SIGUSR1 (sent to every process of the job) are the trainer's
    to handle: it finishes the step, checkpoints and stops the pool. A worker or fork server dying
    on them would zero the rest of the step the trainer is about to checkpoint. The trainer's end
    still ends them: its pools are killed at exit (_kill_workers_at_exit), the fork server exits
    when the trainer does, and the kernel then kills the workers (_die_with_parent)."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _in_fork_server() -> bool:
    """True while multiprocessing's fork server imports this module (its preload)."""
    frame = sys._getframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.endswith(os.path.join("multiprocessing", "forkserver.py")):
            return True
        frame = frame.f_back
    return False


if _in_fork_server():  # the fork server outlives a worker: it must not die on the job's SIGTERM either
    _ignore_stop_signals()


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when its parent (the fork server, which exits with
    the trainer) dies, so that a worker stuck in C code does not outlive a killed trainer."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


_crash_log = None  # kept open for faulthandler for the worker's whole life


def _worker_main(conn: Connection, progress: Any, jobs: list[Job], base_dir: str | Path | None,
                 timeout_s: float, limits: Limits, crash_log: str) -> None:
    """Worker process: load every job's function once, then score chunks until told to stop.

    progress: shared [start time (monotonic), index] of the sample being scored, written before
    each sample, so the parent knows which sample a dead or stuck worker was on without a message
    per sample.
    """
    global _crash_log
    _ignore_stop_signals()
    _die_with_parent()
    _crash_log = open(crash_log, "w")  # faulthandler writes to it until the process ends
    faulthandler.enable(_crash_log)  # a segfault leaves the reward's line here for the parent to read
    try:
        fns = [REWARD.get(job.ref, base_dir) for job in jobs]
    except BaseException as e:  # also sys.exit at import: reported, not a silent exit
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    if "torch" in sys.modules:  # many workers each with a full intra-op thread pool would oversubscribe
        sys.modules["torch"].set_num_threads(1)
    conn.send(("ready", rss_mb()))
    tasks = 0  # samples scored in this worker's life
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the trainer is gone
            return
        if task is None:
            return
        job, start, prompts, completions, rows = task
        tasks, retired = _score_chunk(conn, progress, fns[job], jobs[job], job, start, prompts, completions, rows,
                                      timeout_s, limits, tasks)
        if retired:
            return


def _score_chunk(conn: Connection, progress: Any, fn: Any, spec: Job, job: int, start: int, prompts: list[str],
                 completions: list[str], rows: list[dict[str, Any]], timeout_s: float, limits: Limits,
                 tasks: int) -> tuple[int, bool]:
    """Score one chunk and send its results in a few messages (see _FLUSH_SAMPLES). Returns the
    worker's task count and whether it passed a limit (then its last message carried the Recycle
    and it must exit)."""
    stop = start + len(completions)
    retire: Recycle | None = None
    pending: list[tuple[Any, ...]] = []
    flushed_at = time.monotonic()

    def starting(i: int) -> None:
        progress[0] = time.monotonic()  # the time first: a reader that sees the new index sees its time
        progress[1] = i

    def emit(*result: Any) -> None:
        # result: SampleResult, sent with the Recycle on the last message before retiring (a batched
        # call reports its whole chunk first)
        nonlocal tasks, retire, flushed_at
        tasks += 1
        if retire is None and (over := limits.exceeded(tasks)) is not None:
            retire = Recycle(job, over[0], over[1], tasks)
        last = retire is not None and (not spec.batched or result[0] == stop - 1)
        pending.append((*result, retire if last else None))
        now = time.monotonic()
        if (last or result[0] == stop - 1 or result[2] != OK or len(pending) >= _FLUSH_SAMPLES
                or now - flushed_at >= _FLUSH_S):
            conn.send(pending)
            pending.clear()
            flushed_at = now
        if last and not spec.batched:
            raise _Retire

    with contextlib.suppress(_Retire):
        evaluate(fn, spec, start, prompts, completions, rows, timeout_s, emit, starting)
    return tasks, retire is not None


_WHERE = re.compile(r'File "(.+)", line (\d+) in (\S+)')


def _crash_site(log: Path) -> str:
    """Where a crashed worker was, from its faulthandler dump (innermost frame first): the
    innermost frame, and the first frame outside Python's own files when that is another one
    (a segfault usually happens in a library called from the reward)."""
    try:
        frames = _WHERE.findall(log.read_text(errors="replace"))
    except OSError:
        return ""
    if not frames:
        return ""
    installed = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(__file__).parents[1])})
    mine = next((f for f in frames if not f[0].startswith(installed)), None)
    where = f" (at {frames[0][0]}:{frames[0][1]} in {frames[0][2]}"
    if mine is not None and mine != frames[0]:
        where += f", called from {mine[0]}:{mine[1]} in {mine[2]}"
    return where + ")"


def how_it_ended(exitcode: int | None, crash_log: Path | None = None) -> str:
    """'exited with code 1 (...)' or 'was killed by signal SIGSEGV (at file:line in fn)'."""
    if exitcode is None:
        return "stopped answering"
    if exitcode >= 0:
        return f"exited with code {exitcode} (os._exit, or exit in C code)"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = str(-exitcode)
    if -exitcode == signal.SIGKILL:
        return f"was killed by signal {name} (out of memory? the kernel's OOM killer sends SIGKILL)"
    return f"was killed by signal {name}" + (_crash_site(crash_log) if crash_log is not None else "")


_MAIN_GUARD_HINT = ("; if you start training from your own script, put its entry point under "
                    "`if __name__ == \"__main__\":` (reward workers re-import the main module)")


@dataclass
class _Chunk:
    job: int  # index into the pool's jobs
    start: int  # first sample
    stop: int  # one past the last sample


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    crash_log: Path
    launched_at: float  # monotonic
    ready: bool = False  # said "ready" (functions loaded)
    progress: Any = None  # shared with the worker: [start time (monotonic), index] of its current sample
    chunk: _Chunk | None = None  # the chunk in progress, None when idle
    next_index: int = 0  # the first sample of the chunk whose result has not arrived yet

    def current(self) -> tuple[float, int]:
        """(start time, index) of the sample it is on, as it last wrote them."""
        return self.progress[0], int(self.progress[1])


_live_pools: WeakSet[WorkerPool] = WeakSet()


@atexit.register  # registered after multiprocessing's own exit hook, so it runs first: that hook
def _kill_workers_at_exit() -> None:  # would SIGTERM the workers (which ignore it) and join them forever
    for pool in list(_live_pools):
        pool.terminate()


class WorkerPool:
    """`workers` processes that score the given jobs; started on first use, reused across steps."""

    def __init__(self, jobs: list[Job], workers: int, timeout_s: float, base_dir: str | Path | None = None,
                 limits: Limits | None = None):
        self._jobs = jobs
        self._size = workers
        self._timeout_s = timeout_s
        self._base_dir = base_dir
        self._limits = limits or Limits()
        self._workers: list[_Worker] = []
        self._queue: deque[_Chunk] = deque()
        self._batch: tuple[list[str], list[str], list[dict[str, Any]]] = ([], [], [])
        self._outcomes: list[Outcome] = []
        self._logs: Path | None = None  # temp folder for the workers' crash logs
        self._launched = 0
        self.recycled: list[Recycle] = []  # workers that retired on a limit during the last step

    def start(self) -> None:
        """Launch the workers without waiting for them, so that they load while the trainer sets
        up; the first submit waits until they are ready (and raises what went wrong)."""
        if not self._workers:
            ctx = child_context(__name__)
            self._workers = [self._launch(ctx) for _ in range(self._size)]
            _live_pools.add(self)

    def submit(self, prompts: list[str], completions: list[str], rows: list[dict[str, Any]]) -> None:
        """Start scoring a step's samples with every job; `gather` collects the outcomes."""
        self.start()
        if not any(w.ready for w in self._workers):  # the first start (replacements join when ready)
            for w in self._workers:
                self._await_start(w)
        for w in self._workers:  # busy from a call that was interrupted, or dead while idle
            if w.chunk is not None or (w.ready and not w.process.is_alive()):
                self._replace(w)
        n = len(completions)
        self._batch = (prompts, completions, rows)
        self._outcomes = [Outcome.zeros(n) for _ in self._jobs]
        self.recycled = []
        self._queue = deque()
        for job, spec in enumerate(self._jobs):
            pieces = self._size if spec.batched else _CHUNKS_PER_WORKER * self._size
            size = max(1, math.ceil(n / pieces))
            self._queue.extend(_Chunk(job, s, min(s + size, n)) for s in range(0, n, size))
        self._dispatch_idle()

    def gather(self, stop_at_first_failure: bool = False) -> list[Outcome]:
        """Wait for every chunk of the submitted step; one Outcome per job.

        stop_at_first_failure: as soon as any sample fails or times out, kill the workers and return
        what was scored so far (`Outcome.first_lost` says which sample and why).
        """
        limit = self._timeout_s + _GRACE_S
        while True:
            if stop_at_first_failure and any(o.first_lost for o in self._outcomes):
                self.terminate()  # the runner raises; nothing else of this step is wanted
                break
            self._dispatch_idle()
            busy = [w for w in self._workers if w.chunk is not None]
            starting = [w for w in self._workers if not w.ready] if self._queue else []
            if not busy and not starting:
                break
            deadline = min([w.current()[0] + limit for w in busy] + [w.launched_at + _START_TIMEOUT_S for w in starting])
            ready = wait([w.conn for w in busy + starting], timeout=max(0.0, deadline - time.monotonic()))
            for w in busy + starting:
                if w.conn in ready:
                    self._receive(w)
                elif w.chunk is not None and time.monotonic() > w.current()[0] + limit and not w.conn.poll():
                    self._kill_stuck(w)
                elif not w.ready and time.monotonic() > w.launched_at + _START_TIMEOUT_S:
                    self._start_failed(f"did not start within {_START_TIMEOUT_S:g}s")
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
        self._remove_logs()

    def terminate(self) -> None:
        """Kill every worker now (abort, or an error in the trainer); a later submit starts new ones."""
        for w in self._workers:
            self._stop(w, wait_s=0.0)
        self._workers = []
        self._queue.clear()
        self._remove_logs()

    # ---- processes ---------------------------------------------------------------------------

    def _await_start(self, w: _Worker) -> None:
        """Wait until `w` has loaded its functions; raise RewardError if it cannot."""
        ready = wait([w.conn, w.process.sentinel], timeout=max(0.0, w.launched_at + _START_TIMEOUT_S - time.monotonic()))
        if not ready:
            self._start_failed(f"did not start within {_START_TIMEOUT_S:g}s")
        self._receive(w)
        if not w.ready:  # the sentinel fired first and the pipe held nothing
            self._start_failed(f"exited during start-up: {how_it_ended(w.process.exitcode)}{_MAIN_GUARD_HINT}")

    def _launch(self, ctx: Any) -> _Worker:
        if self._logs is None:
            self._logs = Path(tempfile.mkdtemp(prefix="rlvr-reward-workers-"))
        self._launched += 1
        log = self._logs / f"worker-{self._launched}.crash"
        parent, child = ctx.Pipe()
        progress = ctx.RawArray("d", 2)
        process = ctx.Process(target=_worker_main, name="rlvr-reward-worker", daemon=True,
                              args=(child, progress, self._jobs, self._base_dir, self._timeout_s, self._limits,
                                    str(log)))
        try:
            process.start()
        except (OSError, EOFError) as e:  # the fork server is gone (killed, out of memory)
            parent.close()
            self._start_failed(f"could not start a worker process: {type(e).__name__}: {e}")
        finally:
            child.close()
        return _Worker(process, parent, log, time.monotonic(), progress=progress)

    def _replace(self, w: _Worker) -> None:
        """Stop a worker and launch a fresh one in the same record; it takes work once it is ready
        (the step goes on with the other workers meanwhile)."""
        self._stop(w, wait_s=0.0)
        fresh = self._launch(child_context(__name__))
        w.process, w.conn, w.crash_log, w.launched_at = fresh.process, fresh.conn, fresh.crash_log, fresh.launched_at
        w.progress, w.ready, w.chunk = fresh.progress, False, None

    def _stop(self, w: _Worker, wait_s: float) -> None:
        w.process.join(wait_s)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()
        w.crash_log.unlink(missing_ok=True)

    def _start_failed(self, text: str) -> None:
        self.terminate()
        raise RewardError(f"reward worker: {text}")

    def _remove_logs(self) -> None:
        if self._logs is not None:
            shutil.rmtree(self._logs, ignore_errors=True)
            self._logs = None

    # ---- messages ----------------------------------------------------------------------------

    def _dispatch_idle(self) -> None:
        for w in self._workers:
            if w.ready and w.chunk is None:
                self._dispatch(w)

    def _dispatch(self, w: _Worker) -> None:
        """Give an idle worker the next chunk, if any is left."""
        if not self._queue:
            return
        c = self._queue.popleft()
        prompts, completions, rows = self._batch
        # written before the worker can start, so that its deadline never counts from an older sample
        w.progress[0], w.progress[1] = time.monotonic(), c.start
        try:
            w.conn.send((c.job, c.start, prompts[c.start:c.stop], completions[c.start:c.stop], rows[c.start:c.stop]))
        except OSError:  # it died while idle: nothing of the chunk ran
            self._queue.appendleft(c)
            self._replace(w)
            return
        w.chunk, w.next_index = c, c.start

    def _receive(self, w: _Worker) -> None:
        """Handle every message waiting from `w`."""
        while True:
            try:
                if not w.conn.poll():
                    return
                message = w.conn.recv()
            except (EOFError, OSError):  # it is gone; what it sent before dying was read first
                self._on_death(w)
                return
            if not w.ready:
                self._on_start(w, message)
                continue
            for result in message:  # a list: the samples it scored since its last message
                if w.chunk is None:  # it retired with this result; nothing else follows
                    break
                self._on_result(w, result)

    def _on_start(self, w: _Worker, message: tuple[str, Any]) -> None:
        kind, detail = message
        if kind != "ready":
            self._start_failed(f"could not load the rewards: {detail}")
        ceiling = self._limits.max_memory_mb
        if ceiling is not None and detail is not None and detail >= ceiling:
            self._start_failed(f"a fresh worker already uses {detail:.0f} MB, at or above "
                               f"reward.max_worker_memory_mb ({ceiling:g}); raise the ceiling")
        w.ready = True
        self._dispatch(w)

    def _on_result(self, w: _Worker, message: tuple[Any, ...]) -> None:
        index, value, status, cause, extras, retire = message
        assert w.chunk is not None
        self._outcomes[w.chunk.job].add(index, value, status, cause, extras)
        w.next_index = index + 1
        if retire is not None:  # it exits now: the rest of its chunk goes to another worker
            self.recycled.append(retire)
            self._requeue(w.chunk, w.next_index)
            self._replace(w)
        elif w.next_index == w.chunk.stop:
            w.chunk = None
            self._dispatch(w)

    def _on_death(self, w: _Worker) -> None:
        """A worker ended on its own: fail the sample it was on, re-queue the rest of its chunk."""
        w.process.join(1.0)
        if not w.ready:
            ended = how_it_ended(w.process.exitcode, w.crash_log)
            self._start_failed(f"exited during start-up: {ended}{_MAIN_GUARD_HINT}")
        if w.chunk is not None:
            ended = how_it_ended(w.process.exitcode, w.crash_log)
            self._lose_current(w, FAILED, f"the reward worker {ended} while scoring this sample")
        self._replace(w)

    def _kill_stuck(self, w: _Worker) -> None:
        """`w` is past timeout_s + grace on one sample (or one batched call): stuck where its own timer
        cannot reach (C code, blocked signals). Kill it; that sample times out with the measured time."""
        elapsed = time.monotonic() - w.current()[0]
        w.process.kill()
        w.process.join()
        self._lose_current(w, TIMED_OUT, timeout_cause(elapsed, self._timeout_s)
                           + "; stuck where the timer cannot interrupt it (C code?), so its worker was killed")
        self._replace(w)

    def _lose_current(self, w: _Worker, status: str, cause: str) -> None:
        """Give the sample `w` was on `status` (all of the chunk for a batched call, which covers it);
        the rest goes back to the queue's front, also the samples it scored but had not sent yet."""
        assert w.chunk is not None
        c, outcome = w.chunk, self._outcomes[w.chunk.job]
        _, index = w.current()
        if self._jobs[c.job].batched:
            lost = range(w.next_index, c.stop)
        elif w.next_index <= index < c.stop:
            lost = range(index, index + 1)
        else:  # it ended between samples: nothing of this chunk is to blame
            lost = range(w.next_index, w.next_index)
        for i in lost:
            outcome.add(i, 0.0, status, cause, None)
        self._requeue(c, lost.stop)
        self._requeue(_Chunk(c.job, w.next_index, lost.start), w.next_index)  # scored, unsent: score again
        w.chunk = None

    def _requeue(self, c: _Chunk, start: int) -> None:
        if start < c.stop:
            self._queue.appendleft(_Chunk(c.job, start, c.stop))
