import torch

from rlvr.advantage.grpo import group_relative_advantages
from rlvr.advantage.rloo import RLOO, leave_one_out_advantages
from rlvr.registry import ADVANTAGE
from rlvr.types import AdvantageInput


def close(a, b, rtol=1e-5, atol=1e-6):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, rtol=rtol, atol=atol), (a, b)


def _input(rewards, group):
    n = len(rewards)
    return AdvantageInput(
        torch.tensor(group),
        torch.tensor(rewards, dtype=torch.float32),
        {},
        torch.ones(n, dtype=torch.long),
        [str(g) for g in group],
        0,
    )


def test_hand_computed_three_samples():
    # others' means: [0, 0.5, 0.5] -> [1 - 0, 0 - 0.5, 0 - 0.5]
    close(leave_one_out_advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0])), [1.0, -0.5, -0.5])


def test_hand_computed_continuous_group_next_to_binary_group():
    r = torch.tensor([0.2, 0.5, 0.8, 0.5, 1.0, 0.0])
    g = torch.tensor([3, 3, 3, 3, 9, 9])
    # group 3: 0.2 - (0.5 + 0.8 + 0.5)/3 = -0.4, 0.5 - 0.5 = 0, 0.8 - 0.4 = 0.4; group 9: 1 - 0, 0 - 1
    close(leave_one_out_advantages(r, g), [-0.4, 0.0, 0.4, 0.0, 1.0, -1.0])


def test_singleton_group_has_no_baseline_and_gets_zero():
    adv = leave_one_out_advantages(torch.tensor([1.0, 0.0, 0.7]), torch.tensor([0, 0, 5]))
    close(adv, [1.0, -1.0, 0.0])
    assert adv[2] == 0


def test_zero_variance_group_is_exactly_zero():
    r = torch.tensor([0.3, 0.3, 0.3, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1])
    g = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    assert torch.equal(leave_one_out_advantages(r, g), torch.zeros(9))
    assert RLOO()(_input(r.tolist(), g.tolist())).metrics["advantage/zero_std_frac"] == 1.0


def test_permutation_within_and_across_groups_permutes_advantages():
    torch.manual_seed(0)
    r = torch.rand(12)
    g = torch.arange(12) // 4
    perm = torch.randperm(12)
    close(leave_one_out_advantages(r[perm], g[perm]), leave_one_out_advantages(r, g)[perm])


def test_group_ids_are_labels_only():
    r = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.25])
    close(
        leave_one_out_advantages(r, torch.tensor([0, 0, 0, 1, 1])),
        leave_one_out_advantages(r, torch.tensor([70, 70, 70, -3, -3])),
    )


def test_loop_reference_matches_vectorised():
    torch.manual_seed(1)
    r = torch.randint(0, 4, (50,)).float() / 3
    g = torch.randint(0, 9, (50,))
    got = leave_one_out_advantages(r, g)
    for i in range(50):
        others = [r[k].item() for k in range(50) if k != i and g[k] == g[i]]
        want = r[i].item() - sum(others) / len(others) if others else 0.0
        close(got[i], want, rtol=1e-5, atol=1e-6)


def test_shift_invariant_and_zero_sum_per_group():
    torch.manual_seed(2)
    r = torch.rand(20)
    g = torch.arange(20) // 5
    adv = leave_one_out_advantages(r, g)
    close(leave_one_out_advantages(r + 3.0, g), adv, atol=1e-5)
    close(torch.zeros(4).index_add_(0, g, adv), torch.zeros(4), atol=1e-6)


def test_rloo_is_dr_grpo_scaled_by_g_over_g_minus_1():
    torch.manual_seed(3)
    r = torch.rand(12)
    g = torch.tensor([0] * 2 + [1] * 4 + [2] * 6)
    scale = torch.tensor([2 / 1] * 2 + [4 / 3] * 4 + [6 / 5] * 6)
    close(leave_one_out_advantages(r, g), scale * group_relative_advantages(r, g, scale_by_std=False))


def test_registered_estimator_and_metric():
    est = ADVANTAGE.get("rloo")()
    out = est(_input([1.0, 1.0, 0.0, 1.0, 0.5], [0, 0, 1, 1, 2]))
    close(out.advantages, [0.0, 0.0, -1.0, 1.0, 0.0])
    assert out.weights is None
    assert out.metrics["advantage/zero_std_frac"] == 0.5  # the singleton group is not counted


def test_empty_batch():
    out = RLOO()(_input([], []))
    assert out.advantages.shape == (0,)
