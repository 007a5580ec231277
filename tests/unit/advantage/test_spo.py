import io
import math
import random

import pytest
import torch

from rlvr.advantage.spo import (
    drift_proxy,
    forgetting_rate,
    global_normalise,
    halving_rate,
    init_from_offline,
    offline_successes,
    raw_advantages,
    sampling_weights,
    spo_advantages,
)
from rlvr.advantage.spo_tracker import SPOTracker
from rlvr.sampling.spo import prioritised_draw
from rlvr.types import AdvantageInput


def close(a, b, rtol=1e-5, atol=1e-6):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol), (a, b)


UIDS = ["easy", "mid", "hard"]


def worked_tracker() -> SPOTracker:
    # offline: 8/8, 4/8 and 0/8 successes; rho_min 0.875 -> N_init 8
    t = SPOTracker()
    t.init_prompts(UIDS, [8, 4, 0], 8)
    return t


def test_worked_example_three_prompts():
    t = worked_tracker()
    # alpha = 8 (s + 1/2) / 9, beta = 8 (8 - s + 1/2) / 9
    close([t.alpha[u] for u in UIDS], [68 / 9, 4.0, 4 / 9])
    close([t.beta[u] for u in UIDS], [4 / 9, 4.0, 68 / 9])
    close(t.p_hat(UIDS), [17 / 18, 0.5, 1 / 18])
    # sqrt(p(1-p)) + 0.05: sqrt(17)/18 + 0.05 = 0.279061, 0.5 + 0.05
    close(t.sampling_weights(UIDS), [0.2790614, 0.55, 0.2790614])

    out = t.advantages(UIDS, torch.tensor([1.0, 0.0, 1.0]))
    # A = [1/18, -1/2, 17/18], mean 1/6, centred [-1/9, -2/3, 7/9],
    # std sqrt((1/81 + 4/9 + 49/81) / 2) = 0.728604
    close(out.advantages, [-0.1524986, -0.9149914, 1.0674900])
    assert out.advantages.dtype == torch.float32 and out.weights is None
    assert out.metrics["advantage/spo_unknown_prompts"] == 0
    close(t.p_hat(UIDS), [17 / 18, 0.5, 1 / 18])  # the advantage pass leaves the tracker alone

    # after the learner step: easy is a first visit (no stored response), D 0.03 -> 2^-0.5 = 0.7071 -> 0.875,
    # D 0.2 -> 0.0992 -> 0.875
    metrics = t.update(UIDS, [1.0, 0.0, 1.0], [None, 0.03, 0.2])
    close(
        [t.alpha[u] for u in UIDS], [0.96 * 68 / 9 + 1, 0.875 * 4, 0.875 * 4 / 9 + 1]
    )  # 8.2533, 3.5, 1.3889
    close([t.beta[u] for u in UIDS], [0.96 * 4 / 9, 0.875 * 4 + 1, 0.875 * 68 / 9])  # 0.4267, 4.5, 6.6111
    close(t.p_hat(UIDS), [0.9508449, 0.4375, 0.1736111])
    close(metrics["advantage/spo_rho_mean"], (0.96 + 0.875 + 0.875) / 3)
    close(metrics["advantage/spo_drift_mean"], 0.115)
    assert [t.visits[u] for u in UIDS] == [1, 1, 1]


def test_pure_functions_match_docstring_numbers():
    alpha, beta = init_from_offline([8, 4, 0], 8, 0.875)
    close(alpha, [68 / 9, 4, 4 / 9])
    close(beta, [4 / 9, 4, 68 / 9])
    alpha, beta = init_from_offline([0, 3], [0, 4])  # k = 0 (offline_N = 0) -> 1/2, 1/2
    close(alpha, [0.5, 8 * 3.5 / 5])
    close(beta, [0.5, 8 * 1.5 / 5])
    close(halving_rate([0.0, 0.01, 0.06]), [1.0, 2 ** (-1 / 6), 0.5])
    close(forgetting_rate([0.0, 0.01, 0.2]), [0.96, 2 ** (-1 / 6), 0.875])
    close(forgetting_rate([0.0, 0.01, 0.2], kind="constant"), [0.875] * 3)
    close(raw_advantages([1, 0, 1], [17 / 18, 0.5, 1 / 18]), [1 / 18, -0.5, 17 / 18])
    close(sampling_weights([0.5, 0.0, 1.0], eps=0.05), [0.55, 0.05, 0.05])


def test_first_visit_rho_is_rho_max_and_bounds_follow_arguments():
    close(forgetting_rate(0.0), 0.96)
    close(forgetting_rate(0.0, rho_max=0.99), 0.99)
    close(forgetting_rate(10.0, rho_min=0.5), 0.5)
    t = SPOTracker(rho_max=0.9)
    t.init_prompts(["x"], [2], 4)  # N_init 8: alpha 8 * 2.5 / 5 = 4, beta 4
    t.update(["x"], [1.0])  # no drift given at all -> first-visit rule, D = 0 -> rho_max
    close([t.alpha["x"], t.beta["x"]], [0.9 * 4 + 1, 0.9 * 4])
    with pytest.raises(ValueError):
        forgetting_rate(0.0, rho_min=0.97, rho_max=0.96)
    with pytest.raises(ValueError):
        forgetting_rate(0.0, kind="kl")


