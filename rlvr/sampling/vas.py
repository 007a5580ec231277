"""VAS, Variance-Aware Sampling (MMR1: Leng et al., arXiv 2509.21268; spec algorithms.md §6).

Every prompt gets a Variance Promotion Score from N scoring rollouts of the current policy:

    OVS(x) = P(x)·(1 − P(x))                P = fraction of the N rollouts the verifier accepts
    TDS(x) = diversity of the N responses   (1 − self-BLEU, distinct-3 or mean edit distance)
    VPS(x) = α·OVS(x) + β·TDS(x)

The scores are min-max normalised over the dataset, optionally blended with the previous weights
(momentum), and drive a mixed sampler: in a batch of B prompts, ⌊λB⌋ are drawn with replacement
in proportion to the weights and the rest walk a fixed random permutation. The scores are
recomputed every `refresh_every` steps by a separate generation pass over the whole dataset.

The pure functions below hold the maths (the TDS metrics, pure functions of token lists, are in
rlvr/metrics/diversity.py); `ReferenceMixedOrder` reproduces the authors' sampler draw for draw
(§6.1), and `VASSampler` is the prompt sampler rlvr builds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from rlvr.metrics.diversity import distinct_n, edit_distance_mean, pad_lists, self_bleu_123
from rlvr.registry import SAMPLER
from rlvr.types import Services

# Added to the min-max denominator by the reference, so the best prompt gets 1 − O(1e-8).
MINMAX_EPS = 1e-8


# ---- per-prompt metrics (one prompt's N responses) -----------------------------------------


def ovs(correct: Sequence[bool]) -> float:
    """Outcome Variance Score: the Bernoulli variance P(1 − P) of the verifier's verdicts.

    MMR1 §3 (OVS). correct [N] bool -> float in [0, 0.25].
    P is the fraction of correct rollouts (verifier accuracy, not the format-weighted reward).
    N = 0 or 1 gives 0: a single verdict has no variance.
    Example: [True, False, True, False] -> P = 0.5 -> 0.25; [False, False, False, True] ->
    0.25·0.75 = 0.1875; [True, True, True] -> 0.
    """
    if not correct:
        return 0.0
    p = sum(1.0 for c in correct if c) / len(correct)
    return p * (1.0 - p)


# Name -> function for the TDS metrics, under the reference's names.
TDS_METRICS = {"distinct_3": distinct_n, "self_bleu_123": self_bleu_123, "edit_distance": edit_distance_mean}


# ---- dataset-level scores and weights -------------------------------------------------------


def vps_scores(metrics: Mapping[str, Sequence[float]], weights: Mapping[str, float]) -> list[float]:
    """Variance Promotion Score per prompt: Σ_m weight_m · metric_m.

    MMR1 §3, VPS = α·OVS + β·TDS; the reference allows any weighted sum of named metrics.
    metrics: name -> [D] values; weights: name -> float (every weighted name must be
    in `metrics`) -> [D].
    Example: {"ovs": [0, 0.25, 0.1875], "tds": [1, 0.95, 0.39]}, {"ovs": 0.8, "tds": 0.2}
    -> [0.2, 0.39, 0.228].
    """
    missing = [name for name in weights if name not in metrics]
    if missing:
        raise KeyError(f"no values for weighted metric(s) {missing}; have {sorted(metrics)}")
    lengths = {len(metrics[name]) for name in weights}
    if len(lengths) > 1:
        raise ValueError(f"metrics cover different numbers of prompts: {sorted(lengths)}")
    size = lengths.pop() if lengths else 0
    return [sum(float(w) * float(metrics[name][j]) for name, w in weights.items()) for j in range(size)]


def minmax_weights(scores: Sequence[float]) -> list[float]:
    """Min-max normalise the scores over the dataset: (c − min) / (max − min + 1e-8).

    MMR1 reference trainer (spec §6.2). scores [D] -> weights [D] in [0, 1):
    the lowest-scoring prompt gets weight exactly 0, the highest 1 − O(1e-8); all-equal scores
    give all zeros (see VASSampler's uniform fallback).
    Example: [0.0, 0.25, 0.1875] -> [0.0, 0.99999996, 0.74999997].
    """
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    return [(float(c) - lo) / (hi - lo + MINMAX_EPS) for c in scores]


def momentum_blend(old: Sequence[float], new: Sequence[float], momentum: float) -> list[float]:
    """Exponential smoothing of the sampling weights: μ·old + (1 − μ)·new.

    MMR1 reference trainer (spec §6.2; its config uses μ = 0, i.e. no smoothing).
    old, new [D] -> [D].
    Example: old [0.2, 0.9, 0.5], new [0, 1, 0.75], μ = 0.5 -> [0.1, 0.95, 0.625].
    """
    if len(old) != len(new):
        raise ValueError(f"old weights cover {len(old)} prompts, new ones {len(new)}")
    return [momentum * float(o) + (1.0 - momentum) * float(n) for o, n in zip(old, new)]


# ---- reference-compatible mixed order (spec §6.1) --------------------------------------------


def interleave(first: Sequence[int], second: Sequence[int]) -> list[int]:
    """a0, b0, a1, b1, ..., then the rest of the longer one. Example: [1, 2, 3], [9] -> [1, 9, 2, 3]."""
    out: list[int] = []
    for i in range(max(len(first), len(second))):
        if i < len(first):
            out.append(first[i])
        if i < len(second):
            out.append(second[i])
    return out


def mixed_index_list(
    weights: Sequence[float],
    batch_size: int,
    mixture_ratio: float,
    perm: Sequence[int],
    position: int,
    generator: torch.Generator,
) -> tuple[list[int], int]:
    """One pass of the reference's mixed sampler: n indices, batch after batch (spec §6.1).

    MMR1 reference sampler. weights [D] (>= 0, positive sum), perm [D] the run's fixed
    permutation, position q into it -> (n indices, new q). Draws, in order, from `generator`:
    multinomial(weights as float64, n, with replacement) then randperm(n) to shuffle those draws.
    With k = ⌊B·λ⌋, full batch b takes W[b·k : (b+1)·k] and B − k entries of perm from q (q
    restarts at 0, no reshuffle, when fewer than that are left), interleaved weighted-first;
    a final short batch of r = n mod B takes the next ⌊r·λ⌋ of W and r − ⌊r·λ⌋ of perm.
    Example: n = 5, B = 2, λ = 0.5 (k = 1), perm [4, 0, 1, 3, 2], q = 0, and draws
    W = [4, 4, 4, 2, 1] -> batches [W0, P0] = [4, 4], [W1, P1] = [4, 0], and the short batch
    r = 1 (⌊0.5⌋ = 0 weighted) [P2] = [1]: indices [4, 4, 4, 0, 1], new q = 3.
    """
    n = len(weights)
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    drawn = torch.multinomial(w, n, replacement=True, generator=generator)
    drawn = drawn[torch.randperm(n, generator=generator)].tolist()

    q = position
    out: list[int] = []

    def batch(size: int, start: int) -> int:
        nonlocal q
        k = int(size * mixture_ratio)
        u = size - k
        if q + u > n:
            q = 0
        out.extend(interleave(drawn[start : start + k], list(perm[q : q + u])))
        q += u
        return start + k

    start = 0
    for _ in range(n // batch_size):
        start = batch(batch_size, start)
    if n % batch_size:
        batch(n % batch_size, start)
    return out, q


class ReferenceMixedOrder:
    """The reference's sampler state: fixed permutation P, read position q, generator, batches served.

    Built with one CPU torch.Generator seeded with `seed`; P = randperm(n) is its first draw and
    never changes. Each (re)build of the index list draws anew (`mixed_index_list`) and restarts q
    at (consumed_batches · (B − ⌊B·λ⌋)) mod n, as the reference does at every epoch start and after
    every score refresh. `next_batch(weights, B)` serves the list B entries at a time; the short tail
    of n mod B entries is skipped and the list rebuilt, as the reference's drop-last loader does.
    When n < B a batch is cut from successive whole lists.
    """

    def __init__(self, num_prompts: int, seed: int, mixture_ratio: float = 0.5):
        if num_prompts < 1:
            raise ValueError("the training set has no prompts")
        self.num_prompts = num_prompts
        self.mixture_ratio = mixture_ratio
        self.generator = torch.Generator().manual_seed(seed)
        self.perm: list[int] = torch.randperm(num_prompts, generator=self.generator).tolist()
        self.position = 0
        self.consumed_batches = 0
        self.indices: list[int] = []  # the current list and how far it has been served
        self.cursor = 0
        self.batch_size: int | None = None
        self.stale = True

    def build(self, weights: Sequence[float], batch_size: int) -> list[int]:
        """Draw a fresh index list of n entries for batches of `batch_size` (see the class doc)."""
        if len(weights) != self.num_prompts:
            raise ValueError(f"{len(weights)} weights for {self.num_prompts} prompts")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        uniform_part = batch_size - int(batch_size * self.mixture_ratio)
        q = (self.consumed_batches * uniform_part) % self.num_prompts
        self.indices, self.position = mixed_index_list(
            weights, batch_size, self.mixture_ratio, self.perm, q, self.generator)
        self.cursor, self.batch_size, self.stale = 0, batch_size, False
        return list(self.indices)

    def invalidate(self) -> None:
        """The weights changed: the next batch starts a fresh list."""
        self.stale = True

    def next_batch(self, weights: Sequence[float], batch_size: int) -> list[int]:
        """The next `batch_size` dataset indices of the current list, rebuilding it when needed.

        weights [D]. A fresh list is drawn when the weights changed (`invalidate`), the batch
        size changed, or fewer than `batch_size` entries are left (the drop-last tail is skipped).
        Example: 5 prompts, batch_size 2 -> batches 1 and 2 take entries 0-3 of one list, batch 3 starts a
        new list (entry 4 is the skipped tail).
        """
        if self.stale or batch_size != self.batch_size or len(self.indices) - self.cursor < batch_size:
            self.build(weights, batch_size)
        out: list[int] = []
        while len(out) < batch_size:
            if self.cursor == len(self.indices):
                self.build(weights, batch_size)
            take = min(batch_size - len(out), len(self.indices) - self.cursor)
            out += self.indices[self.cursor : self.cursor + take]
            self.cursor += take
        self.consumed_batches += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        """Permutation, read position, generator state and the list being served (all a resume needs)."""
        return {"perm": list(self.perm), "position": self.position, "consumed_batches": self.consumed_batches,
                "generator": self.generator.get_state().clone(), "indices": list(self.indices),
                "cursor": self.cursor, "batch_size": self.batch_size, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; refuses a state saved for another number of prompts."""
        if len(state["perm"]) != self.num_prompts:
            raise ValueError(f"sampler state is for {len(state['perm'])} prompts, the training set has "
                             f"{self.num_prompts}")
        self.perm = [int(i) for i in state["perm"]]
        self.position, self.consumed_batches = int(state["position"]), int(state["consumed_batches"])
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).clone())
        self.indices, self.cursor = [int(i) for i in state["indices"]], int(state["cursor"])
        self.batch_size = None if state["batch_size"] is None else int(state["batch_size"])
        self.stale = bool(state["stale"])


