"""Non-finite updates: the learner skips an optimiser step whose loss or gradient norm is NaN/inf,
counts it, and the run stops after learner.max_nonfinite_steps steps in a row, with a message
naming the steps and the values, and without saving suspect weights.

The real run is the issue's reproduction: `learner.lr=1e30 checkpoint.every=1 checkpoint.keep_last=1`.
One AdamW step at that rate leaves finite weights of size ~1e30; the next forward is NaN (before
the guard: NaN logits crashed sampling with a raw torch error, or, where sampling went on, NaN
weights were checkpointed over the good ones).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlvr.learner.guard import NonFiniteGuard, nonfinite_part

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
NAN, INF = float("nan"), float("inf")


# ---- the decision and the count ------------------------------------------------------------------

def test_what_went_nonfinite():
    assert nonfinite_part(0.3, 1.2) is None
    assert nonfinite_part(NAN, 1.2) == "loss"
    assert nonfinite_part(0.3, INF) == "gradient norm"
    assert nonfinite_part(NAN, NAN) == "loss and gradient norm"
    assert nonfinite_part(0.3, None) is None  # DeepSpeed with its norm off: no evidence
    assert nonfinite_part(0.3, INF, loss_scaled=True) is None  # fp16 overflow: the scaler's routine


def test_guard_counts_steps_in_a_row_and_forgets_after_a_clean_step():
    g = NonFiniteGuard(max_steps=3)
    for step, parts in enumerate([[None], ["loss", None], ["loss"], [None, None], ["gradient norm"],
                                  ["loss"], ["loss"]], start=1):
        g.begin_step()
        for part in parts:
            g.record(part, NAN if part else 0.1, 2.0)
        metrics = g.end_step(step)
        assert metrics["learner/nonfinite_skipped"] == sum(p is not None for p in parts)
        assert g.should_stop == (step == 7), step
    assert g.total == 5 and g.streak == 3 and g.first_step == 5
    assert g.warning().startswith("learner: step 7: skipped 1 of 1 update(s), non-finite loss (loss=nan, grad_norm=2)")
    assert g.stop_message().startswith("learner: 3 step(s) in a row had a non-finite loss (steps 5-7; last at step 7: "
                                       "loss=nan, grad_norm=2)")
    resumed = NonFiniteGuard(max_steps=3)
    resumed.load_state_dict(json.loads(json.dumps(g.state_dict())))
    assert (resumed.total, resumed.streak, resumed.first_step) == (5, 3, 5)


# ---- the learner skips the update ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rlvr.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2", seed=0)


def _learner_and_batch(tiny_dir):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
    from rlvr.learner.aggregation import token_mean
    from rlvr.rollout import HFEngine, SamplingParams
    from rlvr.types import AdvantageBatch, Prompt, PromptBatch, ScoredRollouts

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    prompts = [Prompt(f"t#{i}", t, tok(t).input_ids, "0", {}) for i, t in enumerate(["1+2=", "4+4="])]
    torch.manual_seed(0)
    ro = HFEngine(model, tok).generate(PromptBatch(prompts, [4, 4]), SamplingParams(max_new_tokens=4))
    n = len(ro)
    learner = Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip, aggregation=token_mean,
                      optim=OptimConfig(lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0,
                                        schedule="cosine", min_lr_ratio=0.0, total_steps=4, max_grad_norm=1.0),
                      batching=BatchingConfig(mini_batches_per_step=2, epochs_per_step=1,
                                              micro_batch_tokens=10_000, max_new_tokens=4, pad_id=tok.pad_token_id,
                                              seed=0),
                      temperature=1.0, max_nonfinite_steps=2)

    def batch(advantages):
        return AdvantageBatch(ScoredRollouts(ro, torch.zeros(n), {}, torch.zeros(n, dtype=torch.bool)),
                              advantages, torch.ones(n), None, None)

    return learner, model, batch, n


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_nonfinite_loss_skips_the_update_and_the_schedule_still_advances(tiny_dir):
    learner, model, batch, n = _learner_and_batch(tiny_dir)
    before = _weights(model)
    lr0 = learner.scheduler.get_last_lr()[0]
    m = learner.step(batch(torch.full((n,), NAN)), step=1)  # both mini-batches' losses are NaN
    assert m["learner/nonfinite_skipped"] == 2 and m["learner/nonfinite_total"] == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a skipped update moved weights"
    assert not learner.optimizer.state, "AdamW's moments took a step they should not have"
    assert all(p.grad is None for p in model.parameters())
    assert learner.scheduler.get_last_lr()[0] < lr0  # cosine over 4 steps x 2 updates: two of 8 used
    assert learner.guard.warning() == ("learner: step 1: skipped 2 of 2 update(s), non-finite loss and gradient norm "
                                       "(loss=nan, grad_norm=nan); 1 step(s) in a row, the run stops at 2 "
                                       "(learner.max_nonfinite_steps)")
    # a finite step applies and ends the streak
    m = learner.step(batch(torch.linspace(-1, 1, n)), step=2)
    assert m["learner/nonfinite_skipped"] == 0 and learner.guard.streak == 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_a_nonfinite_gradient_with_a_finite_loss_is_skipped_too(tiny_dir):
    learner, model, batch, n = _learner_and_batch(tiny_dir)
    before = _weights(model)
    # an inf in one parameter's gradient (as an overflow in a backward kernel would give)
    param = next(p for p in model.parameters() if p.requires_grad)
    handle = param.register_hook(lambda g: torch.full_like(g, INF))
    m = learner.step(batch(torch.linspace(-1, 1, n)), step=1)
    handle.remove()
    assert m["learner/nonfinite_skipped"] == 2 and m["learner/loss"] == m["learner/loss"]  # the loss is finite
    assert learner.guard.what == "gradient norm"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---- several processes: a NaN on one process makes every process skip -------------------------------

STEP_SCRIPT = Path(__file__).parent / "scripts" / "nonfinite_step.py"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2", "zero2", "zero3"])
def test_every_process_skips_when_one_process_loss_is_nan(tiny_dir, strategy, tmp_path):
    """DDP and FSDP2 decide in the learner (an all-reduced flag); ZeRO-2/3 skip in DeepSpeed's own
    overflow check, which the learner reads back (`was_step_applied`)."""
    if strategy.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed not installed (pip install -e .[deepspeed])")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(STEP_SCRIPT),
           str(tiny_dir), strategy, str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    files = sorted(tmp_path.glob("rank*.json"))
    assert proc.returncode == 0 and len(files) == 2, _said(proc)
    results = [json.loads(f.read_text()) for f in files]
    for r in results:
        assert r["skipped"] == [1.0, 0.0], (r, _said(proc))
        assert r["unchanged"] and r["moved"] and r["finite"], (r, _said(proc))
        assert "loss" in r["what"], r


# ---- the run: learner.lr=1e30 ---------------------------------------------------------------

def _train(out: Path, models: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rlvr", "train", str(ROOT / "recipes" / "quickstart.yaml"), f"run.output_dir={out}",
           f"model.path={models / 'tiny-digits'}", "run.steps=12", "eval.at_start=false", "eval.every=0",
           "metrics.sinks=[jsonl]", "metrics.plot=false", "sampling.prompts_per_step=8",
           "learner.lr=1e30", "checkpoint.every=1", "checkpoint.keep_last=1", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _said(proc: subprocess.CompletedProcess) -> str:
    return f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-4000:]}"


@pytest.mark.slow
def test_lr_1e30_stops_with_the_message_and_keeps_finite_weights(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    proc = _train(out, tmp_path)
    said = _said(proc)
    assert proc.returncode == 3, said
    assert "Traceback" not in proc.stderr, said
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in lines if r.get("learner/nonfinite_skipped")]
    first = skipped[0]
    assert skipped == [first, first + 1, first + 2], said  # three in a row, then the stop
    assert lines[-1]["learner/nonfinite_total"] == 3
    # the gradient norm is NaN; the loss may be too, or 0 when every group's rewards were equal and only
    # one zero-advantage row went through the pass (learner.skip_zero_advantage)
    assert re.search(rf"error: learner: 3 step\(s\) in a row had a non-finite (loss and )?gradient norm "
                     rf"\(steps {first}-{first + 2}; last at step {first + 2}: loss=(nan|0), grad_norm=nan\)",
                     proc.stderr), said
    assert f"warning: learner: step {first}: skipped 1 of 1 update(s)" in proc.stderr, said
    # nothing saved during the streak: the newest checkpoint is the one before it, named in the message
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == [f"step_{first - 1:07d}"], (ckpts, said)
    assert f"no checkpoint written at step {first + 2}; the newest is {out / 'checkpoints' / ckpts[0]}" in proc.stderr
    weights = load_file(out / "checkpoints" / ckpts[0] / "model" / "model.safetensors")
    bad = [k for k, t in weights.items() if not torch.isfinite(t).all()]
    assert weights and not bad, f"non-finite tensors in the last checkpoint: {bad}"

    # the checkpoint resumes: the run goes on from it and stops the same way, never with a traceback
    again = _train(out, tmp_path)
    said = _said(again)
    assert again.returncode == 3, said
    assert f"resuming at step {first - 1}" in again.stderr, said
    assert "Traceback" not in again.stderr and "3 step(s) in a row had a non-finite" in again.stderr, said
