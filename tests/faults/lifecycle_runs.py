"""Real `rlvr train` processes on the tiny quickstart recipe, for the lifecycle fault tests.

Each run is a subprocess in its own session (so a kill of its group leaves nothing behind); the
tests wait for metric lines to appear, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "quickstart.yaml"
# no evaluation, one sink, small steps: each step is a fraction of a second on one CPU core
FAST = ["eval.at_start=false", "eval.every=0", "metrics.sinks=[jsonl]", "metrics.plot=false",
        "sampling.prompts_per_step=8"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def command(out: Path, models: Path, *overrides: str, launcher: tuple[str, ...] = ()) -> list[str]:
    return [*(launcher or (sys.executable,)), "-m", "rlvr", "train", str(RECIPE), f"run.output_dir={out}",
            f"model.path={models / 'tiny-digits'}", *FAST, *overrides]


def start(out: Path, models: Path, *overrides: str, launcher: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(command(out, models, *overrides, launcher=launcher), cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def run(out: Path, models: Path, *overrides: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = start(out, models, *overrides)
    return finish(proc, timeout)


def finish(proc: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    """Wait for the process; on timeout kill its whole group and fail with its output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout}s\n{tail(out, err)}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def tail(out: str | None, err: str | None, n: int = 4000) -> str:
    return f"--- stdout\n{(out or '')[-n:]}\n--- stderr\n{(err or '')[-n:]}"


def step_lines(run_dir: Path) -> list[int]:
    """The step of every training line (not eval lines) of metrics.jsonl, in file order."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the line being written right now
            continue
        if "perf/step_s" in row:
            steps.append(row["step"])
    return steps


def wait_for_steps(proc: subprocess.Popen, run_dir: Path, n: int, timeout: float = 180) -> int:
    """Block until metrics.jsonl has `n` training lines; returns the last step seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = step_lines(run_dir)
        if len(steps) >= n:
            return steps[-1]
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited with {proc.returncode} before {n} steps\n{tail(out, err)}")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    raise AssertionError(f"fewer than {n} steps after {timeout}s\n{tail(out, err)}")


def each_once(steps: list[int]) -> bool:
    return bool(steps) and sorted(Counter(steps)) == list(range(1, max(steps) + 1)) and max(
        Counter(steps).values()) == 1


def build_tiny(models: Path) -> Path:
    """The quickstart's tiny model, built once before any test process starts (so two processes
    never build it at the same time)."""
    from rlvr.config import load_config
    from rlvr.run import build

    cfg = load_config(RECIPE, [f"model.path={models / 'tiny-digits'}"])
    return Path(build.model_dir(cfg, RECIPE.parent))
