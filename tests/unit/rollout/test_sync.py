"""Weight-sync verification, with the hf engine holding its own copy (no vLLM needed)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlvr.rollout import HFEngine
from rlvr.rollout.sync import WeightSyncError, default_tolerance, probe_gap, push_and_verify


def test_probe_gap_example():
    assert probe_gap(torch.tensor([-1.0, -2.0]), torch.tensor([-1.1, -2.0])) == pytest.approx(0.1)
    assert default_tolerance("float32") < default_tolerance("bfloat16")


def learner_logprobs(model):
    def f(ids):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
        return lp.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)
    return f


def test_a_separate_engine_copy_is_pushed_and_verified(tiny, tiny_model_dir):
    learner, tok = tiny
    copy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = HFEngine(copy, tok, shares_learner_weights=False)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    probe = tok("12+7=19").input_ids
    assert torch.equal(engine.sequence_logprobs(probe), learner_logprobs(copy)(probe))

    # nothing pushed: the check fails loudly and names the setting
    with pytest.raises(WeightSyncError, match="rollout.sync_tolerance"):
        push_and_verify(engine, lambda: iter(()), learner_logprobs(learner), probe, 1e-3)
    # the real push: equal, and the gap is logged
    m = push_and_verify(engine, learner.named_parameters, learner_logprobs(learner), probe, 1e-3)
    assert m["rollout/sync_max_logprob_diff"] < 1e-5
    # the largest gap over processes decides, so every process fails together
    with pytest.raises(WeightSyncError):
        push_and_verify(engine, learner.named_parameters, learner_logprobs(learner), probe, 1e-3,
                        world_max=lambda gap: max(gap, 0.7))
    # no probe: push only, no metric
    assert push_and_verify(engine, learner.named_parameters, learner_logprobs(learner), None, 1e-3) == {}


def test_the_default_tolerance_follows_the_learners_precision_too():
    """bf16 weights differ from a float32 engine by bf16's rounding; mixed precision alone does not
    loosen it (the probe runs outside autocast: test_the_probe_runs_outside_mixed_precision)."""
    from pathlib import Path

    from rlvr.config import load_config
    from rlvr.run.build import sync_check

    recipe = Path(__file__).resolve().parents[3] / "recipes" / "vllm" / "quickstart.yaml"
    tolerance = {tuple(o): sync_check(load_config(recipe, o))[1] for o in (
        [], ["learner.mixed_precision=bf16"], ["model.dtype=bfloat16"], ["rollout.sync_tolerance=0.01",
                                                                          "learner.mixed_precision=bf16"])}
    assert list(tolerance.values()) == [1e-3, 1e-3, 0.5, 0.01]


def test_the_probe_runs_outside_mixed_precision(tiny_model_dir):
    """Under bf16 autocast (learner.mixed_precision: bf16, which on this CPU halves the SmolLM2
    update) the training forward differs from float32 by up to 0.3 nats, more than a stale weight
    after one small step; the probe's log-probs are the float32 module's, so a float32 engine keeps
    the 1e-3 check (measured before: a SmolLM2 run stopped at step 43 on a 0.51 gap)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
    from rlvr.learner.aggregation import token_mean

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optim = OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                        min_lr_ratio=0.0, total_steps=10, max_grad_norm=1.0)
    batching = BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=4096, max_new_tokens=8,
                              pad_id=0, seed=0)
    AcceleratorState._reset_state(reset_partial_state=True)  # an earlier test's state would refuse bf16
    try:
        learner = Learner(model, None, Accelerator(mixed_precision="bf16", cpu=True), policy_loss=ppo_clip,
                          aggregation=token_mean, optim=optim, batching=batching, temperature=1.0)
    finally:  # accelerate keeps its state process-wide: a later Accelerator() would inherit bf16
        AcceleratorState._reset_state(reset_partial_state=True)
    probe = list(range(5, 69))
    want = learner_logprobs(reference)(probe)
    with torch.no_grad():  # the training forward is under autocast ...
        logits = learner.model(torch.tensor([probe])).logits[0, :-1].float()
    autocast = torch.log_softmax(logits, -1).gather(-1, torch.tensor(probe[1:]).unsqueeze(-1)).squeeze(-1)
    assert (autocast - want).abs().max() > 1e-3
    assert probe_gap(learner.sequence_logprobs(probe), want) < 1e-5  # ... the probe is not
    with torch.no_grad():  # and the autocast wrapper is back after it
        again = learner.model(torch.tensor([probe])).logits[0, :-1].float()
    assert torch.equal(again, logits)
