"""The update does not depend on the micro-batch split (global normalisers), for every aggregation."""

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM

from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
from rlvr.learner.aggregation import (
    delta_l,
    dr_grpo,
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
)
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.types import AdvantageBatch, Prompt, PromptBatch, ScoredRollouts


def make_learner(model, agg, budget):
    optim = OptimConfig(lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                        min_lr_ratio=0.0, total_steps=10, max_grad_norm=None)
    batching = BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=budget, max_new_tokens=6,
                              pad_id=0, seed=0)
    return Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip, aggregation=agg, optim=optim,
                   batching=batching, temperature=1.0)


@pytest.mark.parametrize(
    "agg", [token_mean, seq_mean_token_mean, seq_mean_token_sum, dr_grpo, delta_l, seq_mean_token_sum_norm]
)
def test_update_is_invariant_to_micro_batch_budget(tiny_model_dir, agg):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [Prompt(f"t#{i}", t, tok(t).input_ids, "0", {}) for i, t in enumerate(["1+2=", "40+41=", "7="])]
    torch.manual_seed(0)
    ro = HFEngine(base, tok).generate(PromptBatch(prompts, [4, 4, 4]), SamplingParams(max_new_tokens=6))
    n = len(ro)
    batch = AdvantageBatch(ScoredRollouts(ro, torch.zeros(n), {}, torch.zeros(n, dtype=torch.bool)),
                           torch.randn(n, generator=torch.Generator().manual_seed(1)), torch.ones(n), None, None)
    results = []
    for budget in (10_000, 30, 1):  # one micro-batch, a few, one row each
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        learner = make_learner(model, agg, budget)
        metrics = learner.step(batch)
        # gradients, not post-Adam weights: Adam's first step is ~lr*sign(g), which turns float
        # noise in near-zero gradient entries into large weight differences
        results.append((metrics["learner/loss"], metrics["learner/grad_norm"],
                        torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert results[0][1] > 0
    for loss, gnorm, grads in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5, abs=1e-7)
        assert gnorm == pytest.approx(results[0][1], rel=1e-5)
        torch.testing.assert_close(grads, results[0][2], rtol=1e-4, atol=1e-6)


def skip_learner(model, agg, skip, mini_batches=1, epochs=1, lr=1e-2):
    optim = OptimConfig(lr=lr, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                        min_lr_ratio=0.0, total_steps=10, max_grad_norm=None)
    batching = BatchingConfig(mini_batches_per_step=mini_batches, epochs_per_step=epochs, micro_batch_tokens=30,
                              max_new_tokens=6, pad_id=0, seed=0, skip_zero_advantage=skip)
    return Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip, aggregation=agg, optim=optim,
                   batching=batching, temperature=1.0)


