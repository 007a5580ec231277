"""Calling one reward function on samples so that no sample can take the run down.

The same code runs inline in the main process and inside the pool's worker processes, so both
paths time, check and report a sample the same way. Nothing here imports torch.

Per-sample deadlines use SIGALRM (`signal.setitimer`), which only the main thread of a process
can receive. Off the main thread calls run without a deadline; the worker pool has its own
wall-clock backstop on top (isolation.py). A reward that sets SIGALRM itself (math-verify with its
own timeouts on) replaces the runner's deadline while it runs. The alarm only takes effect when
control returns to Python: a call stuck in C code (a long hash, a blocked signal) overruns it, and
the reported time is the measured one, never the configured limit.

A reward that calls `sys.exit` fails its sample like any other exception; `os._exit` and crashes
in C end the process, which only the worker pool survives.
"""

from __future__ import annotations

import math
import numbers
import reprlib
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rlvr.errors import RlvrError

OK, FAILED, TIMED_OUT = "ok", "failed", "timeout"

# What a call yields per sample: (index, value, status, cause, extra metrics or None).
SampleResult = tuple[int, float, str, str, dict[str, float] | None]


class RewardError(RlvrError, RuntimeError):
    """A reward failed with on_failure="abort", or the reward workers could not start.

    A user-facing error (the CLI prints its message and exits 1); still a RuntimeError for code
    that caught it as one.
    """


@dataclass(frozen=True)
class Job:
    """One reward as a worker process needs it: a reference string, so user code loads over there."""

    ref: str  # built-in name, "module:fn" or "path/to/file.py:fn"
    kwargs: dict[str, Any]
    batched: bool


@dataclass
class Outcome:
    """What one reward gave on a step's N samples; a failed or timed-out sample keeps value 0.0."""

    values: list[float]  # N
    failures: dict[int, str] = field(default_factory=dict)  # sample index -> cause
    timeouts: dict[int, str] = field(default_factory=dict)  # sample index -> cause
    extras: dict[str, list[float]] = field(default_factory=dict)  # metric -> [sum, count]
    first_lost: tuple[int, str] | None = None  # the first failure or timeout recorded: (sample, cause)

    @classmethod
    def zeros(cls, n: int) -> Outcome:
        """An outcome for `n` samples, all 0.0 with nothing failed yet, to be filled in by `add`."""
        return cls([0.0] * n)

    def add(self, index: int, value: float, status: str, cause: str, extras: dict[str, float] | None) -> None:
        """Record sample `index`: its value if the call succeeded, else its cause as a failure or timeout.

        `extras` (the reward's own metrics for this sample) are summed and counted for a per-step mean.
        """
        if status == OK:
            self.values[index] = value
        elif status == FAILED:
            self.failures[index] = cause
        else:
            self.timeouts[index] = cause
        if status != OK and self.first_lost is None:
            self.first_lost = (index, cause)
        if extras:
            for key, x in extras.items():
                acc = self.extras.setdefault(key, [0.0, 0.0])
                acc[0] += x
                acc[1] += 1.0


class _Deadline(BaseException):
    """Raised into reward code when its time is up; not an Exception, so a reward's own
    `except Exception:` cannot swallow it."""


_armed = False  # the SIGALRM handler only raises while a call is being timed


def _on_alarm(signum: int, frame: Any) -> None:
    if _armed:
        raise _Deadline


def _start_timer(limit: float) -> None:
    global _armed
    _armed = True
    signal.setitimer(signal.ITIMER_REAL, limit)


def _stop_timer() -> None:
    global _armed
    _armed = False  # first, so that a signal already on its way is ignored
    signal.setitimer(signal.ITIMER_REAL, 0)


@contextmanager
def _alarm_handler(timeout_s: float) -> Iterator[float | None]:
    """Install the SIGALRM handler around a run of calls; yields the per-call limit, or None off
    the main thread, where Python cannot receive signals."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        yield timeout_s
    finally:
        _stop_timer()
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)


def _describe(e: BaseException) -> str:
    """Exception text plus where it was raised, so an aborted run points at the reward's line."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    if isinstance(e, SystemExit):
        return f"the reward called sys.exit({e.code!r}){where}"
    return f"{type(e).__name__}: {e}{where}"


