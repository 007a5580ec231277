"""VAS (MMR1) against vas.json: every prompt, metric, padding variant, VPS config, momentum and
the seeded mixed sampler in the file; nothing here names a case or a number."""

from rlvr.metrics.diversity import pad_lists
from rlvr.sampling.vas import (
    TDS_METRICS,
    ReferenceMixedOrder,
    VASSampler,
    minmax_weights,
    momentum_blend,
    ovs,
    vps_scores,
)
from tests.conformance.conftest import assert_close, load_vectors

# per_prompt_metrics variants: does the variant pad the responses first?
VARIANT_PADS = {"unpadded": False, "padded_as_in_reference": True}
# reference metric name -> VASSampler's `diversity`
DIVERSITY = {"self_bleu_123": "self_bleu", "distinct_3": "distinct_3", "edit_distance": "edit_distance"}
OVS_NAME = "learnability"


def _inputs(v):
    inp = v["inputs"]
    prompts = list(inp["responses"])
    tokens = [inp["responses"][q] for q in prompts]
    correct = [[bool(x) for x in inp["accuracy"][q]] for q in prompts]
    return prompts, tokens, correct, inp


def _metric_columns(v, variant):
    """name -> per-prompt values from our metric functions, for one padding variant."""
    prompts, tokens, correct, inp = _inputs(v)
    if VARIANT_PADS[variant]:
        tokens = [pad_lists(t, inp["pad_id"], inp["padded_length"]) for t in tokens]
    cols = {name: [fn(t) for t in tokens] for name, fn in TDS_METRICS.items()}
    cols[OVS_NAME] = [ovs(c) for c in correct]
    return cols


def test_learnability_is_ovs():
    v = load_vectors("vas.json")
    _, _, correct, _ = _inputs(v)
    assert_close([ovs(c) for c in correct], v["outputs"]["learnability_OVS"], "learnability_OVS")


def test_per_prompt_metrics_padded_and_unpadded():
    v = load_vectors("vas.json")
    prompts, tokens, _, inp = _inputs(v)
    checked = 0
    for variant, by_prompt in v["outputs"]["per_prompt_metrics"].items():
        assert variant in VARIANT_PADS, f"unknown per_prompt_metrics variant {variant!r}"
        for q, expected in by_prompt.items():
            lists = tokens[prompts.index(q)]
            if VARIANT_PADS[variant]:
                lists = pad_lists(lists, inp["pad_id"], inp["padded_length"])
            for name, want in expected.items():
                assert_close(TDS_METRICS[name](lists), want, f"{variant}.{q}.{name}")
                checked += 1
    assert checked > 0


def test_vps_configs_combined_and_minmax():
    v = load_vectors("vas.json")
    prompts, tokens, correct, inp = _inputs(v)
    padded_cols = _metric_columns(v, "padded_as_in_reference")
    for name, cfg in v["outputs"]["vps_configs"].items():
        assert_close(minmax_weights(cfg["combined"]), cfg["sampling_weight_after_minmax"], f"{name}.minmax(given)")
        if "metrics" in cfg:
            # as implemented by the reference: OVS + TDS metrics of the padded responses
            weights = dict(zip(cfg["metrics"], cfg["weights"], strict=True))
            combined = vps_scores(padded_cols, weights)
            assert_close(combined, cfg["combined"], f"{name}.combined")
            assert_close(minmax_weights(combined), cfg["sampling_weight_after_minmax"], f"{name}.minmax")
            tds = [m for m in cfg["metrics"] if m != OVS_NAME]
            if len(tds) > 1:
                continue  # the sampler combines OVS with one TDS metric; vps_scores covered it
            sampler = VASSampler(
                len(prompts), 0, padded_reference=True, max_new_tokens=inp["padded_length"],
                alpha=weights.get(OVS_NAME, 0.0), beta=weights[tds[0]] if tds else 0.0,
                diversity=DIVERSITY[tds[0]] if tds else "none",
            )
        else:
            # the from-paper reading: the sampler's defaults, 0.8·OVS + 0.2·(1 − unpadded self-BLEU)
            sampler = VASSampler(len(prompts), 0)
        sampler.rescore(correct, tokens, inp["pad_id"])
        assert_close(sampler.scores, cfg["combined"], f"{name}.sampler.scores")
        assert_close(sampler.weights, cfg["sampling_weight_after_minmax"], f"{name}.sampler.weights")


def test_momentum_blend():
    m = load_vectors("vas.json")["outputs"]["momentum_blend"]
    assert m["by_momentum"]
    for mu, want in m["by_momentum"].items():
        assert_close(momentum_blend(m["old_weights"], m["new_weights"], float(mu)), want, f"momentum[{mu}]")


def test_mixed_sampler_indices_exact():
    m = load_vectors("vas.json")["outputs"]["mixed_sampler"]
    n, b, lam = m["dataset_size"], m["batch_size"], m["mixture_ratio"]
    assert len(m["weights"]) == n
    assert int(b * lam) == m["n_weighted_per_batch"] and b - int(b * lam) == m["n_random_per_batch"]
    order = ReferenceMixedOrder(n, m["generator_seed"], lam)
    assert order.build(m["weights"], b) == m["indices"]


def test_sampler_serves_the_reference_order():
    m = load_vectors("vas.json")["outputs"]["mixed_sampler"]
    n, b = m["dataset_size"], m["batch_size"]
    sampler = VASSampler(n, m["generator_seed"], mixing_ratio=m["mixture_ratio"])
    state = sampler.state_dict()
    state["weights"] = list(m["weights"])
    sampler.load_state_dict(state)
    served = [i for _ in range(n // b) for i in sampler.sample(b)]
    # the full batches of the list; its short tail (n mod B) is dropped, like a drop-last loader
    assert served == m["indices"][: (n // b) * b]
