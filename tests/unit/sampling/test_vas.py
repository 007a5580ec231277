import io
import math
import random

import pytest
import torch

from rlvr.config.load import plugin_kwargs_problems
from rlvr.metrics.diversity import (
    distinct_n,
    edit_distance_mean,
    levenshtein,
    pad_lists,
    self_bleu_123,
    sentence_bleu_123,
)
from rlvr.sampling.vas import (
    ReferenceMixedOrder,
    VASSampler,
    interleave,
    minmax_weights,
    mixed_index_list,
    momentum_blend,
    ovs,
    vps_scores,
)


def close(a, b, tol=1e-9):
    assert len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b)), (a, b)


# ---- per-prompt metrics ---------------------------------------------------------------------


def test_ovs_hand_examples():
    assert ovs([True, False, True, False]) == 0.25
    assert ovs([False, False, False, True]) == 0.1875
    assert ovs([True, True, True]) == 0.0
    assert ovs([True]) == 0.0 and ovs([False]) == 0.0  # N = 1: no variance
    assert ovs([]) == 0.0


def test_distinct_n_hand_examples():
    assert distinct_n([[1, 2, 3, 4], [1, 2, 3], [7, 8]]) == pytest.approx(2 / 3)
    assert distinct_n([[5, 6, 7, 8]] * 4) == 0.25  # 3 distinct of 12
    assert distinct_n([[1, 2], [3]]) == 0.0  # no 3-gram at all
    assert distinct_n([[1, 2, 1, 2]], n=2) == pytest.approx(2 / 3)  # (1,2), (2,1), (1,2)
    assert distinct_n([]) == 0.0


def test_sentence_bleu_precisions_and_smoothing():
    # p1 = 2/3, p2 = 1/2, p3 has no match -> 0.1 / 1
    assert sentence_bleu_123([1, 2, 3], [[1, 2, 4]]) == pytest.approx((2 / 3 * 1 / 2 * 0.1) ** (1 / 3))
    # too short for a 3-gram: the empty order counts as 0.1 / max(1, 0)
    assert sentence_bleu_123([1, 2], [[1, 2]]) == pytest.approx(0.1 ** (1 / 3))
    # smoothing divides by the hypothesis' own n-gram count: p1 = 1/5, p2 = 0.1/4, p3 = 0.1/3
    assert sentence_bleu_123([1, 2, 3, 4, 5], [[1, 9, 9, 9, 9]]) == pytest.approx(
        (1 / 5 * 0.1 / 4 * 0.1 / 3) ** (1 / 3))
    # clipping: the hypothesis' three 7s match at most the reference's two
    assert sentence_bleu_123([7, 7, 7], [[7, 7, 8]]) == pytest.approx((2 / 3 * 1 / 2 * 0.1) ** (1 / 3))
    # max count over references, not the sum
    assert sentence_bleu_123([7, 7], [[7, 1], [1, 7]]) == pytest.approx((1 / 2 * 0.1 / 1 * 0.1) ** (1 / 3))


def test_sentence_bleu_zero_cases_and_brevity_penalty():
    assert sentence_bleu_123([1, 2, 3], [[4, 5, 6]]) == 0.0  # no unigram match: no smoothing
    assert sentence_bleu_123([], [[1, 2]]) == 0.0
    # shorter than the closest reference: BP = exp(1 - 4/3), all precisions 1
    assert sentence_bleu_123([1, 2, 3], [[1, 2, 3, 4]]) == pytest.approx(math.exp(1 - 4 / 3))
    # tie between reference lengths 2 and 4 for |hyp| = 3: the shorter wins, so BP = 1
    assert sentence_bleu_123([1, 2, 3], [[1, 2], [1, 2, 3, 4]]) == pytest.approx(1.0)
    # same length: BP = exp(0) = 1
    assert sentence_bleu_123([1, 2, 3], [[1, 2, 3]]) == pytest.approx(1.0)


def test_self_bleu_is_mean_over_hypotheses():
    assert self_bleu_123([[1, 2, 3], [1, 2, 4]]) == pytest.approx((1 / 30) ** (1 / 3))
    assert self_bleu_123([[5, 6, 7]] * 3) == pytest.approx(1.0)
    assert self_bleu_123([[1, 2], [3, 4], [5]]) == 0.0
    assert self_bleu_123([[1, 2, 3]]) == 0.0 and self_bleu_123([]) == 0.0  # N < 2
    lists = [[1, 2, 3, 4], [1, 2, 3], [2, 3, 4, 1, 9]]
    want = sum(sentence_bleu_123(h, [r for j, r in enumerate(lists) if j != i]) for i, h in enumerate(lists)) / 3
    assert self_bleu_123(lists) == pytest.approx(want)


