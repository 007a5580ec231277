"""The spine of rlvr: one function that trains a policy from a typed recipe.

Set-up is one call (rlvr/run/setup.py); each step's stages are functions of rlvr/run/step.py,
called here in order. Methods plug in through the registries (sampler, allocator, advantage,
policy_loss, aggregation, reward) and their hooks; none is named in this file.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlvr.config import Config
from rlvr.run.build import accelerator
from rlvr.run.lifecycle import StopSignals, run_folder_lock
from rlvr.run.setup import setup
from rlvr.run.step import (
    StepClock,
    advantages,
    end_step,
    finish,
    next_rollouts,
    observe,
    refresh,
    step_metrics,
    sync_weights,
)


def train(cfg: Config, base_dir: Path | None = None) -> Path:
    """Run (or resume) the recipe; returns the run folder.

    Holds the run folder's lock throughout (RunLocked when another run has it). SIGTERM, SIGUSR1
    and SIGINT stop the run at the end of the current step, after a checkpoint, by raising
    SignalStopped; the caller's own signal handlers are back in place when this returns.
    """
    # first of all, so that a signal during a long start-up is not lost
    with StopSignals(announce=os.environ.get("RANK", "0") == "0") as signals:
        with accelerator(cfg) as acc, run_folder_lock(Path(cfg.run.output_dir), acc), \
                setup(cfg, base_dir, acc, signals) as run:
            for step in range(run.start + 1, cfg.run.steps + 1):
                clock = StepClock()
                hooks = refresh(run, step)  # plug-in work beyond the batch (VAS re-scoring, GVM estimation)
                clock.mark("refresh")
                scored, prompt_indices, sampled = next_rollouts(run, step)  # 0-2: now, or from the workers' buffer
                run.engine.sleep()  # an engine with a sleep mode (vLLM on GPU) frees its memory for the learner
                clock.mark("rollout")
                batch, outcome, estimated = advantages(run, scored, prompt_indices, step)  # 3: all processes' groups
                clock.mark("advantage")
                learned = run.learner.step(batch, step=step)  # 4-5: pack into micro-batches, update the policy
                clock.mark("learn")
                learned.update(sync_weights(run, step, scored.rollouts))  # 6: the engine gets the new weights
                clock.mark("sync")
                hooks.update(observe(run, outcome))  # 7: stateful plug-ins learn from the step (VADE, SPO)
                metrics = step_metrics(run, scored, batch, clock, scored.metrics, sampled, hooks, estimated, learned)
                end_step(run, step, metrics, signals)  # alarms, logging, eval, checkpoint; raises to stop
            finish(run)
    return run.dir
