"""SIGTERM, SIGUSR1 (Slurm's warning) and Ctrl-C stop a run at a step boundary with a checkpoint.

Real `rlvr train` processes on the tiny quickstart, sent real signals once metric lines appear:
the exit code is 128 + the signal, one line says what was saved and how to resume, the checkpoint
is at the last logged step, and a resume continues from it with every step logged exactly once.
Then the handler itself in-process (a second Ctrl-C aborts; relayed repeats are ignored; the
caller's handlers come back), the Slurm path through scripts/slurm with two processes, and a stop
that reaches only one of two torchrun processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlvr.run.lifecycle import StopSignals
from tests.faults.lifecycle_runs import (
    ROOT,
    build_tiny,
    each_once,
    env,
    finish,
    run,
    start,
    step_lines,
    tail,
    wait_for_steps,
)

pytestmark = pytest.mark.faults

LONG = "run.steps=100000"  # never reached: every run here is stopped by a signal


@pytest.fixture(autouse=True)
def ctrl_c_not_ignored():
    """These tests press Ctrl-C. A test run started in the background by a non-interactive shell
    (`nohup pytest &`, some CI runners) inherits an ignored SIGINT, which rlvr rightly keeps
    ignored (and so does every child it starts): give the test process, and through it the runs
    it starts, Python's own SIGINT handler, as a terminal session has, and put back what was there."""
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)



@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models")
    build_tiny(path)
    return path


def _stopped(proc: subprocess.Popen, run_dir: Path, signum: int) -> tuple[subprocess.CompletedProcess, int]:
    """Send `signum` once two steps are logged; returns the finished process and its last step."""
    wait_for_steps(proc, run_dir, 2)
    os.kill(proc.pid, signum)
    done = finish(proc, timeout=120)
    steps = step_lines(run_dir)
    name = signal.Signals(signum).name
    assert done.returncode == 128 + signum, tail(done.stdout, done.stderr)
    assert f"{name} received: stopping at the end of this step" in done.stderr, tail(done.stdout, done.stderr)
    ckpt = run_dir / "checkpoints" / f"step_{steps[-1]:07d}"
    line = f"{name} received; checkpoint written at step {steps[-1]} ({ckpt}); resume with the same command"
    assert line in done.stderr, tail(done.stdout, done.stderr)
    assert each_once(steps), steps
    assert (ckpt / "state.pt").is_file() and (ckpt / "model" / "model.safetensors").is_file()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [ckpt.name]  # every=0: only this one
    assert (run_dir / "rlvr.lock").read_text() == ""  # released
    return done, steps[-1]


@pytest.mark.slow
def test_sigusr1_checkpoints_at_the_step_boundary_and_resume_logs_each_step_once(tmp_path, models):
    run_dir = tmp_path / "run"
    proc = start(run_dir, models, LONG, "checkpoint.every=0")
    _, last = _stopped(proc, run_dir, signal.SIGUSR1)

    # the same command continues from that checkpoint (run.steps may change: it is honoured)
    done = run(run_dir, models, f"run.steps={last + 2}", "checkpoint.every=0")
    assert done.returncode == 0, tail(done.stdout, done.stderr)
    assert f"resuming at step {last}" in done.stderr, tail(done.stdout, done.stderr)
    steps = step_lines(run_dir)
    assert each_once(steps) and max(steps) == last + 2, steps


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_checkpoint_and_exit_with_the_signal(tmp_path, models, signum):
    _stopped(start(tmp_path / "run", models, LONG, "checkpoint.every=0"), tmp_path / "run", signum)


@pytest.mark.slow
def test_signal_during_start_up_stops_before_the_first_step(tmp_path, models):
    run_dir = tmp_path / "run"
    proc = start(run_dir, models, LONG)
    lock = run_dir / "rlvr.lock"  # written once the handlers are in place and the folder is locked
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    done = finish(proc, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, tail(done.stdout, done.stderr)
    assert "SIGTERM received during start-up, before step 1; nothing new to save (no checkpoint yet)" in done.stderr
    assert step_lines(run_dir) == [] and not (run_dir / "checkpoints").exists()


# ---- the handler, in this process -----------------------------------------------------------------


def _handlers() -> list:
    return [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)]