def grpo_like_batch(tiny_model_dir, advantages):
    """Rollouts of 3 prompts x 4 from the tiny model, with the given [12] advantages."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [Prompt(f"t#{i}", t, tok(t).input_ids, "0", {}) for i, t in enumerate(["1+2=", "40+41=", "7="])]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ro = HFEngine(model, tok).generate(PromptBatch(prompts, [4, 4, 4]), SamplingParams(max_new_tokens=6))
    n = len(ro)
    return AdvantageBatch(ScoredRollouts(ro, torch.zeros(n), {}, torch.zeros(n, dtype=torch.bool)),
                          advantages, torch.ones(n), None, None)


@pytest.mark.parametrize("mini_batches,epochs", [(1, 1), (2, 2)])
@pytest.mark.parametrize(
    "agg", [token_mean, seq_mean_token_mean, seq_mean_token_sum, dr_grpo, delta_l, seq_mean_token_sum_norm]
)
def test_leaving_zero_advantage_samples_out_gives_the_same_update(tiny_model_dir, agg, mini_batches, epochs):
    # the first prompt's group had equal rewards (advantage exactly 0), as did half of the third's
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.2, -0.4, -0.4, -0.4, 0.0, 0.0, 0.9, -0.9])
    batch = grpo_like_batch(tiny_model_dir, adv)
    runs = {}
    for skip in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        learner = skip_learner(model, agg, skip, mini_batches, epochs, lr=1e-5)
        metrics = learner.step(batch)
        runs[skip] = (metrics, [p.detach().clone() for p in model.parameters()],
                      torch.cat([p.grad.flatten() for p in model.parameters()]))
    (full, w_full, g_full), (skipped, w_skip, g_skip) = runs[False], runs[True]
    assert "learner/zero_adv_skipped" not in full
    assert skipped["learner/zero_adv_skipped"] == pytest.approx(6 / 12)  # each optimiser step counts its rows
    assert skipped["learner/loss"] == pytest.approx(full["learner/loss"], rel=1e-5, abs=1e-7)
    assert skipped["learner/grad_norm"] == pytest.approx(full["learner/grad_norm"], rel=1e-5)
    assert full["learner/grad_norm"] > 0
    torch.testing.assert_close(g_skip, g_full, rtol=1e-4, atol=1e-6)  # the last optimiser step's gradient
    # every optimiser step (up to 4 here) moved the weights alike. A small lr, because Adam's steps
    # (~ lr * g / (|g| + eps)) turn float noise in near-zero gradient entries into differences of ~lr
    w0 = [p.detach() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters()]
    assert max(float((a - b).abs().max()) for a, b in zip(w_full, w0)) > 5e-6 * mini_batches * epochs
    for a, b in zip(w_full, w_skip):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_per_token_metrics_average_over_the_samples_kept(tiny_model_dir):
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.2, -0.4, -0.4, -0.4, 0.0, 0.0, 0.9, -0.9])
    batch = grpo_like_batch(tiny_model_dir, adv)
    kept = torch.nonzero(adv).flatten()
    skipped = skip_learner(AutoModelForCausalLM.from_pretrained(tiny_model_dir), token_mean, True).step(batch)
    # the same six samples alone, with nothing left out: same entropy (mean over their tokens)
    from rlvr.types import Rollouts

    ro = batch.scored.rollouts
    sub = Rollouts([ro.prompts[int(g)] for g in ro.group[kept]], torch.arange(kept.numel()), ro.response_ids[kept],
                   ro.response_mask[kept], ro.rollout_logprobs[kept], [ro.texts[i] for i in kept],
                   [ro.finish_reason[i] for i in kept])
    alone = AdvantageBatch(ScoredRollouts(sub, torch.zeros(6), {}, torch.zeros(6, dtype=torch.bool)), adv[kept],
                           torch.ones(6), None, None)
    reference = skip_learner(AutoModelForCausalLM.from_pretrained(tiny_model_dir), token_mean, False).step(alone)
    assert skipped["learner/entropy"] == pytest.approx(reference["learner/entropy"], rel=1e-5)
    assert skipped["learner/entropy"] > 0


def test_a_batch_of_only_zero_advantages_still_takes_its_optimiser_step(tiny_model_dir):
    batch = grpo_like_batch(tiny_model_dir, torch.zeros(12))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    metrics = skip_learner(model, token_mean, True).step(batch)
    assert metrics["learner/zero_adv_skipped"] == pytest.approx(11 / 12)  # one row kept for the backward
    assert metrics["learner/grad_norm"] == 0.0 and metrics["learner/loss"] == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters() if p.requires_grad)


def test_skipping_applies_only_where_it_is_exact():
    from rlvr.learner import skip_is_exact
    from rlvr.registry import AGGREGATION, POLICY_LOSS

    assert skip_is_exact(ppo_clip, token_mean, kl_in_loss=False)
    assert not skip_is_exact(ppo_clip, token_mean, kl_in_loss=True)  # the KL term acts on every sample

    def my_loss(*args, **kwargs):
        return ppo_clip(*args, **kwargs)

    def my_agg(loss, mask, norm):
        return (loss * mask).sum() / mask.sum()  # a per-micro-batch mean: the rows left out would change it

    assert not skip_is_exact(my_loss, token_mean, kl_in_loss=False)  # a plug-in that declares nothing
    assert not skip_is_exact(ppo_clip, my_agg, kl_in_loss=False)
    my_loss.zero_at_zero_advantage = True
    assert skip_is_exact(my_loss, token_mean, kl_in_loss=False)  # ... until it says so
    my_loss.zero_at_zero_advantage = "yes"  # only True counts
    assert not skip_is_exact(my_loss, token_mean, kl_in_loss=False)

    class ClassLoss:  # a class plug-in declares it as a class attribute
        zero_at_zero_advantage = True

    assert skip_is_exact(ClassLoss, token_mean, kl_in_loss=False)
    # every built-in aggregation says whether it is row-separable (a new one must decide on purpose),
    # and the six that are were checked against the full pass above
    import rlvr.learner.aggregation as builtin

    declared = {n: getattr(AGGREGATION.get(n), "row_separable", None) for n in AGGREGATION.names()
                if AGGREGATION.get(n).__module__ == builtin.__name__}
    assert all(isinstance(v, bool) for v in declared.values()), declared
    assert {n for n, v in declared.items() if v} == {"token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                                                     "dr_grpo", "delta_l", "seq_mean_token_sum_norm"}
    assert [n for n in POLICY_LOSS.names() if getattr(POLICY_LOSS.get(n), "zero_at_zero_advantage", False)] == \
        ["ppo_clip"]
