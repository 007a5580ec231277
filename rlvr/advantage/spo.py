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

The pure maths is in the module-level functions; `SPOTracker` holds the per-prompt state and
`prioritised_draw` is the sampler's draw. Nothing here is registered: the loop wires the tracker into
the advantage seam (the tracker is callable on an `AdvantageInput`) and the post-update hook.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from rlvr.registry import ADVANTAGE, SAMPLER
from rlvr.types import AdvantageInput, AdvantageOutput

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

    stored [R, T], current [R, T], mask [R, T] -> D [R] float64.
    Example: stored [[-0.5, -1.0, -0.2]], current [[-0.6, -0.9, -0.2]], mask [[1, 1, 1]]
    -> D = (0.1 + 0.1 + 0) / 3 = [0.0667]; mask [[1, 1, 0]] on [-2, -0.1, 0] vs [-1, -0.1, -5] -> [0.5].
    """
    m = _f64(mask)
    diff = (_f64(stored_logprobs) - _f64(current_logprobs)).abs() * m
    tokens = m.sum(-1)
    return torch.where(tokens > 0, diff.sum(-1) / tokens.clamp(min=1e-30), torch.zeros_like(tokens))


def halving_rate(D: Floats, d_half: float = D_HALF) -> torch.Tensor:
    """Unclipped KL-adaptive forgetting rate 2^(−D / D_half): halves every D_half of drift.

    D [R] -> ρ [R] float64. Example (D_half 0.06): D = [0, 0.01, 0.06] -> [1, 0.8909, 0.5].
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

    D [R] -> ρ [R] float64.
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
# P1: prioritised sampling
# ---------------------------------------------------------------------------------------------


def sampling_weights(p_hat: Floats, eps: float = EXPLORATION_EPS) -> torch.Tensor:
    """w = sqrt(p̂ (1 − p̂)) + ε (spec §2.4): favour prompts the policy solves about half the time.

    p_hat [P] -> w [P] float64. Probabilities are w / Σw.
    Example (ε 0.05): p̂ = [0.9444, 0.5, 0.0556] -> w = [0.2791, 0.55, 0.2791]
    -> prob [0.2518, 0.4963, 0.2518].
    """
    p = _f64(p_hat)
    return (p * (1 - p)).clamp(min=0).sqrt() + eps


def prioritised_draw(weights: Floats, count: int, generator: torch.Generator | None = None) -> list[int]:
    """Indices of `count` candidates drawn with probability ∝ weights (spec §2.4).

    Without replacement (each draw renormalises over the candidates left, as numpy's sequential
    `choice(replace=False, p=...)` does) unless the pool is smaller than `count`, then with replacement.
    Same distribution as the reference, not the same random stream.

    weights [C] -> list of `count` ints in [0, C).
    Example: weights [0.28, 0.55, 0.28, 0.42], count 3 -> three distinct indices, e.g. [1, 3, 0].
    """
    w = _f64(weights).reshape(-1)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        return []
    if w.numel() == 0:
        raise ValueError("cannot draw from an empty candidate pool")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("sampling weights must be finite and >= 0")
    if float(w.sum()) == 0:
        w = torch.ones_like(w)
    replace = w.numel() < count
    if not replace and int((w > 0).sum()) < count:
        raise ValueError(f"only {int((w > 0).sum())} candidates have positive weight, cannot draw {count}")
    return torch.multinomial(w, count, replacement=replace, generator=generator).tolist()


# ---------------------------------------------------------------------------------------------
# the stateful tracker
# ---------------------------------------------------------------------------------------------


