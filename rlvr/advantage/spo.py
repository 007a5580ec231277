"""SPO: Single-stream Policy Optimization (Xu & Ding, arXiv 2509.13232).

One response per prompt. Instead of a group mean, each prompt x keeps a persistent Beta estimate of
its success probability, p̂_x = α_x / (α_x + β_x), and the advantage is the batch-normalised
A_x = r_x − p̂_x. The same estimate drives a prompt curriculum (weights sqrt(p̂(1 − p̂)) + ε).

Behaviour follows the authors' code (verl-recipe spo/spo_ray_trainer.py, see spec §2), which is what
produced the published numbers. One training step, in order:

    1. P1 sampling      weights from the current p̂, draw the batch from a candidate pool
    2. P3 advantage     Â from p̂ as it was BEFORE this step (tracker not touched yet)
    3.    learner update
    4. P5 tracker       for each prompt in the batch: D = drift of its stored response under the new
                        policy, ρ = clip(2^(−D/D_half), ρ_min, ρ_max), α ← ρα + r, β ← ρβ + (1 − r);
                        store this step's response and its log-probs under the new policy

Rewards are binarised (r > 0 → 1) everywhere the tracker or advantage sees them, as the reference
does for offline scores and as its reward function does for online ones (it maps DAPO's −1 to 0). For
{0, 1} rewards this changes nothing.

SPO lives in three files, one job each:
    rlvr/advantage/spo.py          the pure maths below and the `SPO` estimator (advantage "spo"): its
                                   baseline (P3), offline pass (P6, `refresh`) and update hook (P5, `observe`)
    rlvr/advantage/spo_tracker.py  `SPOTracker`, the per-prompt state the estimator and the sampler share
    rlvr/sampling/spo.py           `SPOSampler` (sampler "spo") and its draw (P1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from rlvr.registry import ADVANTAGE
from rlvr.types import AdvantageInput, AdvantageOutput, Services, StepOutcome

RHO_MIN = 0.875  # config rho.clip_lower in the reference
RHO_MAX = 0.96  # hard-coded in the reference
D_HALF = 0.06  # hard-coded in the reference
EXPLORATION_EPS = 0.05  # hard-coded in the reference
ADV_EPS = 1e-8
OFFLINE_N = 8

Floats = torch.Tensor | Sequence[float] | float


def _f64(x: Floats) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def binarise(rewards: Floats) -> torch.Tensor:
    """Success indicator 1[r > 0] as float64. Example: [1, 0, -1, 0.3] -> [1, 0, 0, 1]."""
    return (_f64(rewards) > 0).double()


# ---------------------------------------------------------------------------------------------
# P6: offline initialisation
# ---------------------------------------------------------------------------------------------


def offline_successes(
    scores: Sequence[float], offline_n: int = OFFLINE_N, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """(successes s, samples used k) from one prompt's offline scores (spec §2.2, Init).

    Scores are binarised with s > 0. When more than `offline_n` scores are stored, a random subset of
    `offline_n` is used (as the reference does); when fewer are stored, all of them are used (k < offline_n).
    `offline_n = 0` ignores the scores (k = 0, the α = β = ½ rule).
    Example: [1, 0, 1, 0, 0, 1, 1, 0], offline_n 8 -> (4, 8); same scores, offline_n 0 -> (0, 0).
    """
    if offline_n < 0:
        raise ValueError(f"offline_n must be >= 0, got {offline_n}")
    s = binarise(list(scores)) if len(scores) else torch.zeros(0, dtype=torch.float64)
    if len(s) > offline_n:
        s = s[torch.randperm(len(s), generator=generator)[:offline_n]]
    return int(s.sum().item()), len(s)


def init_from_offline(
    successes: Floats, k: Floats, rho_min: float = RHO_MIN
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial Beta parameters from offline success counts (spec §2.2, Init; reference code).

    N_init = 1 / (1 − ρ_min) is the effective count the KL-adaptive update settles to when the policy
    moves fast (n ← ρn + 1 has fixed point 1/(1 − ρ)); the rate is Krichevsky–Trofimov smoothed:
        α = N_init (s + ½) / (k + 1),   β = N_init (k − s + ½) / (k + 1),   so p̂ = (s + ½) / (k + 1).
    k = 0 (no offline samples, `offline_N = 0`) gives the uninformative α = β = ½ instead.

    successes [P], k [P] or scalar -> (alpha [P], beta [P]) float64.
    Example (ρ_min 0.875, N_init 8, k 8): s = [8, 4, 0] -> α = [7.5556, 4, 0.4444],
    β = [0.4444, 4, 7.5556], p̂ = [0.9444, 0.5, 0.0556]; k = 0 -> α = β = 0.5.
    """
    if not 0 <= rho_min < 1:
        raise ValueError(f"rho_min must be in [0, 1), got {rho_min}")
    s = _f64(successes)
    k = torch.broadcast_to(_f64(k), s.shape)
    if (s < 0).any() or (s > k).any():
        raise ValueError("offline successes must lie in [0, k]")
    n_init = 1.0 / (1.0 - rho_min)
    alpha = n_init * (s + 0.5) / (k + 1)
    beta = n_init * (k - s + 0.5) / (k + 1)
    none = k == 0
    half = torch.full_like(s, 0.5)
    return torch.where(none, half, alpha), torch.where(none, half, beta)


