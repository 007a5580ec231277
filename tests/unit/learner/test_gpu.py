"""The learner on a CUDA device: bf16 autocast, gradient checkpointing, the step. Skipped without
CUDA (CI is CPU-only); run them on a GPU machine with `pytest -m gpu`."""

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.buffer import pack
from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
from rlvr.learner.aggregation import token_mean
from rlvr.learner.logprobs import response_logprobs
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.types import AdvantageBatch, LossNorm, Prompt, PromptBatch, ScoredRollouts

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def batch_of(tiny_model_dir, n_prompts=3, samples=4, seed=0):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [Prompt(f"g#{i}", t, tok(t).input_ids, "0", {}) for i, t in enumerate(["1+2=", "40+41=", "7="][:n_prompts])]
    torch.manual_seed(seed)
    ro = HFEngine(model, tok).generate(PromptBatch(prompts, [samples] * n_prompts), SamplingParams(max_new_tokens=8))
    n = len(ro)
    adv = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return AdvantageBatch(ScoredRollouts(ro, torch.zeros(n), {}, torch.zeros(n, dtype=torch.bool)), adv,
                          torch.ones(n), None, None), tok


def learner(model, mixed_precision):
    optim = OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                        min_lr_ratio=0.0, total_steps=10, max_grad_norm=1.0)
    batching = BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=4096, max_new_tokens=8,
                              pad_id=0, seed=0)
    return Learner(model, None, Accelerator(mixed_precision=mixed_precision), policy_loss=ppo_clip,
                   aggregation=token_mean, optim=optim, batching=batching, temperature=1.0)


def test_bf16_autocast_log_probs_are_float32_and_close_to_fp32(tiny_model_dir):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    batch, tok = batch_of(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).cuda()
    (mb,) = pack(batch, torch.arange(len(batch.scored.rollouts)), LossNorm(1.0, 1.0, 8), 10_000, tok.pad_token_id)
    with torch.no_grad():
        full, _ = response_logprobs(model, mb, 1.0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low, _ = response_logprobs(model, mb, 1.0)
    assert full.dtype == low.dtype == torch.float32 and full.is_cuda
    mask = mb.response_mask.cuda().bool()
    # bf16 has 8 bits of mantissa: per-token log-probs agree to a few hundredths of a nat
    assert (full - low)[mask].abs().max() < 0.1
    assert (full - low)[mask].abs().mean() < 0.02


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_a_learner_step_on_cuda_updates_the_weights(tiny_model_dir, mixed_precision):
    if mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    batch, _ = batch_of(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lrn = learner(model, mixed_precision)
    assert next(lrn.model.parameters()).is_cuda
    metrics = lrn.step(batch)
    assert metrics["learner/grad_norm"] > 0 and torch.isfinite(torch.tensor(metrics["learner/loss"]))
    assert metrics["learner/nonfinite_skipped"] == 0
    after = lrn.unwrapped.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k].detach().cpu())]
    assert len(moved) >= len(before) // 2  # AdamW's first step moves every parameter that had a gradient


def test_gradient_checkpointing_gives_the_same_gradients_on_cuda(tiny_model_dir):
    batch, _ = batch_of(tiny_model_dir)
    grads = []
    for checkpointing in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lrn = learner(model, "no")
        frozen = torch.optim.SGD(lrn.model.parameters(), lr=0.0)
        lrn.optimizer = frozen
        lrn.step(batch)
        grads.append(torch.cat([p.grad.flatten() for p in lrn.model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
