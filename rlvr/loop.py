"""The spine of rlvr: one function that trains a policy from a typed recipe.

Each step: sample prompts -> roll out -> score -> advantages -> pack -> update -> sync weights,
then metrics, evaluation and checkpoints. No algorithm-specific branches live here: methods
plug in through the registries (sampler, allocator, advantage, policy_loss, aggregation, reward).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object, set_seed

from rlvr.run import build
from rlvr.advantage.filters import concat_scored, informative_groups, select_groups
from rlvr.run.alarms import Alarms
from rlvr.buffer import as_batch
from rlvr.config import Config, to_yaml
from rlvr.config.preflight import check_prompt_lengths
from rlvr.eval.evaluate import evaluate
from rlvr.learner.checkpoint import (
    list_checkpoints,
    load_checkpoint_state,
    resolve_resume,
    save_checkpoint,
    set_rng_state,
)
from rlvr.learner.policy_loss import kl_in_reward
from rlvr.run.lifecycle import (
    CheckpointClock,
    SignalStopped,
    StopRequest,
    StopSignals,
    run_folder_lock,
    signal_name,
    signal_stop,
    write_atomically,
)
from rlvr.metrics import MetricsLogger, tensor_stats
from rlvr.metrics.logger import set_aside
from rlvr.registry import load_object
from rlvr.run.resume_policy import apply_optimizer_changes, change_lines, check_resume
from rlvr.reward import score_rollouts
from rlvr.rollout import SamplingParams
from rlvr.rollout.sync import probe_sequence, push_and_verify
from rlvr.run.services import Services
from rlvr.types import AdvantageBatch, AdvantageInput, PromptBatch, Rollouts, ScoredRollouts, StepOutcome


def train(cfg: Config, base_dir: Path | None = None) -> Path:
    """Run (or resume) the recipe; returns the run folder.

    Holds the run folder's lock throughout (RunLocked when another run has it). SIGTERM, SIGUSR1
    and SIGINT stop the run at the end of the current step, after a checkpoint, by raising
    SignalStopped; the caller's own signal handlers are back in place when this returns.
    """
    import rlvr.plugins  # noqa: F401

    # first of all, so that a signal during a long start-up is not lost
    with StopSignals(announce=os.environ.get("RANK", "0") == "0") as signals:
        acc = build.make_accelerator(cfg)
        with run_folder_lock(Path(cfg.run.output_dir), acc):
            return _train(cfg, base_dir, acc, signals)


def _train(cfg: Config, base_dir: Path | None, acc, signals: StopSignals) -> Path:
    run_dir = Path(cfg.run.output_dir)
    ckpt = resolve_resume(cfg.run.resume, run_dir, acc)  # checks it; a broken newest one is named and skipped
    if ckpt is None and cfg.run.resume == "never" and (run_dir / "checkpoints").is_dir():
        raise FileExistsError(f"run.output_dir: {run_dir} already holds checkpoints; use run.resume=auto "
                              "or another run.output_dir (nothing was overwritten)")
    # a resumed run uses the recipe's values where they may change (announced below), and refuses
    # to start where they may not, before anything is loaded or written
    honoured = check_resume(cfg.model_dump(mode="json"), ckpt) if ckpt is not None else []
    set_seed(cfg.run.seed + acc.process_index)
    world, rank = acc.num_processes, acc.process_index
    if cfg.sampling.prompts_per_step % world:
        raise ValueError(f"sampling.prompts_per_step ({cfg.sampling.prompts_per_step}) must be a multiple "
                         f"of the number of processes ({world})")

    # ---- models, data, plug-ins -------------------------------------------------------------
    policy_path = build.model_dir(cfg, base_dir) if acc.is_main_process else None
    acc.wait_for_everyone()
    policy_path = policy_path or build.model_dir(cfg, base_dir)
    tokenizer = build.load_tokenizer(ckpt / "model" if ckpt else policy_path)
    # the data before the model: a bad row, or a prompt longer than the model's context, fails in seconds
    train_prompts, data_stats = build.load_prompt_set(cfg, cfg.data.train, tokenizer, base_dir)
    eval_prompts = build.load_prompt_set(cfg, cfg.data.eval, tokenizer, base_dir)[0] if cfg.data.eval else []
    check_prompt_lengths(cfg, ckpt / "model" if ckpt else policy_path, train_prompts, eval_prompts)
    model = build.load_model(ckpt / "model" if ckpt else policy_path, cfg)
    ref_model = None
    if cfg.loss.kl.coef > 0:
        ref_model = build.load_model(cfg.model.ref_path or policy_path, cfg, trainable=False)
    plugins = build.make_plugins(cfg, train_prompts, base_dir)
    sampler, allocator, estimator = plugins["sampler"], plugins["allocator"], plugins["advantage"]
    rewards = build.make_reward_runner(cfg, base_dir)
    learner = build.make_learner(cfg, model, ref_model, acc, plugins, pad_id=tokenizer.pad_token_id)
    engine = build.make_engine(cfg, learner, tokenizer, ckpt / "model" if ckpt else policy_path, acc)
    sync_every, sync_tolerance = build.sync_check(cfg)
    alarms = Alarms(cfg.alarms)  # watches the reduced metrics of every step (rlvr/run/alarms.py)
    stateful = {"sampler": sampler, "allocator": allocator, "advantage": estimator, "learner": learner,
                "alarms": alarms}
    stratum_fn = load_object(cfg.rollout.stratum, base_dir) if cfg.rollout.stratum else None

    start = 0
    if ckpt is not None:
        state, rng = load_checkpoint_state(ckpt, rank)
        for key, obj in stateful.items():
            if hasattr(obj, "load_state_dict") and key in state["plugins"]:
                obj.load_state_dict(state["plugins"][key])
        learner.load_shards(ckpt)  # the optimiser's per-process parts under FSDP2/ZeRO (collective)
        start = state["step"]
        if rng is not None:
            set_rng_state(rng)
        if {"learner.lr", "learner.weight_decay"} & {key for key, _, _ in honoured}:
            apply_optimizer_changes(learner.scheduler, cfg.learner.lr, cfg.learner.weight_decay)
    set_aside_lines = []
    if ckpt is None and acc.is_main_process:  # a fresh start: an older run's metrics move aside, never deleted
        for name in ("metrics.jsonl", "tb"):
            if (moved := set_aside(run_dir / name)) is not None:
                set_aside_lines.append(f"rlvr: fresh start: the {name} of an earlier run in this folder was moved "
                                       f"to {moved}")
    logger = MetricsLogger(run_dir, sinks=list(cfg.metrics.sinks), total_steps=cfg.run.steps, start_step=start,
                           config=cfg.model_dump(mode="json"), wandb_project=cfg.metrics.wandb_project,
                           run_name=cfg.run.name, is_main=acc.is_main_process)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(run_dir / "config.yaml", to_yaml(cfg))
        logger.write(f"rlvr: {cfg.run.name} | policy {policy_path} | {len(train_prompts)} train / "
                     f"{len(eval_prompts)} eval prompts | {'resuming at step ' + str(start) if ckpt else 'fresh start'}"
                     f" | {world} process(es) on {acc.device}")
        for line in set_aside_lines + change_lines(honoured):
            logger.write(line)
        if data_stats["skipped"]:
            reasons = ", ".join(f"{k} {v}" for k, v in data_stats.items() if k not in ("rows", "skipped") and v)
            logger.write(f"rlvr: skipped {data_stats['skipped']} of {data_stats['rows']} training rows ({reasons})")
    params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                            top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, stop=tuple(cfg.rollout.stop))
    services = Services(engine=engine, learner=learner, rewards=rewards, prompts=train_prompts, params=params,
                        rank=rank, world=world)

    def hooked(method: str) -> list:
        return [p for p in (sampler, allocator, estimator) if callable(getattr(p, method, None))]

    def run_eval(step: int) -> None:
        e = cfg.eval
        m = evaluate(engine, eval_prompts[: e.max_prompts], rewards,
                     max_new_tokens=e.max_new_tokens or cfg.rollout.max_new_tokens, stop=params.stop,
                     samples=e.samples, ks=e.ks, temperature=e.temperature, process_index=rank, num_processes=world)
        logger.log(step, m)

    def checkpoint(step: int) -> Path:
        state = {"step": step, "plugins": {k: o.state_dict() for k, o in stateful.items() if hasattr(o, "state_dict")}}
        clock.reset()
        return save_checkpoint(run_dir, step, model=learner.model, tokenizer=tokenizer, state=state,
                               config_yaml=to_yaml(cfg), keep_last=cfg.checkpoint.keep_last, accelerator=acc,
                               shards=learner.save_shards)

    def sync_weights(probe: list[int] | None) -> dict[str, float]:
        return push_and_verify(engine, learner.full_weights, learner.sequence_logprobs, probe, sync_tolerance,
                               world_max=lambda x: _reduce_max(x, world))

    if not engine.shares_learner_weights:  # the engine loaded from disk: start it from the learner's tensors
        # probed too: an engine that reads the architecture differently fails here, before any training
        sync_weights(train_prompts[0].token_ids if sync_every and len(train_prompts[0].token_ids) > 1 else None)
    # A stop asked for during start-up (a signal on any process) ends the run before its first step:
    # nothing new to save. Later ones are acted on at the end of the step they arrive in.
    if start < cfg.run.steps and (early := int(_reduce_max(signals.received or 0, world))):
        rewards.close()
        logger.close()
        resume = f"a restart resumes from {ckpt}" if ckpt else "no checkpoint yet"
        raise SignalStopped(f"{signal_name(early)} received during start-up, before step {start + 1}; nothing new "
                            f"to save ({resume})", early)
    if start == 0 and cfg.eval.at_start:
        run_eval(0)

    clock = CheckpointClock(cfg.checkpoint.every_minutes)
    # Why the run stops at the end of this step (a signal, an alarm...), or None: the step ends with
    # a checkpoint (unless stop.checkpoint is False) and stop.stopped(...) is raised.
    stop: StopRequest | None = None

    # ---- the loop -----------------------------------------------------------------------------
    for step in range(start + 1, cfg.run.steps + 1):
        t0 = time.perf_counter()

        # hooks that need work beyond the step's batch (e.g. VAS re-scoring, GVM estimation)
        hook_metrics = {}
        for plugin in hooked("refresh"):
            hook_metrics.update(plugin.refresh(step, services) or {})

        # 0-2. sample prompts, roll out, score; with dynamic sampling, drop zero-variance groups
        # and refill (every process draws the same global prompts and takes its own share)
        t1 = time.perf_counter()
        scored, prompt_indices, sampling_metrics = collect(
            sampler, allocator, engine, rewards, train_prompts, params, cfg.sampling, rank, world, tokenizer.pad_token_id
        )
        rollouts = scored.rollouts
        engine.sleep()  # an engine with a sleep mode (vLLM on GPU) frees its memory for the learner

        # 3. advantage (on the whole step batch of all processes: groups are complete)
        t3 = time.perf_counter()
        old_lp = learner.logprobs(as_batch(scored), use_ref=False) if learner.needs_old_logprobs else None
        ref_lp = learner.logprobs(as_batch(scored), use_ref=True) if ref_model is not None else None
        shaped = scored.rewards
        if ref_lp is not None and cfg.loss.kl.where == "reward":
            shaped = kl_in_reward(scored.rewards, old_lp, ref_lp, rollouts.response_mask, cfg.loss.kl.coef)
        strata = [stratum_fn(t) for t in rollouts.texts] if stratum_fn else None
        adv_in, local_rows = gather_advantage_input(scored, shaped, step, rank, world, strata)
        adv_out = estimator(adv_in)
        adv_out.metrics["advantage/nonfinite_frac"] = _zero_nonfinite(adv_out)
        weights = adv_out.weights if adv_out.weights is not None else torch.ones_like(adv_out.advantages)
        adv_batch = AdvantageBatch(scored, adv_out.advantages[local_rows], weights[local_rows], old_lp, ref_lp)

        # 4 + 5. pack into micro-batches and update the policy; 6. the engine gets the new weights
        t4 = time.perf_counter()
        learn_metrics = learner.step(adv_batch, step=step)
        t5 = time.perf_counter()
        check = sync_every and step % sync_every == 0
        learn_metrics.update(sync_weights(probe_sequence(rollouts) if check else None))
        t6 = time.perf_counter()

        # 7. stateful plug-ins learn from the step (e.g. VADE posteriors, SPO tracker)
        if hooked("observe"):
            outcome = gather_outcome(scored, prompt_indices, step, world)
            for plugin in hooked("observe"):
                hook_metrics.update(plugin.observe(outcome, services) or {})

        metrics = {**scored.metrics, **sampling_metrics, **hook_metrics, **adv_out.metrics, **learn_metrics,
                   **rollout_metrics(rollouts), **tensor_stats("advantage", adv_batch.advantages)}
        gen_tokens = float(rollouts.lengths.sum())
        metrics.update({
            "perf/rollout_s": t3 - t1 - scored.metrics.get("perf/reward_s", 0.0), "perf/advantage_s": t4 - t3,
            "perf/learn_s": t5 - t4, "perf/sync_s": t6 - t5, "perf/step_s": t6 - t0,
            "perf/rollout_tokens_per_s": gen_tokens / max(t3 - t1 - scored.metrics.get("perf/reward_s", 0.0), 1e-9),
            "perf/train_tokens_per_s": _train_tokens(rollouts) * learner.epochs / max(t5 - t4, 1e-9),
        })
        # every process agrees on the stop and time-based checkpoint flags in the metrics' gather
        control = {"signal": signals.received or 0, "clock": int(rank == 0 and clock.due())}
        metrics, control = _reduce_step(metrics, control, world)
        # the reduced metrics are the same on every process, and so are the alarms' and the guard's verdicts
        stop = _watch(step, metrics, alarms, learner.guard, logger, run_dir) or stop
        logger.log(step, metrics)
        if stop is None and control["signal"] and step < cfg.run.steps:  # at the last step: just finish
            stop = signal_stop(int(control["signal"]))

        if cfg.eval.every and step % cfg.eval.every == 0:
            run_eval(step)
        saved = None
        # no periodic checkpoint of weights that the step's non-finite update makes suspect (the guard's
        # streak): it could push the last good one out; the next clean step writes it (the clock stays due)
        periodic = learner.guard.streak == 0 and (
            (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or control["clock"])
        due = periodic or (step == cfg.run.steps and cfg.checkpoint.at_end)
        if (due if stop is None else stop.checkpoint):  # a stop decides: saved unless its weights are suspect
            saved = checkpoint(step)
        if stop is not None:
            logger.close()
            rewards.close()
            raise stop.stopped(step, saved)

    if cfg.eval.every and cfg.run.steps % cfg.eval.every and start < cfg.run.steps:
        run_eval(cfg.run.steps)
    logger.close()
    rewards.close()
    acc.wait_for_everyone()
    if acc.is_main_process and cfg.metrics.plot and "jsonl" in cfg.metrics.sinks:
        from rlvr.metrics.plot import plot_run

        png = plot_run(run_dir)
        print(f"rlvr: curves written to {png}")
    return run_dir


def collect(sampler, allocator, engine, rewards, prompts, params, sc, rank: int, world: int, pad_id: int):
    """Stages 0-2 of a step: this process's scored groups, their dataset indices, and metrics.

    Without dynamic sampling this is one round: draw prompts_per_step prompts, keep this
    process's share, generate, score. With `filter_zero_variance` the groups whose rewards are
    all equal are dropped; with `refill` more rounds follow until every process has its share of
    informative groups (or max_rounds), and the surplus is cut.
    """
    dyn = sc.dynamic
    want = sc.prompts_per_step // world
    kept, indices, metrics = None, [], {}
    generated = dropped = rounds = 0
    while True:
        chosen, counts = _draw(sampler, allocator, sc.prompts_per_step, want, world)
        mine = slice(rank * want, (rank + 1) * want)
        batch = PromptBatch([prompts[i] for i in chosen[mine]], counts[mine])
        scored = score_rollouts(rewards, engine.generate(batch, params))
        local = list(chosen[mine])
        # the first round's reward metrics, with the number of samples they count (for the reward_failures alarm)
        metrics = metrics or {**scored.metrics, "reward/samples": float(len(scored.rollouts))}
        last_round = scored, local
        rounds += 1
        generated += len(local)
        if dyn.filter_zero_variance:
            keep = informative_groups(scored).nonzero().flatten().tolist()
            dropped += len(local) - len(keep)
            scored, local = select_groups(scored, keep), [local[g] for g in keep]
        if local:
            kept = scored if kept is None else concat_scored(kept, scored, pad_id)
            indices += local
        if not dyn.refill or rounds >= dyn.max_rounds or _all(len(indices) >= want, world):
            break
    if kept is None:  # nothing informative: train on the last round (zero advantage, processes stay in step)
        kept, indices = last_round
    if dyn.refill and len(indices) > want:
        kept, indices = select_groups(kept, list(range(want))), indices[:want]
    kept.metrics = metrics
    if dyn.filter_zero_variance:
        metrics.update({"sampling/rounds": float(rounds), "sampling/generated_groups": float(generated),
                        "sampling/dropped_frac": dropped / max(generated, 1), "sampling/groups": float(len(indices))})
    return kept, indices, metrics


def _draw(sampler, allocator, count: int, share: int, world: int, tries: int = 100):
    """Prompts and their sample counts, redrawn while some process's share would get no samples
    (an allocator such as GVM gives 0 to prompts it skips; every process sees the same draw)."""
    for _ in range(tries):
        chosen = sampler.sample(count)
        counts = allocator.allocate(chosen)
        if all(sum(counts[r * share : (r + 1) * share]) for r in range(world)):
            return chosen, counts
    raise RuntimeError(f"sampling.allocator: {tries} draws in a row allocated no samples to some process's prompts")


def _all(flag: bool, world: int) -> bool:
    """True on every process when `flag` is true on every process."""
    return flag if world == 1 else all(gather_object([flag]))


def gather_outcome(scored: ScoredRollouts, prompt_indices: list[int], step: int, world: int) -> StepOutcome:
    """The step's results of all processes, for plug-ins that learn from them."""
    ro = scored.rollouts
    local = {"indices": prompt_indices, "num_prompts": len(prompt_indices), "group": ro.group.tolist(),
             "rewards": scored.rewards.tolist(), "correct": scored.correct.tolist(), "lengths": ro.lengths.tolist(),
             "uids": [ro.prompts[int(g)].uid for g in ro.group],
             "responses": [ro.response_ids[i, : int(n)].tolist() for i, n in enumerate(ro.lengths)]}
    m, _ = _gather_rows(local, world)
    return StepOutcome(step, m["indices"], torch.tensor(m["group"], dtype=torch.long), m["uids"],
                       torch.tensor(m["rewards"]), torch.tensor(m["correct"], dtype=torch.bool),
                       torch.tensor(m["lengths"], dtype=torch.long), m["responses"])


