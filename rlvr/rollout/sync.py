"""Weight sync between learner and rollout engine, verified by a probe.

After weights are pushed, a short sequence (the first sample this process generated in the
step: its prompt and response) is scored by both sides. If the engine really holds the
learner's new weights the two log-prob vectors agree up to kernel/precision noise; a stale,
partly loaded or misnamed weight shows up as a large difference. The largest difference is a
metric every checked step, and over the tolerance the run stops with an error instead of
training for hours on rollouts from the wrong policy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlvr.rollout.base import RolloutEngine
from rlvr.types import Rollouts


class WeightSyncError(RuntimeError):
    pass


def default_tolerance(engine_dtype: str, learner_dtype: str = "float32") -> float:
    """An engine and a learner whose weights are both float32 match to rounding (1e-3); when either
    holds 16-bit weights (a bf16 engine, or model.dtype bfloat16), the probe's log-probs differ by
    that precision (0.5).

    >>> default_tolerance("float32"), default_tolerance("float32", "bfloat16"), default_tolerance("bfloat16")
    (0.001, 0.5, 0.5)
    """
    return 1e-3 if engine_dtype == learner_dtype == "float32" else 0.5


def probe_gap(engine_lp: torch.Tensor, learner_lp: torch.Tensor) -> float:
    """max_t |engine - learner| over the probe's tokens ([S - 1] each). Example: [-1, -2] vs [-1.1, -2] -> 0.1."""
    return float((engine_lp.float() - learner_lp.float()).abs().max()) if engine_lp.numel() else 0.0


def push_and_verify(
    engine: RolloutEngine,
    weights: Callable,
    learner_logprobs: Callable[[list[int]], torch.Tensor],
    probe: list[int] | None,
    tolerance: float | None,
    world_max: Callable[[float], float] = lambda x: x,
) -> dict[str, float]:
    """Push the learner's weights into the engine; with a probe, check them. Returns metrics.

    probe: token ids (prompt + response) or None to skip the check (the same choice on every
    process). `world_max` takes the largest gap over processes, so all of them fail together.
    An engine with several workers (`sequence_logprobs_all`) is probed on every one of them: the
    metric is the largest gap over workers, and the error names the workers over tolerance.
    Raises WeightSyncError when that gap exceeds `tolerance`.
    """
    engine.update_weights(weights)
    if probe is None:
        return {}
    reference = learner_logprobs(probe)
    if hasattr(engine, "sequence_logprobs_all"):
        gaps = {url: probe_gap(lp, reference) for url, lp in engine.sequence_logprobs_all(probe).items()}
    else:
        gaps = {"": probe_gap(engine.sequence_logprobs(probe), reference)}
    gap = world_max(max(gaps.values(), default=0.0))
    if tolerance is not None and gap > tolerance:
        bad = [f"{url} ({g:.4g})" for url, g in gaps.items() if url and g > tolerance]
        where = f" on rollout worker(s) {', '.join(bad)}" if bad else ""
        raise WeightSyncError(
            f"weight sync check failed: after pushing the learner's weights the engine's log-probs on a probe "
            f"sequence differ from the learner's by up to {gap:.4g}{where} (rollout.sync_tolerance = "
            f"{tolerance:g}); the engine would generate from a policy other than the one being trained")
    return {"rollout/sync_max_logprob_diff": gap}


def probe_sequence(rollouts: Rollouts) -> list[int]:
    """Prompt + response token ids of the first sample (at least two tokens, as the prompt is never empty)."""
    n = int(rollouts.widths[0])
    return list(rollouts.prompts[int(rollouts.group[0])].token_ids) + rollouts.response_ids[0, :n].tolist()
