"""Which recipe keys may change when a run resumes, and what happens to those that do.

On resume the recipe (with its overrides) is compared with the `config.yaml` saved in the
checkpoint. Each key that differs is looked up in `RULES` (the longest matching dotted prefix
decides; an index into a list of sections, as in reward.functions.0.weight, matches `*`):

    honour  the new value is used from the resumed step on, and one line says so:
            `rlvr: resuming with learner.lr 0.001 (checkpoint: 0.0003)`
    quiet   used without a line (where the run lives and how it was started)
    refuse  the run does not start; the message lists every such key, old -> new

So the run's config.yaml (and the next checkpoint's) always records what the run really uses.
A key the checkpoint's config does not have (written by an older rlvr) is not compared.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from rlvr.config.load import plugin_choices
from rlvr.config.schema import Config
from rlvr.errors import RlvrError

HONOUR, QUIET, REFUSE = "honour", "quiet", "refuse"

RULES: dict[str, str] = {
    # where the run lives and how this start was asked for: differ between a run and its resume
    "run.output_dir": QUIET,
    "run.resume": QUIET,
    # a longer or shorter run continues the same one (a cosine schedule is re-stretched to the new end)
    "run.name": HONOUR,
    "run.steps": HONOUR,
    # every generator resumes from the checkpoint: a new seed would be recorded and never used
    "run.seed": REFUSE,
    # the policy's weights come from the checkpoint; the reference model and numerics must stay
    "model": REFUSE,
    "model.gradient_checkpointing": HONOUR,  # memory for compute, same gradients
    "model.attn_implementation": HONOUR,  # same attention, another kernel
    # the training prompts: the sampler's position and every per-prompt state index into them
    "data": REFUSE,
    "data.eval": HONOUR,  # evaluation only
    # the step batch: sampler, allocator, group size, dynamic sampling (and their saved state)
    "sampling": REFUSE,
    # how completions are generated is part of the algorithm ...
    "rollout": REFUSE,
    # ... but not how fast or with how much memory, nor how often the weight sync is checked
    "rollout.batch_prompts": HONOUR,
    "rollout.share_prefill": HONOUR,  # the same samples to rounding, fewer prompt tokens
    "rollout.mode": HONOUR,  # the buffer is regenerated on resume, so either mode continues the run
    "rollout.max_staleness": HONOUR,
    "rollout.stale": HONOUR,
    "rollout.in_flight": HONOUR,
    "rollout.workers": HONOUR,
    "rollout.sync_check_every": HONOUR,
    "rollout.sync_tolerance": HONOUR,
    "rollout.vllm": HONOUR,
    "rollout.vllm.dtype": REFUSE,  # changes the sampled tokens' numerics
    # what is rewarded (and what counts as correct, which stateful samplers learn from)
    "reward": REFUSE,
    # how reward functions are run, not what they compute
    "reward.functions.*.isolate": HONOUR,
    "reward.timeout_s": HONOUR,
    "reward.on_failure": HONOUR,
    "reward.workers": HONOUR,
    "reward.max_tasks_per_worker": HONOUR,
    "reward.max_worker_memory_mb": HONOUR,
    # the environment of multi-turn episodes is part of the task the policy learns ...
    "env": REFUSE,
    # the warm-up ran before the first checkpoint; a resumed run never repeats it
    "warmup": QUIET,
    # the objective
    "advantage": REFUSE,
    "loss": REFUSE,
    # the optimiser's saved state and its sharding must match the run that saved it ...
    "learner": REFUSE,
    # ... except the step size and its schedule (applied to the loaded optimiser), clipping and
    # the micro-batch token budget (memory only: micro-batch losses are normalised over the step)
    "learner.lr": HONOUR,
    "learner.weight_decay": HONOUR,
    "learner.warmup_steps": HONOUR,
    "learner.schedule": HONOUR,
    "learner.min_lr_ratio": HONOUR,
    "learner.max_grad_norm": HONOUR,
    "learner.micro_batch_tokens": HONOUR,
    "learner.skip_zero_advantage": HONOUR,  # same gradients, fewer passes
    "learner.share_prompts": HONOUR,  # same gradients, fewer prompt tokens
    "learner.max_nonfinite_steps": HONOUR,  # a guard, not part of the update
    # watching and saving the run
    "eval": HONOUR,
    "checkpoint": HONOUR,
    "metrics": HONOUR,
    "alarms": HONOUR,
}


class ResumeConflict(RlvrError):
    """The recipe changes keys that cannot change in the middle of a run; nothing was touched.

    Exit code 2, like any recipe error: nothing ran.
    """

    exit_code = 2


def decision(key: str) -> str:
    """The rule of the longest prefix of `key` in RULES (REFUSE for a key no rule covers)."""
    parts = ["*" if part.isdigit() else part for part in key.split(".")]
    for n in range(len(parts), 0, -1):
        rule = RULES.get(".".join(parts[:n]))
        if rule is not None:
            return rule
    return REFUSE


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'f': [{'w': 2}]} -> {'a.b': 1, 'f.0.w': 2}; other lists stay whole values."""
    if isinstance(tree, list) and tree and all(isinstance(item, dict) for item in tree):
        tree = {str(i): item for i, item in enumerate(tree)}
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


