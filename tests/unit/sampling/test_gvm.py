"""GVM allocation: hand examples, invariants (sums, zero allocations, alignment) and state round-trip."""

import io
import math
import random

import pytest
import torch

from rlvr.sampling.gvm import (
    GVMAllocator,
    align_chunk,
    allocation_ratios,
    drop_small_groups,
    filter_insufficient,
    filter_threshold,
    integerise,
    normalise,
    sample_ratios,
    sample_sizes,
)

# ---- pure functions ------------------------------------------------------------------------------


def test_sample_ratios_hand_example():
    # alpha = 0, beta = 2: w = G / sqrt(p) = [1/0.5, 2/1, 0] = [2, 2, 0]
    assert sample_ratios([0.25, 1.0, 0.0], [1.0, 2.0, 3.0], alpha=0.0) == [0.5, 0.5, 0.0]


def test_sample_ratios_default_formula():
    p, G = [0.125, 0.5, 1.0], [3.0, 1.0, 2.0]
    w = [g / math.sqrt(q + 1e-3 / q) for q, g in zip(p, G)]
    assert sample_ratios(p, G) == pytest.approx([x / sum(w) for x in w], rel=1e-12)


def test_sample_ratios_zero_p_or_G_gets_nothing_and_all_zero_stays_zero():
    assert sample_ratios([0.0, 0.5, 0.5], [1.0, 0.0, 2.0]) == [0.0, 0.0, 1.0]
    assert sample_ratios([0.0, 0.5], [1.0, 0.0]) == [0.0, 0.0]
    assert sample_ratios([], []) == []


def test_sample_ratios_peak_near_sqrt_alpha():
    # with beta = 2, the weight G / sqrt(p + alpha / p) is largest at p = sqrt(alpha)
    alpha = 1e-2
    grid = [i / 1000 for i in range(1, 1001)]
    r = sample_ratios(grid, [1.0] * len(grid), alpha=alpha)
    assert grid[max(range(len(grid)), key=r.__getitem__)] == pytest.approx(math.sqrt(alpha), abs=1e-3)


def test_filters_hand_examples():
    assert filter_threshold([0.2, 0.3, 0.5], [0.5, 1.0, 0.9], 0.9) == [0.2, 0.0, 0.5]
    assert filter_threshold([0.2, 0.8], [1.0, 1.0], 0.0) == [0.2, 0.8]  # 0 = off
    assert filter_insufficient([0.5, 0.25, 0.25], [0.1, 0.5, 1.0], 16, 1.0) == [0.0, 0.25, 0.25]
    assert filter_insufficient([0.5, 0.5], [0.0, 0.0], 16, 0.0) == [0.5, 0.5]  # 0 = off
    assert allocation_ratios([0.25, 1.0, 0.0], [1.0, 2.0, 3.0], 8, alpha=0.0, threshold=0.9) == [1.0, 0.0, 0.0]


def test_normalise():
    assert normalise([2.0, 0.0, 6.0]) == [0.25, 0.0, 0.75]
    assert normalise([0.0, 0.0]) == [0.0, 0.0]


def test_integerise_hand_examples():
    assert integerise([0.375, 0.375, 0.25], 4) == [1, 2, 1]  # rounds half to even, then fixes one
    assert integerise([1 / 3] * 3, 8) == [2, 3, 3]
    assert integerise([0.5, 0.5, 0.0], 5) == [3, 2, 0]
    assert integerise([0.0, 0.0], 8) == [0, 0]
    assert integerise([0.5, 0.5], 0) == [0, 0]


def test_integerise_sums_to_budget_and_stays_close():
    rnd = random.Random(0)
    for _ in range(500):
        P = rnd.randint(1, 40)
        ratios = normalise([rnd.random() * (rnd.random() > 0.2) for _ in range(P)])
        if not any(ratios):
            continue
        budget = rnd.randint(0, 10 * P)
        got = integerise(ratios, budget)
        assert sum(got) == budget
        assert all(n >= 0 for n in got)
        assert all(abs(n - r * budget) < 1.5 for n, r in zip(got, ratios))
        assert all(n == 0 for n, r in zip(got, ratios) if r == 0)  # a skipped prompt is never topped up


def test_align_chunk_worked_example_and_edges():
    assert align_chunk([5, 0, 3, 2], 8) == [7, 1, 5, 3]
    assert align_chunk([15, 3, 1, 4, 0, 25], 8) == [15, 3, 1, 4, 0, 25]  # 48: already aligned
    assert align_chunk([0, 0, 0], 4) == [0, 0, 0]  # a skipped batch stays skipped
    assert align_chunk([], 4) == []
    assert align_chunk([2, 2, 2], 4) == [2, 3, 3]  # ties: later prompt first
    assert align_chunk([3], 1) == [3]
    with pytest.raises(ValueError):
        align_chunk([1], 0)


def test_align_chunk_total_is_a_multiple_and_only_grows():
    rnd = random.Random(1)
    for _ in range(300):
        sizes = [rnd.randint(0, 9) for _ in range(rnd.randint(1, 12))]
        g = rnd.randint(1, 16)
        got = align_chunk(sizes, g)
        assert sum(got) % g == 0 and 0 <= sum(got) - sum(sizes) < g
        assert all(a >= b for a, b in zip(got, sizes))


