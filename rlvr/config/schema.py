"""The typed recipe schema. Every key a recipe may set is declared here, with its default.

Plug-in sections (`sampling.sampler`, `sampling.allocator`, `advantage`, `loss.policy`,
`loss.aggregation`) take a `name` plus the keyword arguments of that plug-in's constructor;
those are checked against the plug-in's signature in `rlvr.config.load.validate`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Plugin(BaseModel):
    """`{name: ..., **kwargs}`: kwargs go to the plug-in's constructor/function.

    Validation (`rlvr.config.load.validate`) resolves `name` once and completes the kwargs: the
    recipe's values converted to the annotated types, plus every signature default the recipe left
    out, so the dumped config records what the plug-in gets.
    """

    model_config = ConfigDict(extra="allow")
    name: str
    _target: Any = PrivateAttr(None)

    @property
    def kwargs(self) -> dict[str, Any]:
        """Every key other than `name`, as a fresh dict (the plug-in's constructor/function arguments)."""
        return dict(self.model_extra or {})

    @property
    def target(self) -> Any:
        """The function or class `name` resolved to when the recipe was validated."""
        if self._target is None:
            raise RuntimeError(f"plug-in {self.name!r} is not resolved: build plug-ins from a validated "
                               "Config (rlvr.config.load.validate or load_config)")
        return self._target


class RunConfig(Section):
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    steps: int = Field(100, ge=1, description="training steps (one rollout + update each)")
    resume: str = Field("auto", description="'auto' (latest checkpoint in output_dir), 'never', or a path")


class TinyModelBuild(Section):
    arch: Literal["qwen2", "llama"] = "qwen2"
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    head_dim: int = Field(32, ge=4)
    intermediate_size: int | None = None
    max_position_embeddings: int = Field(512, ge=16)
    characters: str | None = Field(None, description="vocabulary alphabet; default printable ASCII + newline")
    seed: int = 0


class LoraSettings(Section):
    """Low-rank adapters (LoRA, through the `peft` library): each targeted linear layer W gets a
    trainable update (alpha / r) * B @ A of rank r, and only A and B are trained. Checkpoints hold
    the adapter; the last one also holds the merged model in `model/` (see rlvr/learner/lora.py)."""

    r: int = Field(16, ge=1, description="rank of each adapter")
    alpha: float = Field(32.0, gt=0, description="scale numerator: the update is (alpha / r) * B @ A")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input while training")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="short names of the linear modules that get adapters (q_proj, v_proj, ...), "
        "or all-linear: every linear layer but the output head")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _names_or_all(cls, v: Any) -> Any:
        # checked here, before pydantic tries each member of the union, so that one message names the key
        names = isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)
        if v != "all-linear" and not names:
            raise ValueError("a non-empty list of module names (q_proj, v_proj, ...) or all-linear")
        return v


class ModelConfig(Section):
    path: str = Field(..., description="local folder or hub name of a causal LM")
    build_tiny: TinyModelBuild | None = Field(None, description="build a tiny random model at `path` if absent")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    ref_path: str | None = Field(None, description="reference model for KL; default: model.path (with LoRA: "
                                 "the policy with its adapters switched off, no second copy)")
    lora: LoraSettings | None = Field(None, description="train low-rank adapters instead of every weight")


class DatasetConfig(Section):
    path: str
    split: str | None = None
    args: dict[str, Any] = Field(default_factory=dict, description="arguments of a synthetic:<task> or "
                                 "reasoning-gym:<task> source (size, seed, test_fraction, the task's config); "
                                 "`{}` or null in a derived recipe drops those of its base")
    limit: int | None = Field(None, ge=1, description="use only the first `limit` rows")

    @field_validator("args", mode="before")
    @classmethod
    def _null_is_none(cls, v: Any) -> Any:
        return {} if v is None else v


class DataConfig(Section):
    train: DatasetConfig
    eval: DatasetConfig | None = None
    prompt_field: str | None = "prompt"
    prompt_template: str | None = None
    system_prompt: str | None = None
    chat_template: bool = True
    tool_schemas: bool = Field(True, description="with an env that has tools (tool_schemas()) and a chat template: "
                               "the template gets the tools' JSON schemas as `tools=` and renders them as its model "
                               "was trained to read them (Qwen: a <tools> block in the system turn); a template that "
                               "ignores tools is unchanged. false: the prompt shows only your system_prompt")
    answer_field: str | None = "answer"
    max_prompt_tokens: int | None = Field(None, ge=1)
    on_bad_row: Literal["error", "skip"] = "error"


