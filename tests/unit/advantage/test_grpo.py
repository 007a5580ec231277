import torch

from rlvr.advantage import GRPO, DrGRPO, group_relative_advantages, group_stats, zero_std_fraction
from rlvr.types import AdvantageInput


def close(a, b, rtol=1e-5, atol=1e-6):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, rtol=rtol, atol=atol), (a, b)


def test_hand_computed_grpo_and_dr_grpo():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    # group 0: mean 1/3, std (ddof 1) = sqrt(1/3) = 0.57735
    close(group_relative_advantages(r, g), [1.1547, -0.57735, -0.57735, 0, 0, 0], rtol=1e-4)
    close(group_relative_advantages(r, g, scale_by_std=False), [2 / 3, -1 / 3, -1 / 3, 0, 0, 0])


def test_zero_variance_group_is_exactly_zero_even_for_inexact_means():
    r = torch.tensor([0.3, 0.3, 0.3, 0.1, 0.1, 0.1, 0.1])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    assert torch.equal(group_relative_advantages(r, g), torch.zeros(7))
    assert zero_std_fraction(r, g) == 1.0


def test_singleton_group_follows_verl_or_zero():
    r = torch.tensor([1.0, 0.0, 0.7])
    g = torch.tensor([0, 0, 5])
    close(group_relative_advantages(r, g)[2], 0.7 / (1 + 1e-6))
    close(group_relative_advantages(r, g, scale_by_std=False)[2], 0.7)
    assert group_relative_advantages(r, g, singleton="zero")[2] == 0


def test_permutation_within_group_permutes_advantages():
    torch.manual_seed(0)
    r = torch.rand(12)
    g = torch.arange(12) // 4
    perm = torch.randperm(12)
    close(group_relative_advantages(r[perm], g[perm]), group_relative_advantages(r, g)[perm])


def test_loop_reference_matches_vectorised():
    torch.manual_seed(1)
    r = torch.randint(0, 3, (40,)).float()
    g = torch.randint(0, 7, (40,))
    got = group_relative_advantages(r, g)
    for i in range(40):
        members = r[g == g[i]]
        if len(members) == 1:
            want = r[i] / (1 + 1e-6)
        elif members.std() == 0:
            want = 0.0
        else:
            want = (r[i] - members.mean()) / (members.std() + 1e-6)
        close(got[i], want, rtol=1e-5)


def test_group_stats_example_from_docstring():
    mean, std, count = group_stats(torch.tensor([1.0, 0, 0, 5]), torch.tensor([0, 0, 0, 7]))
    close(mean, [1 / 3, 1 / 3, 1 / 3, 5])
    close(std, [0.57735, 0.57735, 0.57735, 0], rtol=1e-4)
    close(count, [3, 3, 3, 1])


def test_reference_vectors(vectors):
    v = vectors("grpo.json")
    g = v["inputs"]["uid"]
    ids = torch.tensor([sorted(set(g)).index(u) for u in g])
    for case in v["outputs"]["grpo_advantage"]:
        est = (GRPO if case["norm_adv_by_std"] else DrGRPO)(epsilon=case["epsilon"])
        inp = AdvantageInput(ids, torch.tensor(case["rewards"], dtype=torch.float32), {}, torch.zeros(len(g)), g, 0)
        close(est(inp).advantages, case["advantage_per_sequence"])


def test_estimator_reports_zero_std_fraction():
    inp = AdvantageInput(torch.tensor([0, 0, 1, 1]), torch.tensor([1.0, 1.0, 0.0, 1.0]), {}, torch.ones(4), list("aabb"), 0)
    assert GRPO()(inp).metrics["advantage/zero_std_frac"] == 0.5