def _dp_levenshtein(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_levenshtein_hand_examples_and_against_dp():
    assert levenshtein([1, 2, 3], [1, 2, 4]) == 1
    assert levenshtein([1, 2, 3], [1]) == 2
    assert levenshtein([], [4, 5]) == 2 and levenshtein([4, 5], []) == 2 and levenshtein([], []) == 0
    assert levenshtein([1, 2, 3, 4], [2, 3, 4, 1]) == 2
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randrange(4) for _ in range(rng.randrange(0, 90))]
        b = [rng.randrange(4) for _ in range(rng.randrange(0, 90))]
        assert levenshtein(a, b) == _dp_levenshtein(a, b), (a, b)


def test_edit_distance_mean_over_unordered_pairs():
    assert edit_distance_mean([[1, 2, 3], [1, 2, 4], [1]]) == pytest.approx(5 / 3)
    assert edit_distance_mean([[1, 2, 3]] * 4) == 0.0
    assert edit_distance_mean([[1, 2, 3]]) == 0.0  # N < 2


def test_padding_changes_the_metrics_as_in_the_reference():
    lists = [[1, 2], [3], []]
    assert pad_lists(lists, 0, 3) == [[1, 2, 0], [3, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError):
        pad_lists([[1, 2, 3]], 0, 2)
    # padded, the shared pad run makes the responses look alike
    a = [[1, 2, 3], [4, 5, 6, 7, 8]]
    assert self_bleu_123(a) == 0.0
    assert self_bleu_123(pad_lists(a, 0, 8)) > 0.0
    assert distinct_n(pad_lists(a, 0, 8)) < distinct_n(a)


# ---- scores, weights, momentum --------------------------------------------------------------


def test_vps_minmax_momentum_hand_examples():
    close(vps_scores({"ovs": [0, 0.25, 0.1875], "tds": [1, 0.95, 0.39]}, {"ovs": 0.8, "tds": 0.2}),
          [0.2, 0.39, 0.228])
    close(vps_scores({"ovs": [0, 0.25], "unused": [9, 9]}, {"ovs": 1.0}), [0, 0.25])
    with pytest.raises(KeyError):
        vps_scores({"ovs": [0.1]}, {"ovs": 1.0, "tds": 0.5})
    close(minmax_weights([0.0, 0.25, 0.1875]), [0.0, 0.25 / (0.25 + 1e-8), 0.1875 / (0.25 + 1e-8)])
    assert minmax_weights([0.3, 0.3, 0.3]) == [0.0, 0.0, 0.0]
    close(momentum_blend([0.2, 0.9, 0.5], [0.0, 1.0, 0.75], 0.5), [0.1, 0.95, 0.625])
    close(momentum_blend([0.2, 0.9], [0.0, 1.0], 0.0), [0.0, 1.0])


# ---- the mixed order -----------------------------------------------------------------------


def test_interleave():
    assert interleave([1, 2, 3], [9]) == [1, 9, 2, 3]
    assert interleave([1], [7, 8, 9]) == [1, 7, 8, 9]
    assert interleave([], []) == []


def test_mixed_order_docstring_example_and_draw_order():
    order = ReferenceMixedOrder(5, seed=0, mixture_ratio=0.5)
    # replay the draws by hand: randperm at construction, then multinomial + randperm per build
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(5, generator=g).tolist()
    assert order.perm == perm
    w = [0.0, 1.0, 1.0, 0.0, 2.0]
    drawn = torch.multinomial(torch.tensor(w, dtype=torch.float64), 5, replacement=True, generator=g)
    drawn = drawn[torch.randperm(5, generator=g)].tolist()
    got = order.build(w, 2)
    assert got == [drawn[0], perm[0], drawn[1], perm[1], perm[2]]
    assert order.position == 3
    # the docstring's example uses these very draws
    assert perm == [4, 0, 1, 3, 2] and drawn == [4, 4, 4, 2, 1] and got == [4, 4, 4, 0, 1]


def test_mixed_index_list_parts():
    perm = [3, 1, 4, 0, 2, 5]
    g = torch.Generator().manual_seed(1)
    w = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    # λ = 0: only the permutation, wrapping to 0 when a batch does not fit (no reshuffle)
    out, q = mixed_index_list(w, 4, 0.0, perm, 5, g)
    assert out == [3, 1, 4, 0, 2, 5] and q == 6
    out, q = mixed_index_list(w, 4, 0.0, perm, 1, g)
    assert out == [1, 4, 0, 2, 3, 1] and q == 2
    # λ = 1: only weighted draws, never a zero-weight prompt
    out, q = mixed_index_list(w, 4, 1.0, perm, 5, g)
    assert len(out) == 6 and set(out) <= {1, 3, 5} and q == 5
    # λ = 0.5, B = 4: positions 0, 2 of each full batch are weighted, 1, 3 walk perm from q = 2
    out, q = mixed_index_list(w, 4, 0.5, perm, 2, g)
    assert [out[1], out[3]] == [4, 0] and {out[0], out[2]} <= {1, 3, 5}
    assert out[5] == 2 and out[4] in {1, 3, 5} and q == 5  # short batch: 1 weighted + perm[4]


def test_rebuild_restarts_q_from_consumed_batches():
    n, b = 10, 4  # k = 2, u = 2; two full batches then a dropped short one
    order = ReferenceMixedOrder(n, seed=3, mixture_ratio=0.5)
    w = [1.0] * n
    first = order.next_batch(w, b) + order.next_batch(w, b)
    assert [first[1], first[3], first[5], first[7]] == order.perm[0:4]
    third = order.next_batch(w, b)  # the list ran out of full batches: rebuilt
    assert order.consumed_batches == 3
    assert [third[1], third[3]] == order.perm[4:6]  # q = 2 batches · 2 = 4
    order.invalidate()
    fourth = order.next_batch(w, b)  # rebuilt after a refresh: q = 3 · 2 = 6
    assert [fourth[1], fourth[3]] == order.perm[6:8]


def test_fewer_prompts_than_batch_and_changing_batch_size():
    order = ReferenceMixedOrder(3, seed=0)
    out = order.next_batch([1.0, 1.0, 1.0], 7)
    assert len(out) == 7 and set(out) <= {0, 1, 2}
    assert len(order.next_batch([1.0, 1.0, 1.0], 2)) == 2 and order.batch_size == 2


# ---- the sampler ---------------------------------------------------------------------------

CORRECT = [[True] * 4, [True, False, True, False], [False, False, False, True]]
TOKENS = [[[5, 6, 7, 8]] * 4, [[5, 6, 7], [11, 12, 13, 14], [5, 9, 7], [21, 22]],
          [[1, 2, 3, 4], [1, 2, 3], [4, 3, 2, 1], [1, 2, 3, 4, 5]]]


def test_uniform_before_first_rescore():
    s = VASSampler(6, seed=0, mixing_ratio=1.0)
    assert s.uniform_fallback and s.needs_refresh(1)
    drawn = [i for _ in range(200) for i in s.sample(6)]
    counts = [drawn.count(i) for i in range(6)]
    assert min(counts) > 150  # about 200 each; weighted half draws every prompt alike


def test_rescore_docstring_example_ovs_only():
    s = VASSampler(3, seed=0, alpha=1.0, diversity="none", mixing_ratio=1.0)
    m = s.rescore(CORRECT, TOKENS, pad_id=0, step=1)
    close(s.scores, [0.0, 0.25, 0.1875])
    close(s.weights, [0.0, 1.0, 0.75], tol=1e-7)
    assert m["sampling/vas_uniform_fallback"] == 0.0 and not s.uniform_fallback
    assert m["sampling/vas_zero_ovs_frac"] == pytest.approx(1 / 3)
    drawn = [i for _ in range(50) for i in s.sample(3)]
    assert 0 not in drawn and drawn.count(1) > drawn.count(2) > 0


def test_paper_and_reference_modes_use_self_bleu_differently():
    paper = VASSampler(3, seed=0, alpha=0.0, beta=1.0)
    paper.rescore(CORRECT, TOKENS, pad_id=0)
    close(paper.scores, [1.0 - self_bleu_123(t) for t in TOKENS])
    ref = VASSampler(3, seed=0, alpha=0.0, beta=1.0, padded_reference=True, max_new_tokens=6)
    ref.rescore(CORRECT, TOKENS, pad_id=0)
    close(ref.scores, [self_bleu_123(pad_lists(t, 0, 6)) for t in TOKENS])
    # without max_new_tokens the pass's longest response sets the width
    ref5 = VASSampler(3, seed=0, alpha=0.0, beta=1.0, padded_reference=True, diversity="distinct_3")
    ref5.rescore(CORRECT, TOKENS, pad_id=0)
    close(ref5.scores, [distinct_n(pad_lists(t, 0, 5)) for t in TOKENS])
    ed = VASSampler(3, seed=0, alpha=0.5, beta=0.5, diversity="edit_distance")
    ed.rescore(CORRECT, TOKENS, pad_id=0)
    close(ed.scores, [0.5 * ovs(c) + 0.5 * edit_distance_mean(t) for c, t in zip(CORRECT, TOKENS)])


def test_all_equal_vps_falls_back_to_uniform():
    s = VASSampler(3, seed=0, diversity="none", mixing_ratio=1.0)
    m = s.rescore([[True, False]] * 3, [[[1], [2]]] * 3, pad_id=0)
    assert s.weights == [0.0, 0.0, 0.0]
    assert m["sampling/vas_uniform_fallback"] == 1.0 and s.uniform_fallback
    drawn = [i for _ in range(100) for i in s.sample(3)]  # no error from a zero-sum draw
    assert set(drawn) == {0, 1, 2}


def test_momentum_blends_with_previous_weights():
    s = VASSampler(3, seed=0, alpha=1.0, diversity="none", momentum=0.5)
    s.rescore(CORRECT, TOKENS, pad_id=0)
    first = list(s.weights)  # the first rescore takes the new weights as they are
    close(first, minmax_weights([0.0, 0.25, 0.1875]))
    flipped = [[True] * 4, [True] * 4, [True, False, True, False]]
    s.rescore(flipped, TOKENS, pad_id=0)
    close(s.weights, momentum_blend(first, minmax_weights([0.0, 0.0, 0.25]), 0.5))


def test_needs_refresh_schedule_and_step_record():
    s = VASSampler(3, seed=0, refresh_every=4)
    assert s.needs_refresh(1)
    s.rescore(CORRECT, TOKENS, pad_id=0)  # step taken from the last needs_refresh call
    assert s.last_refresh_step == 1
    assert [s.needs_refresh(t) for t in range(2, 7)] == [False, False, False, True, True]
    s.rescore(CORRECT, TOKENS, pad_id=0, step=5)
    assert not s.needs_refresh(8) and s.needs_refresh(9)


def test_rescore_validates_shapes():
    s = VASSampler(3, seed=0)
    with pytest.raises(ValueError):
        s.rescore(CORRECT[:2], TOKENS[:2], pad_id=0)
    with pytest.raises(ValueError):
        s.rescore([[True], *CORRECT[1:]], TOKENS, pad_id=0)


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_state_dict_roundtrip_continues_the_same_sequence():
    n, b = 7, 3
    correct = [[bool((i * j) % 3) for j in range(4)] for i in range(n)]
    tokens = [[[i, j, i + j, 1] for j in range(4)] for i in range(n)]
    a = VASSampler(n, seed=11, momentum=0.3)
    for _ in range(2):
        a.sample(b)
    a.rescore(correct, tokens, pad_id=0, step=3)
    a.sample(b)
    saved = _roundtrip(a.state_dict())
    c = VASSampler(n, seed=999, momentum=0.3)  # a different seed: everything comes from the state
    c.load_state_dict(saved)
    assert c.weights == a.weights and c.last_refresh_step == 3
    for step in range(10):  # across rebuilds (epoch ends) and a rescore
        if step == 4:
            a.rescore(correct[::-1], tokens, pad_id=0, step=8)
            c.rescore(correct[::-1], tokens, pad_id=0, step=8)
        assert a.sample(b) == c.sample(b)
    # a state saved before the first rescore resumes uniform sampling the same way
    d, e = VASSampler(n, seed=5), VASSampler(n, seed=6)
    d.sample(b)
    e.load_state_dict(_roundtrip(d.state_dict()))
    assert e.uniform_fallback and [d.sample(b) for _ in range(5)] == [e.sample(b) for _ in range(5)]
    with pytest.raises(ValueError):
        VASSampler(n + 1, seed=0).load_state_dict(saved)


def test_constructor_kwargs_validate_from_annotations():
    assert plugin_kwargs_problems("sampling.sampler", VASSampler, {"mixing_ratio": 0.3, "diversity": "none"}) == []
    problems = plugin_kwargs_problems(
        "sampling.sampler", VASSampler, {"diversity": "bleu", "mixing_ratio": 1.5, "refresh_every": 0})
    assert len(problems) == 3 and all(p.startswith("sampling.sampler.") for p in problems)
    assert any("num_prompts" in p for p in plugin_kwargs_problems("sampling.sampler", VASSampler, {"num_prompts": 3}))