def _gather_rows(local: dict, world: int) -> tuple[dict, list[int]]:
    """Every process's lists concatenated in rank order, and each process's first sample row.

    Groups never straddle processes (a prompt's samples are generated together), so "group" ids
    are offset by the number of prompts of the processes before; dict fields are merged per key
    and None fields stay None.
    """
    parts = gather_object([local]) if world > 1 else [local]
    merged = {k: {} if isinstance(v, dict) else None if v is None else [] for k, v in local.items()}
    starts, offset, rows = [], 0, 0
    for p in parts:
        starts.append(rows)
        rows += len(p["group"])
        for k, v in p.items():
            if k == "num_prompts" or v is None:
                continue
            if k == "group":
                v = [g + offset for g in v]
            if isinstance(v, dict):
                for c, vals in v.items():
                    merged[k].setdefault(c, []).extend(vals)
            else:
                merged[k].extend(v)
        offset += p["num_prompts"]
    return merged, starts


def _zero_nonfinite(out) -> float:
    """A NaN/inf advantage or weight (e.g. an estimator's reference-compatible mode) becomes 0, so
    the loss stays finite; returns the fraction of samples affected, logged every step."""
    bad = ~torch.isfinite(out.advantages)
    if out.weights is not None:
        bad |= ~torch.isfinite(out.weights)
        out.weights = torch.where(bad, torch.zeros_like(out.weights), out.weights)
    out.advantages = torch.where(bad, torch.zeros_like(out.advantages), out.advantages)
    return float(bad.float().mean()) if bad.numel() else 0.0


