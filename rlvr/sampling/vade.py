"""VADE-style prompt sampler: Beta posteriors per prompt, Thompson selection by information gain.

**This is rlvr's own design, written from the abstract of VADE (Hu et al., "Variance-Aware Dynamic
Sampling", arXiv 2511.18902) — not the authors' code and not the paper's equations**, neither of
which was available. The abstract fixes the ingredients: a per-prompt Beta posterior over the
probability of a correct answer, updated online from the groups actually trained on (no extra
rollouts); Thompson sampling of the prompts with the largest information gain; a two-scale prior
decay so the posterior follows the moving policy. Every form and constant below is rlvr's choice
(spec/algorithms.md §7) and a config value; results may differ from the paper's.

Per prompt x the state is (a_x, b_x, t_x): Beta(a_x, b_x) as of step t_x, its last update.
- Slow decay (policy drift while x is not visited): at step t, x's evidence has shrunk toward the
  prior (a0, b0) by λ_slow^(t − t_x). It is applied lazily — whenever x is scored or updated at
  step t — so the stored (a, b) are always "as of t_x".
- Fast decay (one visit): a group result of s successes in n samples (rewards in [0, 1], s = Σ r) at
  step t gives a ← a0 + λ_fast·(a_t − a0) + s, b ← b0 + λ_fast·(b_t − b0) + (n − s), t_x ← t,
  where (a_t, b_t) is the slow-decayed posterior.
- Selection (P1): a uniform candidate pool (pool_factor × prompts_per_step prompts, or the whole
  dataset), one Thompson draw p̃ ~ Beta(a, b) per candidate, score IG(p̃) = 1 − p̃^G − (1 − p̃)^G
  (the chance that a group of G samples is not degenerate, i.e. carries gradient signal; option
  `ig: variance` scores p̃(1 − p̃)), take the best; optionally a share `uniform_mix` of the step is
  drawn uniformly from the other prompts instead.

Randomness comes from one numpy PCG64 generator seeded with the run seed; its state is part of the
checkpoint, so a resumed run continues the same draws.

In the shapes below [P] is one entry per prompt handed in: a step's groups, a candidate pool or the
whole dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from rlvr.registry import SAMPLER
from rlvr.types import Services, StepOutcome

__all__ = [
    "VADESampler",
    "decay_toward_prior",
    "degenerate_fraction",
    "degenerate_prob",
    "fast_update",
    "ig_nondegenerate",
    "ig_variance",
    "slow_decayed",
    "thompson_scores",
]


# ---- pure maths --------------------------------------------------------------------------------


def decay_toward_prior(x: np.ndarray | float, prior: float, factor: np.ndarray | float) -> np.ndarray | float:
    """Shrink a Beta parameter's evidence toward the prior: x0 + (x − x0)·factor.

    Shapes: x [P] (or scalar), factor broadcastable. Example: x = [9, 5, 1], prior 1, factor 0.5
    -> [5, 3, 1].
    """
    return prior + (x - prior) * factor


def slow_decayed(a: np.ndarray, b: np.ndarray, last_step: np.ndarray, step: int, prior_a: float,
               prior_b: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior at `step` given the one stored at `last_step` (rlvr VADE, spec §7 "slow decay").

        a_t = a0 + (a − a0)·λ_slow^(t − t_x),   b_t likewise   (t − t_x clamped at 0)

    Shapes: a, b, last_step [P]; returns two [P]. Example: a = [9, 1], b = [1, 9], t_x = [3, 5],
    t = 5, prior (1, 1), λ = 0.5 -> factors [0.25, 1] -> a_t = [3, 1], b_t = [1, 9].
    """
    factor = rate ** np.maximum(step - np.asarray(last_step), 0).astype(np.float64)
    return decay_toward_prior(a, prior_a, factor), decay_toward_prior(b, prior_b, factor)


