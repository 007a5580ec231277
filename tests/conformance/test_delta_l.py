"""ΔL Normalization against vectors/delta_l_norm.json: every alpha and every baseline mode.

Each loss is built the way the learner builds it: per-token loss from `ppo_clip`, aggregated
over the whole batch with LossNorm(tokens, sequences=B, max_response_tokens=T).
"""

import pytest
import torch

from rlvr.advantage import GRPO, DrGRPO
from rlvr.advantage.delta_l import DeltaL, delta_l_weights, paper_form_weights
from rlvr.learner.aggregation import delta_l
from rlvr.learner.policy_loss import ppo_clip
from rlvr.registry import AGGREGATION
from rlvr.types import AdvantageInput, LossNorm
from tests.conformance.conftest import assert_close, load_vectors

# the reference's dual-clip constant (verl default); README: it never binds on the vector inputs
DUAL_CLIP = 3.0


@pytest.fixture(scope="module")
def v():
    return load_vectors("delta_l_norm.json")


def _setup(v):
    inp = v["inputs"]
    uids = inp["uid"]
    group = torch.tensor([sorted(set(uids)).index(u) for u in uids])
    mask = torch.tensor(inp["response_mask"], dtype=torch.float32)
    lengths = torch.tensor(inp["response_lengths"])
    assert torch.equal(mask.sum(-1).long(), lengths)
    adv_in = AdvantageInput(group, torch.tensor(inp["rewards"], dtype=torch.float32), {}, lengths, uids, 0)
    norm = LossNorm(tokens=float(mask.sum()), sequences=float(mask.shape[0]),
                    max_response_tokens=int(inp["max_response_length"]))
    return inp, adv_in, mask, norm


def _loss_and_grad(agg, logp, old, adv, mask, norm, **clip):
    """Aggregated clipped loss, d loss / d logp [B, T], and the clip-fraction token mean."""
    logp = logp.clone().requires_grad_(True)
    tok, stats = ppo_clip(logp, old, adv, mask, **clip)
    loss = agg(tok, mask, norm)
    loss.backward()
    return loss.detach(), logp.grad, float(stats["clip_frac"].sum() / mask.sum())


def _per_sequence_coeff(grad, mask):
    """The gradient at each row's first token; every valid token of a row must share it, padding 0."""
    coeff = grad[:, 0]
    torch.testing.assert_close(grad, coeff.unsqueeze(-1) * mask, rtol=1e-6, atol=1e-9)
    return coeff


def test_every_alpha(v):
    inp, adv_in, mask, norm = _setup(v)
    old = torch.tensor(inp["old_log_prob"], dtype=torch.float32)
    off = torch.tensor(inp["log_prob_off_policy"], dtype=torch.float32)
    clip = dict(clip_low=inp["clip_ratio_low"], clip_high=inp["clip_ratio_high"], dual_clip=DUAL_CLIP)
    cases = v["outputs"]["delta_l"]
    assert cases
    for key, exp in cases.items():
        alpha = float(key)
        where = f"delta_l[{key}]"
        assert_close(delta_l_weights(adv_in.lengths, alpha), exp["length_weight_code"], f"{where}.w")
        assert_close(paper_form_weights(adv_in.lengths, alpha), exp["paper_form_weight_x_i"], f"{where}.x")
        out = DeltaL(alpha=alpha, epsilon=1e-6)(adv_in)
        assert_close(out.weights, exp["length_weight_code"], f"{where}.estimator_weights")
        adv = out.advantages * out.weights  # what the learner feeds the policy loss
        assert_close(adv, exp["advantage_per_sequence"], f"{where}.advantage")

        loss, grad, _ = _loss_and_grad(delta_l, old, old, adv, mask, norm, **clip)
        assert_close(loss, exp["pg_loss_on_policy"], f"{where}.pg_loss_on_policy")
        assert_close(_per_sequence_coeff(grad, mask), exp["per_sequence_grad_coeff"], f"{where}.coeff")
        assert_close(grad[0], exp["grad_wrt_logprob_row0"], f"{where}.grad_row0")
        # the paper's form: coefficient = -A_i x_i / T when one mini-batch holds the whole batch
        x = paper_form_weights(adv_in.lengths, alpha)
        assert_close(-out.advantages * x / norm.max_response_tokens, exp["per_sequence_grad_coeff"], f"{where}.paper")

        loss, _, clipfrac = _loss_and_grad(delta_l, off, old, adv, mask, norm, **clip)
        assert_close(loss, exp["pg_loss_off_policy"], f"{where}.pg_loss_off_policy")
        assert_close(clipfrac, exp["pg_clipfrac"], f"{where}.pg_clipfrac")


def test_every_baseline(v):
    inp, adv_in, mask, norm = _setup(v)
    old = torch.tensor(inp["old_log_prob"], dtype=torch.float32)
    baselines = v["outputs"]["baselines"]
    assert baselines
    for mode, exp in baselines.items():
        # "token-mean" -> token_mean, ..., "dr_grpo(use_dr_grpo: ...)" -> dr_grpo (A = r - mean)
        name = mode.split("(")[0].strip().replace("-", "_")
        agg = AGGREGATION.get(name)
        est = DrGRPO() if name == "dr_grpo" else GRPO(epsilon=1e-6)
        adv = est(adv_in).advantages
        if "advantage_per_sequence" in exp:
            assert_close(adv, exp["advantage_per_sequence"], f"{mode}.advantage")
        loss, grad, _ = _loss_and_grad(agg, old, old, adv, mask, norm)
        assert_close(loss, exp["pg_loss_on_policy"], f"{mode}.pg_loss_on_policy")
        assert_close(_per_sequence_coeff(grad, mask), exp["per_sequence_grad_coeff"], f"{mode}.coeff")
