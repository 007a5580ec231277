"""One logger for every metric sink: console progress, metrics.jsonl, TensorBoard, Weights & Biases.

The loop calls `log(step, metrics)` once (or a few times) per step with flat, stage-named keys
(`reward/total/mean`, `learner/loss`, ...). Values are converted to Python numbers once and fanned
out to the chosen sinks. Only the main process writes; on the others every method is a no-op, so
the loop never needs an `if is_main` around logging.

    with MetricsLogger("runs/x", sinks=["console", "jsonl"], total_steps=100) as logger:
        for step in range(1, 101):
            ...
            logger.log(step, {"reward/total/mean": 0.5, "learner/loss": 0.01})
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Self, TextIO

from tqdm import tqdm

SINKS = ("console", "jsonl", "tensorboard", "wandb")

# (label on the console, metric key): the few numbers worth watching while a run trains.
KEY_NUMBERS: tuple[tuple[str, str], ...] = (
    ("reward", "reward/total/mean"),
    ("acc", "reward/accuracy"),
    ("eval_acc", "eval/accuracy"),
    ("loss", "learner/loss"),
    ("kl", "learner/kl"),
    ("len", "rollout/len_mean"),
    ("step_s", "perf/step_s"),
)
# Evaluation runs every few steps only; its last value stays on screen until the next one.
STICKY_KEYS = frozenset({"eval/accuracy"})

# Without a TTY, a status line is printed when both this many seconds and this fraction of the
# run have passed since the last one: at most ~100 lines per run, never more than one per 10 s.
LINE_EVERY_S = 10.0
LINE_EVERY_FRACTION = 0.01

Number = float | int


def _to_number(value: Any) -> Number:
    """A Python int or float from an int, float, bool, numpy scalar or 0-d tensor."""
    if hasattr(value, "item"):  # torch / numpy scalar; a tensor with several elements raises here
        value = value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def _format_number(value: Number) -> str:
    """Compact console form: 3 significant digits, but no exponent for values like 1234 tokens."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


