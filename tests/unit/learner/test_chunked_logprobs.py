"""Log-probs through the LM head in chunks (learner.logprob_chunk_tokens) equal the full-logits ones.

Values and entropies to 1e-6 (float32 rounding of a matmul over a different number of rows: measured
up to 9.5e-7 on log-probs of about -4.6, i.e. 2 ulp), gradients on every parameter to 1e-6 of the
tensor's largest entry; on micro-batches packed as the learner packs them (prompts left-padded, responses
right-padded), at temperature 0.7, with chunks of 1 position, a size that does not divide B x T, and
one larger than B x T. The chunked path never holds more than one chunk of logits, in the forward
or in the backward; model families whose logits are more than the head's output take the full path.
"""

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM

from rlvr.buffer import pack
from rlvr.config import ConfigError, apply_overrides, validate
from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
from rlvr.learner.aggregation import token_mean
from rlvr.learner.batching import pairs_batch
from rlvr.learner.logprobs import chunked_head_logprobs, plain_head, response_logprobs
from rlvr.types import AdvantageBatch, LossNorm

TEMPERATURE = 0.7
PROMPT_LENS, RESPONSE_LENS = (3, 7, 5), (4, 1, 6)  # B = 3, T = 6: 18 positions


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model_dir(request, tmp_path_factory):
    from rlvr.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / request.param, arch=request.param, seed=0)


def pairs(seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, 90, (n,), generator=g).tolist() for n in PROMPT_LENS]
    responses = [torch.randint(4, 90, (n,), generator=g).tolist() for n in RESPONSE_LENS]
    return prompts, responses


def micro_batch():
    (mb,) = pack(pairs_batch(*pairs(), pad_id=0), torch.arange(3), LossNorm(1.0, 1.0, 3), 10**6, pad_id=0)
    # as the learner has them: the shortest prompt is left-padded, the shorter responses right-padded
    # (pack orders rows by length: here the 3-token prompt with 4 padding columns comes last)
    assert mb.attention_mask[2, :5].tolist() == [0, 0, 0, 0, 1] and mb.response_mask[1].tolist() == [1, 0, 0, 0, 0, 0]
    return mb


def logprobs_and_grads(model, mb, chunk_tokens):
    """Log-probs, entropy and every parameter's gradient of a weighted sum of the log-probs (weights
    that differ per position, padding included, so a misplaced position shows in the gradients)."""
    model.zero_grad(set_to_none=True)
    logp, entropy = response_logprobs(model, mb, TEMPERATURE, with_entropy=True, chunk_tokens=chunk_tokens)
    coef = torch.linspace(-1.0, 2.0, logp.numel()).view_as(logp)
    (logp * coef).sum().backward()
    return logp.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_gradient(chunked: torch.Tensor, full: torch.Tensor, name: str) -> None:
    """Equal to float32 rounding of sums taken in another order: within 1e-6 of the tensor's largest
    entry (measured: 3.8e-6 on an embedding gradient whose largest entry is 20.5, i.e. 1.9e-7)."""
    scale = float(full.abs().max())
    assert scale > 0, name
    assert float((chunked - full).abs().max()) <= 1e-6 * scale, name


