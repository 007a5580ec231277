import logging
import math

import pytest
import torch

from rlvr.advantage.bnpo import (
    BNPO,
    WEIGHT_CAP,
    beta_pdf,
    bnpo_advantages,
    bnpo_group_means,
    decomposed_bnpo_advantages,
    fit_beta_moments,
    normalise_rewards,
)
from rlvr.advantage.grpo import group_relative_advantages
from rlvr.config.load import plugin_kwargs_problems
from rlvr.registry import ADVANTAGE
from rlvr.types import AdvantageInput


def close(a, b, rtol=1e-5, atol=1e-6):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True), (a, b)


def T(x):
    return torch.tensor(x, dtype=torch.float32)


def G(x):
    return torch.tensor(x)


def _input(rewards, group, components=None):
    return AdvantageInput(
        G(group),
        T(rewards),
        components or {},
        torch.ones(len(group), dtype=torch.long),
        [str(g) for g in group],
        0,
    )


# ---------- hand-computed numbers (the docstring examples) ----------


def test_docstring_example_three_samples():
    # p = [0.5, 0 (singleton)], m 0.25, v 0.125, a 0.125, b 0.375, alpha 1 + 0.125/3, beta 1.125
    res = bnpo_advantages(T([1, 0, 1]), G([0, 0, 1]))
    close(res.group_mean, [0.5, 0.0])
    close([res.fit.mean, res.fit.var, res.fit.a, res.fit.b], [0.25, 0.125, 0.125, 0.375])
    close([res.alpha_used, res.beta_used], [1 + 0.125 / 3, 1.125])
    pdf_half = math.exp(
        -(1 / 24 + 1 / 8) * math.log(2) - (math.lgamma(25 / 24) + math.lgamma(9 / 8) - math.lgamma(52 / 24))
    )
    close(pdf_half, 1.0473616, rtol=1e-6)
    close(res.advantages, [0.5 / pdf_half, -0.5 / pdf_half, 0.0])
    close(res.advantages[:2], [0.4773900, -0.4773900])
    assert res.singletons == 1 and not res.guarded
    compat = bnpo_advantages(T([1, 0, 1]), G([0, 0, 1]), reference_compat=True)
    close(compat.advantages, [0.4773900, -0.4773900, WEIGHT_CAP])  # density 0 at p = 0 since alpha > 1


def test_fit_example_gives_grpo_like_beta():
    fit = fit_beta_moments(T([0.25, 0.5, 0.75]))
    close(list(fit), [0.5, 0.0625, 1.5, 1.5, 1.5, 1.5])
    assert not fit.degenerate


def test_fit_single_prompt_convention_and_degenerate_fits():
    close(list(fit_beta_moments(T([0.5]))), [0.0, 1.0, 0.0, -1.0, 1.0, 1.0])
    equal_inner = fit_beta_moments(T([0.25, 0.25]))
    assert equal_inner.var == 0 and equal_inner.alpha == math.inf and equal_inner.beta == math.inf
    equal_zero = fit_beta_moments(T([0.0, 0.0, 0.0]))
    assert math.isnan(equal_zero.alpha) and math.isnan(equal_zero.beta) and equal_zero.degenerate
    # below the floor counts as equal means
    assert fit_beta_moments(T([0.5, 0.5 + 1e-7])).degenerate


def test_beta_pdf_values():
    close(beta_pdf(T([0.0, 0.25, 0.5]), 1.5, 1.5), [0.0, 1.1026578, 1.2732395])
    close(beta_pdf(T([0.0, 0.3, 1.0]), 1.0, 2.5), [2.5, 2.5 * 0.7**1.5, 0.0])  # Beta(1, b) at 0 is b
    x = T([0.1, 0.37, 0.9])
    close(
        beta_pdf(x, 1.3, 2.2),
        torch.distributions.Beta(torch.tensor(1.3), torch.tensor(2.2)).log_prob(x).exp(),
    )
    assert beta_pdf(T([0.5]), math.inf, math.inf).isnan().all()


def test_normalise_rewards_and_group_means():
    close(normalise_rewards(T([1, -1, 1]), -1.0, 1.0), [1, 0, 1])
    p, per_group = bnpo_group_means(T([1, 0, 1]), G([4, 4, 9]))
    close(p, [0.5, 0.5, 0.0])
    close(per_group, [0.5, 0.0])
    with pytest.raises(ValueError):
        normalise_rewards(T([1]), 1.0, 1.0)


