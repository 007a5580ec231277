"""The stages of one training step, as the loop (rlvr/loop.py) calls them in order.

Each function takes the `Run` (rlvr/run/setup.py) and the previous stage's record. What is
specific to a method stays behind its seam: the group filter decides collection rounds
(DAPO), the allocator sample counts (GVM), the estimator reads strata (SAN) from the one
gather of the step, and KL placement is the learner's setting read here, not in the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from accelerate.utils import gather_object

from rlvr.advantage.filters import DynamicSampling, concat_scored, select_groups
from rlvr.advantage.nonfinite import zero_nonfinite
from rlvr.buffer import as_batch
from rlvr.buffer.rollouts import Draw
from rlvr.learner.checkpoint import list_checkpoints
from rlvr.learner.policy_loss import kl_in_reward
from rlvr.metrics import tensor_stats
from rlvr.reward import score_rollouts
from rlvr.rollout.sync import probe_sequence
from rlvr.run.lifecycle import StopRequest, signal_stop
from rlvr.run.setup import Run
from rlvr.sampling.draw import draw
from rlvr.types import (
    AdvantageBatch,
    AdvantageInput,
    AdvantageOutput,
    PromptBatch,
    Rollouts,
    ScoredRollouts,
    StepOutcome,
)


class StepClock:
    """Wall-clock marks of a step's stages, for the perf/* metrics."""

    def __init__(self) -> None:
        self.marks = {"start": time.perf_counter()}

    def mark(self, stage: str) -> None:
        """Record that `stage` ended now."""
        self.marks[stage] = time.perf_counter()

    def between(self, first: str, last: str) -> float:
        """Seconds from the end of `first` to the end of `last`."""
        return self.marks[last] - self.marks[first]


# ---- 0-2: prompts, rollouts, rewards --------------------------------------------------------------


def refresh(run: Run, step: int) -> dict[str, float]:
    """Plug-in work beyond the step's batch, before its prompts are drawn (VAS re-scoring, GVM's
    estimation, SPO's offline start), for each plug-in with a `refresh(step, services)` hook."""
    metrics: dict[str, float] = {}
    for plugin in run.hooked("refresh"):
        metrics.update(plugin.refresh(step, run.services) or {})
    return metrics


def next_rollouts(run: Run, step: int) -> tuple[ScoredRollouts, list[int], dict[str, float]]:
    """Stages 0-2 of `step`: generated now (colocated), or taken from the buffer that the rollout
    workers fill ahead of the learner (disaggregated; see rlvr/run/pipeline.py)."""
    return run.pipeline.take(step) if run.pipeline is not None else collect(run)


def collect(run: Run, pick: Callable[[int, int, int], Draw] | None = None, world: int | None = None,
            rank: int = 0) -> tuple[ScoredRollouts, list[int], dict[str, float]]:
    """Stages 0-2: this process's scored groups, the dataset index of each group's prompt, and metrics.

    Every process draws the same global prompts and generates for its own share. The group
    filter (sampling.dynamic) may drop groups and ask for more rounds until every process has
    its share; the surplus is cut, and when nothing was kept the last round is trained on
    (zero advantage) so processes stay in step. The rollout workers' producer calls it with
    world = 1 (one share: every process's groups) and its own `pick` (recorded draws).
    """
    sc = run.cfg.sampling
    world, rank = (run.world, run.rank) if world is None else (world, rank)
    pick = pick or partial(draw, run.sampler, run.allocator)
    rule = DynamicSampling(**sc.dynamic.model_dump())
    want = sc.prompts_per_step // world
    kept, indices, metrics = None, [], {}
    generated = dropped = rounds = 0
    while True:
        chosen, counts = pick(sc.prompts_per_step, want, world)
        mine = slice(rank * want, (rank + 1) * want)
        batch = PromptBatch([run.train_prompts[i] for i in chosen[mine]], counts[mine])
        rollouts, episode_metrics = generate(run, batch)
        scored = score_rollouts(run.rewards, rollouts)
        local = list(chosen[mine])
        # the first round's reward metrics, with the number of samples they count (for the reward_failures alarm)
        metrics = metrics or {**scored.metrics, **episode_metrics, "reward/samples": float(len(scored.rollouts))}
        last_round = scored, local
        rounds += 1
        generated += len(local)
        keep = rule.keep(scored)
        if len(keep) < len(local):
            dropped += len(local) - len(keep)
            scored, local = select_groups(scored, keep), [local[g] for g in keep]
        if local:
            kept = scored if kept is None else concat_scored(kept, scored, run.tokenizer.pad_token_id)
            indices += local
        if not rule.another_round(rounds, partial(_all, len(indices) >= want, world)):
            break
    if kept is None:
        kept, indices = last_round
    if len(indices) > want:
        kept, indices = select_groups(kept, list(range(want))), indices[:want]
    kept.metrics = metrics
    metrics.update(rule.metrics(rounds, generated, dropped, len(indices)))
    return kept, indices, metrics


