"""SPO against spo.json: offline init, sampling weights, the step-by-step tracker trajectory, D proxy.

Every prompt, step and row the file holds is checked; hyperparameters come from the file.
"""

import pytest
import torch

from rlvr.advantage.spo import (
    drift_proxy,
    forgetting_rate,
    halving_rate,
    init_from_offline,
    offline_successes,
    raw_advantages,
    spo_advantages,
)
from rlvr.advantage.spo_tracker import SPOTracker
from rlvr.sampling.spo import prioritised_draw
from tests.conformance.conftest import assert_close, load_vectors


@pytest.fixture(scope="module")
def vec():
    return load_vectors("spo.json")


def _hp(vec):
    h = vec["hyperparameters"]
    return {
        "rho_min": h["rho_clip_lower"],
        "rho_max": h["rho_clip_upper_hardcoded"],
        "d_half": h["D_half_hardcoded"],
        "exploration_eps": h["exploration_epsilon_hardcoded"],
        "adv_eps": h["adv_norm_eps"],
    }


def _rates(vec, D):
    hp = _hp(vec)
    return halving_rate(D, hp["d_half"]), forgetting_rate(D, hp["d_half"], hp["rho_min"], hp["rho_max"])


def _initialised_tracker(vec, offline_n=None):
    scores = vec["init"]["offline_scores"]
    n = vec["hyperparameters"]["offline_N"] if offline_n is None else offline_n
    counts = [offline_successes(scores[u], n) for u in scores]
    tracker = SPOTracker(**_hp(vec))
    tracker.init_prompts(list(scores), [s for s, _ in counts], [k for _, k in counts])
    return tracker


def test_init_state(vec):
    scores = vec["init"]["offline_scores"]
    uids = list(scores)
    tracker = _initialised_tracker(vec)
    exp = vec["init"]["state"]
    assert_close({u: tracker.alpha[u] for u in uids}, exp["alpha"], "init.alpha")
    assert_close({u: tracker.beta[u] for u in uids}, exp["beta"], "init.beta")
    assert_close(dict(zip(uids, tracker.p_hat(uids).tolist())), exp["p_hat"], "init.p_hat")

    counts = [offline_successes(scores[u], vec["hyperparameters"]["offline_N"]) for u in uids]
    alpha, beta = init_from_offline([s for s, _ in counts], [k for _, k in counts], _hp(vec)["rho_min"])
    assert_close(dict(zip(uids, alpha.tolist())), exp["alpha"], "init_from_offline.alpha")
    assert_close(dict(zip(uids, beta.tolist())), exp["beta"], "init_from_offline.beta")


def test_init_state_if_offline_n_0(vec):
    tracker = _initialised_tracker(vec, offline_n=0)
    exp = vec["init"]["state_if_offline_N_0"]
    assert_close({u: tracker.alpha[u] for u in exp["alpha"]}, exp["alpha"], "N0.alpha")
    assert_close({u: tracker.beta[u] for u in exp["beta"]}, exp["beta"], "N0.beta")


def test_initial_sampling(vec):
    tracker = _initialised_tracker(vec)
    s = vec["initial_sampling"]
    w = tracker.sampling_weights(s["prompts"])
    assert_close(w, s["weight"], "initial_sampling.weight")
    assert_close(w / w.sum(), s["prob"], "initial_sampling.prob")
    # the seeded numpy draw is informational (different RNG); check only that a draw is valid
    size = len(s.get("seeded_draw_without_replacement_size3", [])) or min(3, len(w))
    got = prioritised_draw(w, size, torch.Generator().manual_seed(0))
    assert len(set(got)) == size and all(0 <= i < len(w) for i in got)


def test_trajectory(vec):
    tracker = _initialised_tracker(vec)
    order = vec["initial_sampling"]["prompts"]
    for n, step in enumerate(vec["steps"]):
        where = f"steps[{n}]"
        batch, rewards, D = step["input"]["batch"], step["input"]["rewards"], step["input"]["D"]
        before = {u: (tracker.alpha[u], tracker.beta[u]) for u in tracker.alpha}

        p_hat = tracker.p_hat(batch)
        assert_close(p_hat, step["p_hat_before_update"], f"{where}.p_hat_before_update")
        assert_close(raw_advantages(rewards, p_hat), step["advantage_raw"], f"{where}.advantage_raw")
        out = tracker.advantages(batch, torch.tensor(rewards, dtype=torch.float32))
        assert out.advantages.shape == (len(batch),)
        assert_close(out.advantages, step["advantage_normalized"], f"{where}.advantage_normalized")
        assert_close(spo_advantages(rewards, p_hat, _hp(vec)["adv_eps"]), step["advantage_normalized"], where)

        unclipped, clipped = _rates(vec, D)
        assert_close(unclipped, step["rho_unclipped"], f"{where}.rho_unclipped")
        assert_close(clipped, step["rho_clipped"], f"{where}.rho_clipped")

        tracker.update(batch, rewards, D)
        for u in step["alpha_after"]:
            if u not in batch:  # unvisited prompts are untouched
                assert (tracker.alpha[u], tracker.beta[u]) == before[u], f"{where}: {u} changed"
        assert_close(
            {u: tracker.alpha[u] for u in step["alpha_after"]}, step["alpha_after"], f"{where}.alpha_after"
        )
        assert_close(
            {u: tracker.beta[u] for u in step["beta_after"]}, step["beta_after"], f"{where}.beta_after"
        )

        w = tracker.sampling_weights(order)
        assert_close(w, step["next_sampling_weight"], f"{where}.next_sampling_weight")
        assert_close(w / w.sum(), step["next_sampling_prob"], f"{where}.next_sampling_prob")


def test_trajectory_through_stored_responses(vec):
    """Same trajectory, but D reaches the tracker through stored responses and `drifts`, as in the loop:
    each visit stores log-prob 0 for a one-token response; at the next visit the current log-prob is
    −D from the file, so the measured drift is the file's D."""
    tracker = _initialised_tracker(vec)
    for n, step in enumerate(vec["steps"]):
        batch, rewards, D = step["input"]["batch"], step["input"]["rewards"], step["input"]["D"]
        need = tracker.pending_drift_requests(batch)
        assert set(need) == {u for u in batch if u in tracker.responses}
        current = {u: torch.tensor([-d]) for u, d in zip(batch, D) if u in need}
        drifts = tracker.drifts(batch, current)
        assert [d is None for d in drifts] == [u not in need for u in batch]
        assert_close(
            [d for d in drifts if d is not None], [d for u, d in zip(batch, D) if u in need], f"steps[{n}].D"
        )
        # a first visit has nothing to measure (None, i.e. D = 0 in the reference); keep any D the file gives
        drifts = [d if d is not None else d_file for d, d_file in zip(drifts, D)]
        tracker.update(
            batch, rewards, drifts, [torch.tensor([7])] * len(batch), [torch.tensor([0.0])] * len(batch)
        )
        assert_close(
            {u: tracker.alpha[u] for u in step["alpha_after"]}, step["alpha_after"], f"steps[{n}].alpha"
        )
        assert_close({u: tracker.beta[u] for u in step["beta_after"]}, step["beta_after"], f"steps[{n}].beta")


def test_kl_proxy_D(vec):
    k = vec["kl_proxy_D"]
    D = drift_proxy(
        torch.tensor(k["stored_log_prob"]),
        torch.tensor(k["current_log_prob"]),
        torch.tensor(k["response_mask"]),
    )
    assert_close(D, k["D"], "kl_proxy_D.D")
    assert_close(_rates(vec, D)[1], k["rho_clipped"], "kl_proxy_D.rho_clipped")
