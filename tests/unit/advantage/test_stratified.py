import pytest
import torch

from rlvr.advantage import group_relative_advantages
from rlvr.advantage.stratified import (
    STRATUM_FUNCTIONS,
    Stratified,
    count_search_calls,
    count_tool_calls,
    dense_ids,
    standardise,
    stratified_advantages,
    stratum_decomposition,
    stratum_ids,
)
from rlvr.config.load import plugin_kwargs_problems
from rlvr.registry import ADVANTAGE, load_object
from rlvr.types import AdvantageInput


def close(a, b, rtol=1e-5, atol=1e-6):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, rtol=rtol, atol=atol), (a, b)


def adv_input(rewards, group, strata):
    n = len(rewards)
    return AdvantageInput(torch.as_tensor(group), torch.as_tensor(rewards, dtype=torch.float32), {},
                          torch.ones(n, dtype=torch.long), [str(g) for g in torch.as_tensor(group).tolist()], 0,
                          strata=strata)


def random_batch(seed, n=60, groups=8, keys=4):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (n,), generator=gen).float() / 2
    group = torch.randint(0, groups, (n,), generator=gen)
    strata = torch.randint(0, keys, (n,), generator=gen).tolist()
    return rewards, group, strata


def test_hand_computed_three_sample_example():
    # one prompt, rewards [1, 0, 1], search calls [0, 0, 1], eps 1e-6, ddof 1
    r, g = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 0])
    gi, si = stratum_ids(g, [0, 0, 1])
    out = stratified_advantages(r, gi, si, alpha=0.5)
    s3 = 1 / 3**0.5  # group: mean 2/3, std sqrt(1/3)
    close(out.global_, [(1 / 3) / (s3 + 1e-6), (-2 / 3) / (s3 + 1e-6), (1 / 3) / (s3 + 1e-6)])
    # stratum 0 = {1, 0}: mean 0.5, std sqrt(0.5); stratum 1 = {1} alone -> 0 (not r / (1 + eps))
    h = 0.5 / (0.5**0.5 + 1e-6)
    close(out.san, [h, -h, 0.0])
    close(out.advantages, [0.64223, -0.93093, 0.28868], rtol=1e-4)
    a_g, a_s, bias = stratum_decomposition(r, gi, si)
    close(a_g, [1 / 3, -2 / 3, 1 / 3])
    close(a_s, [0.5, -0.5, 0.0])
    close(bias, [-1 / 6, -1 / 6, 1 / 3])
    m = Stratified(alpha=0.5)(adv_input([1.0, 0.0, 1.0], [0, 0, 0], [0, 0, 1])).metrics
    assert m["advantage/num_strata"] == 2
    close(m["advantage/cross_stratum_bias"], 2 / 9)


def test_docstring_example_of_standardise():
    close(standardise(torch.tensor([1.0, 0, 1]), torch.tensor([0, 0, 1]), epsilon=0.0), [0.70711, -0.70711, 0], rtol=1e-4)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_zero_is_grpo_with_zero_singletons(seed, ddof):
    r, g, strata = random_batch(seed)
    got = Stratified(alpha=0.0, ddof=ddof)(adv_input(r, g, strata)).advantages
    if ddof == 1:
        close(got, group_relative_advantages(r, g, singleton="zero"))
    # loop reference, any ddof: singleton and constant groups 0, else (r - mean) / (std + eps)
    for i in range(len(r)):
        members = r[g == g[i]].double()
        sd = members.std(correction=ddof) if len(members) > 1 else torch.tensor(0.0)
        want = 0.0 if len(members) == 1 or sd == 0 else (r[i] - members.mean()) / (sd + 1e-6)
        close(got[i], want)


def test_alpha_zero_never_uses_verls_singleton_rule():
    # group 1 has one response: GRPO (verl) gives r / (1 + eps); SAN/GN give 0 for every alpha
    for alpha in (0.0, 0.5, 1.0):
        got = Stratified(alpha=alpha)(adv_input([1.0, 0.0, 0.7], [0, 0, 1], [0, 0, 0])).advantages
        assert got[2] == 0


@pytest.mark.parametrize("seed", [0, 3])
def test_alpha_one_is_mean_zero_unit_variance_in_every_stratum(seed):
    r, g, strata = random_batch(seed)
    adv = Stratified(alpha=1.0, epsilon=0.0)(adv_input(r, g, strata)).advantages
    _, cells = stratum_ids(g, strata)
    for c in cells.unique():
        a = adv[cells == c].double()
        assert abs(float(a.sum())) < 1e-5
        if (r[cells == c] != r[cells == c][0]).any():  # a stratum with spread: unit sample std
            close(a.std(), 1.0)
        else:
            assert torch.all(a == 0)


