"""LoRA through peft (model.lora): what is trained, what is pushed, what the KL reference is, and the
errors a recipe can meet."""

import importlib.util
import sys

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM

from rlvr.config import ConfigError, load_config
from rlvr.learner import BatchingConfig, Learner, OptimConfig, lora, ppo_clip
from rlvr.learner.aggregation import token_mean
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.run import build
from rlvr.types import AdvantageBatch, Prompt, PromptBatch, ScoredRollouts
from tests.integration.conftest import ROOT

pytest.importorskip("peft")

RECIPE = ROOT / "recipes" / "debug" / "grpo_kl_loss.yaml"


def adapted(path, r=4, targets="all-linear", seed=0):
    """The tiny model with adapters whose B is random (fresh adapters would leave the model unchanged)."""
    torch.manual_seed(seed)
    model = lora.add_adapters(AutoModelForCausalLM.from_pretrained(path), r=r, alpha=2 * r, dropout=0.0,
                              target_modules=targets)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def make_learner(model, ref_is_base=False, lr=1e-2):
    optim = OptimConfig(lr=lr, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                        min_lr_ratio=0.0, total_steps=10, max_grad_norm=None)
    batching = BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=4096, max_new_tokens=6,
                              pad_id=0, seed=0)
    return Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip, aggregation=token_mean, optim=optim,
                   batching=batching, temperature=1.0, ref_is_base=ref_is_base)


def batch_of(model, tok, n_new=6):
    prompts = [Prompt(f"t#{i}", t, tok(t).input_ids, "0", {}) for i, t in enumerate(["1+2=", "40+41=", "7="])]
    torch.manual_seed(0)
    ro = HFEngine(model, tok).generate(PromptBatch(prompts, [3, 3, 3]), SamplingParams(max_new_tokens=n_new))
    n = len(ro)
    return AdvantageBatch(ScoredRollouts(ro, torch.zeros(n), {}, torch.zeros(n, dtype=torch.bool)),
                          torch.randn(n, generator=torch.Generator().manual_seed(1)), torch.ones(n), None, None)


def test_merged_weight_of_one_layer_worked_example(tiny_model_dir):
    """r = 1, alpha = 2 (scale 2): W = 0, A = [1, 0, 0, ...], B = [1, 2, 3, ...]^T -> W' = 2 B A, whose
    first column is [2, 4, 6, ...] and every other column 0."""
    model = lora.add_adapters(AutoModelForCausalLM.from_pretrained(tiny_model_dir), r=1, alpha=2, dropout=0.0,
                              target_modules=["q_proj"])
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    out, inp = layer.base_layer.weight.shape
    with torch.no_grad():
        layer.base_layer.weight.zero_()
        layer.lora_A["default"].weight.copy_(torch.eye(1, inp))
        layer.lora_B["default"].weight.copy_(torch.arange(1.0, out + 1).unsqueeze(1))
    merged = dict(lora.merged_weights(model))["model.layers.0.self_attn.q_proj.weight"]
    assert merged[:3, :3].tolist() == [[2.0, 0.0, 0.0], [4.0, 0.0, 0.0], [6.0, 0.0, 0.0]]
    assert torch.equal(merged[:, 0], 2 * torch.arange(1.0, out + 1)) and not merged[:, 1:].any()
    assert layer.base_layer.weight.abs().sum() == 0  # the live weight is left alone: W' is a new tensor