@pytest.mark.parametrize("chunk_tokens", [1, 4, 7, 1000])
def test_chunked_equals_full_logits_values_entropy_and_gradients(model_dir, chunk_tokens):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    mb = micro_batch()
    full = logprobs_and_grads(model, mb, 0)
    chunked = logprobs_and_grads(model, mb, chunk_tokens)
    assert full[0].shape == (3, 6) and float(full[0].max()) < 0 and float(full[1].min()) > 0
    torch.testing.assert_close(chunked[0], full[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked[1], full[1], rtol=0, atol=1e-6)
    assert sorted(chunked[2]) == sorted(full[2])
    for name, g in full[2].items():
        assert_same_gradient(chunked[2][name], g, name)


def test_no_grad_chunked_equals_full(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    mb = micro_batch()
    with torch.no_grad():
        full, _ = response_logprobs(model, mb, TEMPERATURE, chunk_tokens=0)
        chunked, entropy = response_logprobs(model, mb, TEMPERATURE, chunk_tokens=5)
    assert entropy is None
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-6)


class RecordingHead(torch.nn.Linear):
    """An LM head that records the shape of every output it computes."""

    shapes: list[torch.Size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        self.shapes.append(out.shape)
        return out


def test_chunked_path_never_holds_more_than_one_chunk_of_logits(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    head = RecordingHead(hidden, vocab, bias=False)
    head.weight = model.lm_head.weight  # the tied embedding
    head.shapes = []
    model.lm_head = head
    mb = micro_batch()
    big: list[torch.Size] = []  # tensors with a vocabulary dimension kept for the backward

    def keep(t: torch.Tensor) -> torch.Tensor:
        if t.dim() and t.shape[-1] == vocab:
            big.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        logp, _ = response_logprobs(model, mb, TEMPERATURE, with_entropy=True, chunk_tokens=4)
    assert head.shapes == [(4, vocab)] * 4 + [(2, vocab)]  # 18 positions: 4 + 4 + 4 + 4 + 2
    assert big == []  # the chunks' logits were not kept for the backward
    logp.sum().backward()
    # the backward recomputed each chunk, one at a time
    assert head.shapes[5:] == [(2, vocab)] + [(4, vocab)] * 4
    assert model.lm_head.forward.__func__ is RecordingHead.forward  # the head's own forward is back

    # the full path, for contrast: one [B, T+1, V] tensor, and [B, T, V] float32 kept for the backward
    head.shapes, big = [], []
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        response_logprobs(model, mb, TEMPERATURE, chunk_tokens=0)
    assert head.shapes == [(3, 7, vocab)]
    assert (3, 6, vocab) in big


def test_head_example_from_the_docstring():
    logp, _ = chunked_head_logprobs(lambda h: h, torch.tensor([[[0.0, 0.0], [2.0, 0.0]]]), torch.tensor([[1, 0]]),
                                    1.0, chunk_tokens=1)
    torch.testing.assert_close(logp, torch.tensor([[-0.6931, -0.1269]]), atol=1e-4, rtol=0)


def test_soft_capped_logits_take_the_full_path():
    """Gemma2 caps its logits after the head: the chunked head alone would give other numbers, so
    such a model is computed from its full logits whatever chunk_tokens says."""
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=99, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=32, final_logit_softcapping=0.1)
    model = Gemma2ForCausalLM(config)
    assert plain_head(model) is None
    mb = micro_batch()
    with torch.no_grad():
        full, _ = response_logprobs(model, mb, TEMPERATURE, chunk_tokens=0)
        chunked, _ = response_logprobs(model, mb, TEMPERATURE, chunk_tokens=4)
        hidden = model.model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).last_hidden_state
        uncapped, _ = chunked_head_logprobs(model.lm_head, hidden[:, -7:-1], mb.response_ids, TEMPERATURE, 4)
    assert torch.equal(chunked, full)
    assert float((uncapped - full).abs().max()) > 0.1  # what ignoring the cap would have cost


def test_lora_wrapped_model_chunked_equals_full(tiny_model_dir):
    peft = pytest.importorskip("peft")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    assert plain_head(lora) is model.lm_head
    mb = micro_batch()
    full = logprobs_and_grads(lora, mb, 0)
    chunked = logprobs_and_grads(lora, mb, 5)
    torch.testing.assert_close(chunked[0], full[0], rtol=0, atol=1e-6)
    trained = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    for name in trained:
        assert_same_gradient(chunked[2][name], full[2][name], name)


def test_learner_step_is_the_same_with_chunked_logprobs(tiny_model_dir):
    prompts, responses = pairs(1)
    base = pairs_batch(prompts, responses, pad_id=0)
    batch = AdvantageBatch(base.scored, torch.tensor([1.0, -0.5, 0.7]), torch.ones(3), None, None)
    results = []
    for chunk in (0, 3):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        optim = OptimConfig(lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                            min_lr_ratio=0.0, total_steps=1, max_grad_norm=None)
        batching = BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=30,
                                  max_new_tokens=6, pad_id=0, seed=0)
        learner = Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip, aggregation=token_mean,
                          optim=optim, batching=batching, temperature=TEMPERATURE, logprob_chunk_tokens=chunk)
        metrics = learner.step(batch)
        results.append((metrics, torch.cat([p.grad.flatten() for p in model.parameters()])))
    (full, g_full), (chunked, g_chunked) = results
    assert full["learner/grad_norm"] > 0
    for key in ("learner/loss", "learner/entropy", "learner/grad_norm"):
        assert chunked[key] == pytest.approx(full[key], rel=1e-6, abs=1e-7), key
    assert_same_gradient(g_chunked, g_full, "all parameters")


def test_config_key_default_and_bad_value():
    base = {"model": {"path": "does/not/matter"}, "data": {"train": {"path": "synthetic:succ"}},
            "reward": {"functions": [{"name": "exact"}]}, "eval": {"at_start": False}}
    assert validate(base).learner.logprob_chunk_tokens == 512
    assert validate(apply_overrides(base, ["learner.logprob_chunk_tokens=0"])).learner.logprob_chunk_tokens == 0
    with pytest.raises(ConfigError) as e:
        validate(apply_overrides(base, ["learner.logprob_chunk_tokens=-1"]))
    assert "learner.logprob_chunk_tokens" in "\n".join(e.value.problems)
