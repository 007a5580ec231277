"""Small functions that build each stage's objects from the typed config (no logic of their own)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.config import Config
from rlvr.config.load import reward_specs
from rlvr.config.preflight import env_context, tool_schemas
from rlvr.config.schema import DatasetConfig
from rlvr.data import build_prompts, load_rows
from rlvr.env.episodes import run_episodes
from rlvr.learner import BatchingConfig, KLSettings, Learner, OptimConfig, distributed, lora, skip_is_exact
from rlvr.learner.rollout_correction import rollout_is_weights
from rlvr.registry import build_plugin
from rlvr.reward import RewardRunner
from rlvr.rollout import HFEngine, RolloutEngine, SamplingParams
from rlvr.rollout.base import NoEngine
from rlvr.rollout.sync import default_tolerance
from rlvr.types import Prompt, PromptBatch, Rollouts

if TYPE_CHECKING:
    from rlvr.rollout.workers import WorkerSpec


def make_accelerator(cfg: Config) -> Accelerator:
    """The Accelerator of `learner.strategy` (auto: what accelerate launch configured, else DDP)."""
    lc = cfg.learner
    return distributed.make_accelerator(distributed.resolve_strategy(lc.strategy), lc.mixed_precision,
                                        lc.max_grad_norm)


@contextmanager
def accelerator(cfg: Config) -> Iterator[Accelerator]:
    """`make_accelerator` for the length of a run: the process group it starts is destroyed when
    the run ends, however it ends, before the interpreter's exit can abort on it."""
    with distributed.owned_process_group():
        yield make_accelerator(cfg)


def model_dir(cfg: Config, base_dir: Path | None) -> str:
    """The policy's folder (or hub name); builds the tiny model there first if asked and absent."""
    path = Path(cfg.model.path)
    if cfg.model.build_tiny is not None:
        from rlvr.models.tiny import ensure_tiny_model

        with distributed.whole_model_init():  # built by one process: no collective ZeRO-3 partitioning
            ensure_tiny_model(path, **cfg.model.build_tiny.model_dump())
    elif not path.exists() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    return str(path)