def gather_advantage_input(scored: ScoredRollouts, rewards: torch.Tensor, step: int, rank: int, world: int,
                           strata: list | None = None):
    """The step batch of all processes as one AdvantageInput, and this process's rows in it."""
    ro = scored.rollouts
    local = {
        "group": ro.group.tolist(), "rewards": rewards.tolist(), "lengths": ro.lengths.tolist(),
        "components": {k: v.tolist() for k, v in scored.components.items()},
        "uids": [ro.prompts[int(g)].uid for g in ro.group], "num_prompts": len(ro.prompts), "strata": strata,
    }
    m, starts = _gather_rows(local, world)
    inp = AdvantageInput(
        group=torch.tensor(m["group"], dtype=torch.long), rewards=torch.tensor(m["rewards"], dtype=torch.float32),
        components={k: torch.tensor(v) for k, v in m["components"].items()}, lengths=torch.tensor(m["lengths"]),
        prompt_uids=m["uids"], step=step, strata=m["strata"],
    )
    return inp, torch.arange(starts[rank], starts[rank] + len(ro))


def rollout_metrics(ro: Rollouts) -> dict[str, float]:
    lengths = ro.lengths.float()
    return {
        "rollout/len_mean": float(lengths.mean()),
        "rollout/len_max": float(lengths.max()),
        "rollout/truncated_frac": sum(f == "length" for f in ro.finish_reason) / max(len(ro), 1),
        "rollout/samples": float(len(ro)),
    }


