"""One run per run folder: a second `rlvr train` is refused at once, naming the holder; a dead holder
never blocks; an earlier run's metrics are moved aside by a fresh start, never deleted.

Real processes on the tiny quickstart: a long run holds the folder while a second one tries it;
a run killed with SIGKILL (no handler runs, the lock file keeps its holder's details) is followed
by a fresh start that must neither be refused nor lose the killed run's metric lines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from rlvr.metrics.logger import set_aside
from rlvr.run.lifecycle import LOCK_FILE, RunLock, RunLocked, holder_info
from tests.faults.lifecycle_runs import (
    build_tiny,
    each_once,
    finish,
    run,
    start,
    step_lines,
    tail,
    wait_for_steps,
)

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models")
    build_tiny(path)
    return path


@pytest.mark.slow
def test_second_run_on_the_same_folder_is_refused_and_the_first_loses_nothing(tmp_path, models):
    run_dir = tmp_path / "run"
    first = start(run_dir, models, "run.steps=100000", "checkpoint.every=0")
    wait_for_steps(first, run_dir, 1)
    config_before = (run_dir / "config.yaml").read_bytes()

    t0 = time.monotonic()
    second = run(run_dir, models, "run.steps=3", "learner.lr=1e-3", timeout=120)
    assert second.returncode == 75, tail(second.stdout, second.stderr)
    err = second.stderr
    assert f"run.output_dir: {run_dir} is in use by another rlvr run (pid {first.pid} on {socket.gethostname()}" in err
    assert "): python -m rlvr train " in err and "run.steps=100000" in err, err
    assert f"nothing in {run_dir} was changed" in err
    assert time.monotonic() - t0 < 90  # refused on start-up, not after the first run finished
    assert first.poll() is None  # the first run is still going ...
    assert (run_dir / "config.yaml").read_bytes() == config_before  # ... on its own recipe
    assert not list(run_dir.glob("metrics.*.jsonl"))  # nothing moved aside under its feet

    seen = len(step_lines(run_dir))
    wait_for_steps(first, run_dir, seen + 2)  # and keeps logging
    os.kill(first.pid, signal.SIGTERM)
    done = finish(first, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, tail(done.stdout, done.stderr)
    assert each_once(step_lines(run_dir)), step_lines(run_dir)


@pytest.mark.slow
def test_killed_holder_leaves_no_stale_lock_and_its_metrics_are_moved_aside(tmp_path, models):
    run_dir = tmp_path / "run"
    victim = start(run_dir, models, "run.steps=100000", "checkpoint.every=0")
    wait_for_steps(victim, run_dir, 2)
    os.killpg(victim.pid, signal.SIGKILL)  # no handler, no clean-up: only the kernel releases the lock
    victim.communicate()
    assert json.loads((run_dir / "rlvr.lock").read_text())["pid"] == victim.pid  # its details are still there
    old_lines = (run_dir / "metrics.jsonl").read_text()

    # no checkpoint was written, so this is a fresh start in a folder that holds metrics
    done = run(run_dir, models, "run.steps=2")
    assert done.returncode == 0, tail(done.stdout, done.stderr)
    moved = [p for p in run_dir.glob("metrics.*.jsonl")]
    assert len(moved) == 1 and moved[0].read_text() == old_lines  # every line of the killed run kept
    assert f"the metrics.jsonl of an earlier run in this folder was moved to {moved[0]}" in done.stderr
    assert step_lines(run_dir) == [1, 2]


# ---- in this process --------------------------------------------------------------------------------


def test_lock_names_its_holder_and_is_free_again_after_release(tmp_path):
    held = RunLock.acquire(tmp_path)
    with pytest.raises(RunLocked) as refused:
        RunLock.acquire(tmp_path)  # another open file description: flock refuses it like another process
    message = str(refused.value)
    assert f"(pid {os.getpid()} on {socket.gethostname()}, started " in message and refused.value.exit_code == 75
    held.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""
    RunLock.acquire(tmp_path).release()


def test_holder_that_exited_while_a_child_keeps_the_lock_is_named(tmp_path):
    lock = RunLock.acquire(tmp_path)
    # the recorded holder is a pid that no longer exists; the lock itself is still held (here by us)
    dead = dict(holder_info(), pid=2**22 + 12345)
    os.pwrite(lock._fd, json.dumps(dead).encode(), 0)
    with pytest.raises(RunLocked, match=r"has exited, but a process it started still holds the lock; `fuser -v"):
        RunLock.acquire(tmp_path)
    lock.release()


def test_set_aside_never_reuses_a_name(tmp_path):
    path = tmp_path / "metrics.jsonl"
    names = []
    for text in ("first\n", "second\n", "third\n"):
        path.write_text(text)
        os.utime(path, (1_800_000_000, 1_800_000_000))  # same time stamp each time
        names.append(set_aside(path))
    assert len(set(names)) == 3 and not path.exists()
    assert [p.read_text() for p in names] == ["first\n", "second\n", "third\n"]
    assert set_aside(path) is None
