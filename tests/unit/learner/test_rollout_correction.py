import math

import pytest
import torch

from rlvr.learner.rollout_correction import mismatch_stats, rollout_is_weights


def test_docstring_example_token_truncation_and_sequence_mask():
    old = torch.tensor([[0.0, 1.0, -0.5]])
    roll = torch.zeros(1, 3)
    mask = torch.ones(1, 3)
    w, stats = rollout_is_weights(old, roll, mask, token_cap=2.0, sequence_mask=(0.5, 2.0))
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, math.exp(-0.5)]]))
    assert stats["is_truncated"].tolist() == [[0.0, 1.0, 0.0]]
    assert stats["is_masked"].sum() == 0  # geometric mean exp(0.5 / 3) = 1.18 lies inside [0.5, 2]


def test_sequence_mask_drops_whole_samples_and_ignores_padding():
    old = torch.tensor([[2.0, 2.0, 0.0], [0.1, 0.0, 9.0]])
    roll = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 2's third token is padding
    w, stats = rollout_is_weights(old, roll, mask, token_cap=None, sequence_mask=(0.5, 2.0))
    # row 1: geometric mean exp(4/3) = 3.79 > 2 -> masked; row 2: exp(0.05), the 9.0 is padding.
    # No token cap: kept samples get weight 1 (mask only)
    assert w.tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert stats["is_masked"].tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


def test_weights_carry_no_gradient_and_are_one_without_a_gap():
    old = torch.randn(4, 5, requires_grad=True)
    w, _ = rollout_is_weights(old, old.detach(), torch.ones(4, 5), 2.0, None)
    assert not w.requires_grad and torch.equal(w, torch.ones(4, 5))


def test_mismatch_stats_example():
    d = torch.tensor([[0.1, -0.2, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    s = mismatch_stats(d, torch.zeros(1, 3), mask)
    torch.testing.assert_close(s["rollout_logprob_diff"], torch.tensor([[0.1, 0.2, 0.0]]))
    torch.testing.assert_close(s["mismatch_k3"], torch.tensor([[math.exp(0.1) - 1.1, math.exp(-0.2) - 0.8, 0.0]]))
    assert (s["mismatch_k3"] >= 0).all()


def test_is_weights_reach_the_loss(tiny):
    """With the correction on, the policy-gradient loss is the token-weighted one."""
    from functools import partial

    from accelerate import Accelerator

    from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
    from rlvr.registry import AGGREGATION
    from rlvr.rollout import HFEngine, SamplingParams
    from rlvr.types import AdvantageBatch, Prompt, PromptBatch, ScoredRollouts

    model, tok = tiny
    prompts = [Prompt(f"p{i}", t, tok(t).input_ids, "0", {}) for i, t in enumerate(["1+2=", "3+4="])]
    torch.manual_seed(0)
    ro = HFEngine(model, tok).generate(PromptBatch(prompts, [3, 3]), SamplingParams(max_new_tokens=4))
    ro.rollout_logprobs = ro.rollout_logprobs - 0.3 * ro.response_mask  # the "engine" was less sure
    n = len(ro)
    batch = AdvantageBatch(ScoredRollouts(ro, torch.zeros(n), {}, torch.zeros(n, dtype=torch.bool)),
                           torch.linspace(0.5, 1.5, n), torch.ones(n), None, None)

    def learner(correction):
        return Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip,
                       aggregation=AGGREGATION.get("token_mean"),
                       optim=OptimConfig(lr=1e-9, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0,
                                         schedule="constant", min_lr_ratio=0.0, total_steps=1, max_grad_norm=None),
                       batching=BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=4096,
                                               max_new_tokens=4, pad_id=tok.pad_token_id, seed=0),
                       temperature=1.0, rollout_correction=correction)

    plain = learner(None).step(batch)
    capped = learner(partial(rollout_is_weights, token_cap=2.0, sequence_mask=None)).step(batch)
    # every ratio is exp(0.3) = 1.35 < 2, so the weighted loss is the plain loss times 1.35
    assert capped["learner/is_weight"] == pytest.approx(math.exp(0.3), rel=1e-4)
    assert capped["learner/pg_loss"] == pytest.approx(plain["learner/pg_loss"] * math.exp(0.3), rel=1e-4)
    assert plain["learner/mismatch_k3"] == pytest.approx(math.exp(0.3) - 1.3, rel=1e-3)