@pytest.mark.parametrize("batch_level", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_positive_affine_invariance_with_eps_zero(alpha, batch_level):
    r, g, strata = random_batch(5)
    est = Stratified(alpha=alpha, epsilon=0.0, batch_level=batch_level)
    base = est(adv_input(r, g, strata)).advantages
    close(est(adv_input(3.5 * r - 2.0, g, strata)).advantages, base, rtol=1e-4, atol=1e-5)


def test_one_stratum_per_group_equals_grpo():
    r, g, _ = random_batch(7)
    san = Stratified(alpha=1.0)(adv_input(r, g, ["same"] * len(r))).advantages
    close(san, group_relative_advantages(r, g, singleton="zero"))


def test_constant_stratum_is_zero_but_blend_keeps_signal():
    out = Stratified(alpha=0.5)(adv_input([1.0, 1.0, 0.0, 1.0], [0, 0, 0, 0], [2, 2, 1, 1]))
    gi, si = stratum_ids(torch.zeros(4, dtype=torch.long), [2, 2, 1, 1])
    parts = stratified_advantages(torch.tensor([1.0, 1.0, 0.0, 1.0]), gi, si, alpha=0.5)
    assert parts.san[0] == 0 and parts.san[1] == 0
    assert out.advantages[0] > 0


def test_batch_level_pools_strata_across_prompts():
    # per prompt each (prompt, key) cell is a singleton -> 0; pooled, key 0 holds {1, 0}
    inp = adv_input([1.0, 0.0, 0.0, 1.0], [0, 0, 1, 1], [0, 1, 0, 1])
    assert torch.all(Stratified(alpha=1.0)(inp).advantages == 0)
    pooled = Stratified(alpha=1.0, epsilon=0.0, batch_level=True)(inp)
    close(pooled.advantages, [0.70711, -0.70711, -0.70711, 0.70711], rtol=1e-4)
    assert pooled.metrics["advantage/num_strata"] == 2


def test_permutation_permutes_advantages():
    r, g, strata = random_batch(9)
    perm = torch.randperm(len(r), generator=torch.Generator().manual_seed(0))
    est = Stratified(alpha=0.3)
    base = est(adv_input(r, g, strata)).advantages
    close(est(adv_input(r[perm], g[perm], [strata[i] for i in perm.tolist()])).advantages, base[perm])


def test_missing_or_bad_strata_raise_clear_errors():
    with pytest.raises(ValueError, match="stratum function"):
        Stratified()(adv_input([1.0, 0.0], [0, 0], None))
    with pytest.raises(ValueError, match="2 stratum keys for 3 samples"):
        Stratified()(adv_input([1.0, 0.0, 1.0], [0, 0, 0], [0, 1]))
    with pytest.raises(TypeError, match="hashable"):
        Stratified()(adv_input([1.0, 0.0], [0, 0], [[1], [2]]))


def test_any_hashable_key_and_tensor_strata():
    assert dense_ids(["x", 3, "x", (1, 2)]).tolist() == [0, 1, 0, 2]
    a = Stratified()(adv_input([1.0, 0.0, 1.0, 0.0], [0, 0, 0, 0], ["s", "s", ("t", 1), ("t", 1)])).advantages
    b = Stratified()(adv_input([1.0, 0.0, 1.0, 0.0], [0, 0, 0, 0], torch.tensor([4, 4, 7, 7]))).advantages
    close(a, b)


def test_stratum_functions():
    assert count_tool_calls("<tool_call>a</tool_call> ok <tool_call>b</tool_call>") == 2
    assert count_tool_calls("no tools") == 0
    assert count_tool_calls("[call] x [call]", tag="[call]") == 2
    assert count_search_calls("<search>x</search> then <search>y</search> <answer>z</answer>") == 2
    assert count_search_calls("") == 0
    assert load_object("rlvr.advantage.stratified:count_tool_calls") is count_tool_calls
    assert load_object("rlvr.advantage.stratified:count_search_calls") is count_search_calls
    assert STRATUM_FUNCTIONS["search_calls"] is count_search_calls


def test_registered_and_kwargs_validated():
    assert ADVANTAGE.get("stratified") is Stratified
    assert plugin_kwargs_problems("advantage", Stratified, {"alpha": 0.5, "ddof": 0, "batch_level": True}) == []
    problems = plugin_kwargs_problems("advantage", Stratified, {"alpha": 1.5, "ddof": 2, "epsilon": -1})
    assert len(problems) == 3 and any("advantage.alpha" in p for p in problems)
