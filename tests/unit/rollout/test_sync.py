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
    """A float32 vLLM engine (CPU) against a learner under bf16 autocast differs by bf16's rounding
    (0.33 measured on SmolLM2), which is no stale weight: the check must not stop that run."""
    from pathlib import Path

    from rlvr.config import load_config
    from rlvr.run.build import sync_check

    recipe = Path(__file__).resolve().parents[3] / "recipes" / "vllm" / "quickstart.yaml"
    tolerance = {tuple(o): sync_check(load_config(recipe, o))[1] for o in (
        [], ["learner.mixed_precision=bf16"], ["model.dtype=bfloat16"], ["rollout.sync_tolerance=0.01",
                                                                          "learner.mixed_precision=bf16"])}
    assert list(tolerance.values()) == [1e-3, 0.5, 0.5, 0.01]
