import pytest
import torch

from rlvr.advantage import group_relative_advantages
from rlvr.advantage.delta_l import DeltaL, delta_l_weights, paper_form_weights
from rlvr.config.load import plugin_kwargs_problems
from rlvr.learner.aggregation import delta_l, dr_grpo, seq_mean_token_sum_norm
from rlvr.registry import ADVANTAGE, AGGREGATION
from rlvr.types import AdvantageInput, LossNorm


def close(a, b, rtol=1e-5, atol=1e-6):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, rtol=rtol, atol=atol), (a, b)


def test_hand_computed_weights():
    lengths = torch.tensor([1, 2, 4])
    close(delta_l_weights(lengths, 1.0), [12 / 7, 6 / 7, 3 / 7])
    close(paper_form_weights(lengths, 1.0), [4 / 7, 2 / 7, 1 / 7])
    # alpha 0.5: L^-0.5 = [1, 0.7071, 0.5], sum 2.2071
    close(paper_form_weights(lengths, 0.5), torch.tensor([1, 2**-0.5, 0.5]) / (1.5 + 2**-0.5))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.75, 1.0])
def test_code_form_is_n_times_paper_form_and_scale_free(alpha):
    lengths = torch.randint(1, 500, (37,), generator=torch.Generator().manual_seed(0))
    w, x = delta_l_weights(lengths, alpha), paper_form_weights(lengths, alpha)
    close(w, 37 * x)
    close(x.sum(), 1.0)
    close(w.mean(), 1.0)
    close(delta_l_weights(lengths * 7, alpha), w)  # only length ratios matter
    if alpha > 0:  # shorter responses weigh more
        order = lengths.argsort()
        assert torch.all(w[order][1:] <= w[order][:-1] + 1e-6)


def test_alpha_zero_is_dr_grpo_uniform():
    lengths = torch.tensor([3, 900, 17, 1, 64])
    assert torch.equal(delta_l_weights(lengths, 0.0), torch.ones(5))
    close(paper_form_weights(lengths, 0.0), torch.full((5,), 0.2))
    # with unit weights the ΔL aggregation is Dr. GRPO's sum / (N * T)
    loss, mask = torch.randn(5, 8), (torch.arange(8) < torch.tensor([3, 8, 5, 1, 6]).unsqueeze(-1)).float()
    norm = LossNorm(float(mask.sum()), 5.0, 8)
    close(delta_l(loss, mask, norm), dr_grpo(loss, mask, norm))


def test_empty_response_is_masked_out_not_nan():
    w = delta_l_weights(torch.tensor([0, 2, 4]), 1.0)
    assert torch.isfinite(w).all() and w[0] == 0
    close(w, [0.0, 2.0, 1.0])  # (2/3)^-1 = 1.5, (4/3)^-1 = 0.75, sum 2.25 -> 3 * [., 2/3, 1/3]
    close(paper_form_weights(torch.tensor([0, 2, 4]), 1.0), [0.0, 2 / 3, 1 / 3])
    assert torch.equal(delta_l_weights(torch.zeros(3, dtype=torch.long), 1.0), torch.zeros(3))


def test_estimator_is_grpo_advantage_plus_weights():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5])
    g = torch.tensor([0, 0, 0, 1, 2])
    lengths = torch.tensor([10, 20, 40, 5, 7])
    out = DeltaL(alpha=1.0)(AdvantageInput(g, r, {}, lengths, list("aaabc"), 0))
    close(out.advantages, group_relative_advantages(r, g))  # verl singleton rule, as GRPO
    close(out.weights, delta_l_weights(lengths, 1.0))
    assert out.metrics["advantage/length_weight_max"] == pytest.approx(float(out.weights.max()))
    assert DeltaL(singleton="zero")(AdvantageInput(g, r, {}, lengths, list("aaabc"), 0)).advantages[3] == 0


def test_registered_and_kwargs_validated():
    assert ADVANTAGE.get("delta_l") is DeltaL
    assert AGGREGATION.get("delta_l") is delta_l
    assert AGGREGATION.get("seq_mean_token_sum_norm") is seq_mean_token_sum_norm
    assert plugin_kwargs_problems("advantage", DeltaL, {"alpha": 0.75}) == []
    assert plugin_kwargs_problems("advantage", DeltaL, {"alpha": 2.0})


def test_aggregation_docstring_examples():
    loss = torch.tensor([[1.0, 2.0], [3.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    norm = LossNorm(tokens=3.0, sequences=2.0, max_response_tokens=4)
    assert float(delta_l(loss, mask, norm)) == pytest.approx(0.75)
    assert float(seq_mean_token_sum_norm(loss, mask, norm)) == pytest.approx(1.5)


@pytest.mark.parametrize("agg", [delta_l, seq_mean_token_sum_norm])
@pytest.mark.parametrize("chunks", [[12], [5, 7], [1] * 12, [3, 3, 6]])
def test_aggregation_is_invariant_to_micro_batch_split(agg, chunks):
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 10, (12,), generator=gen)
    mask = (torch.arange(16) < lengths.unsqueeze(-1)).float()
    loss = torch.randn(12, 16, generator=gen, requires_grad=True)
    norm = LossNorm(tokens=float(mask.sum()), sequences=12.0, max_response_tokens=20)
    whole = agg(loss, mask, norm)
    (g_whole,) = torch.autograd.grad(whole, loss)
    parts, start = [], 0
    for size in chunks:
        # a micro-batch may be trimmed to its own widest row: the constant T must not change
        width = max(int(lengths[start:start + size].max()), 1)
        parts.append(agg(loss[start:start + size, :width], mask[start:start + size, :width], norm))
        start += size
    total = torch.stack(parts).sum()
    (g_split,) = torch.autograd.grad(total, loss)
    close(total, whole)
    close(g_split, g_whole)
