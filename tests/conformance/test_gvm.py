"""GVM against vectors/gvm.json (RLHFlow/GVM reference code): every case; integer outputs exact."""

from rlvr.sampling.gvm import (
    GVMAllocator,
    align_chunk,
    allocation_ratios,
    filter_insufficient,
    filter_threshold,
    integerise,
    normalise,
    sample_ratios,
)
from tests.conformance.conftest import assert_close, load_vectors


def _case_args(v, case):
    prm = case["params"]
    return (v["inputs"]["accept_rate_p"], v["inputs"]["grad_norm_G"], prm["alpha"], prm["beta"], int(prm["budget_N"]),
            prm.get("filter_threshold", 0.0), prm.get("filter_insufficient", 0.0))


def test_closed_form_default_ratio():
    v = load_vectors("gvm.json")
    p, G = v["inputs"]["accept_rate_p"], v["inputs"]["grad_norm_G"]
    assert_close(sample_ratios(p, G), v["closed_form_ratio_default"], "closed_form_ratio_default")


def test_every_case_ratios_and_sizes():
    v = load_vectors("gvm.json")
    assert v["cases"]
    for name, case in v["cases"].items():
        p, G, alpha, beta, budget, threshold, insufficient = _case_args(v, case)
        raw = sample_ratios(p, G, alpha, beta)
        assert_close(raw, case["raw_ratio_before_filters"], f"{name}.raw_ratio_before_filters")
        chained = normalise(filter_insufficient(filter_threshold(raw, p, threshold), p, budget, insufficient))
        after = allocation_ratios(p, G, budget, alpha=alpha, beta=beta, threshold=threshold, min_expected=insufficient)
        assert_close(chained, case["ratio_after_filters"], f"{name}.ratio_after_filters (chained)")
        assert_close(after, case["ratio_after_filters"], f"{name}.ratio_after_filters")
        sizes = integerise(after, budget)
        assert sizes == case["sample_sizes"], f"{name}.sample_sizes: {sizes} != {case['sample_sizes']}"
        assert sum(sizes) == budget


def test_every_case_through_the_allocator():
    v = load_vectors("gvm.json")
    for name, case in v["cases"].items():
        p, G, alpha, beta, budget, threshold, insufficient = _case_args(v, case)
        if budget % len(p):  # the allocator's budget is a whole number of samples per prompt
            continue
        alloc = GVMAllocator(len(p), 8, alpha=alpha, beta=beta, filter_threshold=threshold,
                             filter_insufficient=insufficient, budget_per_prompt=budget // len(p))
        assert alloc.allocate(list(range(len(p)))) == [8] * len(p)
        alloc.update_estimates(list(range(len(p))), p, G)
        got = alloc.allocate(list(range(len(p))))
        assert got == case["sample_sizes"], f"{name}: allocator {got} != {case['sample_sizes']}"


def test_every_align_chunk_pair():
    block = load_vectors("gvm.json")["align_chunk"]
    g = block["n_gpus"]
    pairs = 0
    for key in block:
        if not key.startswith("in"):
            continue
        suffix = key[2:].lstrip("_")
        want = block["out_" + suffix if suffix else "out"]
        got = align_chunk(block[key], g)
        assert got == want, f"align_chunk.{key}: {got} != {want}"
        assert sum(got) % g == 0
        pairs += 1
    assert pairs
