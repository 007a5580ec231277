"""rlvr's VADE design (spec §7): posterior maths by hand, selection behaviour, state round-trip."""

import io

import numpy as np
import pytest
import torch

from rlvr.sampling.vade import (
    VADESampler,
    decay_toward_prior,
    degenerate_fraction,
    degenerate_prob,
    fast_update,
    ig_nondegenerate,
    ig_variance,
    slow_decayed,
    thompson_scores,
)

# ---- pure functions ------------------------------------------------------------------------------


def test_decays_and_update_hand_examples():
    np.testing.assert_allclose(decay_toward_prior(np.array([9.0, 5.0, 1.0]), 1.0, 0.5), [5.0, 3.0, 1.0])
    a, b = slow_decayed(np.array([9.0, 1.0]), np.array([1.0, 9.0]), np.array([3, 5]), 5, 1.0, 1.0, 0.5)
    np.testing.assert_allclose(a, [3.0, 1.0])
    np.testing.assert_allclose(b, [1.0, 9.0])
    a, b = slow_decayed(np.array([9.0]), np.array([1.0]), np.array([7]), 5, 1.0, 1.0, 0.5)  # no growth back
    np.testing.assert_allclose([a[0], b[0]], [9.0, 1.0])
    a, b = fast_update(np.array([3.0, 1.0]), np.array([1.0, 1.0]), [2, 0], [4, 4], 1.0, 1.0, 0.5)
    np.testing.assert_allclose(a, [4.0, 1.0])
    np.testing.assert_allclose(b, [3.0, 5.0])
    a, b = fast_update(np.array([2.0]), np.array([3.0]), [1.5], [3], 1.0, 1.0, 1.0)  # fractional rewards
    np.testing.assert_allclose([a[0], b[0]], [3.5, 4.5])


def test_information_gain_hand_examples():
    np.testing.assert_allclose(ig_nondegenerate(np.array([0.0, 0.5, 0.9]), 2), [0.0, 0.5, 0.18])
    np.testing.assert_allclose(ig_variance(np.array([0.0, 0.5, 0.9])), [0.0, 0.25, 0.09])
    assert ig_nondegenerate(0.5, 8) == pytest.approx(1 - 2 / 256)


def test_degenerate_probability():
    np.testing.assert_allclose(degenerate_prob([1.0], [1.0], [2]), [2 / 3])
    np.testing.assert_allclose(degenerate_prob([9.0, 2.0], [1.0, 3.0], [1, 1]), [1.0, 1.0])
    # Beta(2, 3), n = 3: 2*3*4/(5*6*7) + 3*4*5/(5*6*7)
    np.testing.assert_allclose(degenerate_prob([2.0], [3.0], [3]), [(24 + 60) / 210])
    p = np.random.default_rng(0).beta(2.0, 3.0, 200_000)  # Monte Carlo cross-check
    assert degenerate_prob([2.0], [3.0], [4])[0] == pytest.approx(np.mean(p**4 + (1 - p) ** 4), abs=2e-3)
    assert degenerate_fraction([0, 2, 4], [4, 4, 4]) == pytest.approx(2 / 3)
    assert degenerate_fraction([0.0, 3.0], [0, 3]) == 1.0  # empty groups ignored
    assert np.isnan(degenerate_fraction([], []))


def test_thompson_scores_use_the_generator_in_order():
    a, b = np.array([9.0, 5.0]), np.array([1.0, 5.0])
    p, score = thompson_scores(np.random.default_rng(3), a, b, 8)
    q = np.random.default_rng(3)
    np.testing.assert_array_equal(p, [q.beta(9.0, 1.0), q.beta(5.0, 5.0)])
    np.testing.assert_allclose(score, 1 - p**8 - (1 - p) ** 8)


# ---- the sampler ---------------------------------------------------------------------------------


def test_sample_is_distinct_in_range_and_seeded():
    s1, s2, s3 = (VADESampler(50, seed, 8, 4) for seed in (0, 0, 1))
    x = s1.sample(8)
    assert len(x) == 8 and len(set(x)) == 8 and all(0 <= i < 50 for i in x)
    assert s2.sample(8) == x
    assert s3.sample(8) != x
    assert sorted(VADESampler(5, 0, 4, 2).sample(12)[:5]) == list(range(5))  # more than the dataset


def test_observe_follows_the_spec_by_hand():
    s = VADESampler(3, 0, 1, 2, prior_a=1.0, prior_b=1.0, slow_decay=0.5, fast_decay=0.5)
    s.update(1, [0, 1], [2, 1], [2, 2])
    np.testing.assert_allclose(s.a, [3.0, 2.0, 1.0])
    np.testing.assert_allclose(s.b, [1.0, 2.0, 1.0])
    assert s.t.tolist() == [1, 1, 0] and s.clock == 2
    # prompt 0 again at step 3: slow decay 0.5^2 -> a = 1.5, b = 1; fast 0.5 -> 1.25, 1; + (0, 2)
    s.update(3, [0], [0], [2])
    assert (s.a[0], s.b[0], s.t[0]) == pytest.approx((1.25, 3.0, 3))
    # the posterior scored at the clock (step 4) has decayed once more
    a, b = s.posterior([0, 1])
    np.testing.assert_allclose(a, [1.125, 1.0 + 1.0 * 0.5**3])
    np.testing.assert_allclose(b, [2.0, 1.0 + 1.0 * 0.5**3])


