"""Stratified GRPO (SAN) against vectors/stratified_grpo.json: every case, every block."""

import pytest
import torch

from rlvr.advantage.stratified import Stratified, stratified_advantages, stratum_decomposition, stratum_ids
from rlvr.types import AdvantageInput
from tests.conformance.conftest import assert_close, load_vectors


def _inputs(v, case):
    inp = v["inputs"]
    rewards = inp["rewards_binary"] if case["rewards"] == "binary_EM" else inp["rewards_continuous"]
    group = torch.tensor([sorted(set(inp["uid"])).index(u) for u in inp["uid"]])
    return torch.tensor(rewards, dtype=torch.float32), group, inp["strata_num_search_calls"], inp["uid"]


def _check(v, case, batch_level, where):
    eps = v["formulas"]["eps"]
    rewards, group, strata, uids = _inputs(v, case)
    g, s = stratum_ids(group, strata, batch_level=batch_level)
    out = stratified_advantages(rewards, g, s, alpha=case["alpha"], epsilon=eps, ddof=case["std_ddof"])
    assert_close(out.global_, case["A_GN"], f"{where}.A_GN")
    assert_close(out.san, case["A_SAN"], f"{where}.A_SAN")
    assert_close(out.advantages, case["A_blend"], f"{where}.A_blend")
    est = Stratified(alpha=case["alpha"], epsilon=eps, ddof=case["std_ddof"], batch_level=batch_level)
    got = est(AdvantageInput(group, rewards, {}, torch.ones(len(uids)), uids, 0, strata=strata))
    assert_close(got.advantages, case["A_blend"], f"{where}.estimator")
    assert got.weights is None


def test_every_per_prompt_case():
    v = load_vectors("stratified_grpo.json")
    assert v["cases"]
    for i, case in enumerate(v["cases"]):
        _check(v, case, False, f"cases[{i}]")


def test_every_batch_level_case():
    v = load_vectors("stratified_grpo.json")
    if "batch_level_variant" not in v:
        pytest.skip("no batch_level_variant block")
    for i, case in enumerate(v["batch_level_variant"]):
        _check(v, case, True, f"batch_level_variant[{i}]")


def test_decomposition_and_bias_metric():
    v = load_vectors("stratified_grpo.json")
    if "decomposition_check_binary" not in v:
        pytest.skip("no decomposition_check_binary block")
    rewards, group, strata, uids = _inputs(v, {"rewards": "binary_EM"})
    g, s = stratum_ids(group, strata)
    a_g, a_s, bias = stratum_decomposition(rewards, g, s)
    exp = v["decomposition_check_binary"]
    assert_close(a_g, [e["A_G"] for e in exp], "A_G")
    assert_close(a_s, [e["A_S"] for e in exp], "A_S")
    assert_close(bias, [e["cross_stratum_bias"] for e in exp], "cross_stratum_bias")
    metrics = Stratified()(AdvantageInput(group, rewards, {}, torch.ones(len(uids)), uids, 0, strata=strata)).metrics
    mean_abs = sum(abs(e["cross_stratum_bias"]) for e in exp) / len(exp)
    assert_close(metrics["advantage/cross_stratum_bias"], mean_abs, "metric")
    assert metrics["advantage/num_strata"] == len(set(zip(v["inputs"]["uid"], strata)))
