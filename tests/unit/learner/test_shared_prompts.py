"""Each distinct prompt of a micro-batch runs once (learner.share_prompts) and the log-probs, entropies
and gradients equal those of a forward per sample.

Micro-batches as the learner packs them: 3 prompts of 3, 7 and 5 tokens with 3 responses each of
different lengths (1 to 6 tokens), sorted by length, so a prompt's rows are not adjacent and the
shorter prompts are left-padded. Tolerances as in test_chunked_logprobs.py: float32 rounding of
matmuls over a different number of rows.
"""

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM

from rlvr.buffer import pack
from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
from rlvr.learner.aggregation import token_mean
from rlvr.learner.batching import pairs_batch
from rlvr.learner.logprobs import prompt_groups, response_logprobs
from rlvr.types import AdvantageBatch, LossNorm

TEMPERATURE = 0.7
PROMPT_LENS = (3, 7, 5)
RESPONSE_LENS = ((4, 1, 6), (2, 6, 3), (5, 5, 1))  # per prompt: T = 6


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model_dir(request, tmp_path_factory):
    from rlvr.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / request.param, arch=request.param, seed=0)


def grouped_pairs(seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for n, lens in zip(PROMPT_LENS, RESPONSE_LENS, strict=True):
        prompt = torch.randint(4, 90, (n,), generator=g).tolist()
        for m in lens:
            prompts.append(prompt)
            responses.append(torch.randint(4, 90, (m,), generator=g).tolist())
    return prompts, responses


def micro_batch(prompts, responses):
    n = len(prompts)
    (mb,) = pack(pairs_batch(prompts, responses, pad_id=0), torch.arange(n), LossNorm(1.0, 1.0, 6), 10**6, pad_id=0)
    return mb


def counted_forwards(model) -> list[int]:
    """A list that grows by the batch size of every forward of the model's decoder."""
    calls: list[int] = []
    model.model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape[0]),
                                          with_kwargs=True)
    return calls


def logprobs_and_grads(model, mb, chunk_tokens, share):
    model.zero_grad(set_to_none=True)
    logp, entropy = response_logprobs(model, mb, TEMPERATURE, with_entropy=True, chunk_tokens=chunk_tokens,
                                      share_prompts=share)
    coef = torch.linspace(-1.0, 2.0, logp.numel()).view_as(logp)  # differs per position, padding included
    (logp * coef).sum().backward()
    return logp.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk_tokens", [0, 5])
def test_shared_prompts_give_the_same_logprobs_entropy_and_gradients(model_dir, chunk_tokens):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    calls = counted_forwards(model)
    mb = micro_batch(*grouped_pairs())
    full = logprobs_and_grads(model, mb, chunk_tokens, share=False)
    assert calls == [9]
    shared = logprobs_and_grads(model, mb, chunk_tokens, share=True)
    assert calls[1:] == [3, 9]  # the 3 distinct prompts, then the 9 responses on their keys and values
    torch.testing.assert_close(shared[0], full[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(shared[1], full[1], rtol=0, atol=1e-6)
    assert full[0].abs().min() > 0.1  # real log-probs (a random model over ~100 tokens), not zeros
    for name, g in full[2].items():
        assert g.abs().max() > 0, name  # every parameter, the prompt-only paths included, gets a gradient
        torch.testing.assert_close(shared[2][name], g, rtol=0, atol=1e-5 * float(g.abs().max()), msg=name)


def test_prompt_groups_find_repeated_prompts_in_row_order():
    ids = torch.tensor([[0, 5, 8, 9], [6, 7, 8, 9], [0, 5, 1, 2], [0, 5, 3, 0]])
    attn = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 0]])
    first, inverse = prompt_groups(ids, attn, t=2)
    assert first.tolist() == [0, 1] and inverse.tolist() == [0, 1, 0, 0]
    assert prompt_groups(ids[:2], attn[:2], t=2) is None  # every prompt differs: one forward as before
    assert prompt_groups(ids, attn, t=1) is None  # one response column: nothing left to share
    # the same tokens with another padding are another prompt (other positions)
    attn2 = attn.clone()
    attn2[2, 0] = 1
    assert prompt_groups(ids, attn2, t=2)[1].tolist() == [0, 1, 2, 0]


def test_distinct_prompts_and_gradient_checkpointing_take_one_forward(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    calls = counted_forwards(model)
    prompts, responses = grouped_pairs()
    distinct = micro_batch(prompts[::3], responses[::3])  # one sample per prompt
    response_logprobs(model, distinct, TEMPERATURE, share_prompts=True)
    assert calls == [3]
    model.gradient_checkpointing_enable()  # transformers turns the cache off in training: no sharing
    model.train()
    mb = micro_batch(prompts, responses)
    ref = logprobs_and_grads(model, mb, 0, share=False)
    got = logprobs_and_grads(model, mb, 0, share=True)
    assert calls[1:] == [9, 9]
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)


def test_the_learner_step_is_the_same_with_shared_prompts(model_dir):
    prompts, responses = grouped_pairs()
    batch = pairs_batch(prompts, responses, pad_id=0)
    adv = torch.tensor([1.0, -0.5, -0.5, 0.0, 0.8, -0.8, 0.3, 0.3, -0.6])
    batch = AdvantageBatch(batch.scored, adv, torch.ones(9), None, None)
    runs = []
    for share in (False, True):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        calls = counted_forwards(model)
        optim = OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                            min_lr_ratio=0.0, total_steps=10, max_grad_norm=None)
        batching = BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=10**6,
                                  max_new_tokens=6, pad_id=0, seed=0, skip_zero_advantage=True)
        learner = Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip, aggregation=token_mean,
                          optim=optim, batching=batching, temperature=TEMPERATURE, share_prompts=share)
        metrics = learner.step(batch)
        # gradients, not post-Adam weights: Adam's first step is about lr * sign(g), which turns
        # float noise in a near-zero gradient entry into a whole step
        runs.append((metrics, calls, [p.grad.clone() for p in model.parameters()]))
    (full, full_calls, g_full), (shared, shared_calls, g_shared) = runs
    assert full_calls == [8] and shared_calls == [3, 8]  # one zero-advantage row skipped in both
    for key in ("learner/loss", "learner/grad_norm", "learner/entropy"):
        assert shared[key] == pytest.approx(full[key], rel=1e-5, abs=1e-7), key
    for a, b in zip(g_shared, g_full, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))


def test_shared_prompts_under_bf16_autocast(model_dir):
    """The learner's mixed precision: the head gets hidden states put together from two autocast forwards."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    mb = micro_batch(*grouped_pairs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full, _ = response_logprobs(model, mb, TEMPERATURE, chunk_tokens=5, share_prompts=False)
        shared, _ = response_logprobs(model, mb, TEMPERATURE, chunk_tokens=5, share_prompts=True)
    assert shared.dtype == full.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: the two paths round differently, by far less than a log-prob's size
    torch.testing.assert_close(shared, full, rtol=0, atol=0.05)
    assert (shared - full).abs().mean() < 0.01


def test_a_sliding_window_narrower_than_the_sequence_takes_one_forward(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    calls = counted_forwards(model)
    mb = micro_batch(*grouped_pairs())  # S = 7 + 6 = 13 columns
    model.config.use_sliding_window, model.config.sliding_window = True, 8
    response_logprobs(model, mb, TEMPERATURE, share_prompts=True)
    model.config.sliding_window = 13
    response_logprobs(model, mb, TEMPERATURE, share_prompts=True)
    assert calls == [9, 3, 9]
