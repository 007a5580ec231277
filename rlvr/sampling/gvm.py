"""GVM: per-prompt sample budgets that minimise gradient variance (Yao et al., arXiv 2505.02391).

Plug-in points P6 + P2 of spec/algorithms.md §8. Once per outer iteration the framework runs
"stage 1": k samples per prompt with the current policy, the acceptance rate p_i (fraction verified
correct) and the mean gradient norm G_i of the accepted samples. GVM then spreads a total budget of
N samples over the prompts,

    n_i ∝ G_i / sqrt(p_i + α / p_i^(β−1)),     n_i = 0 when G_i = 0 or p_i = 0,

optionally drops prompts that are too easy or expected to yield too few accepted samples, and
rounds the shares to whole samples summing to N. Hard prompts (small p) need more draws to get an
accepted one and large-gradient prompts carry more variance, so both get more samples; the α term
keeps the allocation finite as p → 0.

Consequences the rest of the pipeline must accept:
- A prompt allocated 0 samples is skipped this iteration (no rollouts, no group). A step whose
  prompts all got 0 is skipped entirely.
- Groups have varying size: the prompt's group is its n_i samples, so GRPO normalises over n_i
  responses, and n_i = 1 is a singleton group.
- With `align = g` (the GPU count), a step's total is padded up to a multiple of g by handing +1s
  round-robin from the largest allocation down, zero allocations included, so the padding can
  revive a skipped prompt as a small (often singleton) group, exactly as the reference trainer does.

The ratio and rounding functions are checked against vectors produced with the authors' code
(RLHFlow/GVM@d640a754, em/stage_2_calc_sample_size.py and the `align_chunk` step of its trainer);
they are written from the maths in the spec, not copied.

Letters follow the paper: G_i is a gradient norm (not rlvr's shape letter G) and N the budget
shared by every estimated prompt; [P] is one entry per prompt handed in.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field

from rlvr.registry import ALLOCATOR
from rlvr.types import Services

__all__ = [
    "GVMAllocator",
    "align_chunk",
    "allocation_ratios",
    "drop_small_groups",
    "filter_insufficient",
    "filter_threshold",
    "integerise",
    "normalise",
    "sample_ratios",
    "sample_sizes",
]


# ---- pure maths --------------------------------------------------------------------------------


def normalise(weights: Sequence[float]) -> list[float]:
    """Scale non-negative weights to sum 1; all-zero (or empty) weights stay all zero.

    Summed left to right, as the reference does, so ratios match it to the last bit.
    Example: [2, 0, 6] -> [0.25, 0, 0.75]; [0, 0] -> [0, 0].
    """
    total = 0.0
    for w in weights:
        total += w
    if total <= 0.0:
        return [0.0] * len(weights)
    return [w / total for w in weights]


def sample_ratios(p: Sequence[float], G: Sequence[float], alpha: float = 1e-3, beta: float = 2.0) -> list[float]:
    """Share of the sample budget per prompt before any filter (GVM, arXiv 2505.02391; spec §8.1 step 3).

        w_i = G_i / sqrt(p_i + α / p_i^(β−1))   (w_i = 0 if G_i = 0 or p_i = 0),   ratio_i = w_i / Σ_j w_j

    Shapes: p, G are [P] (acceptance rate in [0, 1], gradient norm >= 0); returns [P], summing to 1
    (all zeros when every w_i is 0, where the reference would divide by zero).
    Example (α = 0, β = 2, so w = G/√p): p = [0.25, 1, 0], G = [1, 2, 3] -> w = [2, 2, 0]
    -> [0.5, 0.5, 0.0].
    """
    if len(p) != len(G):
        raise ValueError(f"p has {len(p)} entries, G has {len(G)}")
    weights = []
    for p_i, g_i in zip(p, G):
        if g_i == 0 or p_i == 0:
            weights.append(0.0)
        else:
            weights.append(g_i / math.sqrt(p_i + alpha / p_i ** (beta - 1.0)))
    return normalise(weights)


def filter_threshold(ratios: Sequence[float], p: Sequence[float], threshold: float) -> list[float]:
    """Drop prompts that are too easy: ratio_i -> 0 where p_i > threshold; off when threshold <= 0.

    Not renormalised (the filters are chained, then renormalised once; see `allocation_ratios`).
    Shapes: [P], [P] -> [P]. Example: ratios [0.2, 0.3, 0.5], p = [0.5, 1.0, 0.9], threshold 0.9
    -> [0.2, 0.0, 0.5].
    """
    if threshold <= 0:
        return list(ratios)
    return [r if p_i <= threshold else 0.0 for r, p_i in zip(ratios, p)]


def filter_insufficient(ratios: Sequence[float], p: Sequence[float], budget: int,
                        min_expected: float) -> list[float]:
    """Drop prompts expected to yield too few accepted samples: ratio_i -> 0 where
    p_i · ratio_i · N < min_expected; off when min_expected <= 0.

    Not renormalised. Shapes: [P], [P], N = budget -> [P].
    Example: ratios [0.5, 0.25, 0.25], p = [0.1, 0.5, 1.0], N = 16, min_expected 1
    -> expected accepted [0.8, 2, 4] -> [0.0, 0.25, 0.25].
    """
    if min_expected <= 0:
        return list(ratios)
    return [r if p_i * r * budget >= min_expected else 0.0 for r, p_i in zip(ratios, p)]


def allocation_ratios(p: Sequence[float], G: Sequence[float], budget: int, *, alpha: float = 1e-3,
                      beta: float = 2.0, threshold: float = 0.0, min_expected: float = 0.0) -> list[float]:
    """The shares after both filters, renormalised (spec §8.1 step 3; vectors' `ratio_after_filters`).

    sample_ratios -> filter_threshold -> filter_insufficient (on the un-renormalised shares, as the
    reference does) -> normalise. Shapes: [P], [P] -> [P], summing to 1 or all zero.
    Example: p = [0.25, 1, 0], G = [1, 2, 3], α = 0, threshold 0.9 -> [1.0, 0.0, 0.0].
    """
    ratios = sample_ratios(p, G, alpha, beta)
    ratios = filter_threshold(ratios, p, threshold)
    ratios = filter_insufficient(ratios, p, budget, min_expected)
    return normalise(ratios)


def integerise(ratios: Sequence[float], budget: int) -> list[int]:
    """Whole sample counts summing to `budget` (the reference's "round, then fix the residuals").

    1. n_i = round(ratio_i · N), halves to even.  2. e = N − Σ n_i.  3. If e > 0, add 1 to the e
    entries with the largest residual ratio_i·N − n_i; if e < 0, take 1 from the |e| entries with the
    smallest (most negative) residual. Ties go to the lower index. All-zero ratios give all zeros
    (nothing to hand out). Shapes: [P] -> [P] ints.
    Example: ratios [0.375, 0.375, 0.25], N = 4 -> scaled [1.5, 1.5, 1] -> rounded [2, 2, 1]
    (halves to even) -> e = −1; residuals [−0.5, −0.5, 0], tie -> index 0 loses one -> [1, 2, 1].
    Ratios [1/3]*3, N = 8: scaled 2.67 each -> [3, 3, 3], e = −1 -> [2, 3, 3].
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if not any(r > 0 for r in ratios):
        return [0] * len(ratios)
    scaled = [r * budget for r in ratios]
    counts = [round(x) for x in scaled]
    error = budget - sum(counts)
    if error != 0:
        residual = [x - n for x, n in zip(scaled, counts)]
        order = range(len(counts))
        # heapq.nlargest/nsmallest equal a stable sort's head, so ties keep index order
        if error > 0:
            picked = heapq.nlargest(error, order, key=residual.__getitem__)
        else:
            picked = heapq.nsmallest(-error, order, key=residual.__getitem__)
        step = 1 if error > 0 else -1
        for i in picked:
            counts[i] += step
    return counts


def align_chunk(sizes: Sequence[int], n_gpus: int) -> list[int]:
    """Pad a step's total sample count up to a multiple of the GPU count g (spec §8.1 step 4).

    If the total Σ sizes is not a multiple of g, hand out g − (total mod g) increments of +1 one at a time,
    visiting every prompt of the batch (zero allocations included) in descending order of its
    original size, ties later prompt first, wrapping round when the list is exhausted.
    Shapes: [P] ints -> [P] ints with a sum divisible by g (all zeros stay zero: total 0).
    Example: [5, 0, 3, 2], g = 8: total 10, 6 increments over the order (5, 3, 2, 0) =
    prompts 0, 2, 3, 1, 0, 2 -> [7, 1, 5, 3].
    """
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    out = [int(s) for s in sizes]
    short = -sum(out) % n_gpus
    if short == 0 or not out:
        return out
    order = sorted(range(len(out)), key=lambda i: (-out[i], -i))
    for k in range(short):
        out[order[k % len(order)]] += 1
    return out


def drop_small_groups(ratios: Sequence[float], budget: int, min_samples: int) -> list[int]:
    """Integer allocation with no group smaller than `min_samples` (rlvr option; off when <= 1).

    Integerise; if some prompts get 1..min_samples−1 samples, give them 0, renormalise the rest
    and integerise again, until none is left; the total stays `budget` (all zeros if no prompt
    survives). Shapes: [P] -> [P] ints.
    Example: ratios [0.1, 0.4, 0.5], N = 10, min 2 -> [1, 4, 5] -> prompt 0 dropped -> ratios
    [0, 0.444, 0.556] -> [0, 4, 6].
    """
    ratios = list(ratios)
    while True:
        counts = integerise(ratios, budget)
        small = [i for i, n in enumerate(counts) if 0 < n < min_samples]
        if not small:
            return counts
        for i in small:
            ratios[i] = 0.0
        ratios = normalise(ratios)


def sample_sizes(p: Sequence[float], G: Sequence[float], budget: int, *, alpha: float = 1e-3,
                 beta: float = 2.0, threshold: float = 0.0, min_expected: float = 0.0,
                 min_samples: int = 0) -> list[int]:
    """Whole GVM allocation: `allocation_ratios`, then `integerise` (via `drop_small_groups`).

    Shapes: [P], [P] -> [P] ints summing to `budget`, or all zeros when no prompt has p > 0 and
    G > 0 after the filters. Example: p = [0.25, 1, 0], G = [1, 2, 3], α = 0, N = 5 ->
    ratios [0.5, 0.5, 0] -> scaled [2.5, 2.5, 0] -> rounded [2, 2, 0] -> e = 1, tie -> prompt 0
    -> [3, 2, 0].
    """
    ratios = allocation_ratios(p, G, budget, alpha=alpha, beta=beta, threshold=threshold,
                               min_expected=min_expected)
    return drop_small_groups(ratios, budget, min_samples)


# ---- the allocator -----------------------------------------------------------------------------


@ALLOCATOR.register("gvm")
class GVMAllocator:
    """Allocator (P2): how many samples each chosen prompt gets, from the latest GVM estimates.

    Each call of `update_estimates` is one outer iteration: it records (p_i, G_i) for the prompts
    it is given (others keep their earlier estimates) and re-allocates the budget
    N = budget_per_prompt × (number of prompts with an estimate) over all of them, as the reference
    does over the whole dataset. `allocate(prompt_indices)` then looks the chosen prompts up;
    a prompt never estimated gets `samples_per_prompt` (so before stage 1 this is the fixed
    allocator), and with `align = g` the step's total is padded to a multiple of g.

    A prompt allocated 0 is skipped this iteration and groups vary in size (see the module
    docstring). If no estimated prompt qualifies (every p or G is 0, or the filters removed all),
    the reference would divide by zero; rlvr instead gives each of them budget_per_prompt samples.

    Args (from YAML): alpha, beta — the variance regulariser of the spec; filter_threshold — drop
    prompts with p > it (0 = off); filter_insufficient — drop prompts with p·ratio·N below it
    (0 = off); budget_per_prompt — N / #prompts (default samples_per_prompt, the reference's 8);
    align — pad each step's total to a multiple of this (the GPU count; 1 = off); min_samples —
    smallest group handed out (a prompt below it gets 0 and its share goes to the others; 2 avoids
    singleton groups; 0 = off; align's padding may still create small groups).

    Example: 3 prompts, samples_per_prompt 4; update_estimates([0, 1, 2], p=[0.25, 1, 0],
    grad_norms=[1, 2, 3]) with α = 0 -> ratios [0.5, 0.5, 0], N = 12 -> n = [6, 6, 0];
    allocate([2, 0]) -> [0, 6].
    """

    # stage 1 takes per-sample gradient norms (Services.grad_norms), which need whole local gradients
    # on each process: config validation refuses fsdp2/zero2/zero3 for a plug-in that says so
    needs_whole_gradients = True

    def __init__(
        self,
        num_prompts: int,
        samples_per_prompt: int,
        *,
        alpha: Annotated[float, Field(ge=0)] = 1e-3,
        beta: float = 2.0,
        filter_threshold: Annotated[float, Field(ge=0)] = 0.0,
        filter_insufficient: Annotated[float, Field(ge=0)] = 0.0,
        budget_per_prompt: Annotated[int, Field(ge=1)] | None = None,
        align: Annotated[int, Field(ge=1)] = 1,
        min_samples: Annotated[int, Field(ge=0)] = 0,
        estimate_every: Annotated[int, Field(ge=0)] = 0,
        stage1_samples: Annotated[int, Field(ge=1)] = 8,
        act_params: str = "embed_tokens",
        start_step: Annotated[int, Field(ge=1)] = 1,
    ):
        if num_prompts < 1:
            raise ValueError("the training set has no prompts")
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
        for name, value in (("alpha", alpha), ("filter_threshold", filter_threshold),
                            ("filter_insufficient", filter_insufficient), ("min_samples", min_samples)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if budget_per_prompt is not None and budget_per_prompt < 1:
            raise ValueError(f"budget_per_prompt must be >= 1, got {budget_per_prompt}")
        if align < 1:
            raise ValueError(f"align must be >= 1, got {align}")
        self.num_prompts = num_prompts
        self.samples_per_prompt = samples_per_prompt
        self.alpha = alpha
        self.beta = beta
        self.filter_threshold = filter_threshold
        self.filter_insufficient = filter_insufficient
        self.budget_per_prompt = budget_per_prompt if budget_per_prompt is not None else samples_per_prompt
        self.align = align
        self.min_samples = min_samples
        self.estimate_every = estimate_every
        self.stage1_samples = stage1_samples
        self.act_params = act_params
        self.start_step = start_step
        self.p: list[float | None] = [None] * num_prompts
        self.G: list[float | None] = [None] * num_prompts
        self.n: list[int | None] = [None] * num_prompts
        self.iteration = 0

    def refresh(self, step: int, services: Services) -> dict[str, float]:
        """The loop's pre-step hook: stage 1 (§8.1) at `start_step`, then every `estimate_every` steps.

        Until `start_step` every prompt gets samples_per_prompt (the fixed allocator): GVM assumes a
        policy that already solves some of every prompt's samples. From random weights stage 1 gave
        0 samples to 98.5% of the quickstart's prompts (measured), concentrating the whole budget on
        the three it happened to solve.

        Every training prompt gets `stage1_samples` samples from the current policy; p_i is the
        fraction with reward > 0.5, G_i the mean gradient norm of -sum_t log pi over its accepted
        samples, on the first parameter whose name contains `act_params` (0 if none accepted).
        """
        if step < self.start_step:
            return {}
        since = step - self.start_step
        due = self.iteration == 0 or (self.estimate_every and since % self.estimate_every == 0)
        if not due:
            return {}
        results = services.sample_prompts(list(range(self.num_prompts)), self.stage1_samples)
        accepted = [(r["index"], resp) for r in results for resp, rew in zip(r["response_ids"], r["rewards"])
                    if rew > 0.5]
        norms = services.grad_norms([services.prompts[i].token_ids for i, _ in accepted],
                                    [resp for _, resp in accepted], self.act_params)
        total = [0.0] * self.num_prompts
        for (i, _), g in zip(accepted, norms):
            total[i] += g
        p = [sum(x > 0.5 for x in r["rewards"]) / len(r["rewards"]) for r in results]
        G = [total[r["index"]] / (p[j] * len(r["rewards"])) if p[j] else 0.0 for j, r in enumerate(results)]
        return self.update_estimates([r["index"] for r in results], p, G)

    def update_estimates(self, prompt_indices: Sequence[int], accept_rates: Sequence[float],
                         grad_norms: Sequence[float]) -> dict[str, float]:
        """Record stage-1 estimates for these prompts and re-allocate; returns allocation metrics."""
        if not len(prompt_indices) == len(accept_rates) == len(grad_norms):
            raise ValueError(f"{len(prompt_indices)} prompts, {len(accept_rates)} acceptance rates, "
                             f"{len(grad_norms)} gradient norms")
        for i, p_i, g_i in zip(prompt_indices, accept_rates, grad_norms):
            i, p_i, g_i = int(i), float(p_i), float(g_i)
            if not 0 <= i < self.num_prompts:
                raise IndexError(f"prompt index {i} outside 0..{self.num_prompts - 1}")
            if not 0.0 <= p_i <= 1.0:
                raise ValueError(f"acceptance rate of prompt {i} must be in [0, 1], got {p_i}")
            if not (math.isfinite(g_i) and g_i >= 0):
                raise ValueError(f"gradient norm of prompt {i} must be finite and >= 0, got {g_i}")
            self.p[i], self.G[i] = p_i, g_i
        self.iteration += 1
        self._reallocate()
        return self.metrics()

    def _reallocate(self) -> None:
        known = [i for i in range(self.num_prompts) if self.p[i] is not None]
        budget = self.budget_per_prompt * len(known)
        sizes = sample_sizes(
            [self.p[i] for i in known], [self.G[i] for i in known], budget, alpha=self.alpha, beta=self.beta,
            threshold=self.filter_threshold, min_expected=self.filter_insufficient, min_samples=self.min_samples,
        )
        if known and not any(sizes):
            sizes = [self.budget_per_prompt] * len(known)
        for i, n_i in zip(known, sizes):
            self.n[i] = n_i

    def allocate(self, prompt_indices: Sequence[int]) -> list[int]:
        """n_i for each chosen prompt (0 = skip it this iteration), padded to a multiple of `align`."""
        known = [self.n[int(i)] for i in prompt_indices]
        counts = [self.samples_per_prompt if n_i is None else n_i for n_i in known]
        return align_chunk(counts, self.align) if self.align > 1 else counts

    def metrics(self) -> dict[str, float]:
        """Summary of the current allocation over the estimated prompts (sampling/gvm_*)."""
        known = [n for n in self.n if n is not None]
        if not known:
            return {}
        nonzero = [n for n in known if n > 0]
        return {
            "sampling/gvm_iteration": float(self.iteration),
            "sampling/gvm_zero_frac": 1.0 - len(nonzero) / len(known),
            "sampling/gvm_singleton_frac": sum(n == 1 for n in known) / len(known),
            "sampling/gvm_samples_max": float(max(known)),
            "sampling/gvm_samples_mean_nonzero": sum(nonzero) / len(nonzero) if nonzero else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        """Per dataset prompt its estimates (p, G) and allocation n (None if never estimated), and the iteration."""
        return {"p": list(self.p), "G": list(self.G), "n": list(self.n), "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`; it must have one entry per dataset prompt."""
        for key in ("p", "G", "n"):
            if len(state[key]) != self.num_prompts:
                raise ValueError(f"GVM state has {len(state[key])} entries in {key!r}, the dataset "
                                 f"{self.num_prompts} prompts")
        self.p = [None if v is None else float(v) for v in state["p"]]
        self.G = [None if v is None else float(v) for v in state["G"]]
        self.n = [None if v is None else int(v) for v in state["n"]]
        self.iteration = int(state["iteration"])