class _Console:
    """Progress on stderr: a live tqdm bar on a terminal, periodic plain lines otherwise."""

    def __init__(self, total_steps: int, start_step: int, stream: TextIO) -> None:
        self._stream = stream
        self._total = total_steps
        self._start_step = start_step
        self._started = time.monotonic()
        self._shown: dict[str, Number] = {}
        self._step = start_step
        self._bar: tqdm | None = None
        if stream.isatty():
            self._bar = tqdm(
                total=total_steps, initial=start_step, file=stream, unit="step", dynamic_ncols=True
            )
        self._line_every_steps = max(1, round(total_steps * LINE_EVERY_FRACTION))
        self._last_line_step: int | None = None
        self._last_line_time = 0.0

    def log(self, step: int, values: dict[str, Number]) -> None:
        if step != self._step:
            # A new step: numbers of the previous one would be stale, except the sticky ones.
            self._shown = {k: v for k, v in self._shown.items() if k in STICKY_KEYS}
            self._step = step
        self._shown.update({key: values[key] for _, key in KEY_NUMBERS if key in values})
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(max(0, step - self._bar.n))
            self._bar.refresh()
        elif self._line_due(step):
            self._stream.write(self.status_line(step) + "\n")
            self._stream.flush()
            self._last_line_step, self._last_line_time = step, time.monotonic()

    def _line_due(self, step: int) -> bool:
        if self._last_line_step is None or step >= self._total:
            return True  # the first and last lines always show
        return (
            step - self._last_line_step >= self._line_every_steps
            and time.monotonic() - self._last_line_time >= LINE_EVERY_S
        )

    def status_line(self, step: int) -> str:
        """e.g. `step 120/1000 (12%) | elapsed 10:02 | eta 1:13:20 | reward=0.523 acc=0.41 len=312`"""
        elapsed = time.monotonic() - self._started
        done = step - self._start_step
        eta = tqdm.format_interval(elapsed / done * (self._total - step)) if done > 0 else "?"
        percent = 100 * step / self._total if self._total else 100
        line = (
            f"step {step}/{self._total} ({percent:.0f}%) | elapsed {tqdm.format_interval(elapsed)}"
            f" | eta {eta}"
        )
        postfix = self._postfix()
        return f"{line} | {postfix}" if postfix else line

    def _postfix(self) -> str:
        return " ".join(
            f"{label}={_format_number(self._shown[key])}" for label, key in KEY_NUMBERS if key in self._shown
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _json_safe(value: Number) -> Number | None:
    """NaN and ±inf are not JSON; they become null so every line stays parseable by any reader."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class _Jsonl:
    """run_dir/metrics.jsonl: one object per log call, appended and flushed immediately."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.path = path
        self.superseded = _set_aside_steps_after(path, start_step)
        self._file = path.open("a", encoding="utf-8")

    def log(self, step: int, values: dict[str, Number]) -> None:
        record = {"step": step, "time": time.time(), **{k: _json_safe(v) for k, v in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


SUPERSEDED_FILE = "metrics.superseded.jsonl"


def _set_aside_steps_after(path: Path, start_step: int) -> int:
    """Make a resumed run's file end at its checkpoint, losing nothing; returns the lines moved.

    Lines with step > start_step were logged after the checkpoint by a run that then died: the
    resumed run redoes those steps, so in metrics.jsonl they would appear twice. They move, as
    they were, to metrics.superseded.jsonl (appended, never overwritten), together with any
    unparseable line (a write cut short by a crash). The side file is written and synced
    before metrics.jsonl is replaced atomically, so a crash in between duplicates lines at
    worst."""
    if not path.exists():
        return 0
    kept, moved = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and record.get("step", math.inf) <= start_step
        except (json.JSONDecodeError, TypeError):
            keep = False
        (kept if keep else moved).append(line + "\n")
    if not moved:
        return 0
    with path.with_name(SUPERSEDED_FILE).open("a", encoding="utf-8") as f:
        f.writelines(moved)
        f.flush()
        os.fsync(f.fileno())
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(moved)


def set_aside(path: Path) -> Path | None:
    """Rename an old run's `path` (file or folder) to a free `<stem>.<time>[-n]<suffix>` next to it.

    For a fresh start in a folder that holds an older run's metrics: metrics.jsonl becomes e.g.
    metrics.20261204-152629.jsonl (the time it was last written). An existing name is never
    reused, so nothing is overwritten. Returns the new path, or None when `path` does not exist.
    """
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    stem, suffix = (path.stem, path.suffix) if path.is_file() else (path.name, "")
    for n in range(10_000):
        target = path.with_name(f"{stem}.{stamp}{f'-{n}' if n else ''}{suffix}")
        if not target.exists():
            os.rename(path, target)  # the run folder's lock is held: nobody else creates this name meanwhile
            return target
    raise FileExistsError(f"no free name to set {path} aside")


class _TensorBoard:
    """run_dir/tb event files, one scalar series per metric."""

    def __init__(self, log_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import, only when asked for

        # On resume, purge_step hides events from steps that the run is about to redo. TensorBoard
        # reads a folder's event files in name order, and a name starts with the second it was
        # made in: a file made in the same second as an older one may sort before it (its counter
        # part "10" < "9"), and then the old events would be read last and not purged.
        newest = max((int(m.group(1)) for f in log_dir.glob("events.out.tfevents.*")
                      if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", f.name))), default=0)
        while start_step > 0 and int(time.time()) <= newest:
            time.sleep(0.05)
        self._writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step > 0 else None)

    def log(self, step: int, values: dict[str, Number]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self._writer.close()


class _Wandb:
    """A Weights & Biases run; offline when WANDB_MODE=offline (wandb reads that itself)."""

    ID_FILE = "wandb_run_id"

    def __init__(
        self, run_dir: Path, *, project: str, name: str | None, config: dict | None, start_step: int
    ) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ImportError("the wandb metrics sink needs wandb: pip install rlvr[wandb]") from err
        self._run = wandb.init(
            project=project,
            name=name,
            dir=str(run_dir),
            config=config,
            id=_wandb_run_id(run_dir / self.ID_FILE, start_step),
            resume="allow",
        )
        # Charts use our step as x-axis rather than wandb's own counter, which must increase:
        # a resumed run re-logs steps the cloud run already has, and those would be dropped.
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")

    def log(self, step: int, values: dict[str, Number]) -> None:
        self._run.log({"step": step, **values})

    def close(self) -> None:
        self._run.finish()


def _wandb_run_id(path: Path, start_step: int) -> str:
    """The id of the run being resumed (saved in run_dir on first start), or a fresh one, so a
    restart from a checkpoint continues the same wandb run instead of opening a new one."""
    if start_step > 0 and path.exists():
        return path.read_text(encoding="utf-8").strip()
    run_id = uuid.uuid4().hex[:8]
    path.write_text(run_id + "\n", encoding="utf-8")
    return run_id


class MetricsLogger:
    """Fans each `log(step, metrics)` out to the chosen sinks; a no-op on non-main processes.

    sinks: any of "console" (progress bar / status lines on stderr), "jsonl"
    (run_dir/metrics.jsonl), "tensorboard" (run_dir/tb) and "wandb". start_step > 0 means a
    resumed run: lines logged after that step move from metrics.jsonl to metrics.superseded.jsonl,
    and TensorBoard hides them.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        sinks: list[str],
        total_steps: int,
        start_step: int = 0,
        config: dict | None = None,
        wandb_project: str = "rlvr",
        run_name: str | None = None,
        is_main: bool = True,
    ) -> None:
        unknown = sorted(set(sinks) - set(SINKS))
        if unknown:
            raise ValueError(f"metrics sinks: unknown {unknown}, expected a subset of {list(SINKS)}")
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self._stream = sys.stderr
        self._sinks: list[_Console | _Jsonl | _TensorBoard | _Wandb] = []
        if not is_main:
            return
        if set(sinks) - {"console"}:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if "console" in sinks:
            self._sinks.append(_Console(total_steps, start_step, self._stream))
        if "jsonl" in sinks:
            jsonl = _Jsonl(self.run_dir / "metrics.jsonl", start_step)
            self._sinks.append(jsonl)
            if jsonl.superseded:
                self.write(f"rlvr: {jsonl.superseded} metric line(s) logged after step {start_step} (after its "
                           f"checkpoint; those steps are redone) moved to {self.run_dir / SUPERSEDED_FILE}")
        if "tensorboard" in sinks:
            self._sinks.append(_TensorBoard(self.run_dir / "tb", start_step))
        if "wandb" in sinks:
            self._sinks.append(
                _Wandb(
                    self.run_dir, project=wandb_project, name=run_name, config=config, start_step=start_step
                )
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record the metrics of `step` (floats, ints or 0-d tensors) in every sink."""
        if not self._sinks:
            return
        values = {key: _to_number(value) for key, value in metrics.items()}
        for sink in self._sinks:
            sink.log(step, values)

    def write(self, text: str) -> None:
        """Print a line of text on stderr without breaking the progress bar."""
        if self.is_main:
            # tqdm.write clears a live bar, prints, and redraws it; with no bar it is a plain print.
            tqdm.write(text, file=self._stream)

    def close(self) -> None:
        """Flush and close every sink; safe to call twice."""
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