MISSING = "(none)"


def _one_sided_is_a_change(key: str) -> bool:
    """A key only one config has: a real change when it is an element of a list (a reward
    function added) or a free-form key (a plug-in kwarg, a data source's args); a declared key
    of the schema is missing only because an older rlvr wrote the checkpoint's config."""
    if any(part.isdigit() for part in key.split(".")):
        return True
    model: Any = Config
    for part in key.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return True
        model = _section_type(fields[part].annotation)
    return False


def _section_type(annotation: Any) -> Any:
    """The pydantic section inside an annotation such as `X | None` or `list[X]` (else None)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _section_type(arg)) is not None:
            return found
    return None


def _same(a: Any, b: Any) -> bool:
    # YAML gives lists where the dumped recipe has tuples; 1 and 1.0 are the same setting
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str) or a == b


def show(value: Any) -> str:
    """A config value as a message shows it: floats short (3e-05), lists and dicts as JSON."""
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def changes(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint value, recipe value) for every key that differs.

    A key only one side has counts when it is a list element or a free-form key (see
    `_one_sided_is_a_change`).
    """
    old, new = flatten(saved), flatten(current)
    keys = (old.keys() & new.keys()) | {k for k in old.keys() ^ new.keys() if _one_sided_is_a_change(k)}
    return [(k, old.get(k, MISSING), new.get(k, MISSING)) for k in sorted(keys)
            if not _same(old.get(k, MISSING), new.get(k, MISSING))]


def check_resume(current: dict[str, Any], checkpoint: Path, base_dir: str | Path | None = None
                 ) -> list[tuple[str, Any, Any]]:
    """Compare the recipe with the checkpoint's config.yaml.

    Returns the honoured changes (key, old, new) to announce (quiet ones left out); raises
    ResumeConflict listing every refused change. A checkpoint without config.yaml is not
    checked. Plug-in sections are compared by what the recipe chose (`plugin_choices`: kwargs
    equal to the plug-in's defaults left out, user plug-in files found relative to `base_dir`),
    so a checkpoint written before configs recorded the defaults resumes as well.
    """
    path = Path(checkpoint) / "config.yaml"
    if not path.is_file():
        return []
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    diff = changes(plugin_choices(saved, base_dir), plugin_choices(current, base_dir))
    refused = [(k, a, b) for k, a, b in diff if decision(k) == REFUSE]
    if refused:
        lines = "\n".join(f"  {k}: {show(a)} -> {show(b)}" for k, a, b in refused)
        undo = " ".join(f"no {k}" if a == MISSING else f"{k}={show(a)}" for k, a, _ in refused)
        raise ResumeConflict(
            f"run.resume: the recipe changes {len(refused)} key(s) that cannot change in the middle of a run "
            f"(checkpoint {checkpoint}):\n{lines}\n"
            f"Resume with the checkpoint's values ({undo}), or start a new run in another run.output_dir "
            f"(model.path may point at {Path(checkpoint) / 'model'} to start from these weights).")
    return [(k, a, b) for k, a, b in diff if decision(k) == HONOUR]


def change_lines(honoured: list[tuple[str, Any, Any]]) -> list[str]:
    """One start-up line per key the resumed run takes from the recipe instead of the checkpoint."""
    return [f"rlvr: resuming with {k} {show(b)} (checkpoint: {show(a)})" for k, a, b in honoured]


def apply_optimizer_changes(scheduler: Any, lr: float, weight_decay: float) -> None:
    """Put the recipe's lr and weight decay into an optimiser whose state was just loaded.

    The loaded state carries the old values in every parameter group and in the LambdaLR's
    base_lrs; the current lr is recomputed from the new base and the schedule's position, as
    the scheduler itself would. `scheduler.optimizer` is the optimiser that applies the update
    (DeepSpeed's basic optimiser under ZeRO).
    """
    groups = scheduler.optimizer.param_groups
    scheduler.base_lrs = [lr for _ in groups]
    for group, factor in zip(groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)
        group["weight_decay"] = weight_decay
    scheduler._last_lr = [group["lr"] for group in groups]