def test_second_ctrl_c_aborts_and_relayed_repeats_are_ignored(capfd):
    before = _handlers()
    with StopSignals(repeat_window_s=0.5) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)  # within the window: a launcher relaying the same Ctrl-C
        os.kill(os.getpid(), signal.SIGTERM)  # another stop request while stopping: nothing more to do
        assert signals.received == signal.SIGINT
        time.sleep(0.6)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: abort now
            time.sleep(1)  # the handler runs at the next bytecode; never reached
    err = capfd.readouterr().err
    assert err.count("SIGINT received: stopping at the end of this step") == 1
    assert "second Ctrl-C: aborting now without a new checkpoint" in err
    assert _handlers() == before  # the caller's handlers are back


def test_sigterm_repeats_never_abort():
    with StopSignals(repeat_window_s=0.0, announce=False) as signals:
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert signals.received == signal.SIGTERM


# ---- several processes --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.multiproc
def test_slurm_time_limit_warning_checkpoints_requeues_and_resumes(tmp_path, models):
    """scripts/slurm under the fake Slurm, 2 processes: SIGUSR1 to the batch shell (as
    --signal=B:USR1 before the time limit) -> every process of the step stops at one step
    boundary with a checkpoint -> the job requeues itself -> the restart resumes and finishes."""
    out = tmp_path / "run"
    shutil.copytree(models / "tiny-digits", tmp_path / "tiny-digits")
    e = {**env(), "FAKE_SLURM_DIR": str(tmp_path), "RLVR_NPROC_PER_NODE": "2",
         "FAKE_SLURM_SIGNAL_WHEN": str(out / "metrics.jsonl")}
    e.pop("SLURM_JOB_ID", None)
    cmd = ["bash", str(ROOT / "scripts" / "slurm" / "fake_slurm.sh"), "recipes/quickstart.yaml", "run.steps=16",
           f"run.output_dir={out}", f"model.path={tmp_path / 'tiny-digits'}", "eval.at_start=false", "eval.every=0",
           "metrics.sinks=[jsonl]", "metrics.plot=false", "checkpoint.every=0", "sampling.prompts_per_step=8"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    done = finish(proc, timeout=300)
    log = tail(done.stdout, done.stderr, 8000)
    assert done.returncode == 0, log
    assert "SIGUSR1 (time limit near): asking rlvr to checkpoint and stop" in done.stdout, log
    stopped = [line for line in done.stderr.splitlines() if "SIGUSR1 received; checkpoint written at step" in line]
    assert stopped, log
    step = int(stopped[0].split("at step ")[1].split()[0])
    assert "fake scontrol: requeue" in done.stderr and "(restart 1)" in done.stdout, log
    assert f"resuming at step {step}" in done.stderr, log
    steps = step_lines(out)
    assert each_once(steps) and max(steps) == 16, steps
    assert (out / "checkpoints" / f"step_{step:07d}" / "rng_rank1.pt").is_file()


@pytest.mark.slow
@pytest.mark.multiproc
def test_signal_reaching_one_of_two_processes_stops_both_at_the_same_step(tmp_path, models):
    run_dir = tmp_path / "run"
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    proc = start(run_dir, models, LONG, "checkpoint.every=0", launcher=torchrun)
    wait_for_steps(proc, run_dir, 2)
    # torchrun starts each worker in a session of its own: its children are the two ranks, and the
    # lock file names rank 0
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    rank0 = json.loads((run_dir / "rlvr.lock").read_text())["pid"]
    (rank1,) = [int(pid) for pid in children if int(pid) != rank0]
    os.kill(rank1, signal.SIGTERM)
    done = finish(proc, timeout=120)
    steps = step_lines(run_dir)
    log = tail(done.stdout, done.stderr)
    assert done.returncode != 0, log
    line = f"SIGTERM received; checkpoint written at step {steps[-1]}"
    assert line in done.stderr, log
    # both ranks took part in that checkpoint (it is collective), so both stopped at that step
    ckpt = run_dir / "checkpoints" / f"step_{steps[-1]:07d}"
    assert (ckpt / "rng_rank0.pt").is_file() and (ckpt / "rng_rank1.pt").is_file(), log
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [ckpt.name], log
    assert each_once(steps), steps


def test_an_ignored_ctrl_c_stays_ignored():
    """`rlvr train ... &` from a script: the shell ignores SIGINT for it, and rlvr keeps it so (the
    terminal's Ctrl-C is not meant for a background job); SIGTERM still stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the autouse fixture puts the old handler back
    with StopSignals(announce=False) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert signals.received is None and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert signals.received == signal.SIGTERM
