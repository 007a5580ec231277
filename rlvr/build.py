"""Small functions that build each stage's objects from the typed config (no logic of their own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.config import Config
from rlvr.config.load import reward_specs
from rlvr.config.schema import DatasetConfig
from rlvr.data import build_prompts, load_rows
from rlvr.learner import Learner
from rlvr.registry import ADVANTAGE, AGGREGATION, ALLOCATOR, POLICY_LOSS, SAMPLER, build_plugin
from rlvr.reward import RewardRunner
from rlvr.types import Prompt


def make_accelerator(cfg: Config) -> Accelerator:
    mp = cfg.learner.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mp)


def model_dir(cfg: Config, base_dir: Path | None) -> str:
    """The policy's folder (or hub name); builds the tiny model there first if asked and absent."""
    path = Path(cfg.model.path)
    if cfg.model.build_tiny is not None:
        from rlvr.models.tiny import ensure_tiny_model

        ensure_tiny_model(path, **cfg.model.build_tiny.model_dump())
    elif not path.exists() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    return str(path)


def _dtype(cfg: Config) -> torch.dtype:
    # auto: fp32 weights everywhere; on GPU the forward runs in bf16 autocast (mixed precision)
    return {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[cfg.model.dtype]


def load_model(path: str | Path, cfg: Config, trainable: bool = True) -> torch.nn.Module:
    kwargs: dict[str, Any] = {"dtype": _dtype(cfg)}
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if trainable:
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = True  # generation still uses the KV cache
    else:
        model.eval().requires_grad_(False)
    return model


def load_tokenizer(path: str | Path) -> Any:
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_prompt_set(cfg: Config, ds: DatasetConfig, tokenizer: Any, base_dir: Path | None
                    ) -> tuple[list[Prompt], dict[str, int]]:
    """One dataset of the recipe, templated and tokenised; also the row counts (skipped rows by reason)."""
    d = cfg.data
    source, rows = load_rows(ds.path, split=ds.split, base_dir=base_dir, synthetic_args=ds.args or None)
    if ds.limit is not None:
        rows = rows[: ds.limit]
    return build_prompts(
        rows, source, tokenizer, prompt_field=d.prompt_field, prompt_template=d.prompt_template,
        system_prompt=d.system_prompt, chat_template=d.chat_template, answer_field=d.answer_field,
        max_prompt_tokens=d.max_prompt_tokens, on_bad_row=d.on_bad_row,
    )


def make_reward_runner(cfg: Config, base_dir: Path | None) -> RewardRunner:
    r = cfg.reward
    return RewardRunner(
        reward_specs(cfg), timeout_s=r.timeout_s, on_failure=r.on_failure, workers=r.workers,
        accuracy=r.accuracy, correct_threshold=r.correct_threshold, base_dir=str(base_dir) if base_dir else None,
    )


def make_plugins(cfg: Config, prompts: list[Prompt], base_dir: Path | None) -> dict[str, Any]:
    """sampler, allocator, advantage, policy_loss and aggregation, built by name from the registries."""
    context: dict[str, Any] = {
        "num_prompts": len(prompts),
        "prompt_uids": [p.uid for p in prompts],
        "seed": cfg.run.seed,
        "samples_per_prompt": cfg.sampling.samples_per_prompt,
        "prompts_per_step": cfg.sampling.prompts_per_step,
        "max_new_tokens": cfg.rollout.max_new_tokens,
    }
    # the estimator first: a sampler may read its state (e.g. SPO's tracker) through `advantage`
    context["advantage"] = build_plugin(ADVANTAGE, cfg.advantage.name, cfg.advantage.kwargs, context, base_dir)
    sections = {
        "sampler": (SAMPLER, cfg.sampling.sampler),
        "allocator": (ALLOCATOR, cfg.sampling.allocator),
        "policy_loss": (POLICY_LOSS, cfg.loss.policy),
        "aggregation": (AGGREGATION, cfg.loss.aggregation),
    }
    built = {key: build_plugin(reg, p.name, p.kwargs, context, base_dir) for key, (reg, p) in sections.items()}
    return {**built, "advantage": context["advantage"]}


def make_learner(cfg: Config, model: torch.nn.Module, ref_model: torch.nn.Module | None, acc: Accelerator,
                 plugins: dict[str, Any], pad_id: int) -> Learner:
    lc = cfg.learner
    return Learner(
        model, ref_model, acc,
        policy_loss=plugins["policy_loss"], aggregation=plugins["aggregation"],
        lr=lc.lr, weight_decay=lc.weight_decay, betas=lc.betas, warmup_steps=lc.warmup_steps,
        schedule=lc.schedule, min_lr_ratio=lc.min_lr_ratio, total_steps=cfg.run.steps,
        max_grad_norm=lc.max_grad_norm, mini_batches_per_step=lc.mini_batches_per_step,
        epochs_per_step=lc.epochs_per_step, micro_batch_tokens=lc.micro_batch_tokens,
        temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
        kl_coef=cfg.loss.kl.coef, kl_estimator=cfg.loss.kl.estimator, kl_in_loss=cfg.loss.kl.where == "loss",
        pad_id=pad_id, seed=cfg.run.seed,
    )
