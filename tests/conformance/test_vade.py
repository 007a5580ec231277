"""VADE primitives against vectors/vade.json (provisional, abstract-based: Beta-Bernoulli only).

Every prompt key, every decay factor. The Thompson draws are checked when the file names the
numpy seed it used (`default_rng(S)` in produced_by.rng).
"""

import re

import numpy as np
import pytest

from rlvr.sampling.vade import (
    VADESampler,
    decay_toward_prior,
    fast_update,
    ig_nondegenerate,
    ig_variance,
    slow_decayed,
    thompson_scores,
)
from tests.conformance.conftest import assert_close, load_vectors


def _setup(v):
    a0, b0 = v["inputs"]["prior"]
    keys = list(v["inputs"]["successes"])
    s = np.array([v["inputs"]["successes"][k] for k in keys], dtype=float)
    return a0, b0, keys, s, int(v["inputs"]["group_size"])


def test_posterior_update_every_prompt():
    v = load_vectors("vade.json")
    a0, b0, keys, s, G = _setup(v)
    post = v["outputs"]["posterior"]
    for rate in (1.0, 0.8, 0.0):  # from the prior, the fast decay has nothing to shrink
        a, b = fast_update(np.full(len(keys), a0), np.full(len(keys), b0), s, np.full(len(keys), G), a0, b0, rate)
        assert_close(a, [post["alpha"][k] for k in keys], f"posterior.alpha (fast_decay {rate})")
        assert_close(b, [post["beta"][k] for k in keys], f"posterior.beta (fast_decay {rate})")
    sampler = VADESampler(len(keys), 0, 1, G, prior_a=a0, prior_b=b0)
    sampler.update(1, list(range(len(keys))), s, [G] * len(keys))
    assert_close(sampler.a, [post["alpha"][k] for k in keys], "sampler.a")
    assert_close(sampler.b, [post["beta"][k] for k in keys], "sampler.b")


def test_thompson_draws():
    v = load_vectors("vade.json")
    seed = re.search(r"default_rng\((\d+)\)", str(v["produced_by"].get("rng", "")))
    if seed is None:
        pytest.skip("the vectors do not name their numpy seed")
    post, draws = v["outputs"]["posterior"], v["outputs"]["thompson_draws"]
    keys = list(draws)
    a = np.array([post["alpha"][k] for k in keys])
    b = np.array([post["beta"][k] for k in keys])
    p, _ = thompson_scores(np.random.default_rng(int(seed.group(1))), a, b, int(v["inputs"]["group_size"]))
    assert_close(p, [draws[k] for k in keys], "thompson_draws")


def test_information_gain_every_prompt():
    v = load_vectors("vade.json")
    G = int(v["inputs"]["group_size"])
    out = v["outputs"]
    for k, p in out["thompson_draws"].items():
        assert_close(ig_variance(p), out["ig_bernoulli_variance"][k], f"ig_bernoulli_variance.{k}")
        assert_close(ig_nondegenerate(p, G), out["ig_nondegenerate_group_prob"][k], f"ig_nondegenerate.{k}")
    keys = list(out["thompson_draws"])
    p = np.array([out["thompson_draws"][k] for k in keys])
    _, score = thompson_scores(_FixedDraws(p), p, p, G, "nondegenerate")
    assert_close(score, [out["ig_nondegenerate_group_prob"][k] for k in keys], "thompson_scores nondegenerate")
    _, score = thompson_scores(_FixedDraws(p), p, p, G, "variance")
    assert_close(score, [out["ig_bernoulli_variance"][k] for k in keys], "thompson_scores variance")


def test_decay_toward_prior_every_factor():
    v = load_vectors("vade.json")
    a0, b0 = v["inputs"]["prior"]
    post = v["outputs"]["posterior"]
    assert v["outputs"]["decay_toward_prior"]
    for gamma, by_key in v["outputs"]["decay_toward_prior"].items():
        keys = list(by_key)
        a = np.array([post["alpha"][k] for k in keys])
        b = np.array([post["beta"][k] for k in keys])
        want_a, want_b = [by_key[k][0] for k in keys], [by_key[k][1] for k in keys]
        assert_close(decay_toward_prior(a, a0, float(gamma)), want_a, f"decay[{gamma}].alpha")
        assert_close(decay_toward_prior(b, b0, float(gamma)), want_b, f"decay[{gamma}].beta")
        # the same shrink as one step of slow decay at rate gamma
        sa, sb = slow_decayed(a, b, np.zeros(len(keys), dtype=np.int64), 1, a0, b0, float(gamma))
        assert_close(sa, want_a, f"slow_decayed[{gamma}].alpha")
        assert_close(sb, want_b, f"slow_decayed[{gamma}].beta")


class _FixedDraws:
    """Stands in for a generator: 'draws' the given probabilities, to test the scoring alone."""

    def __init__(self, p):
        self.p = p

    def beta(self, a, b):
        return self.p
