"""A LoRA run (model.lora) end to end on the tiny model: adapter-only checkpoints, the merged model in
the last checkpoint, and the KL reference without a second model. The bitwise resume of a LoRA run
(recipes/lora.yaml, KL to the adapters-off base included) is in test_resume_methods.py's matrix."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlvr.learner import lora
from rlvr.run import build
from tests.integration.conftest import ROOT, run_recipe

pytest.importorskip("peft")

RECIPE = ROOT / "recipes" / "debug" / "grpo_kl_loss.yaml"
# KL in the loss (reference = adapters off), 2 mini-batches x 2 epochs, sampled eval: every state matters
OVERRIDES = ["run.steps=4", "checkpoint.every=2", "checkpoint.keep_last=3", "run.resume=auto", "eval.every=2",
             "model.lora.r=4", "model.lora.target_modules=[q_proj,v_proj,up_proj]", "learner.lr=1e-2"]


@pytest.mark.slow
def test_lora_run_saves_the_adapter_and_exports_the_merged_model(tmp_path, models_dir, monkeypatch):
    loads = []
    real_load = build.load_model
    monkeypatch.setattr(build, "load_model", lambda *a, **kw: loads.append(kw) or real_load(*a, **kw))
    straight = run_recipe(RECIPE, tmp_path / "straight", models_dir, *OVERRIDES)
    assert len(loads) == 1  # the policy only: the KL reference is its base, adapters off, not a second copy
    # a resumed run loads the base from model.path and the adapter from the checkpoint
    run_recipe(RECIPE, straight, models_dir, *OVERRIDES[1:], "run.steps=5", "checkpoint.every=5")
    assert loads[-1]["adapter"] == straight / "checkpoints" / "step_0000004" / "adapter"

    ckpts = straight / "checkpoints"
    mid, last = ckpts / "step_0000002", ckpts / "step_0000004"
    # a periodic checkpoint holds the adapter, not the base weights: 2 layers x 3 modules x (A, B)
    assert not (mid / "model").exists()
    adapter = load_file(mid / "adapter" / lora.ADAPTER_FILE)
    assert len(adapter) == 12 and all("lora_A" in k or "lora_B" in k for k in adapter)
    base_path = models_dir / "tiny-qwen2"
    base = AutoModelForCausalLM.from_pretrained(base_path)
    assert sum(t.numel() for t in adapter.values()) < 0.1 * sum(p.numel() for p in base.parameters())
    # the optimiser state is the adapters' too: Adam's two moments per adapter tensor
    state = torch.load(mid / "state.pt", weights_only=True)
    moments = state["plugins"]["learner"]["optimizer"]["state"]
    assert len(moments) == 12 and sum(s["exp_avg"].numel() for s in moments.values()) == sum(
        t.numel() for t in adapter.values())

    # the last checkpoint's model/ is the merged policy, loaded by plain transformers
    merged = AutoModelForCausalLM.from_pretrained(last / "model")
    assert not lora.is_lora(merged) and not any("lora" in n for n in merged.state_dict())
    policy = lora.add_adapters(AutoModelForCausalLM.from_pretrained(base_path), r=4, alpha=32.0, dropout=0.0,
                               target_modules=["q_proj", "v_proj", "up_proj"])
    lora.load_adapter(policy, last / "adapter")
    ids = torch.tensor([[0, 17, 18, 19, 29, 30]])
    with torch.no_grad():
        want = policy(input_ids=ids).logits
        assert (merged(input_ids=ids).logits - want).abs().max() < 1e-5
        assert (base(input_ids=ids).logits - want).abs().max() > 1e-3  # training moved it off the base