class SPOTracker:
    """Per-prompt Beta success tracker of SPO, keyed by the stable prompt uid (spec §2.2, §2.6).

    State per uid: α, β, visit count (responses trained on), and the last response's token ids with
    their log-probs under the policy right after the update that used it (for the drift D).

    Use within a step:
        out = tracker.advantages(uids, rewards)            # P3, p̂ before this step's update
        ... learner update ...
        need = tracker.pending_drift_requests(uids)        # {uid: stored response ids}
        cur = {u: <log-probs of need[u] given prompt u under the new policy> for u in need}
        tracker.update(uids, rewards, tracker.drifts(uids, cur), new_responses, new_logprobs)

    A uid with no state when its advantage is asked for (not covered by the offline init) starts at
    α = β = ½ (the offline_N = 0 rule) and is counted in `advantage/spo_unknown_prompts`; the
    reference would raise a KeyError there.
    """

    def __init__(
        self,
        *,
        rho_min: float = RHO_MIN,
        rho_max: float = RHO_MAX,
        d_half: float = D_HALF,
        rho_kind: Literal["adaptive", "constant"] = "adaptive",
        exploration_eps: float = EXPLORATION_EPS,
        adv_eps: float = ADV_EPS,
    ):
        forgetting_rate(0.0, d_half, rho_min, rho_max, rho_kind)  # validates the arguments
        self.rho_min, self.rho_max, self.d_half, self.rho_kind = rho_min, rho_max, d_half, rho_kind
        self.exploration_eps = exploration_eps
        self.adv_eps = adv_eps
        self.alpha: dict[str, float] = {}
        self.beta: dict[str, float] = {}
        self.visits: dict[str, int] = {}
        self.responses: dict[str, torch.Tensor] = {}  # uid -> [L] int32
        self.logprobs: dict[str, torch.Tensor] = {}  # uid -> [L] float32
        self.unknown_total = 0

    def __len__(self) -> int:
        return len(self.alpha)

    def __contains__(self, uid: str) -> bool:
        return uid in self.alpha

    # -- P6 ---------------------------------------------------------------------------------------
    def init_prompts(self, uids: Sequence[str], successes: Floats, k: Floats) -> None:
        """Set α, β of `uids` from offline success counts (see `init_from_offline`); meant for a fresh run.

        Existing α, β of these uids are overwritten; visit counts and stored responses are kept.
        """
        s = _f64(successes).reshape(-1)
        if len(uids) != s.numel():
            raise ValueError(f"{len(uids)} uids but {s.numel()} success counts")
        alpha, beta = init_from_offline(s, k, self.rho_min)
        for uid, a, b in zip(uids, alpha.tolist(), beta.tolist()):
            self.alpha[uid], self.beta[uid] = a, b
            self.visits.setdefault(uid, 0)

    def _ensure(self, uid: str) -> bool:
        if uid in self.alpha:
            return False
        self.alpha[uid], self.beta[uid], self.visits[uid] = 0.5, 0.5, 0
        return True

    # -- reads ------------------------------------------------------------------------------------
    def p_hat(self, uids: Sequence[str]) -> torch.Tensor:
        """p̂ = α / (α + β) per uid [len(uids)] float64; ½ for a uid with no state (nothing is added)."""
        return torch.tensor(
            [self.alpha[u] / (self.alpha[u] + self.beta[u]) if u in self.alpha else 0.5 for u in uids],
            dtype=torch.float64,
        )

    def sampling_weights(self, uids: Sequence[str]) -> torch.Tensor:
        """Prioritised-sampling weights of candidate prompts [len(uids)] float64.

        A uid with no state counts as p̂ = ½, the largest weight (the reference gives it 0 and would then
        crash on its advantage); nothing is added to the tracker.
        """
        return sampling_weights(self.p_hat(uids), self.exploration_eps)

    # -- P3 ---------------------------------------------------------------------------------------
    def advantages(self, uids: Sequence[str], rewards: Floats) -> AdvantageOutput:
        """Â per sample from p̂ before this step's update; uids may repeat (several samples of a prompt)."""
        r = _f64(rewards).reshape(-1)
        if len(uids) != r.numel():
            raise ValueError(f"{len(uids)} uids but {r.numel()} rewards")
        unknown = len({u for u in uids if self._ensure(u)})
        self.unknown_total += unknown
        p = self.p_hat(uids)
        adv = spo_advantages(r, p, self.adv_eps)
        metrics = {
            "advantage/spo_p_hat_mean": float(p.mean()) if p.numel() else 0.0,
            "advantage/spo_success_mean": float(binarise(r).mean()) if r.numel() else 0.0,
            "advantage/spo_unknown_prompts": float(unknown),
        }
        return AdvantageOutput(adv.float(), None, metrics)

    def __call__(self, inp: AdvantageInput) -> AdvantageOutput:
        return self.advantages(inp.prompt_uids, inp.rewards)

    # -- P5 ---------------------------------------------------------------------------------------
    def pending_drift_requests(self, uids: Sequence[str]) -> dict[str, torch.Tensor]:
        """{uid: stored response ids [L]} for the batch's prompts whose drift must be measured.

        The caller scores each response (given its prompt) under the policy AFTER this step's update and
        hands the log-probs to `drifts`. Empty for first visits and for the constant-ρ variant.
        """
        if self.rho_kind == "constant":
            return {}
        return {u: self.responses[u].long() for u in dict.fromkeys(uids) if u in self.responses}

    def drifts(self, uids: Sequence[str], current_logprobs: Mapping[str, Floats]) -> list[float | None]:
        """D per sample (see `drift_proxy`) from the current log-probs of each stored response.

        None where there is nothing to compare (no stored response, or no current log-probs given):
        `update` treats it as D = 0, the reference's first-visit rule.
        """
        out: list[float | None] = []
        for u in uids:
            if u not in self.logprobs or u not in current_logprobs:
                out.append(None)
                continue
            stored = self.logprobs[u]
            cur = _f64(current_logprobs[u]).reshape(-1)
            if cur.numel() != stored.numel():
                raise ValueError(
                    f"prompt {u}: {cur.numel()} current log-probs for a stored response of "
                    f"{stored.numel()} tokens"
                )
            out.append(float(drift_proxy(stored[None], cur[None], torch.ones(1, stored.numel()))[0]))
        return out

    def update(
        self,
        uids: Sequence[str],
        rewards: Floats,
        drifts: Sequence[float | None] | None = None,
        new_responses: Sequence[Any] | None = None,
        new_logprobs: Sequence[Any] | None = None,
    ) -> dict[str, float]:
        """Tracker update after the learner step: α ← ρα + Σr, β ← ρβ + Σ(1 − r) per prompt.

        uids [N], rewards [N] (binarised r > 0), drifts [N] (None → D = 0), new_responses [N] of token ids
        [L_i] and new_logprobs [N] of [L_i] log-probs under the updated policy (both optional; without them
        nothing is stored and later visits have no drift to measure).
        A prompt that appears several times in one step (a pool smaller than the batch, or G > 1) is
        discounted once, with the first drift given among its samples, and gets every observation; the
        last sample's response is stored. The constant-ρ variant never needs a drift and stores nothing.
        Token ids are kept as int32 and log-probs as float32 (8 bytes a token, one response per prompt).
        Returns metrics.
        """
        b = binarise(rewards).reshape(-1)
        n = len(uids)
        if b.numel() != n:
            raise ValueError(f"{n} uids but {b.numel()} rewards")
        drifts = list(drifts) if drifts is not None else [None] * n
        if len(drifts) != n:
            raise ValueError(f"{n} uids but {len(drifts)} drifts")
        if (new_responses is None) != (new_logprobs is None):
            raise ValueError("new_responses and new_logprobs go together")
        if new_responses is not None and not len(new_responses) == len(new_logprobs) == n:
            raise ValueError(
                f"{n} uids but {len(new_responses)} responses and {len(new_logprobs)} log-prob rows"
            )

        keep: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # validated before any state changes
        if new_responses is not None and self.rho_kind == "adaptive":
            for i, u in enumerate(uids):
                ids = torch.as_tensor(new_responses[i]).detach().to("cpu", torch.int32).reshape(-1).clone()
                lp = torch.as_tensor(new_logprobs[i]).detach().to("cpu", torch.float32).reshape(-1).clone()
                if ids.numel() != lp.numel():
                    raise ValueError(f"prompt {u}: {ids.numel()} response tokens but {lp.numel()} log-probs")
                keep[u] = (ids, lp)

        successes: dict[str, float] = {}  # insertion order = first appearance
        count: dict[str, int] = {}
        measured: dict[str, float | None] = {}
        for u, bi, d in zip(uids, b.tolist(), drifts):
            successes[u] = successes.get(u, 0.0) + bi
            count[u] = count.get(u, 0) + 1
            if measured.get(u) is None:
                measured[u] = None if d is None else float(d)
        D = torch.tensor([0.0 if d is None else d for d in measured.values()], dtype=torch.float64)
        if bool((D < 0).any()) or not bool(torch.isfinite(D).all()):
            raise ValueError("drifts must be finite and >= 0")
        rho = forgetting_rate(D, self.d_half, self.rho_min, self.rho_max, self.rho_kind).tolist()

        for u, rh in zip(successes, rho):
            self._ensure(u)
            self.alpha[u] = rh * self.alpha[u] + successes[u]
            self.beta[u] = rh * self.beta[u] + (count[u] - successes[u])
            self.visits[u] += count[u]
        for u, (ids, lp) in keep.items():
            self.responses[u], self.logprobs[u] = ids, lp

        got = [d for d in measured.values() if d is not None]
        return {
            "advantage/spo_rho_mean": sum(rho) / len(rho) if rho else 0.0,
            "advantage/spo_drift_mean": sum(got) / len(got) if got else 0.0,
            "advantage/spo_no_drift_frac": 1.0 - len(got) / len(measured) if measured else 0.0,
            "advantage/spo_tracked_prompts": float(len(self.alpha)),
        }

    # -- checkpoint ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (spec §2.6); the reference keeps none of it. The sampler's RNG is
        the sampler's own state."""
        return {
            "alpha": dict(self.alpha),
            "beta": dict(self.beta),
            "visits": dict(self.visits),
            "responses": {u: t.clone() for u, t in self.responses.items()},
            "logprobs": {u: t.clone() for u, t in self.logprobs.items()},
            "unknown_total": self.unknown_total,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        alpha, beta = dict(state["alpha"]), dict(state["beta"])
        if alpha.keys() != beta.keys():
            raise ValueError("SPO state: alpha and beta cover different prompts")
        bad = [
            u
            for u in alpha
            if not (math.isfinite(alpha[u]) and math.isfinite(beta[u]) and alpha[u] > 0 and beta[u] > 0)
        ]
        if bad:
            raise ValueError(f"SPO state: alpha/beta must be finite and > 0 (prompt {bad[0]!r})")
        if state["responses"].keys() != state["logprobs"].keys():
            raise ValueError("SPO state: stored responses and log-probs cover different prompts")
        self.alpha = {u: float(a) for u, a in alpha.items()}
        self.beta = {u: float(b) for u, b in beta.items()}
        self.visits = {u: int(state["visits"].get(u, 0)) for u in alpha}
        self.responses = {
            u: torch.as_tensor(t, dtype=torch.int32).clone() for u, t in state["responses"].items()
        }
        self.logprobs = {
            u: torch.as_tensor(t, dtype=torch.float32).clone() for u, t in state["logprobs"].items()
        }
        self.unknown_total = int(state.get("unknown_total", 0))


# -- the plug-ins: estimator (P3) with its offline pass (P6) and post-update hook (P5), and sampler (P1)


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
        self.tracker = SPOTracker(rho_min=rho_min, rho_max=rho_max, d_half=d_half, rho_kind=rho_kind,
                                  exploration_eps=exploration_eps, adv_eps=adv_eps)
        self.offline_samples = offline_samples
        self.initialised = False

    def __call__(self, inp: AdvantageInput) -> AdvantageOutput:
        return self.tracker(inp)

    def refresh(self, step: int, services: Any) -> dict[str, float]:
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

    def observe(self, outcome: Any, services: Any) -> dict[str, float]:
        uids = outcome.prompt_uids
        prompt_ids = {u: services.prompts[outcome.prompt_indices[int(g)]].token_ids for u, g in zip(uids, outcome.group)}
        pending = self.tracker.pending_drift_requests(uids)
        keys = list(pending)
        current = services.logprobs([prompt_ids[u] for u in keys], [pending[u].tolist() for u in keys])
        drifts = self.tracker.drifts(uids, dict(zip(keys, current)))
        new_logprobs = services.logprobs([prompt_ids[u] for u in uids], outcome.response_ids)
        return self.tracker.update(uids, outcome.rewards, drifts, outcome.response_ids, new_logprobs)

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "initialised": self.initialised}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.initialised = bool(state["initialised"])


