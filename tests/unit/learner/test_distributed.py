"""learner.strategy resolution and the DeepSpeed config rlvr builds (no processes started here;
tests/integration/test_multiproc.py runs every strategy under torchrun)."""

import json

import pytest
import torch

from rlvr.config import ConfigError, validate
from rlvr.learner import distributed
from rlvr.learner.distributed import deepspeed_config, launcher_strategy, resolve_strategy

FSDP2_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
ZERO3_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}


def test_strategy_is_a_checked_config_key():
    base = {"model": {"path": "m"}, "data": {"train": {"path": "synthetic:succ"}},
            "reward": {"functions": [{"name": "exact"}]}, "eval": {"at_start": False}}
    assert validate(base).learner.strategy == "auto"
    assert validate({**base, "learner": {"strategy": "zero3"}}).learner.strategy == "zero3"
    with pytest.raises(ConfigError) as e:
        validate({**base, "learner": {"strategy": "fsdp"}})
    assert any(p.startswith("learner.strategy") for p in e.value.problems)


def test_launcher_environment_decides_auto():
    assert launcher_strategy({}) is None
    assert resolve_strategy("auto", {}) == "ddp"
    assert resolve_strategy("auto", FSDP2_ENV) == "fsdp2"
    assert resolve_strategy("auto", ZERO3_ENV) == "zero3"
    assert resolve_strategy("fsdp2", {}) == "fsdp2"


def test_deepspeed_stage_can_come_from_the_launchers_json(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)}
    assert launcher_strategy(env) == "zero2"


@pytest.mark.parametrize("env, words", [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp_version: 2"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}, "stage 1"),
])
def test_unsupported_launcher_setups_are_named(env, words):
    with pytest.raises(ValueError, match=words) as e:
        launcher_strategy(env)
    assert str(e.value).startswith("learner.strategy")


def test_explicit_strategy_contradicting_the_launcher_is_an_error():
    with pytest.raises(ValueError, match="learner.strategy: zero3, but accelerate launch configured fsdp2"):
        resolve_strategy("zero3", FSDP2_ENV)


def test_missing_deepspeed_names_the_key_and_the_extra(monkeypatch):
    real = distributed.importlib.util.find_spec
    monkeypatch.setattr(distributed.importlib.util, "find_spec",
                        lambda name: None if name == "deepspeed" else real(name))
    with pytest.raises(ImportError, match=r"learner.strategy: zero2 needs deepspeed \(pip install -e .\[deepspeed\]\)"):
        resolve_strategy("zero2", {})


def test_deepspeed_config_matches_how_the_learner_steps():
    cfg = deepspeed_config(3, max_grad_norm=0.5, env={})
    # one micro-batch per optimiser step: rlvr accumulates and marks the boundary itself
    assert cfg["train_micro_batch_size_per_gpu"] == 1 and cfg["gradient_accumulation_steps"] == 1
    assert "train_batch_size" not in cfg
    assert cfg["gradient_clipping"] == 0.5  # learner.max_grad_norm, applied inside engine.step
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert deepspeed_config(2, max_grad_norm=None, env={})["gradient_clipping"] == 0.0  # 0 = off


def test_deepspeed_json_keeps_its_settings_but_not_an_optimizer(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3, "overlap_comm": True},
                                "gradient_accumulation_steps": 8, "train_batch_size": 64}))
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path),
           "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}
    cfg = deepspeed_config(3, 1.0, env)
    assert cfg["zero_optimization"]["overlap_comm"] is True
    assert cfg["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert cfg["gradient_accumulation_steps"] == 1 and "train_batch_size" not in cfg
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW"}}))
    with pytest.raises(ValueError, match="sets `optimizer`"):
        deepspeed_config(3, 1.0, env)


def test_single_process_full_weights_are_the_hf_parameters(tmp_path):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
    from rlvr.learner.aggregation import token_mean
    from rlvr.models.tiny import build_tiny_model

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    learner = Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip, aggregation=token_mean,
                      optim=OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0,
                                        schedule="constant", min_lr_ratio=0.0, total_steps=1, max_grad_norm=1.0),
                      batching=BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=64,
                                              max_new_tokens=4, pad_id=0, seed=0),
                      temperature=1.0)
    assert learner.strategy == "single" and not learner.sharded
    names = [n for n, _ in model.named_parameters()]
    got = list(learner.full_weights())
    assert [n for n, _ in got] == names
    assert all(not t.requires_grad and torch.equal(t, dict(model.named_parameters())[n]) for n, t in got)
    state = learner.state_dict()
    assert state["strategy"] == "single" and "optimizer" in state
    with pytest.raises(ValueError, match="run.resume: .*zero3 on 2"):
        learner.load_state_dict({**{k: v for k, v in state.items() if k != "optimizer"},
                                 "strategy": "zero3", "processes": 2})


def test_recipe_validation_reports_missing_deepspeed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    base = {"model": {"path": "m"}, "data": {"train": {"path": "synthetic:succ"}},
            "reward": {"functions": [{"name": "exact"}]}, "eval": {"at_start": False}, "learner": {"strategy": "zero3"}}
    with pytest.raises(ConfigError) as e:
        validate(base)
    assert "learner.strategy: zero3 needs deepspeed (pip install -e .[deepspeed])" in e.value.problems