def test_merged_weights_carry_the_base_names_and_reproduce_the_adapted_model(tiny_model_dir, tmp_path):
    base_names = [n for n, _ in AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters()]
    model = adapted(tiny_model_dir)
    names = [n for n, _ in lora.merged_weights(model)]
    assert names == base_names  # same names, same order: no base_model.model. prefix, no lora_A/lora_B
    ids = torch.tensor([[0, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        plain.load_state_dict(dict(lora.merged_weights(model)), strict=False)
        assert (plain(input_ids=ids).logits - want).abs().max() < 1e-5
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
    assert (want - base).abs().max() > 1e-2  # the adapters do change the outputs: the check above means something
    # the export loads with plain transformers and gives the same outputs
    lora.save_merged(model, tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not lora.is_lora(reloaded)
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - want).abs().max() < 1e-5


def test_optimizer_holds_only_the_adapters_and_only_they_change(tiny_model_dir, tiny):
    _, tok = tiny
    model = adapted(tiny_model_dir)
    learner = make_learner(model)
    adapters = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    held = [p for g in learner.optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in held} == adapters and len(held) == len(adapters)
    # the tiny Qwen2 has 7 linear layers per block, 2 blocks: 14 adapted layers, A and B each
    assert len(held) == 28
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    learner.step(batch_of(model, tok))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_kl_reference_is_the_base_model_with_adapters_off(tiny_model_dir, tiny):
    _, tok = tiny
    model = adapted(tiny_model_dir)
    learner = make_learner(model, ref_is_base=True)
    batch = batch_of(model, tok)
    ref = learner.logprobs(batch, use_ref=True)
    plain = make_learner(AutoModelForCausalLM.from_pretrained(tiny_model_dir)).logprobs(batch, use_ref=False)
    policy = learner.logprobs(batch, use_ref=False)
    assert torch.allclose(ref, plain, atol=1e-6)
    assert (policy - ref).abs().max() > 1e-2  # adapters back on afterwards: the policy differs from the base


def test_hf_engine_generates_with_the_adapted_weights(tiny_model_dir, tiny):
    _, tok = tiny
    model = adapted(tiny_model_dir)
    merged = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged.load_state_dict(dict(lora.merged_weights(model)), strict=False)
    prompts = [Prompt(f"t#{i}", t, tok(t).input_ids, "0", {}) for i, t in enumerate(["1+2=", "40+41=", "7="])]
    params = SamplingParams(max_new_tokens=8, greedy=True)
    got = HFEngine(model, tok).generate(PromptBatch(prompts, [1, 1, 1]), params)
    want = HFEngine(merged, tok).generate(PromptBatch(prompts, [1, 1, 1]), params)
    base = HFEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok).generate(
        PromptBatch(prompts, [1, 1, 1]), params)
    assert got.texts == want.texts
    torch.testing.assert_close(got.rollout_logprobs, want.rollout_logprobs, rtol=0, atol=1e-4)
    assert not torch.allclose(got.rollout_logprobs, base.rollout_logprobs, atol=1e-2)


def test_a_target_module_that_matches_nothing_lists_the_linear_modules(tiny_model_dir):
    cfg = load_config(RECIPE, [f"model.path={tiny_model_dir}", "model.lora.target_modules=[q_proj,qkv,lm_head]"])
    with pytest.raises(ValueError) as e:
        build.load_model(tiny_model_dir, cfg)
    msg = str(e.value)
    assert "model.lora.target_modules: 'qkv' matches no linear module" in msg
    assert "'lm_head' matches no linear module" in msg  # the output head is never adapted
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in msg
    assert "'q_proj'" not in msg


def test_recipe_values_are_checked_with_full_keys():
    with pytest.raises(ConfigError) as e:
        load_config(RECIPE, ["model.lora.r=0", "model.lora.target_modules=5", "model.lora.dropout=1.0"])
    msg = str(e.value)
    assert "model.lora.r: expected greater than or equal to 1, got 0" in msg
    assert "model.lora.target_modules: expected a non-empty list of module names" in msg
    assert "model.lora.dropout: expected less than 1" in msg


def test_recipe_with_lora_needs_peft(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ConfigError, match=r"model.lora: needs the peft package.*pip install -e '.\[lora\]'"):
        load_config(RECIPE, ["model.lora.r=4"])
    load_config(RECIPE)  # without model.lora peft is not needed
    monkeypatch.setitem(sys.modules, "peft", None)  # an import of peft now fails, as when it is not installed
    with pytest.raises(ImportError, match="model.lora: needs the peft package"):
        lora.add_adapters(torch.nn.Linear(2, 2), r=1, alpha=1, dropout=0.0, target_modules="all-linear")


@pytest.mark.parametrize("strategy", ["fsdp2", "zero3"])
def test_sharded_strategies_are_refused(monkeypatch, strategy):
    if strategy == "zero3" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs deepspeed")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun with two processes
    with pytest.raises(ConfigError, match=f"model.lora: not supported with learner.strategy {strategy}"):
        load_config(RECIPE, ["model.lora.r=4", f"learner.strategy={strategy}"])
    load_config(RECIPE, ["model.lora.r=4", "learner.strategy=ddp"])
    assert lora.strategy_problem("ddp") is None and lora.strategy_problem("single") is None
    assert "learner.strategy zero2" in lora.strategy_problem("zero2")


def test_per_sample_gradient_norms_name_a_trained_parameter(tiny_model_dir, tiny):
    """GVM's act_params under model.lora: the default embed_tokens is frozen, so it is refused with a
    hint; lora_B gets the norm of the gradient on the first adapter's B, one float per pair."""
    _, tok = tiny
    model = adapted(tiny_model_dir)
    learner = make_learner(model)
    prompts, responses = [tok("1+2=").input_ids, tok("7=").input_ids], [[20, 21], [22]]
    with pytest.raises(ValueError, match="act_params: every parameter whose name contains 'embed_tokens' is frozen"):
        learner.grad_norms(prompts, responses, "embed_tokens")
    got = learner.grad_norms(prompts, responses, "lora_B")
    assert len(got) == 2 and all(g > 0 for g in got) and got[0] != got[1]