def _dtype(cfg: Config) -> torch.dtype:
    # auto: fp32 weights everywhere; on GPU the forward runs in bf16 autocast (mixed precision)
    return {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[cfg.model.dtype]


def load_model(path: str | Path, cfg: Config, trainable: bool = True, adapter: Path | None = None) -> torch.nn.Module:
    """The causal LM at `path` in model.dtype; trainable: the policy (gradient checkpointing if asked;
    with model.lora, fresh adapters on the frozen model at `path`, or those saved in `adapter` when
    resuming), else a frozen copy in eval mode (the KL reference)."""
    kwargs: dict[str, Any] = {"dtype": _dtype(cfg)}
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    # a frozen model (the KL reference) stays whole on each process even under ZeRO-3 (see Learner)
    with nullcontext() if trainable else distributed.whole_model_init():
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if trainable:
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = True  # generation still uses the KV cache
        if cfg.model.lora is not None:
            lc = cfg.model.lora
            model = lora.add_adapters(model, r=lc.r, alpha=lc.alpha, dropout=lc.dropout,
                                      target_modules=lc.target_modules)
            if adapter is not None:
                lora.load_adapter(model, adapter)
    else:
        model.eval().requires_grad_(False)
    return model


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer at `path`, padding with EOS when it defines no pad token."""
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_prompt_set(cfg: Config, ds: DatasetConfig, tokenizer: Any, base_dir: Path | None, env: Any = None
                    ) -> tuple[list[Prompt], dict[str, int]]:
    """One dataset of the recipe, templated and tokenised; also the row counts (skipped rows by reason).
    With `data.tool_schemas`, the tools of `env` (its `tool_schemas()`) are rendered into the prompts."""
    d = cfg.data
    source, rows = load_rows(ds.path, split=ds.split, base_dir=base_dir, synthetic_args=ds.args or None)
    if ds.limit is not None:
        rows = rows[: ds.limit]
    return build_prompts(
        rows, source, tokenizer, prompt_field=d.prompt_field, prompt_template=d.prompt_template,
        system_prompt=d.system_prompt, chat_template=d.chat_template, answer_field=d.answer_field,
        max_prompt_tokens=d.max_prompt_tokens, on_bad_row=d.on_bad_row, tools=tool_schemas(cfg, env),
    )


def play_episodes(cfg: Config, engine: RolloutEngine, env: Any, tokenizer: Any, batch: PromptBatch,
                  params: SamplingParams) -> tuple[Rollouts, dict[str, float]]:
    """Every sample of `batch` as an episode of `env` (rlvr/env/episodes.py), within rollout.max_turns and
    the episode's token budget (rollout.max_episode_tokens, default max_turns x max_new_tokens)."""
    r = cfg.rollout
    return run_episodes(engine, batch, params, env, tokenizer, max_turns=r.max_turns,
                        max_tokens=r.max_episode_tokens or r.max_turns * r.max_new_tokens)


def make_reward_runner(cfg: Config, base_dir: Path | None) -> RewardRunner:
    """The reward runner of `reward` (user files named relative to the recipe's folder `base_dir`)."""
    r = cfg.reward
    return RewardRunner(
        reward_specs(cfg), timeout_s=r.timeout_s, on_failure=r.on_failure, workers=r.workers,
        accuracy=r.accuracy, correct_threshold=r.correct_threshold, base_dir=str(base_dir) if base_dir else None,
        max_tasks_per_worker=r.max_tasks_per_worker, max_worker_memory_mb=r.max_worker_memory_mb,
    )


def make_plugins(cfg: Config, prompts: list[Prompt], base_dir: Path | None = None) -> dict[str, Any]:
    """sampler, allocator, advantage, policy_loss and aggregation, built from the plug-ins and kwargs
    that validation resolved and converted (`Plugin.target`, `Plugin.kwargs`): names resolve once,
    relative to the recipe, in `validate`; a plug-in that loads files of its own takes `base_dir` (the
    recipe's folder) to read relative paths the same way."""
    context: dict[str, Any] = {
        "base_dir": base_dir,
        "num_prompts": len(prompts),
        "prompt_uids": [p.uid for p in prompts],
        "seed": cfg.run.seed,
        "samples_per_prompt": cfg.sampling.samples_per_prompt,
        "prompts_per_step": cfg.sampling.prompts_per_step,
        "max_new_tokens": cfg.rollout.max_new_tokens,
    }
    # the estimator first: a sampler may read its state (e.g. SPO's tracker) through `advantage`
    context["advantage"] = build_plugin(cfg.advantage.target, cfg.advantage.kwargs, context)
    sections = {
        "sampler": cfg.sampling.sampler,
        "allocator": cfg.sampling.allocator,
        "policy_loss": cfg.loss.policy,
        "aggregation": cfg.loss.aggregation,
    }
    built = {key: build_plugin(p.target, p.kwargs, context) for key, p in sections.items()}
    return {**built, "advantage": context["advantage"]}


def make_env(cfg: Config, base_dir: Path | None = None) -> Any:
    """The environment of `env` (None without one). Built before the prompts, whose chat template may
    render its tools, so its constructor may take base_dir, seed, samples_per_prompt, prompts_per_step
    and max_new_tokens but nothing about the prompts (rlvr/config/preflight.py `env_context`)."""
    if cfg.env is None:
        return None
    return build_plugin(cfg.env.target, cfg.env.kwargs, env_context(cfg, base_dir))


def make_engine(cfg: Config, learner: Learner, tokenizer: Any, model_path: str | Path, acc: Accelerator
                ) -> RolloutEngine:
    """The rollout engine of `rollout.engine`; vllm loads `model_path` (then gets pushed weights)."""
    r = cfg.rollout
    if r.mode == "disaggregated":
        return make_workers(cfg, tokenizer, model_path, acc)
    if r.engine == "hf":
        return HFEngine(learner.unwrapped, tokenizer, batch_prompts=r.batch_prompts, synced=learner.sharded,
                        share_prefill=r.share_prefill)
    from rlvr.rollout.vllm import VLLMEngine

    v = r.vllm
    return VLLMEngine(
        str(model_path), tokenizer, world=acc.num_processes, rank=acc.process_index,
        local_rank=acc.local_process_index, seed=cfg.run.seed, dtype=engine_dtype(cfg),
        gpu_memory_utilization=v.gpu_memory_utilization, kv_cache_gb=kv_cache_gb(cfg),
        tensor_parallel_size=v.tensor_parallel_size, max_model_len=v.max_model_len, enforce_eager=v.enforce_eager,
        sleep_mode=torch.cuda.is_available() if v.sleep_mode is None else v.sleep_mode, max_num_seqs=v.max_num_seqs,
    )


def make_workers(cfg: Config, tokenizer: Any, model_path: str | Path, acc: Accelerator) -> RolloutEngine:
    """The rollout workers of process 0 (rollout.mode: disaggregated); the other processes get a
    stand-in that only takes part in the weight push. With engine hf the worker is an in-process
    copy of the policy (loaded from `model_path`, then given the learner's weights) that generates
    on the producer's thread. With engine vllm the workers are vLLM servers: those at
    `rollout.workers.urls`, else `num` of them started here from `model_path` on ports `port`,
    `port` + 1, ... (stopped by the engine's `close`), with the `rollout.vllm` settings."""
    r = cfg.rollout
    if acc.process_index != 0:
        return NoEngine()
    if r.engine == "hf":
        copy = load_model(model_path, cfg, trainable=False).to(acc.device)
        return HFEngine(copy, tokenizer, batch_prompts=r.batch_prompts, shares_learner_weights=False,
                        interruptible=True, share_prefill=r.share_prefill)
    from rlvr.rollout.remote import start_workers  # httpx and the transfer code: only disaggregated vllm runs

    w = r.workers
    return start_workers(
        worker_spec(cfg, None, model_path=str(model_path), port=w.port), tokenizer, urls=w.urls, num=w.num,
        gpus=w.gpus, log_dir=w.log_dir or str(Path(cfg.run.output_dir) / "workers"),
        request_timeout_s=w.request_timeout_s, health_every_s=w.health_every_s, restart=w.restart,
        keep_weights=w.keep_weights,
    )


def worker_spec(cfg: Config, base_dir: Path | None, *, model_path: str | None = None, port: int = 8100,
                host: str = "127.0.0.1") -> WorkerSpec:
    """The rollout worker of a recipe: its model (model.path unless given) with the rollout.vllm
    settings; what `rlvr train` starts and what `rlvr serve RECIPE` runs."""
    from rlvr.rollout.workers import WorkerSpec

    v = cfg.rollout.vllm
    return WorkerSpec(
        model_path or model_dir(cfg, base_dir), port=port, host=host, dtype=engine_dtype(cfg),
        tensor_parallel_size=v.tensor_parallel_size, max_model_len=v.max_model_len, kv_cache_gb=kv_cache_gb(cfg),
        gpu_memory_utilization=v.gpu_memory_utilization, max_num_seqs=v.max_num_seqs, enforce_eager=v.enforce_eager,
        seed=cfg.run.seed)


def kv_cache_gb(cfg: Config) -> float | None:
    """rollout.vllm.kv_cache_gb, else 1 GiB on CPU (vLLM's CPU default is a share of host memory,
    about 7 GiB on a 24 GiB machine at our 0.3) and the memory share on GPU (None)."""
    v = cfg.rollout.vllm.kv_cache_gb
    return v if v is not None or torch.cuda.is_available() else 1.0


def engine_dtype(cfg: Config) -> str:
    """rollout.vllm.dtype, with auto meaning bfloat16 on GPU and float32 on CPU."""
    d = cfg.rollout.vllm.dtype
    return d if d != "auto" else ("bfloat16" if torch.cuda.is_available() else "float32")


def sync_check(cfg: Config) -> tuple[int, float | None]:
    """(steps between weight-sync probes, tolerance): by default every step for engines that hold
    their own weights, never for the colocated hf engine (it generates with the learner's module).
    The default tolerance follows the coarser of the engine's and the learner's precision."""
    r = cfg.rollout
    every = r.sync_check_every if r.sync_check_every is not None else int(r.engine != "hf" or r.mode != "colocated")
    tol = r.sync_tolerance if r.sync_tolerance is not None else default_tolerance(
        engine_dtype(cfg) if r.engine == "vllm" else "float32", learner_precision(cfg))
    return every, tol


def learner_precision(cfg: Config) -> str:
    """The precision of the learner's side of the weight-sync probe: its weights' dtype (the probe
    runs outside mixed precision's autocast, see Learner.sequence_logprobs)."""
    return str(_dtype(cfg)).removeprefix("torch.")


def make_rollout_correction(cfg: Config) -> Callable | None:
    """Importance weights between engine and learner (loss.rollout_correction), or None when off."""
    rc = cfg.loss.rollout_correction
    # auto: on unless the samples come from the learner's own weights: the colocated hf engine, or
    # the in-process hf worker at max_staleness 0 (its copy holds the same weights; gaps ~1e-7)
    r = cfg.rollout
    own = r.engine == "hf" and (r.mode == "colocated" or r.max_staleness == 0)
    # against the behaviour policy the ratio itself carries the correction: the weights would be 1
    on = rc.apply == "always" or (rc.apply == "auto" and not own and not old_is_behaviour(cfg))
    if not on or (rc.token_cap is None and rc.sequence_mask is None):
        return None
    return partial(rollout_is_weights, token_cap=rc.token_cap, sequence_mask=rc.sequence_mask)


def old_is_behaviour(cfg: Config) -> bool:
    """loss.old_policy resolved: the ratio against the behaviour policy's recorded log-probs (auto:
    when samples may be versions old). Measured on the quickstart at k = 1: against the learner's own
    log-probs (ratio 1, truncated IS) held-out accuracy stayed at chance for 300 steps; against the
    behaviour policy it reached 1.0 by step 250, as the synchronous run does."""
    o = cfg.loss.old_policy
    return o == "behaviour" or (o == "auto" and cfg.rollout.mode == "disaggregated" and cfg.rollout.max_staleness > 0)


def sampling_params(cfg: Config) -> SamplingParams:
    """The rollout's sampling settings: the one place temperature is read (engine and learner both
    take it from here, since the learner's log-probs must be at the temperature the engine sampled at)."""
    r = cfg.rollout
    return SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                          stop=tuple(r.stop))


