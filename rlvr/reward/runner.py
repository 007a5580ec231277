"""Stage 2: score a step's completions with one or more weighted reward functions.

    runner = RewardRunner([RewardSpec("math", weight=0.9), RewardSpec("format", 0.1, {"pattern": r".*\\boxed.*"})])
    result = runner.score(prompts, completions, rows)   # total [N], components, correct, metrics

A reward runs in the worker pool (isolation.py) or inline (main thread, per-sample SIGALRM
deadline). User code ("file.py:fn", "module:fn") and the built-ins in builtins.ISOLATE run in the
pool unless a spec says `isolate: false`: there a reward that exits, crashes, hangs in C code or
leaks memory costs the sample it was on, not the run. Inline user code is faster to call but can
kill the run (os._exit, a segfault) or overrun its timeout inside C code.

A sample whose reward raises, times out, dies or returns a non-number scores 0.0 for that
component and is counted in the step's metrics; with on_failure="abort" the runner stops the
step at the first such sample and raises RewardError.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import reprlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import torch

from rlvr.registry import REWARD, RegistryError
from rlvr.reward.builtins import ISOLATE
from rlvr.reward.call import OK, Job, Outcome, RewardError, evaluate
from rlvr.reward.isolation import Limits, Recycle, WorkerPool

logger = logging.getLogger(__name__)

_CONFIG_KEY = "reward.functions"  # where specs come from in a recipe, for error messages


@dataclass
class RewardSpec:
    """One reward of the mix, as written in a recipe's `reward.functions` list."""

    name: str  # built-in name, "module:fn" or "path/to/file.py:fn"
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    # user code only: fn(prompts: list[str], completions: list[str], rows: list[dict], **kw) -> list[float]
    batched: bool = False
    label: str | None = None  # metric name; default: the built-in's name, or the attribute name of user code
    isolate: bool | None = None  # None: user code in worker processes; built-ins as builtins.ISOLATE says


@dataclass
class RewardResult:
    """A step's rewards. Failed samples hold 0.0 in the failing component."""

    total: torch.Tensor  # [N] float32, sum_k weight_k * component_k
    components: dict[str, torch.Tensor]  # label -> [N] float32, unweighted
    correct: torch.Tensor  # [N] bool, accuracy component >= correct_threshold
    metrics: dict[str, float]


def _label_of(spec: RewardSpec) -> str:
    return spec.label or spec.name.rsplit(":", 1)[-1]


def isolated_by_default(name: str) -> bool:
    """User code ("module:fn", "file.py:fn") and the heavy built-ins run in worker processes."""
    return ":" in name or name in ISOLATE


class _StopScoring(Exception):
    """Ends an inline reward's loop at its first failure (on_failure="abort")."""


