"""Alarms for runs that go wrong without crashing: every reward zero, every reward call failing,
every advantage non-finite, a collapsed policy, a growing train/inference mismatch.

The loop feeds `Alarms.update(step, metrics)` the step's metrics after they are reduced over
processes, so every process sees the same numbers and takes the same decision. Each alarm keeps a
window of the last `window` steps' values and fires when the window is full and its condition
holds; it stays firing until the condition clears (one firing episode), and `Firing.first` marks
the step an episode starts, so a `warn` alarm prints one line per episode, not one per step. The
windows are checkpointed (`state_dict`), so a resumed run keeps them.

    alarms = Alarms(cfg.alarms)
    for firing in alarms.update(step, metrics):   # firing.name, .action, .message, .first
        ...

Each check is a small pure function of the window (`_CHECKS`), easy to test on hand-made numbers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlvr.config.schema import AlarmConfig, AlarmsConfig

Record = tuple[float, ...] | dict[str, float]


@dataclass(frozen=True)
class Firing:
    """An alarm whose condition held at `step`; `first` when its episode began at this step."""

    name: str
    action: str  # "warn" or "stop"
    step: int
    message: str  # what was seen (value, threshold, window) and what to do
    first: bool

    @property
    def silence(self) -> str:
        """The config override that turns this alarm off, quoted in its message."""
        return f"alarms.{self.name}.action=off"


# ---- per-step records: the few numbers each alarm keeps from a step's metrics (None: not counted) ----

def _reward_record(m: dict[str, float]) -> Record | None:
    if "reward/total/mean" not in m:
        return None
    return (m["reward/total/mean"], m.get("reward/total/std", 0.0))


def _failure_record(m: dict[str, float]) -> Record | None:
    """{label: samples lost (failures + timeouts)} plus "" -> samples scored."""
    samples = m.get("reward/samples", m.get("rollout/samples"))
    if not samples:
        return None
    lost: dict[str, float] = {"": float(samples)}
    for key, value in m.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "reward" and parts[2] in ("failures", "timeouts"):
            lost[parts[1]] = lost.get(parts[1], 0.0) + value
    return lost


def _single(key: str) -> Callable[[dict[str, float]], Record | None]:
    return lambda m: (m[key],) if key in m else None


def _collapse_record(m: dict[str, float]) -> Record | None:
    if "learner/entropy" not in m or "reward/total/mean" not in m:
        return None
    return (m["learner/entropy"], m["reward/total/mean"], m.get("reward/accuracy", 0.0))


# ---- checks: window (oldest first), threshold -> (observed value, what it means) when firing, else None ----

def check_zero_reward(window: list[Record], threshold: float) -> tuple[float, str] | None:
    """Every reward of every step was zero (|mean| and spread <= threshold, 0 by default)."""
    largest = max(max(abs(mean), std) for mean, std in window)
    if largest <= threshold:
        size = "exactly 0" if threshold == 0 else f"within {threshold:g} of 0"
        return largest, (f"every reward was {size} for the last {len(window)} steps (largest step |mean| or spread "
                         f"{largest:.3g}, threshold {threshold:g}): there is nothing to learn from")
    return None


def check_reward_failures(window: list[Record], threshold: float) -> tuple[float, str] | None:
    """The share of samples whose reward call failed or timed out, over the window, for the worst reward."""
    samples = sum(r[""] for r in window)
    labels = sorted({k for r in window for k in r if k})
    if not samples or not labels:
        return None
    shares = {label: sum(r.get(label, 0.0) for r in window) / samples for label in labels}
    label = max(shares, key=shares.get)
    if shares[label] >= threshold:
        return shares[label], (f"reward {label!r} failed or timed out on {shares[label]:.0%} of samples over the "
                               f"last {len(window)} steps (threshold {threshold:.0%}); those samples scored 0")
    return None


def check_nonfinite_advantages(window: list[Record], threshold: float) -> tuple[float, str] | None:
    """The mean of advantage/nonfinite_frac over the window (1.0: every advantage NaN/inf, zeroed)."""
    share = sum(r[0] for r in window) / len(window)
    if share >= threshold:
        return share, (f"{share:.0%} of advantages were NaN/inf (and zeroed) over the last {len(window)} steps "
                       f"(threshold {threshold:.0%}): the estimator gives no usable signal")
    return None


# A policy this accurate over the window is converging: near-zero entropy is then the goal, not a
# collapse (the healthy quickstart ends at entropy ~0.01 nats with accuracy 0.985-0.998 per 50 steps).
CONVERGED_ACCURACY = 0.9


def check_policy_collapse(window: list[Record], threshold: float) -> tuple[float, str] | None:
    """Mean token entropy below threshold while the reward did not rise (the second half of the window
    averages no more than the first), unless reward/accuracy averaged CONVERGED_ACCURACY or more."""
    entropy = sum(e for e, _, _ in window) / len(window)
    half = len(window) // 2
    early = sum(r for _, r, _ in window[:half]) / max(half, 1)
    late = sum(r for _, r, _ in window[half:]) / max(len(window) - half, 1)
    accuracy = sum(a for _, _, a in window) / len(window)
    if entropy < threshold and late <= early and accuracy < CONVERGED_ACCURACY:
        return entropy, (f"mean token entropy {entropy:.3g} nats over the last {len(window)} steps (threshold "
                         f"{threshold:g}) while the reward did not rise ({early:.3g} -> {late:.3g}): the policy "
                         "has collapsed and no longer explores")
    return None


def check_mismatch(window: list[Record], threshold: float) -> tuple[float, str] | None:
    """learner/mismatch_k3 above threshold at every step of the window (sustained, not one spike)."""
    lowest = min(r[0] for r in window)
    if lowest > threshold:
        return lowest, (f"the train/inference mismatch (learner/mismatch_k3) stayed above {threshold:g} for the "
                        f"last {len(window)} steps (lowest {lowest:.3g}, now {window[-1][0]:.3g}): the engine "
                        "samples from a policy other than the one being trained")
    return None


# name -> (record, check, what to do)
_CHECKS: dict[str, tuple[Callable[[dict[str, float]], Record | None],
                         Callable[[list[Record], float], tuple[float, str] | None], str]] = {
    "zero_reward": (_reward_record, check_zero_reward,
                    "score a few completions by hand (answer field, format, stop strings); if learner/entropy "
                    "fell to ~0 the policy collapsed instead: lower learner.lr"),
    "reward_failures": (_failure_record, check_reward_failures,
                        "the reward's own error is in the warnings above; fix it or raise reward.timeout_s"),
    "nonfinite_advantages": (_single("advantage/nonfinite_frac"), check_nonfinite_advantages,
                             "check the advantage estimator and its kwargs (e.g. groups of one sample)"),
    "policy_collapse": (_collapse_record, check_policy_collapse,
                        "lower learner.lr, or raise rollout.temperature; resume from an earlier checkpoint"),
    "mismatch": (_single("learner/mismatch_k3"), check_mismatch,
                 "compare rollout.vllm.dtype with the learner's precision; keep loss.rollout_correction on"),
}


def _finite(record: Record) -> bool:
    return all(math.isfinite(v) for v in (record.values() if isinstance(record, dict) else record))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class Alarms:
    """The recipe's `alarms:` section at work; see the module docstring."""

    def __init__(self, cfg: AlarmsConfig):
        self.cfg = cfg
        self.windows: dict[str, deque] = {name: deque(maxlen=self._conf(name).window) for name in _CHECKS}
        self.firing: dict[str, bool] = {name: False for name in _CHECKS}

    def _conf(self, name: str) -> AlarmConfig:
        return getattr(self.cfg, name)

    def update(self, step: int, metrics: dict[str, float]) -> list[Firing]:
        """Add the step's metrics to every window; return the alarms firing at this step."""
        fired = []
        numbers = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        for name, (record, check, advice) in _CHECKS.items():
            conf = self._conf(name)
            if conf.action == "off":
                continue
            rec = record(numbers)
            if rec is not None:
                self.windows[name].append(rec)
            window = list(self.windows[name])
            # a window holding NaN/inf is not judged: non-finite numbers are the learner guard's to report
            full = len(window) == conf.window and all(map(_finite, window))
            result = check(window, conf.threshold) if full else None
            if result is None:
                self.firing[name] = False
                continue
            first, self.firing[name] = not self.firing[name], True
            message = f"alarm {name} at step {step}: {result[1]}. What to do: {advice}"
            fired.append(Firing(name, conf.action, step, message, first))
        return fired

    def state_dict(self) -> dict[str, Any]:
        """Each alarm's window of per-step records and whether it is firing, as plain lists for the checkpoint."""
        return {"windows": {k: [dict(r) if isinstance(r, dict) else list(r) for r in w]
                            for k, w in self.windows.items()}, "firing": dict(self.firing)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the windows; a window longer than the (possibly changed) config keeps its newest steps."""
        for name, rows in state.get("windows", {}).items():
            if name in self.windows:
                self.windows[name].extend(r if isinstance(r, dict) else tuple(r) for r in rows)
        self.firing.update({k: bool(v) for k, v in state.get("firing", {}).items() if k in self.firing})
