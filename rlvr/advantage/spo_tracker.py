"""The per-prompt state of SPO: a Beta success estimate per prompt, and its last response.

`SPOTracker` is what the SPO estimator (rlvr/advantage/spo.py) takes its baseline from and updates
after each learner step, and what the SPO sampler (rlvr/sampling/spo.py) reads its weights from.
The maths it applies (offline initialisation, drift, forgetting rate, advantage, sampling weights)
are the pure functions of rlvr/advantage/spo.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from rlvr.advantage.spo import (
    ADV_EPS,
    D_HALF,
    EXPLORATION_EPS,
    RHO_MAX,
    RHO_MIN,
    Floats,
    binarise,
    drift_proxy,
    forgetting_rate,
    init_from_offline,
    sampling_weights,
    spo_advantages,
)
from rlvr.types import AdvantageInput, AdvantageOutput


class SPOTracker:
    """Per-prompt Beta success tracker of SPO, keyed by the stable prompt uid (spec §2.2, §2.6).

    State per uid: α, β, visit count (responses trained on), and the last response's T token ids with
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
        self.responses: dict[str, torch.Tensor] = {}  # uid -> [T] int32, T that response's length
        self.logprobs: dict[str, torch.Tensor] = {}  # uid -> [T] float32
        self.unknown_total = 0

    def __len__(self) -> int:
        return len(self.alpha)

    def __contains__(self, uid: str) -> bool:
        return uid in self.alpha

    # -- P6 ---------------------------------------------------------------------------------------
    def init_prompts(self, uids: Sequence[str], successes: Floats, k: Floats) -> None:
        """Set α, β of `uids` from offline success counts (see `init_from_offline`); meant for a fresh run.

        uids P, successes [P], k [P] or scalar. Existing α, β of these uids are overwritten; visit counts
        and stored responses are kept.
        Example (defaults, N_init 8): init_prompts(["a", "b"], [8, 4], 8) -> p_hat(["a", "b"]) = [0.9444, 0.5].
        """
        s = torch.as_tensor(successes, dtype=torch.float64).reshape(-1)
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
        """p̂ = α / (α + β) per uid: uids P -> [P] float64; ½ for a uid with no state (nothing is added)."""
        return torch.tensor(
            [self.alpha[u] / (self.alpha[u] + self.beta[u]) if u in self.alpha else 0.5 for u in uids],
            dtype=torch.float64,
        )

    def sampling_weights(self, uids: Sequence[str]) -> torch.Tensor:
        """Prioritised-sampling weights of candidate prompts (see `sampling_weights`): uids P -> [P] float64.

        A uid with no state counts as p̂ = ½, the largest weight (the reference gives it 0 and would then
        crash on its advantage); nothing is added to the tracker.
        """
        return sampling_weights(self.p_hat(uids), self.exploration_eps)

    # -- P3 ---------------------------------------------------------------------------------------
    def advantages(self, uids: Sequence[str], rewards: Floats) -> AdvantageOutput:
        """Â per sample from p̂ before this step's update; uids may repeat (several samples of a prompt).

        uids N, rewards [N] -> AdvantageOutput with Â [N] float32 (no weights) and p̂/success metrics.
        A uid seen for the first time gets α = β = ½ here (see the class doc).
        """
        r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
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
        """{uid: stored response ids [T]} for the batch's prompts whose drift must be measured.

        The caller scores each response (given its prompt) under the policy AFTER this step's update and
        hands the log-probs to `drifts`. Empty for first visits and for the constant-ρ variant.
        """
        if self.rho_kind == "constant":
            return {}
        return {u: self.responses[u].long() for u in dict.fromkeys(uids) if u in self.responses}

    def drifts(self, uids: Sequence[str], current_logprobs: Mapping[str, Floats]) -> list[float | None]:
        """D per sample (see `drift_proxy`) from the current log-probs of each stored response.

        uids N, current_logprobs {uid: [T] log-probs of that uid's stored response} -> N floats or None.
        None where there is nothing to compare (no stored response, or no current log-probs given):
        `update` treats it as D = 0, the reference's first-visit rule.
        """
        out: list[float | None] = []
        for u in uids:
            if u not in self.logprobs or u not in current_logprobs:
                out.append(None)
                continue
            stored = self.logprobs[u]
            cur = torch.as_tensor(current_logprobs[u], dtype=torch.float64).reshape(-1)
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

        uids N, rewards [N] (binarised r > 0), drifts N (None → D = 0), new_responses N token-id lists
        (each [T_i]) and new_logprobs N rows of [T_i] log-probs under the updated policy (both optional; without them
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
        """Restore what `state_dict` returned; refuses α, β that are not finite and > 0, or that cover
        different prompts, and responses without their log-probs."""
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