def _signature_problems(fn: Callable[..., Any], kwargs: dict[str, Any]) -> list[str]:
    """Problems calling fn(prompt, completion, row, **kwargs): three positional arguments (or their
    lists, when batched) come from the step, the rest from the spec's kwargs."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some C callables have no signature: nothing to check
        return []
    data = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:3]
    if len(data) < 3 and not any(p.kind is p.VAR_POSITIONAL for p in params):
        return [(f"takes {len(data)} positional arguments; rewards are called as fn(prompt, completion, row, "
                 "**kwargs), batched ones as fn(prompts, completions, rows, **kwargs)")]
    named = [p for p in params if p not in data and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    names = [p.name for p in named]
    problems = []
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        for key in [k for k in kwargs if k not in names]:
            hint = difflib.get_close_matches(key, names, n=1)
            problems.append(f"unexpected keyword {key!r}"
                            + (f" (did you mean {hint[0]!r}?)" if hint else f"; it takes {', '.join(names) or 'none'}"))
    problems += [f"missing keyword {p.name!r}" for p in named if p.default is p.empty and p.name not in kwargs]
    return problems


def check_specs(specs: list[RewardSpec], base_dir: str | Path | None = None, *,
                accuracy: str | None = None) -> list[str]:
    """Every problem of a reward configuration, found before any model loads.

    Unknown names (with a 'did you mean'), user code that does not import, kwargs the function does
    not take (or required ones missing), duplicate labels, and an accuracy label that names no reward.
    """
    problems = []
    labels = [_label_of(spec) for spec in specs]
    for i, spec in enumerate(specs):
        where = f"{_CONFIG_KEY}[{i}]"
        if labels.index(labels[i]) != i:
            problems.append(f"{where} ({spec.name}): label {labels[i]!r} is already used by "
                            f"{_CONFIG_KEY}[{labels.index(labels[i])}]; set `label` to tell them apart")
        if not math.isfinite(spec.weight):
            problems.append(f"{where}.weight: expected a finite number, got {spec.weight!r}")
        if spec.batched and ":" not in spec.name:
            problems.append(f"{where}.batched: built-in {spec.name!r} scores one sample at a time")
        try:
            fn = REWARD.get(spec.name, base_dir)
        except RegistryError as e:
            problems.append(f"{where}.name: {e}")
            continue
        if not callable(fn):
            problems.append(f"{where}.name: {spec.name!r} is a {type(fn).__name__}, not a function")
            continue
        problems += [f"{where} ({spec.name}): {problem}" for problem in _signature_problems(fn, spec.kwargs)]
    if not specs:
        problems.append(f"{_CONFIG_KEY}: at least one reward is needed")
    elif accuracy is not None and accuracy not in labels:
        problems.append(f"reward.accuracy: {accuracy!r} is not a reward label; labels are {', '.join(labels)}")
    return problems


@dataclass(frozen=True)
class _Reward:
    """A spec resolved once, at start-up."""

    label: str
    weight: float
    job: Job
    fn: Callable[..., Any] | None  # None: runs in the worker pool


class RewardRunner:
    """Scores steps with a fixed mix of rewards; owns the worker pool of the isolated ones.

    timeout_s bounds one sample (one call for batched user code). Inline rewards off the main
    thread run without a deadline: SIGALRM reaches only the main thread. A worker retires (and a
    fresh one takes over) after max_tasks_per_worker samples or once its resident memory passes
    max_worker_memory_mb; None turns either limit off.
    """

    def __init__(self, specs: list[RewardSpec], *, timeout_s: float = 10.0, on_failure: str = "zero",
                 workers: int = 1, accuracy: str | None = None, correct_threshold: float = 1.0,
                 base_dir: str | Path | None = None, max_tasks_per_worker: int | None = None,
                 max_worker_memory_mb: float | None = 4096.0):
        problems = check_specs(specs, base_dir, accuracy=accuracy)
        if on_failure not in ("zero", "abort"):
            problems.append(f"reward.on_failure: expected 'zero' or 'abort', got {on_failure!r}")
        if not timeout_s > 0:
            problems.append(f"reward.timeout_s: expected a number > 0, got {timeout_s!r}")
        if workers < 1:
            problems.append(f"reward.workers: expected an integer >= 1, got {workers!r}")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            problems.append("reward.max_tasks_per_worker: expected an integer >= 1 or null, "
                            f"got {max_tasks_per_worker!r}")
        if max_worker_memory_mb is not None and not max_worker_memory_mb > 0:
            problems.append("reward.max_worker_memory_mb: expected a number > 0 or null, "
                            f"got {max_worker_memory_mb!r}")
        if problems:
            raise ValueError("invalid reward configuration:\n  " + "\n  ".join(problems))
        self._rewards = [self._resolve(spec, base_dir) for spec in specs]
        self._timeout_s = timeout_s
        self._abort = on_failure == "abort"
        self._accuracy = [r.label for r in self._rewards].index(accuracy or self._rewards[0].label)
        self._correct_threshold = correct_threshold
        self._memory_mb = max_worker_memory_mb
        isolated = [r.job for r in self._rewards if r.fn is None]
        limits = Limits(max_tasks_per_worker, max_worker_memory_mb)
        self._pool = WorkerPool(isolated, workers, timeout_s, base_dir, limits) if isolated else None
        if self._pool is not None:
            self._pool.start()  # the workers load while the trainer loads its models
        self._pooled = [r for r in self._rewards if r.fn is None]  # in the pool's job order

    @staticmethod
    def _resolve(spec: RewardSpec, base_dir: str | Path | None) -> _Reward:
        isolate = spec.isolate if spec.isolate is not None else isolated_by_default(spec.name)
        fn = None if isolate else REWARD.get(spec.name, base_dir)
        return _Reward(_label_of(spec), float(spec.weight), Job(spec.name, dict(spec.kwargs), spec.batched), fn)

    def score(self, prompts: list[str], completions: list[str], rows: list[dict[str, Any]]) -> RewardResult:
        """Rewards of N samples (sample n: prompts[n], completions[n], rows[n])."""
        start = time.perf_counter()
        n = len(completions)
        if len(prompts) != n or len(rows) != n:
            raise ValueError(f"score: {len(prompts)} prompts, {n} completions and {len(rows)} rows")
        try:
            if self._pool is not None:  # the pool works while the inline rewards run
                self._pool.submit(prompts, completions, rows)
            inline: list[Outcome | None] = []
            for r in self._rewards:
                inline.append(self._run_inline(r, prompts, completions, rows) if r.fn is not None else None)
                if self._abort and inline[-1] is not None and inline[-1].first_lost is not None:
                    self._raise_abort(r, inline[-1], completions)
            pooled = iter(self._pool.gather(stop_at_first_failure=self._abort) if self._pool is not None else [])
            outcomes = [o if o is not None else next(pooled) for o in inline]
        except BaseException:
            if self._pool is not None:  # abort, Ctrl-C, a worker that cannot start: stop the pool's work now
                self._pool.terminate()
            raise
        if self._abort:
            for r, o in zip(self._rewards, outcomes):
                if o.first_lost is not None:
                    self._raise_abort(r, o, completions)
        self._report_failures(outcomes)
        result = self._assemble(outcomes)
        if self._pool is not None:
            self._report_recycles(self._pool.recycled)
            result.metrics["reward/worker_recycles"] = float(len(self._pool.recycled))
        result.metrics["perf/reward_s"] = time.perf_counter() - start
        return result

    def _run_inline(self, r: _Reward, prompts: list[str], completions: list[str],
                    rows: list[dict[str, Any]]) -> Outcome:
        assert r.fn is not None
        outcome = Outcome.zeros(len(completions))

        def emit(*result: Any) -> None:
            outcome.add(*result)
            if self._abort and result[2] != OK:
                raise _StopScoring

        try:
            evaluate(r.fn, r.job, 0, prompts, completions, rows, self._timeout_s, emit)
        except _StopScoring:
            pass
        return outcome

    @staticmethod
    def _raise_abort(r: _Reward, o: Outcome, completions: list[str]) -> None:
        assert o.first_lost is not None
        index, cause = o.first_lost
        short = reprlib.Repr()
        short.maxstring = 120
        shown = short.repr(completions[index])
        raise RewardError(f"reward {r.label!r} ({r.job.ref}) failed on sample {index}: {cause}. "
                          f"Completion: {shown}. The run stops because reward.on_failure is 'abort' "
                          "('zero' scores such samples 0, counts them and goes on)")

    def _report_failures(self, outcomes: list[Outcome]) -> None:
        """Log one line per reward that lost samples this step."""
        for r, o in zip(self._rewards, outcomes):
            lost = {**o.failures, **o.timeouts}
            if not lost:
                continue
            first = min(lost)
            logger.warning("reward %r (%s): %d failures, %d timeouts this step (0.0 given); first, sample %d: %s",
                           r.label, r.job.ref, len(o.failures), len(o.timeouts), first, lost[first])

    def _report_recycles(self, recycled: list[Recycle]) -> None:
        """One warning per reward whose worker passed the memory ceiling this step (a leak, or a
        ceiling set too low); retiring after max_tasks_per_worker is routine and only logged at info."""
        for job, r in enumerate(self._pooled):
            mine = [x for x in recycled if x.job == job]
            memory = [x.rss_mb for x in mine if x.reason == "memory" and x.rss_mb is not None]
            if memory:
                logger.warning("reward %r (%s): its worker reached %.0f MB, above reward.max_worker_memory_mb "
                               "(%g), and was replaced by a fresh one (%d time(s) this step); does it keep memory "
                               "between calls?", r.label, r.job.ref, max(memory), self._memory_mb, len(memory))
            if len(memory) < len(mine):
                logger.info("reward %r (%s): %d worker(s) retired after reward.max_tasks_per_worker samples",
                            r.label, r.job.ref, len(mine) - len(memory))

    def _assemble(self, outcomes: list[Outcome]) -> RewardResult:
        values = torch.tensor([o.values for o in outcomes], dtype=torch.float64)  # [K, N], one row per reward function
        weights = torch.tensor([r.weight for r in self._rewards], dtype=torch.float64)
        total = weights @ values  # float64, so the float32 result is the weighted sum rounded once
        correct = values[self._accuracy] >= self._correct_threshold
        means, stds = values.mean(1).tolist(), values.std(1, correction=0).tolist()
        metrics: dict[str, float] = {}
        for k, (r, o) in enumerate(zip(self._rewards, outcomes)):
            # user extras first: a user metric named "mean" must not hide the runner's own
            metrics.update({f"reward/{r.label}/{key}": s / c for key, (s, c) in o.extras.items()})
            metrics[f"reward/{r.label}/mean"] = means[k]
            metrics[f"reward/{r.label}/std"] = stds[k]
            metrics[f"reward/{r.label}/failures"] = float(len(o.failures))
            metrics[f"reward/{r.label}/timeouts"] = float(len(o.timeouts))
        metrics["reward/total/mean"] = total.mean().item()
        metrics["reward/total/std"] = total.std(correction=0).item()
        metrics["reward/accuracy"] = correct.double().mean().item()
        return RewardResult(
            total=total.float(),
            components={r.label: values[k].float() for k, r in enumerate(self._rewards)},
            correct=correct,
            metrics=metrics,
        )

    def close(self) -> None:
        """Stop the worker processes (a later score() starts them again)."""
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