# ---------------------------------------------------------------------------------------------
# P5: policy drift and forgetting rate
# ---------------------------------------------------------------------------------------------


def drift_proxy(
    stored_logprobs: torch.Tensor, current_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """D per row: token-mean of |log π_stored − log π_current| over the response (spec §2.2, §2.8).

    The reference's cheap stand-in for KL(π_then ‖ π_now): `stored` are the log-probs of a prompt's last
    response recomputed right after the update that used it, `current` the same tokens under today's
    policy. A row with no tokens gives D = 0 (no evidence of drift) instead of 0/0.

    stored [P, T], current [P, T], mask [P, T] (one row per prompt) -> D [P] float64.
    Example: stored [[-0.5, -1.0, -0.2]], current [[-0.6, -0.9, -0.2]], mask [[1, 1, 1]]
    -> D = (0.1 + 0.1 + 0) / 3 = [0.0667]; mask [[1, 1, 0]] on [-2, -0.1, 0] vs [-1, -0.1, -5] -> [0.5].
    """
    m = _f64(mask)
    diff = (_f64(stored_logprobs) - _f64(current_logprobs)).abs() * m
    tokens = m.sum(-1)
    return torch.where(tokens > 0, diff.sum(-1) / tokens.clamp(min=1e-30), torch.zeros_like(tokens))


def halving_rate(D: Floats, d_half: float = D_HALF) -> torch.Tensor:
    """Unclipped KL-adaptive forgetting rate 2^(−D / D_half): halves every D_half of drift.

    D [P] -> ρ [P] float64. Example (D_half 0.06): D = [0, 0.01, 0.06] -> [1, 0.8909, 0.5].
    """
    if d_half <= 0:
        raise ValueError(f"d_half must be > 0, got {d_half}")
    return torch.exp2(-_f64(D) / d_half)


def forgetting_rate(
    D: Floats,
    d_half: float = D_HALF,
    rho_min: float = RHO_MIN,
    rho_max: float = RHO_MAX,
    kind: Literal["adaptive", "constant"] = "adaptive",
) -> torch.Tensor:
    """ρ applied to a prompt's (α, β) before adding this step's observation (spec §2.2).

    adaptive: ρ = clip(2^(−D / D_half), ρ_min, ρ_max). A first visit has no stored response, so D = 0,
              2^0 = 1 and ρ = ρ_max: the estimate is always discounted a little.
    constant: ρ = ρ_min whatever D (the reference's `rho.type=constant`, 0.875 with the defaults).

    D [P] -> ρ [P] float64.
    Example (defaults): D = [0, 0.01, 0.2] -> unclipped [1, 0.8909, 0.0992] -> ρ = [0.96, 0.8909, 0.875];
    constant -> [0.875, 0.875, 0.875].
    """
    if not 0 < rho_min <= rho_max <= 1:
        raise ValueError(f"need 0 < rho_min <= rho_max <= 1, got {rho_min}, {rho_max}")
    if kind == "constant":
        return torch.full_like(_f64(D), rho_min)
    if kind != "adaptive":
        raise ValueError(f"kind must be 'adaptive' or 'constant', got {kind!r}")
    return halving_rate(D, d_half).clamp(rho_min, rho_max)


# ---------------------------------------------------------------------------------------------
# P3: advantage
# ---------------------------------------------------------------------------------------------


def raw_advantages(rewards: Floats, p_hat: Floats) -> torch.Tensor:
    """A = 1[r > 0] − p̂ (spec §2.3): the tracker's success probability is the baseline.

    rewards [N], p_hat [N] -> A [N] float64.
    Example: rewards [1, 0, 1], p̂ [0.9444, 0.5, 0.0556] -> [0.0556, −0.5, 0.9444].
    """
    return binarise(rewards) - _f64(p_hat)


def global_normalise(a: Floats, eps: float = ADV_EPS) -> torch.Tensor:
    """Â = (A − mean(A)) / (std(A) + eps) over the whole batch, std unbiased (N − 1) (spec §2.3).

    Guards where torch would give NaN or noise:
      - N = 1: there is nothing to normalise against (and the unbiased std is 0/0); A is returned
        unchanged, so the tracker baseline still gives a signal (like GRPO's singleton "raw" rule).
      - all A equal (N > 1): exactly 0, rather than rounding noise divided by ~eps.

    A [N] -> Â [N] float64.
    Example: A = [0.0556, −0.5, 0.9444] -> mean 0.1667, std 0.7286 -> Â = [−0.1525, −0.9150, 1.0675].
    """
    a = _f64(a)
    if a.numel() <= 1:
        return a.clone()
    if bool((a == a[0]).all()):
        return torch.zeros_like(a)
    return (a - a.mean()) / (a.std(unbiased=True) + eps)


def spo_advantages(rewards: Floats, p_hat: Floats, eps: float = ADV_EPS) -> torch.Tensor:
    """SPO advantage: global_normalise(1[r > 0] − p̂). All-correct batches still get non-zero values.

    rewards [N], p_hat [N] (before this step's tracker update) -> Â [N] float64.
    Example: rewards [1, 0, 1], p̂ [17/18, 1/2, 1/18] -> [−0.1525, −0.9150, 1.0675];
    rewards [1], p̂ [0.25] -> [0.75].
    """
    return global_normalise(raw_advantages(rewards, p_hat), eps)


# ---------------------------------------------------------------------------------------------
# P1: prioritised sampling weights (the draw is rlvr/sampling/spo.py's)
# ---------------------------------------------------------------------------------------------


def sampling_weights(p_hat: Floats, eps: float = EXPLORATION_EPS) -> torch.Tensor:
    """w = sqrt(p̂ (1 − p̂)) + ε (spec §2.4): favour prompts the policy solves about half the time.

    p_hat [P] -> w [P] float64. Probabilities are w / Σw.
    Example (ε 0.05): p̂ = [0.9444, 0.5, 0.0556] -> w = [0.2791, 0.55, 0.2791]
    -> prob [0.2518, 0.4963, 0.2518].
    """
    p = _f64(p_hat)
    return (p * (1 - p)).clamp(min=0).sqrt() + eps


# ---------------------------------------------------------------------------------------------
# the estimator plug-in: advantage (P3), offline pass (P6), post-update hook (P5)
# ---------------------------------------------------------------------------------------------


@ADVANTAGE.register("spo")
class SPO:
    """SPO as an advantage plug-in: the tracker's baseline, its offline initialisation and updates.

    Before the first step (`refresh`), with `offline_samples` > 0 every training prompt is sampled
    that many times with the initial policy to initialise the tracker (§2.2); 0 starts every
    prompt at alpha = beta = 1/2. After each update (`observe`) the stored last response of every
    prompt in the step is re-scored under the new policy to measure drift D, and the tracker is
    updated with this step's rewards and responses.
    """

    def __init__(
        self,
        *,
        offline_samples: Annotated[int, Field(ge=0)] = OFFLINE_N,
        rho_min: Annotated[float, Field(gt=0, le=1)] = RHO_MIN,
        rho_max: Annotated[float, Field(gt=0, le=1)] = RHO_MAX,
        d_half: Annotated[float, Field(gt=0)] = D_HALF,
        rho_kind: Literal["adaptive", "constant"] = "adaptive",
        exploration_eps: Annotated[float, Field(ge=0)] = EXPLORATION_EPS,
        adv_eps: Annotated[float, Field(gt=0)] = ADV_EPS,
    ):
        # imported here: the tracker is built on this module's maths, so it imports this module
        from rlvr.advantage.spo_tracker import SPOTracker

        self.tracker = SPOTracker(rho_min=rho_min, rho_max=rho_max, d_half=d_half, rho_kind=rho_kind,
                                  exploration_eps=exploration_eps, adv_eps=adv_eps)
        self.offline_samples = offline_samples
        self.initialised = False

    def __call__(self, inp: AdvantageInput) -> AdvantageOutput:
        return self.tracker(inp)

    def refresh(self, step: int, services: Services) -> dict[str, float]:
        """The loop's pre-step hook: the offline pass (P6), once, before the first step; returns metrics.

        Every training prompt gets `offline_samples` samples from the initial policy and starts at
        `init_from_offline` of its success count, e.g. 8 samples, 4 successes -> p̂ = ½. Later calls,
        and every call with `offline_samples` 0, do nothing (the tracker then starts prompts at α = β = ½).
        """
        if self.initialised:
            return {}
        self.initialised = True
        if not self.offline_samples:
            return {}
        results = services.sample_prompts(list(range(len(services.prompts))), self.offline_samples)
        uids = [services.prompts[r["index"]].uid for r in results]
        successes = [float(sum(x > 0 for x in r["rewards"])) for r in results]
        self.tracker.init_prompts(uids, successes, [float(self.offline_samples)] * len(uids))
        return {"advantage/spo_offline_prompts": float(len(uids)),
                "advantage/spo_offline_success": sum(successes) / max(len(uids) * self.offline_samples, 1)}

    def observe(self, outcome: StepOutcome, services: Services) -> dict[str, float]:
        """The loop's post-update hook (P5): measure drift, then update the tracker; returns metrics.

        For the step's N samples: each prompt's stored response is re-scored under the updated policy
        (its drift D), then α, β move by this step's rewards and the new responses are stored with their
        log-probs under the updated policy (see `SPOTracker.update`).
        """
        uids = outcome.prompt_uids
        prompt_ids = {u: services.prompts[outcome.prompt_indices[int(g)]].token_ids for u, g in zip(uids, outcome.group)}
        pending = self.tracker.pending_drift_requests(uids)
        keys = list(pending)
        current = services.logprobs([prompt_ids[u] for u in keys], [pending[u].tolist() for u in keys])
        drifts = self.tracker.drifts(uids, dict(zip(keys, current)))
        new_logprobs = services.logprobs([prompt_ids[u] for u in uids], outcome.response_ids)
        return self.tracker.update(uids, outcome.rewards, drifts, outcome.response_ids, new_logprobs)

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state and whether the offline pass has run."""
        return {"tracker": self.tracker.state_dict(), "initialised": self.initialised}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.tracker.load_state_dict(state["tracker"])
        self.initialised = bool(state["initialised"])
