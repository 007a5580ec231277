"""pass@k against brute force over all k-subsets, and the eval summary on a hand example."""

import itertools
import math

import pytest

from rlvr.metrics.passk import pass_at_k, summarize_eval


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_worked_example_and_edges() -> None:
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 4, 2) == 1.0  # n - c = 1 < k: every pair holds a correct sample
    assert pass_at_k(5, 0, 3) == 0.0


def test_pass_at_k_is_stable_for_large_n() -> None:
    # C(1000, 500) overflows a float; the product form does not.
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    assert 0.0 < pass_at_k(1000, 3, 10) < 1.0


@pytest.mark.parametrize("n, c, k", [(4, 1, 5), (4, 1, 0), (4, 5, 1), (4, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_summarize_eval_hand_example() -> None:
    correct = [[True, False], [True, True], [False, False]]
    out = summarize_eval(correct, ks=[1, 2, 4])
    assert set(out) == {
        "eval/mean@n",
        "eval/mean@n_se",
        "eval/pass@1",
        "eval/pass@1_se",
        "eval/pass@2",
        "eval/pass@2_se",
    }  # k = 4 > n = 2 skipped
    # accuracy per prompt 0.5, 1, 0: mean 0.5, sample std 0.5, se 0.5 / sqrt(3)
    assert out["eval/mean@n"] == pytest.approx(0.5)
    assert out["eval/mean@n_se"] == pytest.approx(0.5 / math.sqrt(3))
    assert out["eval/pass@1"] == pytest.approx(out["eval/mean@n"])
    assert out["eval/pass@1_se"] == pytest.approx(out["eval/mean@n_se"])
    # pass@2 per prompt 1, 1, 0: mean 2/3, sample std sqrt(1/3), se 1/3
    assert out["eval/pass@2"] == pytest.approx(2 / 3)
    assert out["eval/pass@2_se"] == pytest.approx(1 / 3)


def test_summarize_eval_uneven_n_and_single_prompt() -> None:
    out = summarize_eval([[True, False, False, False], [True, True]], ks=[2, 3])
    assert "eval/pass@3" not in out  # the smallest n is 2
    assert out["eval/pass@2"] == pytest.approx((0.5 + 1.0) / 2)  # pass_at_k(4, 1, 2) = 1/2
    assert out["eval/mean@n"] == pytest.approx((0.25 + 1.0) / 2)

    single = summarize_eval([[True, False, True]], ks=[1])
    assert single["eval/mean@n"] == pytest.approx(2 / 3)
    assert single["eval/mean@n_se"] == 0.0 and single["eval/pass@1_se"] == 0.0


def test_summarize_eval_rejects_empty_input() -> None:
    with pytest.raises(ValueError):
        summarize_eval([], ks=[1])
    with pytest.raises(ValueError):
        summarize_eval([[True], []], ks=[1])