# ---- the sampler ----------------------------------------------------------------------------


@SAMPLER.register("vas")
class VASSampler:
    """Variance-Aware Sampling (MMR1): prompts whose rollouts disagree are drawn more often.

    Protocol. Each step the loop asks `needs_refresh(step)`; when true it generates
    `scoring_samples` responses for EVERY training prompt with the current policy and hands the
    verdicts and response tokens to `rescore`. `sample(B)` then serves batches of the §6.1 mixed
    order: ⌊mixing_ratio·B⌋ prompts drawn with replacement ∝ weight, the rest from a fixed
    permutation, interleaved. Until the first `rescore` every prompt weighs the same, so the
    weighted half is uniform with replacement (the other half walks the permutation as always).

    Scores. VPS = alpha·OVS + beta·TDS, then min-max over the dataset, then
    w ← momentum·w_old + (1 − momentum)·w_new (the first rescore takes w_new as is).
    - padded_reference=False (default, the paper): TDS from the responses as generated;
      "self_bleu" means 1 − self-BLEU (the paper's "inverse self-BLEU"), a diversity.
    - padded_reference=True (the MMR1 code at d8161a0c): every response is right-padded with
      `pad_id` to `max_new_tokens` (the longest response of the pass if unset) before the TDS
      metric, and "self_bleu" enters as the similarity self-BLEU itself, so with beta > 0 it
      favours LESS diverse prompts, as the released code does.
    "distinct_3" and "edit_distance" (mean raw token Levenshtein) are diversities in both modes;
    "none" scores OVS alone (the released config: alpha 1, OVS only). Defaults are the paper's
    main text: λ = 0.5, α = 0.8, β = 0.2, refresh every 35 steps; the paper uses 32 scoring
    rollouts, the released config 8.

    Weights with no positive entry (every prompt has the same VPS, so min-max gives all zeros,
    and no momentum carries older weights) cannot drive a weighted draw (the reference errors);
    the weighted half then falls back to uniform, `uniform_fallback` is True and the metric
    `sampling/vas_uniform_fallback` reads 1. `sample` counts every call as one batch served.
    Example: 3 prompts with verdicts [1,1,1,1], [1,0,1,0], [0,0,0,1], diversity "none", α = 1 ->
    OVS [0, 0.25, 0.1875] -> weights [0, 1.0, 0.75]: prompt 0 is never a weighted draw.
    """

    def __init__(
        self,
        num_prompts: int,
        seed: int,
        *,
        mixing_ratio: Annotated[float, Field(ge=0, le=1)] = 0.5,
        alpha: float = 0.8,
        beta: float = 0.2,
        diversity: Literal["self_bleu", "distinct_3", "edit_distance", "none"] = "self_bleu",
        padded_reference: bool = False,
        refresh_every: Annotated[int, Field(ge=1)] = 35,
        scoring_samples: Annotated[int, Field(ge=1)] = 8,
        momentum: Annotated[float, Field(ge=0, le=1)] = 0.0,
        max_new_tokens: int | None = None,
    ):
        if not 0.0 <= mixing_ratio <= 1.0:
            raise ValueError(f"mixing_ratio: expected a float in [0, 1], got {mixing_ratio}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum: expected a float in [0, 1], got {momentum}")
        if refresh_every < 1 or scoring_samples < 1:
            raise ValueError("refresh_every and scoring_samples must be >= 1")
        if diversity not in ("self_bleu", "distinct_3", "edit_distance", "none"):
            raise ValueError(f"diversity: unknown metric {diversity!r}")
        self.num_prompts = num_prompts
        self.mixing_ratio = mixing_ratio
        self.alpha, self.beta = alpha, beta
        self.diversity = diversity
        self.padded_reference = padded_reference
        self.refresh_every = refresh_every
        self.scoring_samples = scoring_samples
        self.momentum = momentum
        self.max_new_tokens = max_new_tokens
        self.order = ReferenceMixedOrder(num_prompts, seed, mixing_ratio)
        self.scores: list[float] | None = None  # VPS per prompt from the latest rescore
        self.weights: list[float] | None = None  # sampling weights (after min-max and momentum)
        self.last_refresh_step: int | None = None
        self._asked_step: int | None = None

    @property
    def uniform_fallback(self) -> bool:
        """True while the weighted half draws uniformly (no scores yet, or no positive weight)."""
        w = self.weights
        return w is None or not all(math.isfinite(x) for x in w) or sum(w) <= 0.0

    def _draw_weights(self) -> list[float]:
        return [1.0] * self.num_prompts if self.uniform_fallback else list(self.weights or [])

    def sample(self, count: int) -> list[int]:
        """Dataset indices of the next batch of `count` prompts in the mixed order (see the class doc)."""
        return self.order.next_batch(self._draw_weights(), count)

    def refresh(self, step: int, services: Services) -> dict[str, float]:
        """The loop's pre-step hook: the scoring pass over every training prompt when it is due."""
        if not self.needs_refresh(step):
            return {}
        results = services.sample_prompts(list(range(self.num_prompts)), self.scoring_samples)
        return self.rescore([r["correct"] for r in results], [r["response_ids"] for r in results],
                            services.pad_id, step=step)

    def needs_refresh(self, step: int) -> bool:
        """True before the first scoring pass and once `refresh_every` steps have passed since the last."""
        self._asked_step = step
        return self.last_refresh_step is None or step - self.last_refresh_step >= self.refresh_every

    def tds(self, tokens: list[list[list[int]]], pad_id: int) -> list[float]:
        """Per-prompt diversity term of the VPS under this sampler's settings (see the class doc)."""
        if self.diversity == "none":
            return [0.0] * len(tokens)
        if self.padded_reference:
            longest = max((len(t) for lists in tokens for t in lists), default=0)
            width = max(self.max_new_tokens or 0, longest)
            tokens = [pad_lists(lists, pad_id, width) for lists in tokens]
        if self.diversity == "self_bleu":
            sim = [self_bleu_123(lists) for lists in tokens]
            return sim if self.padded_reference else [1.0 - s for s in sim]
        fn = distinct_n if self.diversity == "distinct_3" else edit_distance_mean
        return [fn(lists) for lists in tokens]

    def rescore(
        self,
        per_prompt_correct: list[list[bool]],
        per_prompt_tokens: list[list[list[int]]],
        pad_id: int,
        *,
        step: int | None = None,
    ) -> dict[str, float]:
        """New weights from a scoring pass over every prompt; returns metrics to log.

        per_prompt_correct[j][i]: verifier verdict of rollout i of prompt j; per_prompt_tokens[j][i]:
        its response token ids (no padding). `step` is recorded as the refresh step (default: the
        step last given to `needs_refresh`, else 0). The next `sample` starts a fresh index list.
        """
        if len(per_prompt_correct) != self.num_prompts or len(per_prompt_tokens) != self.num_prompts:
            raise ValueError(f"rescore needs every prompt: got {len(per_prompt_correct)} verdict lists and "
                             f"{len(per_prompt_tokens)} token lists for {self.num_prompts} prompts")
        for j, (c, t) in enumerate(zip(per_prompt_correct, per_prompt_tokens)):
            if len(c) != len(t):
                raise ValueError(f"prompt {j}: {len(c)} verdicts but {len(t)} responses")
        ovs_values = [ovs(c) for c in per_prompt_correct]
        tds_values = self.tds(per_prompt_tokens, pad_id)
        scores = vps_scores({"ovs": ovs_values, "tds": tds_values},
                            {"ovs": self.alpha, "tds": self.beta if self.diversity != "none" else 0.0})
        new = minmax_weights(scores)
        self.weights = new if self.weights is None else momentum_blend(self.weights, new, self.momentum)
        self.scores = scores
        self.last_refresh_step = step if step is not None else (self._asked_step or 0)
        self.order.invalidate()
        n = self.num_prompts
        return {
            "sampling/vas_ovs_mean": sum(ovs_values) / n,
            "sampling/vas_zero_ovs_frac": sum(1.0 for v in ovs_values if v == 0.0) / n,
            "sampling/vas_tds_mean": sum(tds_values) / n,
            "sampling/vas_vps_mean": sum(scores) / n,
            "sampling/vas_zero_weight_frac": sum(1.0 for w in self.weights if w == 0.0) / n,
            "sampling/vas_uniform_fallback": float(self.uniform_fallback),
        }

    def state_dict(self) -> dict[str, Any]:
        """Scores, weights, the last refresh step and the mixed order's state."""
        return {"weights": None if self.weights is None else list(self.weights),
                "scores": None if self.scores is None else list(self.scores),
                "last_refresh_step": self.last_refresh_step, "order": self.order.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; refuses weights or scores for another number of prompts."""
        for key in ("weights", "scores"):
            if state[key] is not None and len(state[key]) != self.num_prompts:
                raise ValueError(f"sampler state holds {len(state[key])} {key} for {self.num_prompts} prompts")
        self.weights = None if state["weights"] is None else [float(x) for x in state["weights"]]
        self.scores = None if state["scores"] is None else [float(x) for x in state["scores"]]
        step = state["last_refresh_step"]
        self.last_refresh_step = None if step is None else int(step)
        self.order.load_state_dict(state["order"])