def generate(run: Run, batch: PromptBatch) -> tuple[Rollouts, dict[str, float]]:
    """Stage 1: one reply per sample, or with an `env` one multi-turn episode per sample (and the
    env/* metrics of the episodes)."""
    if run.env is None:
        return run.engine.generate(batch, run.params), {}
    return run.run_episodes(batch, run.params)


def _all(flag: bool, world: int) -> bool:
    """True on every process when `flag` is true on every process."""
    return flag if world == 1 else all(gather_object([flag]))


# ---- 3: advantages ------------------------------------------------------------------------------


def advantages(run: Run, scored: ScoredRollouts, prompt_indices: list[int], step: int
               ) -> tuple[AdvantageBatch, StepOutcome | None, dict[str, float]]:
    """Stage 3: the estimator on the whole step batch of all processes (groups are complete), unless
    the rollout workers' producer computed it as the groups were scored (`scored.estimated`).

    Returns this process's AdvantageBatch (with the old and reference log-probs the loss needs),
    the step's outcome for plug-ins with an `observe` hook (None when none has one; it comes from
    the same gather), and the estimator's metrics.
    """
    learner, kl, ro = run.learner, run.cfg.loss.kl, scored.rollouts
    old_lp = learner.logprobs(as_batch(scored), use_ref=False) if learner.needs_old_logprobs else None
    ref_lp = learner.logprobs(as_batch(scored), use_ref=True) if kl.coef > 0 else None
    shaped = scored.rewards
    if ref_lp is not None and kl.where == "reward":
        shaped = kl_in_reward(scored.rewards, old_lp, ref_lp, ro.response_mask, kl.coef)
    out, outcome = scored.estimated, None
    if out is None or run.hooked("observe"):  # every process alike: its share came from the same producer
        strata = _strata(run, ro)
        inp, local_rows, outcome = gather_step(scored, shaped, prompt_indices, step, run.rank, run.world, strata,
                                               with_outcome=bool(run.hooked("observe")))
    if out is None:
        out = _estimate(run, inp)
        out = AdvantageOutput(out.advantages[local_rows], None if out.weights is None else out.weights[local_rows],
                              out.metrics)
    weights = out.weights if out.weights is not None else torch.ones_like(out.advantages)
    # loss.old_policy: behaviour -> the ratio is taken against the log-probs recorded at generation
    ratio_old = ro.rollout_logprobs if learner.old_is_behaviour else old_lp
    return AdvantageBatch(scored, out.advantages, weights, ratio_old, ref_lp), outcome, out.metrics


def _strata(run: Run, ro: Rollouts) -> list | None:
    """rollout.stratum's key of every sample, read from its whole response (an episode's every turn,
    so e.g. count_tool_calls counts the calls of all turns), or None without a stratum function."""
    if run.stratum_fn is None:
        return None
    texts = ro.texts if ro.contexts is None else [c + t for c, t in zip(ro.contexts, ro.texts)]
    return [run.stratum_fn(t) for t in texts]


def _estimate(run: Run, inp: AdvantageInput) -> AdvantageOutput:
    """The estimator on `inp`, non-finite advantages zeroed (and counted in its metrics)."""
    out = run.estimator(inp)
    out.metrics["advantage/nonfinite_frac"] = zero_nonfinite(out)
    return out