def make_learner(cfg: Config, model: torch.nn.Module, ref_model: torch.nn.Module | None, acc: Accelerator,
                 plugins: dict[str, Any], pad_id: int, params: SamplingParams) -> Learner:
    """The learner of the `learner` section, with the loss plug-ins, KL and rollout correction of `loss`;
    log-probs at the temperature of the rollout's `params`."""
    lc, kl = cfg.learner, cfg.loss.kl
    optim = OptimConfig(lr=lc.lr, weight_decay=lc.weight_decay, betas=lc.betas, warmup_steps=lc.warmup_steps,
                        schedule=lc.schedule, min_lr_ratio=lc.min_lr_ratio, total_steps=cfg.run.steps,
                        max_grad_norm=lc.max_grad_norm)
    batching = BatchingConfig(mini_batches_per_step=lc.mini_batches_per_step, epochs_per_step=lc.epochs_per_step,
                              micro_batch_tokens=lc.micro_batch_tokens, max_new_tokens=params.max_new_tokens,
                              pad_id=pad_id, seed=cfg.run.seed,
                              skip_zero_advantage=lc.skip_zero_advantage and skip_is_exact(
                                  cfg.loss.policy.target, cfg.loss.aggregation.target, kl.coef > 0 and kl.where == "loss"))
    return Learner(
        model, ref_model, acc,
        policy_loss=plugins["policy_loss"], aggregation=plugins["aggregation"], optim=optim, batching=batching,
        temperature=params.temperature,
        kl=KLSettings(coef=kl.coef, estimator=kl.estimator, in_loss=kl.where == "loss"),
        rollout_correction=make_rollout_correction(cfg), max_nonfinite_steps=lc.max_nonfinite_steps,
        old_is_behaviour=old_is_behaviour(cfg), logprob_chunk_tokens=lc.logprob_chunk_tokens,
        share_prompts=lc.share_prompts,
        ref_is_base=ref_is_base(cfg),
    )


def ref_is_base(cfg: Config) -> bool:
    """With model.lora, a KL term and no model.ref_path, the reference is the policy with its adapters
    switched off (the base model), so no second copy is loaded."""
    return cfg.model.lora is not None and cfg.model.ref_path is None and cfg.loss.kl.coef > 0