def timeout_cause(elapsed_s: float, timeout_s: float) -> str:
    """The cause of a timed-out sample, with the time it really took (a call stuck in C code
    overruns the limit until it returns or its worker is killed)."""
    return f"timed out after {elapsed_s:.2f}s (limit {timeout_s:g}s)"


def _finite(x: Any) -> float | None:
    if type(x) is not float:  # the common case skips the ABC check
        if not isinstance(x, numbers.Real):
            return None
        x = float(x)
    return x if math.isfinite(x) else None


def _show(x: Any) -> str:
    return repr(x) if isinstance(x, float) else f"{type(x).__name__} {reprlib.repr(x)}"


def _checked(index: int, result: Any) -> SampleResult:
    """Accept a finite real, or (finite real, {name: finite real}); anything else fails the sample."""
    extras = None
    if isinstance(result, tuple):
        if len(result) != 2 or not isinstance(result[1], dict):
            return index, 0.0, FAILED, f"returned {_show(result)}; expected a score or (score, {{name: value}})", None
        result, raw = result
        extras = {}
        for key, x in raw.items():
            metric = _finite(x)
            if metric is None:
                return index, 0.0, FAILED, f"returned {_show(x)} for metric {key!r}", None
            extras[str(key)] = metric
    value = _finite(result)
    if value is None:
        return index, 0.0, FAILED, f"returned {_show(result)}", None
    return index, value, OK, "", extras


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], limit: float | None) -> Any:
    if limit is None:
        return fn(*args, **kwargs)
    _start_timer(limit)
    try:
        return fn(*args, **kwargs)
    finally:
        _stop_timer()


def evaluate(fn: Callable[..., Any], job: Job, offset: int, prompts: Sequence[str], completions: Sequence[str],
             rows: Sequence[dict[str, Any]], timeout_s: float, emit: Callable[..., None],
             starting: Callable[[int], None] | None = None) -> None:
    """Score samples offset, offset+1, ... and `emit(*SampleResult)` for each, in order.

    Per-sample functions get `timeout_s` per sample; a batched function gets `timeout_s` for the
    whole call, and a failure of that call fails all its samples. `starting(i)`, when given, is
    called before sample i is scored (before the batched call, with i = offset).
    """
    with _alarm_handler(timeout_s) as limit:
        if job.batched:
            if starting is not None:
                starting(offset)
            for result in _batch(fn, job.kwargs, offset, prompts, completions, rows, limit, timeout_s):
                emit(*result)
            return
        for i, args in enumerate(zip(prompts, completions, rows), start=offset):
            if starting is not None:
                starting(i)
            start = time.perf_counter()
            try:
                value = _call(fn, args, job.kwargs, limit)
            except _Deadline:
                emit(i, 0.0, TIMED_OUT, timeout_cause(time.perf_counter() - start, timeout_s), None)
            except (Exception, SystemExit) as e:  # sys.exit in a reward is a bug of that sample, not a stop
                emit(i, 0.0, FAILED, _describe(e), None)
            else:
                emit(*_checked(i, value))


def _batch(fn: Callable[..., Any], kwargs: dict[str, Any], offset: int, prompts: Sequence[str],
           completions: Sequence[str], rows: Sequence[dict[str, Any]], limit: float | None,
           timeout_s: float) -> list[SampleResult]:
    """One call of a batched function, as per-sample results."""
    indices = range(offset, offset + len(completions))
    start = time.perf_counter()
    try:
        values = _call(fn, (list(prompts), list(completions), list(rows)), kwargs, limit)
    except _Deadline:
        cause = timeout_cause(time.perf_counter() - start, timeout_s)
        return [(i, 0.0, TIMED_OUT, cause, None) for i in indices]
    except (Exception, SystemExit) as e:
        cause = _describe(e)
        return [(i, 0.0, FAILED, cause, None) for i in indices]
    if not isinstance(values, Sized) or len(values) != len(indices):
        cause = f"returned {_show(values)}; expected {len(indices)} scores"
        return [(i, 0.0, FAILED, cause, None) for i in indices]
    return [_checked(i, value) for i, value in zip(indices, values)]