def test_drop_small_groups():
    assert drop_small_groups([0.1, 0.4, 0.5], 10, 2) == [0, 4, 6]
    assert drop_small_groups([0.1, 0.4, 0.5], 10, 0) == [1, 4, 5]
    rnd = random.Random(2)
    for _ in range(200):
        ratios = normalise([rnd.random() ** 3 for _ in range(rnd.randint(1, 20))])
        budget, m = rnd.randint(1, 60), rnd.randint(2, 5)
        got = drop_small_groups(ratios, budget, m)
        assert all(n == 0 or n >= m for n in got)
        assert sum(got) in (0, budget)


def test_sample_sizes_hand_example():
    assert sample_sizes([0.25, 1.0, 0.0], [1.0, 2.0, 3.0], 5, alpha=0.0) == [3, 2, 0]


# ---- the allocator -------------------------------------------------------------------------------


def _estimated(**kwargs):
    alloc = GVMAllocator(6, 8, **kwargs)
    alloc.update_estimates(range(6), [0.125, 0.5, 1.0, 0.875, 0.0, 0.0625], [3.2, 1.5, 0.8, 2.0, 0.0, 4.1])
    return alloc


def test_before_any_estimate_every_prompt_gets_samples_per_prompt():
    alloc = GVMAllocator(5, 4)
    assert alloc.allocate([3, 1, 4]) == [4, 4, 4]
    assert alloc.metrics() == {}


def test_allocator_hand_example_and_zero_allocation():
    alloc = GVMAllocator(3, 4, alpha=0.0)
    alloc.update_estimates([0, 1, 2], [0.25, 1.0, 0.0], [1.0, 2.0, 3.0])
    assert alloc.n == [6, 6, 0]
    assert alloc.allocate([2, 0]) == [0, 6]  # prompt 2 (p = 0) is skipped this iteration
    assert alloc.allocate([2]) == [0]  # a batch of skipped prompts: nothing to generate
    assert alloc.metrics()["sampling/gvm_zero_frac"] == pytest.approx(1 / 3)


def test_allocations_sum_to_the_budget():
    alloc = _estimated()
    assert sum(alloc.allocate(range(6))) == 48
    alloc = _estimated(budget_per_prompt=5)
    assert sum(alloc.allocate(range(6))) == 30
    assert alloc.allocate(range(6))[4] == 0  # p = 0 and G = 0


def test_partial_estimates_keep_the_rest_fixed():
    alloc = GVMAllocator(4, 8, alpha=0.0)
    alloc.update_estimates([0, 2], [0.25, 1.0], [1.0, 2.0])  # budget 2 x 8 over the two estimated
    assert alloc.allocate([0, 1, 2, 3]) == [8, 8, 8, 8]  # 1/2 and 2/1: equal shares
    alloc.update_estimates([1], [0.0], [1.0])  # next iteration: prompt 1 too, budget 24
    got = alloc.allocate([0, 1, 2, 3])
    assert got == [12, 0, 12, 8] and alloc.iteration == 2


def test_all_zero_estimates_fall_back_to_an_even_split():
    alloc = GVMAllocator(3, 4, budget_per_prompt=6)
    alloc.update_estimates([0, 1, 2], [0.0, 0.0, 1.0], [1.0, 2.0, 0.0])
    assert alloc.allocate([0, 1, 2]) == [6, 6, 6]


def test_filters_in_the_allocator():
    alloc = _estimated(filter_threshold=0.9)
    assert alloc.allocate(range(6)) == [15, 4, 0, 4, 0, 25]
    alloc = _estimated(filter_insufficient=2.0)
    assert alloc.allocate(range(6)) == [0, 0, 0, 48, 0, 0]


def test_min_samples_removes_small_groups_and_keeps_the_budget():
    plain = _estimated().allocate(range(6))
    assert 1 in plain
    got = _estimated(min_samples=2).allocate(range(6))
    assert sum(got) == 48 and all(n == 0 or n >= 2 for n in got)


def test_align_pads_the_step_total():
    alloc = _estimated(align=8)
    got = alloc.allocate([0, 1, 2])  # 15 + 3 + 1 = 19 -> 24
    assert got == [17, 5, 2]
    assert alloc.allocate([4, 2]) == [3, 5]  # 0 + 1 -> 8: the skipped prompt is revived by the padding


def test_state_round_trip_continues_the_same_allocations():
    alloc = _estimated(min_samples=2)
    buf = io.BytesIO()
    torch.save(alloc.state_dict(), buf)
    buf.seek(0)
    other = GVMAllocator(6, 8, min_samples=2)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.state_dict() == alloc.state_dict()
    assert other.allocate([5, 0, 4]) == alloc.allocate([5, 0, 4])
    for a in (alloc, other):
        a.update_estimates([2, 4], [0.5, 0.25], [1.0, 1.0])
    assert other.state_dict() == alloc.state_dict() and other.iteration == 2
    with pytest.raises(ValueError):
        GVMAllocator(5, 8).load_state_dict(alloc.state_dict())


def test_bad_inputs_raise():
    alloc = GVMAllocator(3, 4)
    with pytest.raises(ValueError):
        alloc.update_estimates([0, 1], [0.5], [1.0, 1.0])
    with pytest.raises(ValueError):
        alloc.update_estimates([0], [1.5], [1.0])
    with pytest.raises(ValueError):
        alloc.update_estimates([0], [0.5], [-1.0])
    with pytest.raises(IndexError):
        alloc.update_estimates([3], [0.5], [1.0])
    with pytest.raises(ValueError):
        GVMAllocator(3, 4, align=0)
    with pytest.raises(ValueError):
        GVMAllocator(3, 4, alpha=-1.0)
