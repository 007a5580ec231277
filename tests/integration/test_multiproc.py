"""The distributed learner under torchrun (gloo, CPU).

- DDP: two processes give the gradients of one, for every aggregation (cheap, one epoch).
- Every learner.strategy: two processes give the loss and the updated weights (gathered, every
  parameter) of one process with the same strategy, on the same global batch, through the paths
  the loop uses (old log-probs, KL to a reference model, two epochs, clipping).
- `rlvr train` itself runs on two processes, exits 0, and a run resumed from its checkpoint
  continues exactly as the run that never stopped.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "scripts" / "learner_step.py"
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed not installed (pip install -e .[deepspeed])")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _torchrun(processes: int) -> list[str]:
    # --standalone: torchrun picks and holds a free port itself (a port probed here and released
    # could be taken by another process before torchrun binds it)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]


def _run(cmd: list[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group; on timeout kill the whole group, so a hung run
    leaves no worker behind (killing torchrun alone orphans its workers)."""
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check:
        assert done.returncode == 0, f"{' '.join(cmd)}\n{out[-3000:]}\n{err[-3000:]}"
    return done


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from rlvr.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


AGGREGATIONS = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "dr_grpo", "delta_l",
                "seq_mean_token_sum_norm"]


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_two_processes_match_one(tmp_path, tiny, aggregation):
    # one process with every sample's prompt (the learner shares prompts on one process only)
    _run([sys.executable, str(SCRIPT), str(tiny), str(tmp_path / "one.pt"), aggregation, "ddp", "1", "512", "0"],
         timeout=240)
    _run([*_torchrun(2), str(SCRIPT), str(tiny), str(tmp_path / "two.pt"), aggregation], timeout=240)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["world"], two["world"]) == (1, 2)
    for key in ("learner/loss", "learner/pg_loss", "learner/grad_norm", "learner/entropy"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5), key
    assert one["metrics"]["learner/grad_norm"] > 0
    for name, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-4, atol=1e-6)


STRATEGIES = ["ddp", "fsdp2", pytest.param("zero2", marks=[pytest.mark.deepspeed, needs_deepspeed]),
              pytest.param("zero3", marks=[pytest.mark.deepspeed, needs_deepspeed])]


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_two_processes_match_one(tmp_path, tiny, strategy):
    """Same loss and same updated weights (every parameter, gathered from the shards) with 1 and 2
    processes. The one process takes log-probs from the full logits, the two processes through the
    LM head in chunks of 5 positions (learner.logprob_chunk_tokens), so this also checks that the
    chunked head runs right under every wrapping. Float32 differences come from summation order
    only: measured up to 2.5e-7 on the weights (updates are ~2e-3), so the bounds are 1e-6 absolute
    and 1e-5 relative. The one process runs every sample's prompt (learner.share_prompts off); the
    two ask for shared prompts, which the learner must refuse on several processes (with sharing
    allowed there, this test hung under DDP)."""
    outs = {}
    for n, chunk, share in ((1, "0", "0"), (2, "5", "1")):
        outs[n] = tmp_path / f"{n}.pt"
        _run([*_torchrun(n), str(SCRIPT), str(tiny), str(outs[n]), "seq_mean_token_mean", strategy, "2", chunk,
              share])
    one, two = torch.load(outs[1]), torch.load(outs[2])
    assert (one["strategy"], two["strategy"]) == ("single" if strategy == "ddp" else strategy, strategy)
    assert (one["world"], two["world"]) == (1, 2)
    for key in ("learner/loss", "learner/pg_loss", "learner/kl", "learner/grad_norm", "learner/entropy",
                "learner/clip_frac"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-7), key
    assert one["metrics"]["learner/grad_norm"] > 0.05  # above max_grad_norm: clipping was active
    assert one["metrics"]["learner/kl"] > 0  # the second epoch moved away from the reference

    initial = load_file(tiny / "model.safetensors")
    assert sorted(one["weights"]) == sorted(two["weights"]) == sorted(initial)  # HF names, tied once
    moved = max(float((one["weights"][k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-3  # two AdamW steps at lr 1e-3 moved the weights
    for name, w in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], w, rtol=1e-5, atol=1e-6, msg=name)


# ---- `rlvr train` under torchrun -------------------------------------------------------------------

# A reward the random tiny model earns half the time (a leading digit), so advantages, losses and
# gradients are non-zero from step 1 and the resumed step has something to get wrong. One prompt
# per generate() call and 3 eval prompts: the two processes make 2 and 1 eval calls, so under
# sharding the second process must add a throw-away call to keep the collective forwards in step.
CLI_OVERRIDES = [
    "run.steps=3", "sampling.prompts_per_step=4", "rollout.batch_prompts=1", "eval.every=2", "eval.max_prompts=3",
    "checkpoint.every=2", "checkpoint.keep_last=2", "metrics.sinks=[jsonl]", "metrics.plot=false",
    'reward.functions=[{name: format, kwargs: {pattern: "[0-9].*"}}]',
]


def _rlvr_train(run_dir: Path, models: Path, strategy: str, *extra: str) -> subprocess.CompletedProcess:
    """`rlvr train` on 2 processes; the tiny model is built on the first call (by rank 0 alone)."""
    return _run([*_torchrun(2), "-m", "rlvr", "train", str(ROOT / "recipes" / "quickstart.yaml"), *CLI_OVERRIDES,
                 f"learner.strategy={strategy}", f"run.output_dir={run_dir}", f"model.path={models / 'tiny-digits'}",
                 *extra])


def _metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    merged: dict[int, dict[str, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        merged.setdefault(row["step"], {}).update(row)
    return merged


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2",
                                      pytest.param("zero3", marks=[pytest.mark.deepspeed, needs_deepspeed])])
def test_rlvr_train_two_processes_and_resume(tmp_path, strategy):
    straight = tmp_path / "straight"
    _rlvr_train(straight, tmp_path, strategy)
    ckpt = straight / "checkpoints" / "step_0000002"
    assert (ckpt / "model" / "model.safetensors").is_file() and (ckpt / "rng_rank1.pt").is_file()
    if strategy == "fsdp2":
        assert (ckpt / "optimizer_rank1.pt").is_file()
    a = _metrics(straight)
    assert sorted(a) == [0, 1, 2, 3] and a[1]["learner/grad_norm"] > 0

    # a second run starts from the step-2 checkpoint alone and must reproduce step 3
    resumed = tmp_path / "resumed"
    shutil.copytree(ckpt, resumed / "checkpoints" / ckpt.name)
    _rlvr_train(resumed, tmp_path, strategy, "run.resume=auto")
    b = _metrics(resumed)
    assert sorted(b) == [3]  # it resumed: no step-0 evaluation, no steps 1 and 2
    for key in ("learner/loss", "learner/grad_norm", "reward/total/mean", "rollout/len_mean", "eval/accuracy"):
        assert b[3][key] == pytest.approx(a[3][key], rel=1e-5, abs=1e-7), key
    wa = load_file(straight / "checkpoints" / "step_0000003" / "model" / "model.safetensors")
    wb = load_file(resumed / "checkpoints" / "step_0000003" / "model" / "model.safetensors")
    assert sorted(wa) == sorted(wb) == sorted(load_file(tmp_path / "tiny-digits" / "model.safetensors"))
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-5, atol=1e-6, msg=name)
