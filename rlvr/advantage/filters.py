"""Group filters: DAPO-style dynamic sampling drops groups whose rewards are all equal.

Such groups get zero advantage under any group-relative estimator, so they cost a forward and
backward and carry no gradient. The loop can drop them and generate more prompts until the step
has the requested number of informative groups (DAPO, arXiv 2503.14476, "dynamic sampling").
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlvr.advantage.grpo import group_stats
from rlvr.types import AdvantageOutput, Rollouts, ScoredRollouts


def informative_groups(scored: ScoredRollouts) -> torch.Tensor:
    """[P] bool: the prompt's samples do not all have the same reward (groups of one count as informative).

    Example: rewards [1, 0 | 1, 1 | 0] by group -> [True, False, True].
    """
    ro = scored.rollouts
    _, std, count = group_stats(scored.rewards, ro.group)
    keep = torch.zeros(len(ro.prompts), dtype=torch.bool)
    keep[ro.group] = (std > 0) | (count == 1)
    return keep


def select_groups(scored: ScoredRollouts, groups: list[int]) -> ScoredRollouts:
    """The samples of the listed groups, renumbered 0..len(groups)-1 in the given order."""
    ro = scored.rollouts
    rows = torch.cat([(ro.group == g).nonzero().flatten() for g in groups]) if groups else torch.zeros(0, dtype=torch.long)
    remap = {g: i for i, g in enumerate(groups)}
    sub = Rollouts(
        prompts=[ro.prompts[g] for g in groups],
        group=torch.tensor([remap[int(ro.group[r])] for r in rows], dtype=torch.long),
        response_ids=ro.response_ids[rows], response_mask=ro.response_mask[rows],
        rollout_logprobs=ro.rollout_logprobs[rows],
        texts=[ro.texts[r] for r in rows.tolist()], finish_reason=[ro.finish_reason[r] for r in rows.tolist()],
        env_mask=None if ro.env_mask is None else ro.env_mask[rows],
        contexts=None if ro.contexts is None else [ro.contexts[r] for r in rows.tolist()],
        episodes=None if ro.episodes is None else [ro.episodes[r] for r in rows.tolist()],
    )
    est = scored.estimated
    if est is not None:  # group-scope advantages stay valid for any subset of whole groups
        est = AdvantageOutput(est.advantages[rows], None if est.weights is None else est.weights[rows], est.metrics)
    return ScoredRollouts(sub, scored.rewards[rows], {k: v[rows] for k, v in scored.components.items()},
                          scored.correct[rows], scored.metrics, est)


def _pad_to(x: torch.Tensor, width: int, value: float = 0) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


def concat_scored(a: ScoredRollouts, b: ScoredRollouts, pad_id: int) -> ScoredRollouts:
    """Samples of `a` then `b` (b's groups numbered after a's); metrics are those of `a`."""
    ra, rb = a.rollouts, b.rollouts
    w = max(ra.response_ids.shape[1], rb.response_ids.shape[1])
    ro = Rollouts(
        prompts=ra.prompts + rb.prompts,
        group=torch.cat([ra.group, rb.group + len(ra.prompts)]),
        response_ids=torch.cat([_pad_to(ra.response_ids, w, pad_id), _pad_to(rb.response_ids, w, pad_id)]),
        response_mask=torch.cat([_pad_to(ra.response_mask, w), _pad_to(rb.response_mask, w)]),
        rollout_logprobs=torch.cat([_pad_to(ra.rollout_logprobs, w), _pad_to(rb.rollout_logprobs, w)]),
        texts=ra.texts + rb.texts, finish_reason=ra.finish_reason + rb.finish_reason,
    )
    if ra.env_mask is not None or rb.env_mask is not None:  # episodes: both are (one env per run)
        ro.env_mask = torch.cat([_pad_to(ra.env_mask, w), _pad_to(rb.env_mask, w)])
        ro.contexts, ro.episodes = ra.contexts + rb.contexts, ra.episodes + rb.episodes
    comps = {k: torch.cat([a.components[k], b.components[k]]) for k in a.components}
    return ScoredRollouts(ro, torch.cat([a.rewards, b.rewards]), comps, torch.cat([a.correct, b.correct]), a.metrics)


class DynamicSampling:
    """DAPO's dynamic sampling as a rule for the step's collection rounds (`sampling.dynamic`).

    Off (filter_zero_variance False) it keeps every group and asks for one round. With the
    filter, groups whose rewards are all equal are dropped; with `refill`, rounds go on until
    every process holds its share of informative groups or `max_rounds` is reached.
    """

    def __init__(self, filter_zero_variance: bool = False, refill: bool = False, max_rounds: int = 1):
        self.filter_zero_variance, self.refill, self.max_rounds = filter_zero_variance, refill, max_rounds

    def keep(self, scored: ScoredRollouts) -> list[int]:
        """The groups of one round that stay, in order (all of them when the filter is off)."""
        if not self.filter_zero_variance:
            return list(range(len(scored.rollouts.prompts)))
        return informative_groups(scored).nonzero().flatten().tolist()

    def another_round(self, rounds: int, everyone_has_enough: Callable[[], bool]) -> bool:
        """Whether to draw again after `rounds` rounds; `everyone_has_enough` (a collective call) is
        asked only when refilling is on and rounds are left, so every process calls it equally often."""
        return self.refill and rounds < self.max_rounds and not everyone_has_enough()

    def metrics(self, rounds: int, generated: int, dropped: int, groups: int) -> dict[str, float]:
        """sampling/* metrics of the step's rounds ({} when the filter is off)."""
        if not self.filter_zero_variance:
            return {}
        return {"sampling/rounds": float(rounds), "sampling/generated_groups": float(generated),
                "sampling/dropped_frac": dropped / max(generated, 1), "sampling/groups": float(groups)}