def estimate_groups(run: Run, scored: ScoredRollouts, step: int) -> AdvantageOutput:
    """The advantages of a batch the rollout workers' producer just scored (every process's groups),
    for an estimator of scope "group" with rewards that need no learner pass (no KL in the
    reward): the same input the learner's gather would build, so the same numbers."""
    strata = _strata(run, scored.rollouts)
    inp, _, _ = gather_step(scored, scored.rewards, [], step, 0, 1, strata)
    with run.plugin_lock:  # the learner's thread may be in a hook of the same plug-in
        out = _estimate(run, inp)
    out.metrics["advantage/at_production"] = 1.0
    return out


def gather_step(scored: ScoredRollouts, rewards: torch.Tensor, prompt_indices: list[int], step: int, rank: int,
                world: int, strata: list | None = None, with_outcome: bool = False
                ) -> tuple[AdvantageInput, torch.Tensor, StepOutcome | None]:
    """The step batch of all processes, in one gather: the estimator's input, this process's rows
    in it ([N_r] long), and (with_outcome) the StepOutcome for `observe` hooks.

    `rewards` ([N_r]) are what the estimator sees (after any KL shaping); the outcome keeps
    the scored rewards. Responses travel only when an outcome is wanted.
    """
    ro = scored.rollouts
    local = {
        "group": ro.group.tolist(), "rewards": rewards.tolist(), "lengths": ro.lengths.tolist(),
        "components": {k: v.tolist() for k, v in scored.components.items()},
        "uids": [ro.prompts[int(g)].uid for g in ro.group], "num_prompts": len(ro.prompts), "strata": strata,
    }
    if with_outcome:
        local.update({
            "indices": prompt_indices, "correct": scored.correct.tolist(),
            "scored": None if rewards is scored.rewards else scored.rewards.tolist(),
            "responses": [ro.response_ids[i, : int(n)].tolist() for i, n in enumerate(ro.widths)],
        })
    m, starts = _gather_rows(local, world)
    inp = AdvantageInput(
        group=torch.tensor(m["group"], dtype=torch.long), rewards=torch.tensor(m["rewards"], dtype=torch.float32),
        components={k: torch.tensor(v) for k, v in m["components"].items()}, lengths=torch.tensor(m["lengths"]),
        prompt_uids=m["uids"], step=step, strata=m["strata"],
    )
    outcome = None
    if with_outcome:
        outcome = StepOutcome(step, m["indices"], inp.group.clone(), m["uids"],
                              torch.tensor(m["scored"] if m["scored"] is not None else m["rewards"]),
                              torch.tensor(m["correct"], dtype=torch.bool),
                              torch.tensor(m["lengths"], dtype=torch.long), m["responses"])
    return inp, torch.arange(starts[rank], starts[rank] + len(ro)), outcome


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


# ---- 6-7: weights to the engine, plug-ins learn -------------------------------------------------------


def sync_weights(run: Run, step: int, rollouts: Rollouts) -> dict[str, float]:
    """Stage 6: the engine gets the new weights, checked with a probe every `rollout.sync_check_every` steps."""
    check = run.sync_every and step % run.sync_every == 0
    return run.sync_weights(probe_sequence(rollouts) if check else None, version=step)


def observe(run: Run, outcome: StepOutcome | None) -> dict[str, float]:
    """Stage 7: plug-ins with an `observe(outcome, services)` hook learn from the step (VADE's
    posteriors, SPO's tracker)."""
    metrics: dict[str, float] = {}
    with run.plugin_lock:  # the rollout workers' producer may be drawing from the same sampler
        for plugin in run.hooked("observe"):
            metrics.update(plugin.observe(outcome, run.services) or {})
    return metrics


# ---- the step's end: metrics, alarms, evaluation, checkpoint, stop --------------------------------------