class DynamicSamplingConfig(Section):
    filter_zero_variance: bool = Field(False, description="drop groups whose rewards are all equal (DAPO)")
    refill: bool = Field(False, description="sample more prompts until prompts_per_step informative groups")
    max_rounds: int = Field(4, ge=1, description="generation rounds per step at most when refilling")


class SamplingConfig(Section):
    sampler: Plugin = Field(default_factory=lambda: Plugin(name="uniform"))
    allocator: Plugin = Field(default_factory=lambda: Plugin(name="fixed"))
    prompts_per_step: int = Field(32, ge=1, description="prompts per step over all processes")
    samples_per_prompt: int = Field(8, ge=1)
    dynamic: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)


class VLLMConfig(Section):
    """Options of the colocated vLLM engine (`rollout.engine: vllm`)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on GPU, float32 on CPU")
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0, description="share of GPU memory for the engine "
                                          "(weights + KV cache); the learner lives in the rest")
    kv_cache_gb: float | None = Field(None, gt=0.0, description="KV-cache size in GiB (overrides the memory share); "
                                      "default: 1 on CPU, the memory share on GPU")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine; consecutive ranks form one group")
    max_model_len: int | None = Field(None, ge=16, description="default: prompt + max_new_tokens limit of the model")
    enforce_eager: bool = Field(False, description="no CUDA graphs (faster start, slower decode)")
    sleep_mode: bool | None = Field(None, description="free the engine's memory during the update; "
                                    "default: on with a GPU, off on CPU (unsupported there)")
    max_num_seqs: int = Field(256, ge=1, description="sequences decoded concurrently")


class WorkersConfig(Section):
    """The rollout workers of `rollout.mode: disaggregated`: vLLM OpenAI servers (`rollout.engine: vllm`)
    or, with `engine: hf`, one in-process copy of the policy generating on its own thread."""

    urls: list[str] = Field(default_factory=list, description="running workers to use (`rlvr serve`), e.g. "
                            "http://node7:8100; empty: rlvr starts `num` of them on this machine")
    num: int = Field(1, ge=1, description="workers rlvr starts when `urls` is empty (vllm engine)")
    port: int = Field(8100, ge=1, le=65535, description="port of the first started worker (the next get +1, ...)")
    gpus: list[str] = Field(default_factory=list, description="CUDA_VISIBLE_DEVICES of each started worker, one "
                            "entry per worker with rollout.vllm.tensor_parallel_size devices, e.g. [\"4,5\", \"6,7\"]; "
                            "empty: every worker sees the learner's devices")
    request_timeout_s: float = Field(600.0, gt=0.0, description="a request without an answer by then marks its "
                                     "worker down; its groups go to the others")
    health_every_s: float = Field(5.0, gt=0.0, description="seconds between health checks of every worker")
    restart: bool = Field(True, description="restart a started worker that died (URL workers are only retried)")
    keep_weights: bool | None = Field(None, description="keep a host copy of the last pushed weights so a worker "
                                      "that comes back serves at once (default: only with one worker, where "
                                      "waiting for the next push would stop the run)")
    log_dir: str | None = Field(None, description="started workers' logs; default: <run.output_dir>/workers")


class RolloutConfig(Section):
    engine: Literal["hf", "vllm"] = Field("hf", description="hf: transformers generate with the learner's module; "
                                          "vllm: a colocated vLLM engine per process")
    mode: Literal["colocated", "disaggregated"] = Field(
        "colocated", description="colocated: each learner process generates its share, then trains; "
        "disaggregated: rollout workers of their own (rollout.workers) feed a buffer the learner takes from")
    max_staleness: int = Field(0, ge=0, description="disaggregated: how many policy versions a trained sample may "
                               "lag the learner; 0 is the synchronous run, k >= 1 overlaps generating the next k "
                               "steps with the update")
    stale: Literal["drop", "regenerate"] = Field(
        "regenerate", description="a group older than max_staleness when the learner reaches it: dropped (the "
        "step trains on fewer groups) or generated again with the current weights; both are counted")
    in_flight: Literal["finish", "abort"] = Field(
        "finish", description="requests running when new weights arrive: finish on the old weights (their "
        "policy version says so), or are aborted and generated again after the update")
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    sync_check_every: int | None = Field(None, ge=0, description="steps between weight-sync probes (0: never); "
                                         "default 1 for engines with their own weights, 0 for hf")
    sync_tolerance: float | None = Field(None, gt=0.0, description="largest allowed |engine - learner| probe "
                                         "log-prob after a push; default 1e-3 (float32 engine), 0.5 (16-bit)")
    max_new_tokens: int = Field(256, ge=1, description="tokens per reply (per model turn with an env)")
    max_turns: int = Field(4, ge=1, description="with an env: model turns per episode at most")
    max_episode_tokens: int | None = Field(None, ge=1, description="with an env: tokens after the prompt per "
                                           "episode at most, the model's and the environment's; default "
                                           "max_turns * max_new_tokens")
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    stop: list[str] = Field(default_factory=list, description="stop strings (kept out of the text)")
    batch_prompts: int = Field(64, ge=1, description="prompts per generate() call")
    share_prefill: bool = Field(True, description="hf engine: run each distinct prompt of a generate() call "
                                "through the model once and repeat its keys and values for its samples (the same "
                                "samples to float rounding); off under fsdp2/zero3 and for models without a "
                                "transformers DynamicCache")
    stratum: str | None = Field(None, description="'module:fn' or 'file.py:fn' mapping a completion's text to "
                                "its stratum key (for stratified advantages)")


class RewardFunctionConfig(Section):
    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = Field(default_factory=dict)
    batched: bool = Field(False, description="user code scores a list of samples per call; in worker "
                          "processes it gets the step's samples in reward.workers calls")
    label: str | None = None
    isolate: bool | None = Field(
        None, description="run in worker processes, where a reward that exits, crashes, hangs in C code or leaks "
        "costs only its sample; null: yes for user code ('file.py:fn', 'module:fn') and `math`, no for the other "
        "built-ins. false runs user code inside the trainer: faster to call, but your code can kill the run")


class RewardConfig(Section):
    functions: list[RewardFunctionConfig] = Field(..., min_length=1)
    timeout_s: float = Field(10.0, gt=0.0, description="per sample (per call for batched rewards); a sample over "
                             "it scores 0 and counts in reward/<label>/timeouts")
    on_failure: Literal["zero", "abort"] = Field(
        "zero", description="zero: a sample whose reward raises, times out, exits or crashes scores 0 and is "
        "counted; abort: stop the run at the first such sample, naming the reward, the sample and the cause")
    workers: int = Field(1, ge=1, description="worker processes for the isolated rewards")
    max_tasks_per_worker: int | None = Field(
        None, ge=1, description="a reward worker is replaced by a fresh one after scoring this many samples "
        "(null: never); for rewards that slowly leak resources other than memory")
    max_worker_memory_mb: float | None = Field(
        4096.0, gt=0.0, description="a reward worker whose resident memory passes this many MB after a sample is "
        "replaced by a fresh one, with a warning naming the reward (null: no ceiling)")
    accuracy: str | None = Field(None, description="label of the reward that defines accuracy; default the first")
    correct_threshold: float = 1.0


class KLConfig(Section):
    coef: float = Field(0.0, ge=0.0, description="0 disables KL and no reference model is loaded")
    estimator: Literal["k1", "abs", "k2", "k3", "k3+"] = "k3"
    where: Literal["loss", "reward"] = "loss"


class RolloutCorrectionConfig(Section):
    """Importance weights for the gap between the engine's and the learner's token probabilities."""

    apply: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: on with the vllm engine and with rollout workers (samples up to "
        "rollout.max_staleness versions old), off with the colocated hf engine (same module: no gap to correct)")
    token_cap: float | None = Field(2.0, gt=0.0, description="truncate each token's weight at this cap (TIS); "
                                    "null: no token weights")
    sequence_mask: tuple[float, float] | None = Field(
        None, description="[low, high]: drop samples whose per-token geometric-mean ratio falls outside")

    @field_validator("sequence_mask")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError("[low, high] with 0 <= low < high")
        return v


class LossConfig(Section):
    policy: Plugin = Field(default_factory=lambda: Plugin(name="ppo_clip"))
    aggregation: Plugin = Field(default_factory=lambda: Plugin(name="token_mean"))
    kl: KLConfig = Field(default_factory=KLConfig)
    rollout_correction: RolloutCorrectionConfig = Field(default_factory=RolloutCorrectionConfig)
    old_policy: Literal["auto", "learner", "behaviour"] = Field(
        "auto", description="the log-probs the policy ratio (and its clipping) is taken against: learner = "
        "the learner's before the update (ratio 1 with one update per step); behaviour = those recorded when "
        "the samples were generated, so clipping bounds how far samples some versions old move the policy; "
        "auto: behaviour with rollout.max_staleness >= 1, else learner")


class LearnerConfig(Section):
    lr: float = Field(1e-6, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    mini_batches_per_step: int = Field(1, ge=1, description="optimizer steps per RL step")
    epochs_per_step: int = Field(1, ge=1, description="passes over the step's samples")
    micro_batch_tokens: int = Field(8192, ge=1, description="token budget of one forward/backward")
    logprob_chunk_tokens: int = Field(
        512, ge=0, description="response positions whose logits exist at once when log-probs are taken: the LM "
        "head runs over the final hidden states in chunks of this many positions, each recomputed in the backward, "
        "so no [tokens, vocabulary] float32 logits tensor is built (same values to float32 rounding); 0 = the "
        "model's full logits. Model families whose logits are more than the LM head's output (e.g. logit "
        "soft-capping) always take the full logits")
    skip_zero_advantage: bool = Field(
        True, description="leave samples whose advantage is exactly 0 (e.g. every sample of a group whose rewards "
        "are all equal) out of the forward and backward passes; they still count in the loss normalisers, so the "
        "gradient is unchanged and the update is cheaper by their share (learner/zero_adv_skipped). Applied only "
        "where it is exact: no KL term in the loss, and a loss and aggregation that declare it (the built-ins do; "
        "see docs/architecture.md); per-token metrics (entropy, clip fraction) then average over the samples "
        "that were kept")
    share_prompts: bool = Field(
        True, description="run each distinct prompt of a micro-batch through the model once and let the samples "
        "of its group attend to its keys and values (gradients included), instead of once per sample; the same "
        "values and gradients to float rounding, fewer tokens in every forward and backward (most on tasks with "
        "short answers). Applies on one process, to models whose logits are the LM head's output, without "
        "gradient checkpointing; elsewhere every sample runs its own prompt")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    strategy: Literal["auto", "ddp", "fsdp2", "zero2", "zero3"] = Field(
        "auto", description="how several processes share the policy: auto = what `accelerate launch "
        "--config_file` set up, else plain data parallel; ddp; fsdp2 (parameters, gradients and optimiser "
        "state sharded); zero2 (gradients and optimiser state sharded, DeepSpeed); zero3 (all three, DeepSpeed)")
    max_nonfinite_steps: int = Field(
        3, ge=1, description="an update whose loss or gradient norm is NaN/inf is skipped and counted; after this "
        "many RL steps in a row with a skipped update the run stops with a message (no checkpoint of the suspect "
        "weights is written)")


class EvalConfig(Section):
    every: int = Field(0, ge=0, description="steps between evaluations; 0 disables periodic eval")
    at_start: bool = True
    max_prompts: int | None = Field(256, ge=1)
    samples: int = Field(0, ge=0, description="sampled completions per prompt for pass@k / mean@k")
    ks: list[int] = Field(default_factory=lambda: [1])
    temperature: float = Field(1.0, gt=0.0)
    max_new_tokens: int | None = Field(None, ge=1, description="default: rollout.max_new_tokens")


class WarmupConfig(Section):
    """`warmup`: supervised steps on demonstrations before the first RL step (a cold start).

    A policy that cannot yet produce what the reward needs (a tiny model and a JSON tool call, a
    base model and a chat format) gets no signal from RL; a few steps of imitation on worked
    examples give it one. Each training row's `column` holds its demonstration: a string (one
    reply) or a list of strings (the model's turns of an episode; the environment answers between
    them for real, so its tokens are the ones RL will see). Only the model's tokens are trained.
    Runs once, on a fresh start; a resumed run takes its weights from the checkpoint.
    """

    steps: int = Field(0, ge=0, description="supervised optimiser steps before RL (0: no warm-up)")
    column: str = Field("demonstration", min_length=1, description="the data column holding each row's demonstration")
    max_rows: int | None = Field(None, ge=1, description="demonstrations from the first N training rows only "
                                 "(the demonstration budget); none: every row")
    batch_size: int = Field(32, ge=1, description="demonstrations per step, over all processes")
    lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate of the warm-up (its own optimiser; the RL "
                      "optimiser starts fresh afterwards)")


class CheckpointConfig(Section):
    every: int = Field(100, ge=0, description="steps between checkpoints; 0: only at the end, on a stop signal "
                       "and every_minutes")
    every_minutes: float = Field(30.0, ge=0.0, description="also checkpoint once this many minutes passed since "
                                 "the last checkpoint (0: off), so a slow run loses at most about this much")
    keep_last: int = Field(2, ge=1)
    at_end: bool = True


class MetricsConfig(Section):
    sinks: list[Literal["console", "jsonl", "tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["console", "jsonl", "tensorboard"]
    )
    wandb_project: str = "rlvr"
    plot: bool = True


class AlarmConfig(Section):
    """One alarm: it fires when its condition holds over the last `window` steps (see rlvr/run/alarms.py).
    warn: one line when it starts firing, and alarm/<name> = 1 in the metrics while it does; stop:
    checkpoint and exit non-zero with a message; off: not watched."""

    window: int = Field(10, ge=1, description="steps the condition must hold over")
    threshold: float = Field(0.0, description="the alarm's limit (its meaning depends on the alarm)")
    action: Literal["warn", "stop", "off"] = "warn"

    @field_validator("action", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false


class ZeroRewardAlarm(AlarmConfig):
    window: int = Field(50, ge=1, description="steps in which every reward must be zero")
    threshold: float = Field(0.0, ge=0.0, description="rewards this small in size count as zero")
    action: Literal["warn", "stop", "off"] = "stop"


class RewardFailuresAlarm(AlarmConfig):
    window: int = Field(10, ge=1, description="steps over which the failure share is measured")
    threshold: float = Field(1.0, gt=0.0, le=1.0, description="share of samples whose reward failed or timed out")
    action: Literal["warn", "stop", "off"] = "stop"


class NonfiniteAdvantagesAlarm(AlarmConfig):
    window: int = Field(10, ge=1, description="steps over which advantage/nonfinite_frac is averaged")
    threshold: float = Field(1.0, gt=0.0, le=1.0, description="share of advantages that were NaN/inf")
    action: Literal["warn", "stop", "off"] = "stop"


class PolicyCollapseAlarm(AlarmConfig):
    window: int = Field(50, ge=2, description="steps over which entropy is averaged and reward compared half to half")
    threshold: float = Field(0.01, ge=0.0, description="mean token entropy (nats) below which the policy has collapsed")
    action: Literal["warn", "stop", "off"] = "warn"


class MismatchAlarm(AlarmConfig):
    window: int = Field(20, ge=1, description="steps learner/mismatch_k3 must stay above the threshold")
    threshold: float = Field(0.01, ge=0.0, description="k3 estimate of KL(engine || learner) per token, nats")
    action: Literal["warn", "stop", "off"] = "warn"


class AlarmsConfig(Section):
    """Alarms for runs that go wrong without crashing; README "Alarms" says what each means."""

    zero_reward: ZeroRewardAlarm = Field(default_factory=ZeroRewardAlarm)
    reward_failures: RewardFailuresAlarm = Field(default_factory=RewardFailuresAlarm)
    nonfinite_advantages: NonfiniteAdvantagesAlarm = Field(default_factory=NonfiniteAdvantagesAlarm)
    policy_collapse: PolicyCollapseAlarm = Field(default_factory=PolicyCollapseAlarm)
    mismatch: MismatchAlarm = Field(default_factory=MismatchAlarm)


class Config(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig
    data: DataConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig
    advantage: Plugin = Field(default_factory=lambda: Plugin(name="grpo"))
    env: Plugin | None = Field(None, description="multi-turn episodes: the environment that answers the model "
                               "between turns (tools, observations); none: one reply per sample")
    loss: LossConfig = Field(default_factory=LossConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    alarms: AlarmsConfig = Field(default_factory=AlarmsConfig)