# ---------- guards of spec section 4.3 ----------


def test_equal_group_means_nan_in_reference_finite_when_guarded(caplog):
    r, g = [1, 1, 0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]  # every group half right
    assert bnpo_advantages(T(r), G(g), reference_compat=True).advantages.isnan().all()
    est = BNPO()
    with caplog.at_level(logging.WARNING, logger="rlvr.advantage.bnpo"):
        out = est(_input(r, g))
        est(_input(r, g))
    close(out.advantages, [0.5, 0.5, -0.5, -0.5, 0.5, -0.5, 0.5, -0.5])  # alpha = beta = 1: r - p
    assert out.metrics["advantage/bnpo_guarded_frac"] == 1.0
    assert out.metrics["advantage/bnpo_alpha"] == out.metrics["advantage/bnpo_beta"] == 1.0
    assert out.metrics["advantage/bnpo_nan_frac"] == 0.0
    assert sum("degenerate" in m for m in caplog.messages) == 1  # warned once, counted every step
    compat = BNPO(reference_compat=True)(_input(r, g))
    assert (
        compat.metrics["advantage/bnpo_nan_frac"] == 1.0
        and compat.metrics["advantage/bnpo_guarded_frac"] == 0.0
    )


def test_all_zero_rewards_raise_in_reference_and_give_zero_when_guarded():
    r, g = [0.0] * 6, [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError):
        bnpo_advantages(T(r), G(g), reference_compat=True)
    assert torch.equal(bnpo_advantages(T(r), G(g)).advantages, torch.zeros(6))
    assert torch.equal(bnpo_advantages(T([1.0] * 6), G(g)).advantages, torch.zeros(6))


