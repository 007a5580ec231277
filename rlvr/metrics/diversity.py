"""How different a prompt's N responses are from one another, from their token ids alone.

MMR1's Variance-Aware Sampling (rlvr/sampling/vas.py) scores each prompt's text diversity (TDS)
with one of these; they follow the MMR1 reference code (spec algorithms.md §6.2) and are plain
functions of token-id lists, so any other caller can use them too:

    distinct_n          share of distinct n-grams, pooled over the responses      (higher: more diverse)
    self_bleu_123       mean BLEU of each response against the others             (higher: LESS diverse)
    edit_distance_mean  mean token Levenshtein distance over the pairs            (higher: more diverse)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

# NLTK's SmoothingFunction().method1 epsilon.
BLEU_SMOOTHING_EPS = 0.1


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(lists: Sequence[Sequence[int]], n: int = 3) -> float:
    """distinct-n: distinct n-grams over all n-grams, pooled over one prompt's N responses.

    MMR1 reference `distinct_3` TDS metric (spec §6.2). lists: N token lists -> float in [0, 1];
    0 when the lists hold no n-gram at all. Higher means more diverse.
    Example (n = 3): [[1, 2, 3, 4], [1, 2, 3], [7, 8]] -> 3-grams (1,2,3), (2,3,4), (1,2,3);
    2 distinct of 3 -> 0.6667.
    """
    grams = [g for tokens in lists for g in _ngrams(tokens, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _ngram_counts(tokens: Sequence[int]) -> list[Counter]:
    return [Counter(_ngrams(tokens, n)) for n in range(1, 4)]


def _bleu_123(hyp: list[Counter], hyp_len: int, refs: list[list[Counter]], ref_lens: list[int]) -> float:
    log_sum = 0.0
    for n in range(1, 4):
        matched = sum(min(c, max((r[n - 1].get(g, 0) for r in refs), default=0)) for g, c in hyp[n - 1].items())
        total = max(1, sum(hyp[n - 1].values()))
        if matched == 0 and n == 1:
            return 0.0  # no unigram in common: BLEU is 0 and smoothing does not apply
        p = matched / total if matched else BLEU_SMOOTHING_EPS / total
        log_sum += math.log(p) / 3.0
    closest = min(ref_lens, key=lambda r: (abs(r - hyp_len), r)) if ref_lens else 0
    if hyp_len > closest:
        bp = 1.0
    elif hyp_len == 0:
        bp = 0.0
    else:
        bp = math.exp(1.0 - closest / hyp_len)
    return bp * math.exp(log_sum)


def sentence_bleu_123(hypothesis: Sequence[int], references: Sequence[Sequence[int]]) -> float:
    """BLEU of one token list against references: uniform 1..3-gram weights, method1 smoothing.

    Papineni et al. 2002 as NLTK's `sentence_bleu(weights=(1/3, 1/3, 1/3),
    smoothing_function=SmoothingFunction().method1)` computes it (spec §6.2), re-derived here:
        BLEU = BP · exp(Σ_{n=1..3} ⅓ log p_n)
        p_n  = Σ_g min(count_hyp(g), max_ref count_ref(g)) / max(1, #n-grams of the hypothesis);
               an order with no match uses ε / that denominator (ε = 0.1);
               no unigram match at all -> BLEU = 0
        BP   = 1 if |hyp| > L_ref, 0 if |hyp| = 0, else exp(1 − L_ref / |hyp|), with L_ref the
               reference length closest to |hyp| (the shorter one on a tie).
    hypothesis: a list of ints, references: lists of ints -> float in [0, 1].
    Example: [1, 2, 3] vs [[1, 2, 4]] -> p1 = 2/3, p2 = 1/2, p3 = 0.1/1, BP = 1,
    BLEU = (2/3 · 1/2 · 0.1)^(1/3) = 0.3218; [1, 2] vs [[1, 2]] -> p3 = 0.1/1 -> 0.1^(1/3) = 0.4642.
    """
    return _bleu_123(_ngram_counts(hypothesis), len(hypothesis), [_ngram_counts(r) for r in references],
                     [len(r) for r in references])


def self_bleu_123(lists: Sequence[Sequence[int]]) -> float:
    """Self-BLEU: mean over i of sentence_bleu_123(response i, the other N − 1 responses).

    MMR1 reference `self_bleu_123` TDS metric (spec §6.2). lists: N token lists -> float in
    [0, 1]; 0 when N < 2. It is a SIMILARITY: higher means less diverse.
    Example: [[1, 2, 3], [1, 2, 4]] -> both BLEUs are 0.3218 -> 0.3218;
    [[5, 6, 7], [5, 6, 7], [5, 6, 7]] -> 1.0; [[1, 2], [3, 4], [5]] -> 0.0.
    """
    if len(lists) < 2:
        return 0.0
    counts = [_ngram_counts(t) for t in lists]
    lens = [len(t) for t in lists]
    total = 0.0
    for i in range(len(lists)):
        others = [j for j in range(len(lists)) if j != i]
        total += _bleu_123(counts[i], lens[i], [counts[j] for j in others], [lens[j] for j in others])
    return total / len(lists)


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    """Token-level Levenshtein distance (unit insert / delete / substitute).

    Bit-parallel over a's positions (Myers 1999, Hyyrö 2003 global variant), so a pair of
    L-token responses costs L big-integer steps instead of L² cells.
    Example: [1, 2, 3] vs [1, 2, 4] -> 1; [1, 2, 3] vs [1] -> 2; [] vs [4, 5] -> 2.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(a)
    if m == 0 or not b:
        return m
    mask = (1 << m) - 1
    top = 1 << (m - 1)
    peq: dict[int, int] = {}
    for i, tok in enumerate(a):
        peq[tok] = peq.get(tok, 0) | (1 << i)
    pv, mv, dist = mask, 0, m  # vertical deltas of column 0 are all +1 (D[i][0] = i)
    for tok in b:
        eq = peq.get(tok, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & mask
        mh = pv & xh
        if ph & top:
            dist += 1
        elif mh & top:
            dist -= 1
        ph = ((ph << 1) | 1) & mask  # row 0 grows by one per column (D[0][j] = j)
        mh = (mh << 1) & mask
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv
    return dist


def edit_distance_mean(lists: Sequence[Sequence[int]]) -> float:
    """Mean raw token edit distance over the unordered pairs of one prompt's N responses.

    MMR1 reference `edit_distance` TDS metric (spec §6.2): neither normalised by length nor
    squared (unlike the paper's App. A.3). lists: N token lists -> float >= 0; 0 when N < 2.
    Example: [[1, 2, 3], [1, 2, 4], [1]] -> pairs 1, 2, 2 -> 5/3 = 1.6667.
    """
    n = len(lists)
    if n < 2:
        return 0.0
    total = sum(levenshtein(lists[i], lists[j]) for i in range(n) for j in range(i + 1, n))
    return total / (n * (n - 1) / 2)


def pad_lists(lists: Sequence[Sequence[int]], pad_id: int, width: int) -> list[list[int]]:
    """Right-pad every token list with `pad_id` to `width`, as the reference's response tensor is.

    lists: N token lists, each at most `width` long -> N lists of exactly `width` tokens.
    The reference scores the padded tensor, so pad tokens enter its TDS metrics (spec §6.2).
    Example: [[1, 2], [3], []], pad 0, width 3 -> [[1, 2, 0], [3, 0, 0], [0, 0, 0]].
    """
    out = []
    for tokens in lists:
        if len(tokens) > width:
            raise ValueError(f"a response of {len(tokens)} tokens does not fit the padded width {width}")
        out.append(list(tokens) + [pad_id] * (width - len(tokens)))
    return out