def _train_tokens(ro: Rollouts) -> float:
    prompt_tokens = sum(len(ro.prompts[int(g)].token_ids) for g in ro.group)
    return float(prompt_tokens + ro.lengths.sum())


def _watch(step: int, metrics: dict[str, float], alarms: Alarms, guard, logger: MetricsLogger,
           run_dir: Path) -> StopRequest | None:
    """The step's alarms and non-finite updates: warning lines, alarm/<name> = 1.0 into `metrics`
    while an alarm fires, and the stop request of a `stop` alarm or of too many non-finite steps."""
    stop = None
    for firing in alarms.update(step, metrics):
        metrics[f"alarm/{firing.name}"] = 1.0
        if firing.action == "stop":
            stop = stop or StopRequest(firing.message, how_to_go_on=f"to train on regardless, resume with "
                                       f"{firing.silence} (or =warn)")
        elif firing.first:  # one line per firing episode
            logger.write(f"warning: {firing.message}; silence it with {firing.silence}")
    if line := guard.warning():
        logger.write(f"warning: {line}")
    if stop is None and guard.should_stop:
        # no checkpoint now: these are the weights of the last applied update, which may be what went wrong
        last = [p for s, p in list_checkpoints(run_dir) if s < step]
        newest = f"the newest is {last[-1]}, holding" if last else "there is none yet; the run holds"
        stop = StopRequest(guard.stop_message(), checkpoint=False, how_to_go_on=(
            f"{newest} the weights of the last applied update, which may be what broke them (a learning rate "
            "too high, for one): resume from it or an earlier one with a lower learner.lr"))
    return stop


def _average(parts: list[dict[str, float]]) -> dict[str, float]:
    """Each metric averaged over the processes that logged it."""
    keys = set().union(*parts)
    return {k: sum(p[k] for p in parts if k in p) / sum(k in p for p in parts) for k in keys}


def _reduce_step(metrics: dict[str, float], control: dict[str, int], world: int):
    """Metrics averaged and control flags maxed over processes, in the step's one all-gather, so
    a flag raised on any process (a signal that reached only some) is seen by all at this step."""
    if world == 1:
        return metrics, control
    parts = gather_object([(metrics, control)])
    return _average([m for m, _ in parts]), {k: max(c[k] for _, c in parts) for k in control}


def _reduce_max(value: float, world: int) -> float:
    """The largest value over processes (every process gets it)."""
    return value if world == 1 else max(gather_object([value]))