def test_singleton_groups_reference_values_and_guarded_zero():
    # p = [0, 0, 0.75]: m 0.25, v 0.1875 -> a = b = 0 -> alpha = beta = 1; reference gives singletons r~ / beta = r~
    r, g = T([1, 0, 1, 0, 1, 1]), G([0, 1, 2, 2, 2, 2])
    compat = bnpo_advantages(r, g, reference_compat=True)
    guarded = bnpo_advantages(r, g)
    close(compat.advantages, [1.0, 0.0, 0.25, -0.75, 0.25, 0.25])
    close(guarded.advantages, [0.0, 0.0, 0.25, -0.75, 0.25, 0.25])
    # p = [0, 0.25, 0.5, 0.75]: m 0.375, v 0.3125/3 -> a = 0.46875 -> alpha > 1, density 0 at p = 0:
    # the reference gives the singleton r~ * 1e6; guarded gives 0 and leaves the other groups unchanged
    r2 = T([1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0])
    g2 = G([0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    compat2, guarded2 = bnpo_advantages(r2, g2, reference_compat=True), bnpo_advantages(r2, g2)
    close(
        [compat2.fit.mean, compat2.fit.var, compat2.fit.a, compat2.fit.b],
        [0.375, 0.3125 / 3, 0.46875, 0.78125],
    )
    assert compat2.alpha_used > 1.0
    assert compat2.advantages[0] == WEIGHT_CAP and guarded2.advantages[0] == 0
    close(compat2.advantages[1:], guarded2.advantages[1:])  # the singleton's p = 0 still enters the fit


def test_only_singletons_guarded_is_zero_and_finite():
    out = BNPO()(_input([1.0, 0.0, 1.0], [0, 1, 2]))
    assert torch.equal(out.advantages, torch.zeros(3))
    assert out.metrics["advantage/bnpo_singleton_frac"] == 1.0
    assert BNPO()(_input([0.7], [0])).advantages.tolist() == [0.0]
    assert BNPO(reference_compat=True)(_input([0.7], [0])).advantages.tolist() == [pytest.approx(0.7)]


def test_bounds_not_bracketing_rewards_raise_assertion_in_both_modes():
    r, g = [2, 1, 0, 1, 2, 2, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]  # acc + format in [0, 2]
    for compat in (True, False):
        with pytest.raises(AssertionError, match="min_value"):
            BNPO(reference_compat=compat)(_input(r, g))
    assert torch.isfinite(BNPO(max_value=2.0)(_input(r, g)).advantages).all()


def test_guarded_mode_is_finite_on_random_batches():
    torch.manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(1, 25, ()))
        g = torch.randint(0, int(torch.randint(1, 7, ())), (n,))
        r = torch.randint(0, 3, (n,)).float() / 2 if trial % 2 else torch.rand(n)
        assert torch.isfinite(bnpo_advantages(r, g).advantages).all()


# ---------- properties ----------


def test_zero_variance_groups_get_exactly_zero():
    r = T([1, 1, 1, 0, 0, 0, 0.3, 0.3, 0.3, 1, 0, 0])
    g = G([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    for compat in (True, False):
        adv = bnpo_advantages(r, g, reference_compat=compat).advantages
        assert torch.equal(adv[:9], torch.zeros(9))
        assert (adv[9:] != 0).all()


def test_zero_sum_within_each_multi_sample_group():
    torch.manual_seed(1)
    r, g = torch.rand(24), torch.arange(24) // 4
    adv = bnpo_advantages(r, g).advantages
    close(torch.zeros(6).index_add_(0, g, adv), torch.zeros(6), atol=1e-6)


def test_permutation_and_relabelling_invariance():
    torch.manual_seed(2)
    r = torch.randint(0, 2, (20,)).float()
    g = torch.arange(20) // 4
    perm = torch.randperm(20)
    relabel = torch.tensor([17, 3, 42, 8, 5])[g]
    base = bnpo_advantages(r, g).advantages
    close(bnpo_advantages(r[perm], g[perm]).advantages, base[perm])
    close(bnpo_advantages(r, relabel).advantages, base)


def test_affine_reward_map_with_matching_bounds_is_invariant():
    r = T([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0.5])
    g = G([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3])
    base = bnpo_advantages(r, g).advantages
    for scale, shift in ((2.0, -1.0), (10.0, 3.0), (0.5, 0.25)):
        got = bnpo_advantages(scale * r + shift, g, min_value=shift, max_value=scale + shift).advantages
        close(got, base, atol=1e-5)


def test_flipping_rewards_negates_advantages():
    # r -> 1 - r maps p -> 1 - p and swaps alpha and beta; the density at p is unchanged
    r = T([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0.9, 0.2, 0.4, 0.7])
    g = G([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4)
    close(bnpo_advantages(1 - r, g).advantages, -bnpo_advantages(r, g).advantages)


def test_single_prompt_batch_is_dr_grpo():
    r, g = T([0.9, 0.2, 0.4, 0.7, 0.1]), G([0] * 5)
    close(bnpo_advantages(r, g).advantages, group_relative_advantages(r, g, scale_by_std=False))


def test_alpha_beta_three_halves_is_grpo_with_population_std_times_pi_over_8():
    r = T([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0])  # p = 0.25, 0.5, 0.75 -> alpha = beta = 1.5
    g = G([0] * 4 + [1] * 4 + [2] * 4)
    res = bnpo_advantages(r, g)
    assert res.alpha_used == res.beta_used == 1.5
    p = res.group_mean[g]
    close(res.advantages, math.pi / 8 * (r - p) / torch.sqrt(p * (1 - p)))


def test_loop_reference_matches_vectorised():
    def reference(r, g, compat):
        groups = {}
        for i, k in enumerate(g):
            groups.setdefault(k, []).append(i)
        p = {k: sum(r[i] for i in m) / len(m) if len(m) > 1 else 0.0 for k, m in groups.items()}
        ps = list(p.values())
        m = sum(ps) / len(ps) if len(ps) > 1 else 0.0
        v = sum((x - m) ** 2 for x in ps) / (len(ps) - 1) if len(ps) > 1 else 1.0
        a, b = (m * (1 - m) / v - 1) * m, (m * (1 - m) / v - 1) * (1 - m)
        al, be = max(1 + a / 3, 1), max(1 + b / 3, 1)
        out = []
        for i, k in enumerate(g):
            if len(groups[k]) == 1 and not compat:
                out.append(0.0)
                continue
            x = p[k]
            lx = 0.0 if al == 1 else ((al - 1) * math.log(x) if x > 0 else -math.inf)
            l1x = 0.0 if be == 1 else ((be - 1) * math.log(1 - x) if x < 1 else -math.inf)
            pdf = math.exp(lx + l1x - math.lgamma(al) - math.lgamma(be) + math.lgamma(al + be))
            out.append((r[i] - x) * min(1 / pdf if pdf > 0 else math.inf, WEIGHT_CAP))
        return out

    torch.manual_seed(3)
    for _ in range(30):
        n = 24
        g = torch.randint(0, 6, (n,))
        g[:12] = (
            torch.arange(12) // 3
        )  # at least four multi-sample groups with distinct means (almost surely)
        r = (torch.randint(0, 5, (n,)) / 4).float()
        for compat in (True, False):
            res = bnpo_advantages(r, g, reference_compat=compat)
            if res.fit.degenerate:
                continue
            close(res.advantages, reference(r.tolist(), g.tolist(), compat), rtol=1e-4, atol=1e-5)


# ---------- decomposition ----------


def test_decomposition_docstring_example():
    acc, fmt, g = T([1, 0, 1]), T([1, 1, 1]), G([0, 0, 1])
    adv, parts = decomposed_bnpo_advantages({"acc": acc, "format": fmt}, g)
    close(parts["acc"].advantages, [0.4773900, -0.4773900, 0.0])
    assert torch.equal(parts["format"].advantages, torch.zeros(3))
    assert parts["format"].alpha_used == parts["format"].beta_used == 1.0
    close(adv, [0.2386950, -0.2386950, 0.0])


def test_decomposition_is_mean_of_component_advantages():
    torch.manual_seed(4)
    g = torch.arange(16) // 4
    comps = {
        "acc": torch.randint(0, 2, (16,)).float(),
        "format": torch.randint(0, 2, (16,)).float(),
        "x": torch.rand(16),
    }
    comps["acc"][:4] = torch.tensor([1.0, 0, 0, 0])
    comps["format"][:4] = torch.tensor([1.0, 1, 0, 0])  # group means differ between groups (not degenerate)
    comps["format"][4:8] = 1.0
    out = BNPO(decompose=True)(_input((comps["acc"] + comps["format"]).tolist(), g.tolist(), comps))
    want = torch.stack([bnpo_advantages(c, g).advantages for c in comps.values()]).mean(0)
    close(out.advantages, want)
    assert {"advantage/bnpo_alpha/acc", "advantage/bnpo_beta/format", "advantage/bnpo_alpha/x"} <= set(
        out.metrics
    )


def test_decomposition_with_a_disabled_component():
    g = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    comps = {"acc": T([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0]), "format": T([0.0] * 12)}
    inp = _input(comps["acc"].tolist(), g, comps)
    with pytest.raises(ValueError, match="format"):
        BNPO(decompose=True, reference_compat=True)(inp)
    out = BNPO(decompose=True)(inp)
    close(out.advantages, bnpo_advantages(comps["acc"], G(g)).advantages / 2)
    assert out.metrics["advantage/bnpo_guarded_frac"] == 0.5


def test_decompose_needs_components():
    with pytest.raises(ValueError, match="components"):
        BNPO(decompose=True)(_input([1.0, 0.0], [0, 0]))


# ---------- seam and configuration ----------


def test_registered_and_kwargs_validated():
    assert ADVANTAGE.get("bnpo") is BNPO
    assert (
        plugin_kwargs_problems(
            "advantage", BNPO, {"min_value": -1.0, "decompose": True, "reference_compat": False}
        )
        == []
    )
    problems = plugin_kwargs_problems(
        "advantage", BNPO, {"min_value": "low", "max_value": float("inf"), "decomp": True}
    )
    assert any(p.startswith("advantage.min_value:") for p in problems)
    assert any(p.startswith("advantage.max_value:") for p in problems)
    assert any("advantage.decomp: unknown key" in p for p in problems)
    with pytest.raises(ValueError, match="max_value"):
        BNPO(min_value=1.0, max_value=0.0)


def test_metrics_and_empty_batch():
    out = BNPO()(_input([1, 0, 1, 1, 0, 0, 1, 1], [0, 0, 1, 1, 2, 2, 3, 3]))
    assert out.weights is None
    assert out.metrics["advantage/zero_std_frac"] == 0.75
    assert out.metrics["advantage/bnpo_singleton_frac"] == 0.0
    assert BNPO()(_input([], [])).advantages.shape == (0,)
