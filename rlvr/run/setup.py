"""Everything a run needs before its first step, built in one call: `setup(cfg, ...) -> Run`.

The order matters and is kept here once: the checkpoint to resume is chosen and the recipe
checked against it before anything loads; the data loads before the model (a bad row or a
prompt longer than the context fails in seconds); the learner before the engine (hf generates
with the learner's module); plug-in state, the optimiser's shards and the RNG come back from
the checkpoint last, once every object they belong to exists.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed

from rlvr.config import Config, to_yaml
from rlvr.config.preflight import check_prompt_lengths
from rlvr.eval.evaluate import evaluate
from rlvr.learner import Learner
from rlvr.learner.checkpoint import load_checkpoint_state, resolve_resume, save_checkpoint, set_rng_state
from rlvr.metrics import MetricsLogger
from rlvr.metrics.logger import set_aside
from rlvr.registry import load_object
from rlvr.reward import RewardRunner
from rlvr.rollout import RolloutEngine, SamplingParams
from rlvr.rollout.sync import push_and_verify
from rlvr.run import build
from rlvr.run.alarms import Alarms
from rlvr.run.lifecycle import CheckpointClock, SignalStopped, StopSignals, signal_name, write_atomically
from rlvr.run.pipeline import Pipeline
from rlvr.run.resume_policy import apply_optimizer_changes, change_lines, check_resume
from rlvr.run.services import TrainerServices
from rlvr.run.warmup import warm_up
from rlvr.sampling.draw import draw
from rlvr.types import Prompt, PromptBatch, Rollouts, advantage_scope


@dataclass
class Run:
    """The parts of a running training job, as the loop and the step functions use them."""

    cfg: Config
    dir: Path  # run.output_dir
    acc: Accelerator
    tokenizer: Any
    train_prompts: list[Prompt]
    eval_prompts: list[Prompt]
    sampler: Any  # seam objects: see rlvr/registry.py for their contracts
    allocator: Any
    estimator: Any
    rewards: RewardRunner
    learner: Learner
    engine: RolloutEngine
    params: SamplingParams  # the rollout's sampling settings, for the step and for plug-ins alike
    services: TrainerServices
    logger: MetricsLogger  # opened once the start step is known (after the checkpoint's state is back)
    alarms: Alarms
    stratum_fn: Any  # rollout.stratum: response text -> stratum key, or None
    sync_every: int  # steps between weight-sync probes (0: never)
    sync_tolerance: float | None
    start: int = 0  # the last step already done (the checkpoint's step when resuming)
    checkpoint_dir: Path | None = None  # the checkpoint this run resumed from
    pipeline: Pipeline | None = None  # rollout.mode: disaggregated: the workers' producer and buffer
    env: Any = None  # `env`: multi-turn episodes (rlvr/env/); None: one reply per sample
    # the plug-ins' state: drawn from by the producer thread, observed and saved by the learner's
    plugin_lock: threading.RLock = field(default_factory=threading.RLock)
    clock: CheckpointClock = field(init=False)  # time-based checkpoints, started just before the first step

    @property
    def rank(self) -> int:
        """This process's index among the run's processes."""
        return self.acc.process_index

    @property
    def world(self) -> int:
        """The number of processes of the run."""
        return self.acc.num_processes

    @property
    def stateful(self) -> dict[str, Any]:
        """The objects whose state a checkpoint holds, by the key it is saved under."""
        objects = {"sampler": self.sampler, "allocator": self.allocator, "advantage": self.estimator,
                   "learner": self.learner, "alarms": self.alarms}
        if self.env is not None:  # an environment that keeps state across episodes saves it too
            objects["env"] = self.env
        if self.pipeline is not None:  # the buffer's pending draws and counters; the workers' seed counter
            objects["pipeline"] = self.pipeline
            if callable(getattr(self.engine, "state_dict", None)):
                objects["engine"] = self.engine
        return objects

    def hooked(self, method: str) -> list[Any]:
        """The plug-ins (sampler, allocator, estimator) that define the optional hook `method`."""
        return [p for p in (self.sampler, self.allocator, self.estimator) if callable(getattr(p, method, None))]

    def evaluate(self, step: int) -> None:
        """The recipe's evaluation (greedy accuracy, pass@k) with the current weights, logged at `step`."""
        e, cfg = self.cfg.eval, self.cfg
        # disaggregated: process 0's worker evaluates every prompt, between two batches of the producer
        rank, world = (self.rank, self.world) if self.pipeline is None else (0, 1)
        if self.pipeline is not None and self.rank != 0:
            return
        with self.pipeline.paused() if self.pipeline is not None else nullcontext():
            m = evaluate(self.engine, self.eval_prompts[: e.max_prompts], self.rewards,
                         max_new_tokens=e.max_new_tokens or cfg.rollout.max_new_tokens, stop=self.params.stop,
                         samples=e.samples, ks=e.ks, temperature=e.temperature, process_index=rank,
                         num_processes=world, generate=self.episodes if self.env is not None else None)
        self.logger.log(step, m)

    def episodes(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        """Every sample of `batch` as an episode of the run's environment (rlvr/env/episodes.py)."""
        return self.run_episodes(batch, params)[0]

    def run_episodes(self, batch: PromptBatch, params: SamplingParams) -> tuple[Rollouts, dict[str, float]]:
        """The episodes of `batch` and their env/* metrics, within rollout.max_turns and the token budget."""
        return build.play_episodes(self.cfg, self.engine, self.env, self.tokenizer, batch, params)

    def checkpoint(self, step: int) -> Path:
        """Write the checkpoint of `step` (weights, optimiser, every plug-in's state, RNG); returns its folder."""
        with self.plugin_lock:  # the sampler's state and the producer's pending draws, as of one moment
            state = {"step": step,
                     "plugins": {k: o.state_dict() for k, o in self.stateful.items() if hasattr(o, "state_dict")}}
        self.clock.reset()
        return save_checkpoint(self.dir, step, model=self.learner.model, tokenizer=self.tokenizer, state=state,
                               config_yaml=to_yaml(self.cfg), keep_last=self.cfg.checkpoint.keep_last,
                               accelerator=self.acc, shards=self.learner.save_shards,
                               export=step == self.cfg.run.steps)

    def sync_weights(self, probe: list[int] | None, version: int) -> dict[str, float]:
        """Push the learner's weights (those after step `version`) into the engine; with a probe
        sequence, check that both agree. Disaggregated: when the in-flight policy allows."""
        push = partial(push_and_verify, self.engine, self.learner.full_weights, self.learner.sequence_logprobs,
                       probe, self.sync_tolerance, world_max=lambda x: reduce_max(x, self.world))
        return push() if self.pipeline is None else self.pipeline.push(version, push)

    def close(self) -> None:
        """Stop the rollout producer, the engine and the reward workers, close the metric sinks (safe to
        call twice)."""
        if self.pipeline is not None:
            self.pipeline.stop()
        close_engine(self.engine)
        self.rewards.close()
        if self.logger is not None:  # None when set-up failed before making it
            self.logger.close()


@contextmanager
def setup(cfg: Config, base_dir: Path | None, acc: Accelerator, signals: StopSignals) -> Iterator[Run]:
    """Build (or resume) the run of `cfg`; its reward workers and metric sinks close however it ends.

    Raises before loading anything when the recipe may not resume the folder's checkpoint, and
    SignalStopped when a stop signal arrived during start-up (nothing new to save then).
    """
    run_dir = Path(cfg.run.output_dir)
    ckpt = resolve_resume(cfg.run.resume, run_dir, acc)  # checks it; a broken newest one is named and skipped
    if ckpt is None and cfg.run.resume == "never" and (run_dir / "checkpoints").is_dir():
        raise FileExistsError(f"run.output_dir: {run_dir} already holds checkpoints; use run.resume=auto "
                              "or another run.output_dir (nothing was overwritten)")
    # a resumed run uses the recipe's values where they may change (announced below), and refuses
    # to start where they may not, before anything is loaded or written
    honoured = check_resume(cfg.model_dump(mode="json"), ckpt, base_dir) if ckpt is not None else []
    set_seed(cfg.run.seed + acc.process_index)
    if cfg.sampling.prompts_per_step % acc.num_processes:
        raise ValueError(f"sampling.prompts_per_step ({cfg.sampling.prompts_per_step}) must be a multiple "
                         f"of the number of processes ({acc.num_processes})")

    policy_path = build.model_dir(cfg, base_dir) if acc.is_main_process else None
    acc.wait_for_everyone()
    policy_path = policy_path or build.model_dir(cfg, base_dir)
    # with model.lora the policy is the base model plus the checkpoint's adapter (no model/ weights)
    lora = cfg.model.lora is not None
    weights = ckpt / "model" if ckpt and not lora else policy_path
    tokenizer = build.load_tokenizer(weights)
    env = build.make_env(cfg, base_dir)  # before the prompts: the chat template may show its tools
    train_prompts, data_stats = build.load_prompt_set(cfg, cfg.data.train, tokenizer, base_dir, env)
    eval_prompts = build.load_prompt_set(cfg, cfg.data.eval, tokenizer, base_dir, env)[0] if cfg.data.eval else []
    check_prompt_lengths(cfg, weights, train_prompts, eval_prompts)
    model = build.load_model(weights, cfg, adapter=ckpt / "adapter" if ckpt and lora else None)
    ref_model = build.load_model(cfg.model.ref_path or policy_path, cfg, trainable=False) \
        if cfg.loss.kl.coef > 0 and not build.ref_is_base(cfg) else None
    plugins = build.make_plugins(cfg, train_prompts, base_dir)
    rewards = build.make_reward_runner(cfg, base_dir)
    params = build.sampling_params(cfg)
    learner = build.make_learner(cfg, model, ref_model, acc, plugins, tokenizer.pad_token_id, params)
    # rollout workers start (and restart) from the policy's own folder, which no checkpoint rotation
    # deletes; the learner's weights are pushed into them below either way
    engine = build.make_engine(cfg, learner, tokenizer, policy_path if cfg.rollout.mode == "disaggregated"
                               else weights, acc)
    sync_every, sync_tolerance = build.sync_check(cfg)
    run = Run(
        cfg, run_dir, acc, tokenizer, train_prompts, eval_prompts, plugins["sampler"], plugins["allocator"],
        plugins["advantage"], rewards, learner, engine, params,
        services=TrainerServices(engine=engine, learner=learner, rewards=rewards, prompts=train_prompts,
                                 params=params, rank=acc.process_index, world=acc.num_processes),
        logger=None,  # type: ignore[arg-type]
        alarms=Alarms(cfg.alarms),
        stratum_fn=load_object(cfg.rollout.stratum, base_dir) if cfg.rollout.stratum else None,
        sync_every=sync_every, sync_tolerance=sync_tolerance, checkpoint_dir=ckpt, env=env,
    )
    if cfg.rollout.mode == "disaggregated":
        run.pipeline = make_pipeline(run)
    try:
        if ckpt is not None:
            resume(run, ckpt, honoured)
        moved = _set_aside_old_metrics(run)
        run.logger = MetricsLogger(run_dir, sinks=list(cfg.metrics.sinks), total_steps=cfg.run.steps,
                                   start_step=run.start, config=cfg.model_dump(mode="json"),
                                   wandb_project=cfg.metrics.wandb_project, run_name=cfg.run.name,
                                   is_main=acc.is_main_process)
        _announce(run, policy_path, data_stats, moved + change_lines(honoured))
        if run.start == 0 and cfg.warmup.steps:  # a cold start by imitation, before any engine has the weights
            warm_up(run)
        if not engine.shares_learner_weights:  # the engine loaded from disk: start it from the learner's tensors
            # probed too: an engine that reads the architecture differently fails here, before any training
            first = train_prompts[0].token_ids
            run.sync_weights(first if run.sync_every and len(first) > 1 else None, version=run.start)
        # A stop asked for during start-up (a signal on any process) ends the run before its first
        # step: nothing new to save. Later ones are acted on at the end of the step they arrive in.
        if run.start < cfg.run.steps and (early := int(reduce_max(signals.received or 0, run.world))):
            where = f"a restart resumes from {ckpt}" if ckpt else "no checkpoint yet"
            raise SignalStopped(f"{signal_name(early)} received during start-up, before step {run.start + 1}; "
                                f"nothing new to save ({where})", early)
        if run.start == 0 and cfg.eval.at_start:
            run.evaluate(0)
        run.clock = CheckpointClock(cfg.checkpoint.every_minutes)
        if run.pipeline is not None:
            run.pipeline.start(run.start)
        yield run
    finally:
        run.close()  # rollout workers that this run started stop with it


def close_engine(engine: Any) -> None:
    """Close an engine that has a `close` (the remote workers' clients and the servers they started,
    the vllm engine's core)."""
    if callable(close := getattr(engine, "close", None)):
        close()


def make_pipeline(run: Run) -> Pipeline:
    """The producer and buffer of the rollout workers; process 0's producer generates every process's
    groups (one share, world = 1) with the sampler's draws recorded for checkpoints."""
    r = run.cfg.rollout
    from rlvr.run.step import collect, estimate_groups  # the step's own stages, run on the producer's thread

    return Pipeline(
        partial(collect, run, world=1), partial(draw, run.sampler, run.allocator), run.engine,
        k=r.max_staleness, stale=r.stale, in_flight=r.in_flight, steps=run.cfg.run.steps, rank=run.rank,
        world=run.world, plugin_lock=run.plugin_lock,
        estimate=partial(estimate_groups, run) if advantage_timing(run.cfg, run.estimator) == "produced" else None)


def advantage_timing(cfg: Config, estimator: Any) -> str:
    """When a run's advantages are computed: "produced" (by the rollout workers' producer, as each
    batch is scored: an estimator of scope "group" whose rewards need no learner pass) or "step"
    (stage 3 of the step that trains them: colocated runs, batch-level estimators, KL in the reward)."""
    kl = cfg.loss.kl
    if cfg.rollout.mode != "disaggregated" or (kl.coef > 0 and kl.where == "reward"):
        return "step"
    return "produced" if advantage_scope(estimator) == "group" else "step"


def resume(run: Run, ckpt: Path, honoured: list[tuple[str, Any, Any]]) -> None:
    """Put the checkpoint's state back: every plug-in's, the optimiser's shards, the RNG, the step;
    a learning rate or weight decay the recipe changed (and the resume policy allows) is applied."""
    state, rng = load_checkpoint_state(ckpt, run.rank)
    for key, obj in run.stateful.items():
        if hasattr(obj, "load_state_dict") and key in state["plugins"]:
            obj.load_state_dict(state["plugins"][key])
    run.learner.load_shards(ckpt)  # the optimiser's per-process parts under FSDP2/ZeRO (collective)
    run.start = state["step"]
    if rng is not None:
        set_rng_state(rng)
    if {"learner.lr", "learner.weight_decay"} & {key for key, _, _ in honoured}:
        apply_optimizer_changes(run.learner.scheduler, run.cfg.learner.lr, run.cfg.learner.weight_decay)


def _set_aside_old_metrics(run: Run) -> list[str]:
    """A fresh start moves an older run's metrics in the folder aside (never deletes them); returns
    the lines that say where they went."""
    lines = []
    if run.checkpoint_dir is None and run.acc.is_main_process:
        for name in ("metrics.jsonl", "tb"):
            if (moved := set_aside(run.dir / name)) is not None:
                lines.append(f"rlvr: fresh start: the {name} of an earlier run in this folder was moved to {moved}")
    return lines


def _announce(run: Run, policy_path: str, data_stats: dict[str, int], notes: list[str]) -> None:
    """config.yaml into the run folder, and the start-up lines: what runs, what moved, what changed."""
    if not run.acc.is_main_process:
        return
    cfg, logger = run.cfg, run.logger
    run.dir.mkdir(parents=True, exist_ok=True)
    write_atomically(run.dir / "config.yaml", to_yaml(cfg))
    start = f"resuming at step {run.start}" if run.checkpoint_dir else "fresh start"
    logger.write(f"rlvr: {cfg.run.name} | policy {policy_path} | {len(run.train_prompts)} train / "
                 f"{len(run.eval_prompts)} eval prompts | {start} | {run.world} process(es) on {run.acc.device}")
    if cfg.rollout.mode == "disaggregated":
        name = cfg.advantage.name
        logger.write(f"rlvr: advantage {name}: computed as each batch is scored (it needs only each sample's group)"
                     if advantage_timing(cfg, run.estimator) == "produced" else
                     f"rlvr: advantage {name}: computed when the learner takes the step's batch ("
                     + ("KL in the reward needs the learner's log-probs)" if advantage_scope(run.estimator) == "group"
                        else "batch-level: it waits for every group of the step)"))
    for line in notes:
        logger.write(line)
    if data_stats["skipped"]:
        reasons = ", ".join(f"{k} {v}" for k, v in data_stats.items() if k not in ("rows", "skipped") and v)
        logger.write(f"rlvr: skipped {data_stats['skipped']} of {data_stats['rows']} training rows ({reasons})")


def reduce_max(value: float, world: int) -> float:
    """The largest value over processes (every process gets it)."""
    return value if world == 1 else max(gather_object([value]))