def step_metrics(run: Run, scored: ScoredRollouts, batch: AdvantageBatch, clock: StepClock,
                 *parts: dict[str, float]) -> dict[str, float]:
    """This process's metrics of the step: the stages' own (`parts`, in order), rollout and
    advantage statistics, and perf/* timings from `clock`."""
    rollouts = scored.rollouts
    metrics: dict[str, float] = {}
    for part in parts:
        metrics.update(part)
    metrics.update({**rollout_metrics(rollouts), **tensor_stats("advantage", batch.advantages)})
    rollout_s = clock.between("refresh", "rollout") - scored.metrics.get("perf/reward_s", 0.0)
    learn_s = clock.between("advantage", "learn")
    metrics.update({
        "perf/rollout_s": rollout_s, "perf/advantage_s": clock.between("rollout", "advantage"),
        "perf/learn_s": learn_s, "perf/sync_s": clock.between("learn", "sync"),
        "perf/step_s": clock.between("start", "sync"),
        "perf/rollout_tokens_per_s": float(rollouts.lengths.sum()) / max(rollout_s, 1e-9),
        "perf/train_tokens_per_s": _train_tokens(rollouts) * run.learner.epochs / max(learn_s, 1e-9),
    })
    return metrics


def rollout_metrics(ro: Rollouts) -> dict[str, float]:
    """rollout/* metrics: response lengths, the truncated fraction and the sample count."""
    lengths = ro.lengths.float()
    return {
        "rollout/len_mean": float(lengths.mean()),
        "rollout/len_max": float(lengths.max()),
        "rollout/truncated_frac": sum(f == "length" for f in ro.finish_reason) / max(len(ro), 1),
        "rollout/samples": float(len(ro)),
    }


def _train_tokens(ro: Rollouts) -> float:
    prompt_tokens = sum(len(ro.prompts[int(g)].token_ids) for g in ro.group)
    return float(prompt_tokens + ro.widths.sum())


def end_step(run: Run, step: int, metrics: dict[str, float], signals: Any) -> None:
    """Reduce the metrics over processes, check alarms, log, evaluate and checkpoint when due.

    Raises the stop's error (RunStopped, SignalStopped) after its checkpoint when the run must
    stop here: a stop signal on any process, a `stop` alarm, or too many non-finite updates.
    """
    cfg, learner = run.cfg, run.learner
    # every process agrees on the stop and time-based checkpoint flags in the metrics' gather
    control = {"signal": signals.received or 0, "clock": int(run.rank == 0 and run.clock.due())}
    metrics, control = _reduce_step(metrics, control, run.world)
    # the reduced metrics are the same on every process, and so are the alarms' and the guard's verdicts
    stop = _watch(step, metrics, run)
    run.logger.log(step, metrics)
    if stop is None and control["signal"] and step < cfg.run.steps:  # at the last step: just finish
        stop = signal_stop(int(control["signal"]))
    if cfg.eval.every and step % cfg.eval.every == 0:
        run.evaluate(step)
    # no periodic checkpoint of weights that the step's non-finite update makes suspect (the guard's
    # streak): it could push the last good one out; the next clean step writes it (the clock stays due)
    periodic = learner.guard.streak == 0 and (
        (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or control["clock"])
    due = periodic or (step == cfg.run.steps and cfg.checkpoint.at_end)
    saved = run.checkpoint(step) if (due if stop is None else stop.checkpoint) else None
    if stop is not None:
        raise stop.stopped(step, saved)


def _watch(step: int, metrics: dict[str, float], run: Run) -> StopRequest | None:
    """The step's alarms and non-finite updates: warning lines, alarm/<name> = 1.0 into `metrics`
    while an alarm fires, and the stop request of a `stop` alarm or of too many non-finite steps."""
    stop, guard, logger = None, run.learner.guard, run.logger
    for firing in run.alarms.update(step, metrics):
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
        last = [p for s, p in list_checkpoints(run.dir) if s < step]
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


def finish(run: Run) -> None:
    """After the last step: the final evaluation (unless the last step had one), then the curves."""
    cfg = run.cfg
    if cfg.eval.every and cfg.run.steps % cfg.eval.every and run.start < cfg.run.steps:
        run.evaluate(cfg.run.steps)
    run.close()
    run.acc.wait_for_everyone()
    if run.acc.is_main_process and cfg.metrics.plot and "jsonl" in cfg.metrics.sinks:
        from rlvr.metrics.plot import plot_run

        png = plot_run(run.dir)
        print(f"rlvr: curves written to {png}")