def fast_update(a: np.ndarray, b: np.ndarray, successes: np.ndarray, counts: np.ndarray, prior_a: float,
                prior_b: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """One visit's update: decay the evidence by λ_fast, then add the group result (spec §7 "fast decay").

        a' = a0 + λ_fast·(a − a0) + s,   b' = b0 + λ_fast·(b − b0) + (n − s)

    With λ_fast = 1 this is the conjugate Beta-Bernoulli update. Shapes: all [P] -> two [P].
    Example: a = [3, 1], b = [1, 1], s = [2, 0], n = [4, 4], prior (1, 1), λ = 0.5
    -> a' = [4, 1], b' = [3, 5].
    """
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    return decay_toward_prior(a, prior_a, rate) + s, decay_toward_prior(b, prior_b, rate) + (n - s)


def ig_nondegenerate(p: np.ndarray | float, group_size: int) -> np.ndarray | float:
    """Probability that G Bernoulli(p) samples are not all equal: 1 − p^G − (1 − p)^G.

    The default VADE information gain in rlvr: a degenerate group has zero GRPO advantage.
    Shapes: [P] -> [P]. Example: G = 2, p = [0, 0.5, 0.9] -> [0, 0.5, 0.18].
    """
    p = np.asarray(p, dtype=np.float64)
    return 1.0 - p**group_size - (1.0 - p) ** group_size


def ig_variance(p: np.ndarray | float) -> np.ndarray | float:
    """Bernoulli variance p(1 − p), the `ig: variance` option. Example: [0, 0.5, 0.9] -> [0, 0.25, 0.09]."""
    p = np.asarray(p, dtype=np.float64)
    return p * (1.0 - p)


def thompson_scores(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, group_size: int,
                    ig: str = "nondegenerate") -> tuple[np.ndarray, np.ndarray]:
    """One Thompson draw p̃ ~ Beta(a_x, b_x) per prompt (in order) and its information gain.

    Shapes: a, b [P] -> (p̃ [P], score [P]). Example: Beta(9, 1) tends to draw p̃ ≈ 0.9, scored
    1 − 0.9^8 − 0.1^8 ≈ 0.57 with G = 8; Beta(5, 5) draws p̃ ≈ 0.5, scored ≈ 0.99, so the
    uncertain prompt wins.
    """
    p = rng.beta(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    score = ig_variance(p) if ig == "variance" else ig_nondegenerate(p, group_size)
    return p, score


def degenerate_prob(a: np.ndarray, b: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Posterior-predictive probability that a group of n samples is all correct or all wrong.

        E_{p~Beta(a,b)}[p^n + (1 − p)^n] = Π_{i<n} (a+i)/(a+b+i) + Π_{i<n} (b+i)/(a+b+i)

    Shapes: a, b, n [P] (n >= 1) -> [P]. Example: Beta(1, 1), n = 2 -> 1/3 + 1/3 = 2/3;
    Beta(9, 1), n = 1 -> 1 (one sample is always degenerate).
    """
    a, b, n = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(counts))
    all_right = np.ones(a.shape)
    all_wrong = np.ones(a.shape)
    for i in range(int(n.max(initial=0))):
        live = i < n
        all_right = np.where(live, all_right * (a + i) / (a + b + i), all_right)
        all_wrong = np.where(live, all_wrong * (b + i) / (a + b + i), all_wrong)
    return all_right + all_wrong


def degenerate_fraction(successes: Sequence[float], counts: Sequence[int]) -> float:
    """Realised fraction of degenerate groups (s = 0 or s = n; exact for binary rewards).

    Groups with n = 0 are ignored; NaN if none is left. Example: s = [0, 2, 4], n = [4, 4, 4] -> 2/3.
    """
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    live = n > 0
    if not live.any():
        return float("nan")
    s, n = s[live], n[live]
    return float(np.mean(np.isclose(s, 0.0) | np.isclose(s, n)))


# ---- the sampler -------------------------------------------------------------------------------


@SAMPLER.register("vade")
class VADESampler:
    """Prompt sampler (P1) with per-prompt Beta posteriors and Thompson selection (rlvr's VADE design).

    `sample(count)` scores a uniform candidate pool by the information gain of a Thompson draw and
    returns the best `count` prompts (a `uniform_mix` share drawn uniformly instead);
    `observe(step, prompt_indices, successes, counts)` feeds back the groups trained on at `step`.
    The sampler's clock is one past the last observed step: that is the step `sample` scores for.
    Several groups of one prompt in one `observe` call are pooled into one visit.

    Args (from YAML): prior_a, prior_b — the Beta prior (a0, b0); slow_decay — λ_slow per step
    between visits; fast_decay — λ_fast per visit; pool_factor — candidate pool = pool_factor ×
    prompts_per_step (capped at the dataset); ig — "nondegenerate" (1 − p^G − (1 − p)^G) or
    "variance" (p(1 − p)), G = samples_per_prompt; uniform_mix — share of each step drawn
    uniformly (round(uniform_mix × count) prompts).

    Example: 3 prompts, 1 per step, G = 2. After observe(1, [0, 1], [2, 1], [2, 2]) prompt 0 is
    Beta(3, 1) (always right so far), prompt 1 Beta(2, 2), prompt 2 the prior Beta(1, 1); at step 2
    the pool is all three and prompt 0 rarely wins (its draws are near 1, IG near 0).
    """

    def __init__(
        self,
        num_prompts: int,
        seed: int,
        prompts_per_step: int,
        samples_per_prompt: int,
        *,
        prior_a: Annotated[float, Field(gt=0)] = 1.0,
        prior_b: Annotated[float, Field(gt=0)] = 1.0,
        slow_decay: Annotated[float, Field(ge=0, le=1)] = 0.99,
        fast_decay: Annotated[float, Field(ge=0, le=1)] = 0.8,
        pool_factor: Annotated[int, Field(ge=1)] = 4,
        ig: Literal["nondegenerate", "variance"] = "nondegenerate",
        uniform_mix: Annotated[float, Field(ge=0, le=1)] = 0.0,
    ):
        if num_prompts < 1:
            raise ValueError("the training set has no prompts")
        if prompts_per_step < 1 or samples_per_prompt < 1:
            raise ValueError(f"prompts_per_step ({prompts_per_step}) and samples_per_prompt "
                             f"({samples_per_prompt}) must be >= 1")
        if not (prior_a > 0 and prior_b > 0):
            raise ValueError(f"prior_a and prior_b must be > 0, got {prior_a}, {prior_b}")
        for name, value in (("slow_decay", slow_decay), ("fast_decay", fast_decay), ("uniform_mix", uniform_mix)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if pool_factor < 1:
            raise ValueError(f"pool_factor must be >= 1, got {pool_factor}")
        if ig not in ("nondegenerate", "variance"):
            raise ValueError(f"ig must be 'nondegenerate' or 'variance', got {ig!r}")
        self.num_prompts = num_prompts
        self.seed = seed
        self.prompts_per_step = prompts_per_step
        self.samples_per_prompt = samples_per_prompt
        self.prior_a, self.prior_b = float(prior_a), float(prior_b)
        self.slow_decay, self.fast_decay = float(slow_decay), float(fast_decay)
        self.pool_factor = pool_factor
        self.ig = ig
        self.uniform_mix = float(uniform_mix)
        self.a = np.full(num_prompts, self.prior_a)
        self.b = np.full(num_prompts, self.prior_b)
        self.t = np.zeros(num_prompts, dtype=np.int64)
        self.visits = np.zeros(num_prompts, dtype=np.int64)
        self.clock = 0
        self.rng = np.random.default_rng(seed)

    # -- posteriors --

    def posterior(self, prompt_indices: Sequence[int] | np.ndarray | None = None,
                  step: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) of these prompts (default all) slow-decayed to `step` (default the clock)."""
        idx = slice(None) if prompt_indices is None else np.asarray(prompt_indices, dtype=np.int64)
        step = self.clock if step is None else step
        return slow_decayed(self.a[idx], self.b[idx], self.t[idx], step, self.prior_a, self.prior_b, self.slow_decay)

    def posterior_mean(self, prompt_indices: Sequence[int] | None = None, step: int | None = None) -> np.ndarray:
        """a / (a + b) of these prompts (default all) at `step` (default the clock): their expected success rate."""
        a, b = self.posterior(prompt_indices, step)
        return a / (a + b)

    # -- selection --

    def sample(self, count: int) -> list[int]:
        """`count` dataset indices for the step at the clock, distinct unless `count` exceeds the dataset."""
        out: list[int] = []
        while len(out) < count:  # more than the dataset: repeat whole selections
            out += self._select(min(count - len(out), self.num_prompts))
        return out

    def _select(self, count: int) -> list[int]:
        n_uniform = int(self.uniform_mix * count + 0.5)
        n_thompson = count - n_uniform
        chosen = np.empty(0, dtype=np.int64)
        if n_thompson:
            pool_size = min(self.num_prompts, max(count, self.pool_factor * self.prompts_per_step))
            pool = self.rng.choice(self.num_prompts, size=pool_size, replace=False)
            a, b = self.posterior(pool)
            _, score = thompson_scores(self.rng, a, b, self.samples_per_prompt, self.ig)
            chosen = pool[np.argsort(-score, kind="stable")[:n_thompson]]
        if n_uniform:
            rest = np.setdiff1d(np.arange(self.num_prompts), chosen, assume_unique=True)
            chosen = np.concatenate([chosen, self.rng.choice(rest, size=n_uniform, replace=False)])
        return [int(i) for i in chosen]

    # -- feedback --

    def observe(self, outcome: StepOutcome, services: Services | None = None) -> dict[str, float]:
        """The loop's post-update hook: each trained group's successes (rewards clipped to [0, 1])."""
        g = outcome.group
        k = len(outcome.prompt_indices)
        successes = torch.zeros(k, dtype=torch.float64).index_add_(0, g, outcome.rewards.double().clamp(0, 1))
        counts = torch.bincount(g, minlength=k)
        return self.update(outcome.step, outcome.prompt_indices, successes.tolist(), counts.tolist())

    def update(self, step: int, prompt_indices: Sequence[int], successes: Sequence[float],
               counts: Sequence[int]) -> dict[str, float]:
        """Update the posteriors from the groups trained on at `step`; returns metrics.

        The three lists hold one entry per group (P of them): prompt_indices[g] is the dataset index
        of group g, successes[g] = Σ rewards of group g (rewards in [0, 1]), counts[g] = its size. The metrics
        compare the degenerate-group fraction the posteriors predicted (before this update) with
        the realised one.
        """
        idx = np.asarray(prompt_indices, dtype=np.int64)
        s = np.asarray(successes, dtype=np.float64)
        n = np.asarray(counts, dtype=np.float64)
        if not idx.shape == s.shape == n.shape or idx.ndim != 1:
            raise ValueError(f"{idx.shape} prompts, {s.shape} successes, {n.shape} counts: expected equal 1-D")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_prompts):
            raise IndexError(f"prompt index outside 0..{self.num_prompts - 1}")
        if (n < 0).any() or (s < -1e-6).any() or (s > n + 1e-6).any():
            raise ValueError("need 0 <= successes <= counts (rewards in [0, 1] summed per group)")
        s = np.clip(s, 0.0, n)
        live = n > 0
        metrics = {}
        if live.any():
            a, b = self.posterior(idx[live], step)
            metrics["sampling/vade_predicted_degenerate_frac"] = float(degenerate_prob(a, b, n[live]).mean())
            metrics["sampling/vade_realised_degenerate_frac"] = degenerate_fraction(s[live], n[live])
            uniq, inverse = np.unique(idx[live], return_inverse=True)
            s_sum = np.bincount(inverse, weights=s[live], minlength=uniq.size)
            n_sum = np.bincount(inverse, weights=n[live], minlength=uniq.size)
            a, b = self.posterior(uniq, step)
            self.a[uniq], self.b[uniq] = fast_update(a, b, s_sum, n_sum, self.prior_a, self.prior_b, self.fast_decay)
            self.t[uniq] = step
            self.visits[uniq] += 1
        self.clock = max(self.clock, step + 1)
        metrics["sampling/vade_seen_frac"] = float((self.visits > 0).mean())
        metrics["sampling/vade_posterior_mean"] = float(self.posterior_mean().mean())
        return metrics

    # -- metrics helpers --

    def predicted_degenerate_fraction(self, prompt_indices: Sequence[int], counts: Sequence[int] | None = None,
                                      step: int | None = None) -> float:
        """Mean posterior-predictive chance that these prompts' groups (default size G) are degenerate."""
        n = np.full(len(prompt_indices), self.samples_per_prompt) if counts is None else np.asarray(counts)
        a, b = self.posterior(prompt_indices, step)
        return float(degenerate_prob(a, b, n).mean()) if len(n) else float("nan")

    def posterior_mean_histogram(self, bins: int = 10, seen_only: bool = True,
                                 step: int | None = None) -> list[int]:
        """Counts of posterior means in `bins` equal bins over [0, 1] (visited prompts only by default)."""
        mean = self.posterior_mean(step=step)
        if seen_only:
            mean = mean[self.visits > 0]
        return np.histogram(mean, bins=bins, range=(0.0, 1.0))[0].tolist()

    # -- checkpoint --

    def state_dict(self) -> dict[str, Any]:
        """Posteriors (a, b, t), visit counts, clock and generator state: enough to resume the same draws."""
        return {
            "a": torch.from_numpy(self.a.copy()), "b": torch.from_numpy(self.b.copy()),
            "t": torch.from_numpy(self.t.copy()), "visits": torch.from_numpy(self.visits.copy()),
            "clock": self.clock, "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`, checking it has one entry per dataset prompt and positive Beta parameters."""
        arrays = {}
        for key, dtype in (("a", np.float64), ("b", np.float64), ("t", np.int64), ("visits", np.int64)):
            x = np.array(torch.as_tensor(state[key]).numpy(), dtype=dtype)
            if x.shape != (self.num_prompts,):
                raise ValueError(f"VADE state {key!r} has shape {x.shape}, the dataset {self.num_prompts} prompts")
            arrays[key] = x
        if (arrays["a"] <= 0).any() or (arrays["b"] <= 0).any():
            raise ValueError("VADE state has non-positive Beta parameters")
        self.a, self.b, self.t, self.visits = arrays["a"], arrays["b"], arrays["t"], arrays["visits"]
        self.clock = int(state["clock"])
        self.rng.bit_generator.state = state["rng"]