@SAMPLER.register("spo")
class SPOSampler:
    """Prioritised prompt sampling by the SPO tracker: weight sqrt(p(1-p)) + eps (§2.4).

    A candidate pool of `pool_factor` x count prompts is drawn in shuffled epochs (so every prompt
    keeps being seen), then `count` of them are drawn without replacement by weight.
    Needs `advantage: {name: spo}`, whose tracker it reads.
    """

    @staticmethod
    def problems(cfg: Any) -> list[str]:
        """Checked by `rlvr config validate`: the sampler reads the SPO estimator's tracker."""
        if cfg.advantage.name == "spo":
            return []
        return [f"sampling.sampler.name: spo needs advantage.name: spo (got {cfg.advantage.name}); "
                "the sampler draws by the success estimates the SPO estimator keeps"]

    def __init__(self, num_prompts: int, seed: int, prompt_uids: list[str], advantage: Any, *,
                 pool_factor: Annotated[int, Field(ge=1)] = 4):
        if not isinstance(advantage, SPO):
            raise ValueError("sampling.sampler: 'spo' reads the SPO tracker and needs advantage.name: spo")
        from rlvr.sampling.uniform import UniformSampler

        self.pool = UniformSampler(num_prompts, seed)
        self.uids = prompt_uids
        self.advantage = advantage
        self.pool_factor = pool_factor
        self.generator = torch.Generator().manual_seed(seed + 7919)

    def sample(self, count: int) -> list[int]:
        pool = self.pool.sample(min(self.pool_factor * count, self.pool.num_prompts))
        weights = self.advantage.tracker.sampling_weights([self.uids[i] for i in pool])
        return [pool[i] for i in prioritised_draw(weights, count, self.generator)]

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pool.load_state_dict(state["pool"])
        self.generator.set_state(state["generator"])