def test_batch_of_one_is_finite_and_keeps_the_tracker_baseline():
    close(spo_advantages([1.0], [0.25]), [0.75])
    t = SPOTracker()
    out = t.advantages(["solo"], [0.0])  # unknown: p = 1/2
    assert torch.isfinite(out.advantages).all()
    close(out.advantages, [-0.5])


def test_equal_raw_advantages_give_exact_zero_and_empty_batch_is_empty():
    a = torch.full((3,), 0.1, dtype=torch.float64)
    assert a.mean() != a[0]  # rounding: unguarded centring would leave noise and divide it by ~1e-8
    assert torch.equal(global_normalise(a), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(spo_advantages([1, 1, 1], [0.3, 0.3, 0.3]), torch.zeros(3, dtype=torch.float64))
    assert global_normalise([]).numel() == 0


def test_all_correct_batch_still_has_nonzero_advantages():
    adv = spo_advantages([1, 1, 1], [0.9, 0.6, 0.1])
    # A = [0.1, 0.4, 0.9], mean 0.4667, std 0.4041
    close(adv, [-0.9072647, -0.1649572, 1.0722219])


def test_rewards_are_binarised_like_the_reference():
    p = [0.3, 0.6, 0.2, 0.5]
    close(spo_advantages([1, -1, 1, -1], p), spo_advantages([1, 0, 1, 0], p))
    a, b = SPOTracker(), SPOTracker()
    a.update(["x", "y"], [0.4, -1.0])
    b.update(["x", "y"], [1.0, 0.0])
    assert a.alpha == b.alpha and a.beta == b.beta


def test_loop_reference_matches_vectorised():
    rng = random.Random(3)
    for n in (2, 3, 7, 30):
        r = [float(rng.random() < 0.4) for _ in range(n)]
        p = [rng.uniform(0.01, 0.99) for _ in range(n)]
        a = [ri - pi for ri, pi in zip(r, p)]
        mean = sum(a) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in a) / (n - 1))
        close(spo_advantages(r, p), [(x - mean) / (std + 1e-8) for x in a], rtol=1e-9)


def test_advantages_use_p_hat_before_update():
    t = worked_tracker()
    first = t.advantages(UIDS, [1.0, 0.0, 1.0]).advantages
    again = t.advantages(UIDS, [1.0, 0.0, 1.0]).advantages
    assert torch.equal(first, again)
    t.update(UIDS, [1.0, 0.0, 1.0], [0.0, 0.0, 0.0])
    assert not torch.equal(t.advantages(UIDS, [1.0, 0.0, 1.0]).advantages, first)


def test_unknown_prompt_starts_at_half_and_is_counted():
    t = worked_tracker()
    close(t.sampling_weights(["new"]), [0.55])
    assert "new" not in t  # reading weights adds nothing
    out = t.advantages(["easy", "new", "new"], [1.0, 1.0, 0.0])
    assert out.metrics["advantage/spo_unknown_prompts"] == 1
    assert (t.alpha["new"], t.beta["new"], t.visits["new"]) == (0.5, 0.5, 0)
    close(out.advantages, spo_advantages([1, 1, 0], [17 / 18, 0.5, 0.5]))
    assert t.advantages(["new"], [1.0]).metrics["advantage/spo_unknown_prompts"] == 0
    assert t.unknown_total == 1


def test_callable_on_advantage_input():
    t = worked_tracker()
    inp = AdvantageInput(
        group=torch.arange(3),
        rewards=torch.tensor([1.0, 0.0, 1.0]),
        components={},
        lengths=torch.tensor([5, 6, 7]),
        prompt_uids=UIDS,
        step=1,
    )
    close(t(inp).advantages, [-0.1524986, -0.9149914, 1.0674900])


def test_drift_through_stored_responses():
    t = worked_tracker()
    assert t.pending_drift_requests(UIDS) == {}
    t.update(
        ["easy", "mid"],
        [1.0, 0.0],
        None,
        [torch.tensor([4, 5, 6]), [9, 9]],
        [torch.tensor([-0.5, -1.0, -0.2]), torch.tensor([-2.0, -0.1])],
    )
    need = t.pending_drift_requests(["mid", "hard", "easy", "mid"])
    assert list(need) == ["mid", "easy"]
    assert need["easy"].tolist() == [4, 5, 6] and need["mid"].tolist() == [9, 9]
    d = t.drifts(["easy", "hard", "mid"], {"easy": [-0.6, -0.9, -0.2], "mid": [-1.0, -0.1]})
    assert d[1] is None
    close([d[0], d[2]], [0.2 / 3, 0.5])  # |0.1| + |0.1| + 0 over 3 tokens; |1| + 0 over 2
    with pytest.raises(ValueError):
        t.drifts(["easy"], {"easy": [-0.6]})
    c = SPOTracker(rho_kind="constant")
    c.update(["easy"], [1.0], None, [[1, 2]], [[-0.1, -0.2]])  # constant rho never needs a drift
    assert c.pending_drift_requests(["easy"]) == {} and c.responses == {}
    close([c.alpha["easy"], c.beta["easy"]], [0.875 * 0.5 + 1, 0.875 * 0.5])