def test_groups_of_one_prompt_in_one_call_are_pooled():
    s = VADESampler(2, 0, 1, 4, fast_decay=0.5)
    s.update(1, [0, 0, 1], [3, 1, 0], [4, 4, 4])
    np.testing.assert_allclose([s.a[0], s.b[0]], [1.0 + 4.0, 1.0 + 4.0])
    assert s.visits.tolist() == [1, 1]


def test_metrics_predicted_vs_realised():
    s = VADESampler(4, 0, 2, 2)
    m = s.update(1, [0, 1, 2], [0, 1, 2], [2, 2, 2])
    assert m["sampling/vade_predicted_degenerate_frac"] == pytest.approx(2 / 3)  # prior Beta(1,1), n = 2
    assert m["sampling/vade_realised_degenerate_frac"] == pytest.approx(2 / 3)
    assert m["sampling/vade_seen_frac"] == pytest.approx(3 / 4)
    assert s.predicted_degenerate_fraction([3]) == pytest.approx(2 / 3)
    assert s.predicted_degenerate_fraction([3], counts=[1]) == pytest.approx(1.0)
    assert sum(s.posterior_mean_histogram(bins=4)) == 3
    assert sum(s.posterior_mean_histogram(bins=4, seen_only=False)) == 4


def test_thompson_prefers_uncertain_prompts():
    # prompts 0-9 always solved, 10-19 never, 20-29 half the time: the last ten carry the signal
    s = VADESampler(30, 0, 10, 8, slow_decay=1.0, fast_decay=1.0)
    for step in range(1, 4):
        s.update(step, list(range(30)), [8] * 10 + [0] * 10 + [4] * 10, [8] * 30)
    picks = [i for _ in range(20) for i in s.sample(10)]
    assert np.mean([i >= 20 for i in picks]) > 0.9
    s.ig = "variance"
    picks = [i for _ in range(20) for i in s.sample(10)]
    assert np.mean([i >= 20 for i in picks]) > 0.9


def test_uniform_mix_draws_a_share_uniformly():
    s = VADESampler(30, 0, 10, 8, slow_decay=1.0, fast_decay=1.0, uniform_mix=0.3)
    for step in range(1, 4):
        s.update(step, list(range(30)), [8] * 10 + [0] * 10 + [4] * 10, [8] * 30)
    batches = [s.sample(10) for _ in range(50)]
    assert all(len(set(b)) == 10 for b in batches)
    tail = [i for b in batches for i in b[7:]]  # round(0.3 x 10) = 3 uniform picks, from the other prompts
    assert np.mean([i < 20 for i in tail]) > 0.6
    everyone = VADESampler(30, 0, 10, 8, uniform_mix=1.0)
    assert len(set(i for _ in range(20) for i in everyone.sample(10))) == 30


def test_state_round_trip_continues_the_same_draws():
    s = VADESampler(40, 7, 4, 4, uniform_mix=0.25)
    for step in range(1, 6):
        chosen = s.sample(4)
        s.update(step, chosen, [step % 5, 0, 4, 2], [4, 4, 4, 4])
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    r = VADESampler(40, 123, 4, 4, uniform_mix=0.25)  # another seed: everything comes from the state
    r.load_state_dict(torch.load(buf, weights_only=True))
    for step in range(6, 10):
        x, y = s.sample(4), r.sample(4)
        assert x == y
        for t in (s, r):
            t.update(step, x, [1, 2, 3, 4], [4, 4, 4, 4])
    np.testing.assert_array_equal(s.a, r.a)
    np.testing.assert_array_equal(s.b, r.b)
    assert s.clock == r.clock == 10
    with pytest.raises(ValueError):
        VADESampler(41, 0, 4, 4).load_state_dict(s.state_dict())


def test_bad_inputs_raise():
    s = VADESampler(3, 0, 1, 2)
    with pytest.raises(ValueError):
        s.update(1, [0], [3], [2])
    with pytest.raises(ValueError):
        s.update(1, [0, 1], [1], [2, 2])
    with pytest.raises(IndexError):
        s.update(1, [3], [1], [2])
    with pytest.raises(ValueError):
        VADESampler(3, 0, 1, 2, ig="entropy")
    with pytest.raises(ValueError):
        VADESampler(3, 0, 1, 2, prior_a=0.0)
    with pytest.raises(ValueError):
        VADESampler(3, 0, 1, 2, uniform_mix=1.5)