def test_drift_proxy_masks_padding_and_empty_rows():
    stored = torch.tensor([[-0.5, -1.0, -0.2, 0.0], [-2.0, -0.1, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    current = torch.tensor([[-0.6, -0.9, -0.2, -3.0], [-1.0, -0.1, -5.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    close(drift_proxy(stored, current, mask), [0.2 / 3, 0.5, 0.0])


def test_duplicate_prompt_in_a_step_is_discounted_once():
    t = SPOTracker()
    t.init_prompts(["x"], [4], 8)  # alpha = beta = 4
    t.update(["x", "x", "x"], [1.0, 1.0, 0.0], [None, 0.06, 0.5])  # first given drift 0.06 -> 0.5 -> 0.875
    close([t.alpha["x"], t.beta["x"]], [0.875 * 4 + 2, 0.875 * 4 + 1])
    assert t.visits["x"] == 3


def test_offline_successes():
    assert offline_successes([1, 0, 1, 0, 0, 1, 1, 0]) == (4, 8)
    assert offline_successes([0, -1, 0.5, 2]) == (2, 4)  # s > 0 counts; fewer than offline_n uses all
    assert offline_successes([1, 1, 1], offline_n=0) == (0, 0)
    g = torch.Generator().manual_seed(0)
    s, k = offline_successes([1] * 5 + [0] * 11, offline_n=8, generator=g)
    assert k == 8 and 0 <= s <= 5


def test_state_round_trip_continues_identically():
    t = worked_tracker()
    t.advantages(UIDS + ["new"], [1.0, 0.0, 1.0, 1.0])
    t.update(
        UIDS,
        [1.0, 0.0, 1.0],
        [None, 0.03, 0.2],
        [[1, 2], [3], [4, 5, 6]],
        [[-0.1, -0.2], [-0.3], [0, -1, -2]],
    )
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)  # as the checkpoint writes it
    buf.seek(0)
    u = SPOTracker()
    u.load_state_dict(torch.load(buf, weights_only=False))
    assert u.alpha == t.alpha and u.beta == t.beta and u.visits == t.visits and u.unknown_total == 1
    assert all(torch.equal(u.responses[k], t.responses[k]) for k in t.responses)
    assert all(torch.equal(u.logprobs[k], t.logprobs[k]) for k in t.logprobs)
    for tr in (t, u):
        cur = {"mid": [-0.5], "hard": [0.0, -1.0, -2.5]}
        tr.update(["mid", "hard"], [1.0, 1.0], tr.drifts(["mid", "hard"], cur))
    assert u.alpha == t.alpha and u.beta == t.beta
    state = t.state_dict()
    state["alpha"]["easy"] = float("nan")
    with pytest.raises(ValueError):
        SPOTracker().load_state_dict(state)


def test_state_does_not_alias_the_tracker():
    t = worked_tracker()
    t.update(["easy"], [1.0], None, [[1, 2]], [[-0.1, -0.2]])
    state = t.state_dict()
    state["responses"]["easy"][0] = 99
    state["alpha"]["easy"] = 1.0
    assert t.responses["easy"].tolist() == [1, 2] and t.alpha["easy"] != 1.0


def test_prioritised_draw():
    g = torch.Generator().manual_seed(0)
    got = prioritised_draw([0.28, 0.55, 0.28, 0.42], 4, g)
    assert sorted(got) == [0, 1, 2, 3]  # without replacement: the whole pool, in a weighted order
    got = prioritised_draw([1.0, 2.0], 5, g)  # pool smaller than the batch -> with replacement
    assert len(got) == 5 and set(got) <= {0, 1}
    assert prioritised_draw([1.0], 0, g) == []
    firsts = [prioritised_draw([1.0, 3.0], 1, g)[0] for _ in range(4000)]
    assert abs(sum(firsts) / 4000 - 0.75) < 0.03
    with pytest.raises(ValueError):
        prioritised_draw([1.0, 0.0, 0.0], 2, g)
    with pytest.raises(ValueError):
        prioritised_draw([1.0, -1.0], 1, g)


def test_length_mismatches_are_errors():
    t = worked_tracker()
    with pytest.raises(ValueError):
        t.advantages(UIDS, [1.0, 0.0])
    with pytest.raises(ValueError):
        t.update(UIDS, [1.0, 0.0, 1.0], [0.0])
    before = dict(t.alpha)
    with pytest.raises(ValueError):
        t.update(["easy"], [1.0], None, [[1, 2]], [[-0.1]])
    assert t.alpha == before and "easy" not in t.responses  # a rejected update changes nothing
    with pytest.raises(ValueError):
        t.update(["easy"], [1.0], [-0.1])
    with pytest.raises(ValueError):
        init_from_offline([9], 8)
