import pytest
import torch

from rlvr.learner.aggregation import dr_grpo, seq_mean_token_mean, seq_mean_token_sum, token_mean
from rlvr.learner.policy_loss import kl_estimate, kl_in_reward, ppo_clip
from rlvr.types import LossNorm

MODES = {"token-mean": token_mean, "seq-mean-token-mean": seq_mean_token_mean, "seq-mean-token-sum": seq_mean_token_sum}


def close(a, b, rtol=1e-5, atol=1e-6):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True), (a, b)


def full_norm(mask, max_len=6):
    return LossNorm(tokens=float(mask.sum()), sequences=float(mask.shape[0]), max_response_tokens=max_len)


def test_aggregation_docstring_examples():
    loss = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    norm = LossNorm(3.0, 2.0, 4)
    assert token_mean(loss, mask, norm) == 2.0
    assert seq_mean_token_mean(loss, mask, norm) == 2.25
    assert seq_mean_token_sum(loss, mask, norm) == 3.0
    assert dr_grpo(loss, mask, norm) == 0.75


@pytest.mark.parametrize("agg", [token_mean, seq_mean_token_mean, seq_mean_token_sum, dr_grpo])
def test_aggregation_is_invariant_to_micro_batch_split(agg):
    torch.manual_seed(0)
    loss = torch.randn(10, 7)
    lengths = torch.randint(1, 8, (10,))
    mask = (torch.arange(7) < lengths[:, None]).float()
    norm = full_norm(mask, 7)
    whole = agg(loss, mask, norm)
    for chunks in ([3, 3, 4], [1] * 10, [7, 3]):
        parts = sum(agg(lo, m, norm) for lo, m in zip(loss.split(chunks), mask.split(chunks)))
        close(parts, whole)


def test_aggregations_match_reference(vectors):
    v = vectors("grpo.json")
    x = v["inputs"]
    loss, mask = torch.tensor(x["loss_mat"]), torch.tensor(x["response_mask"])
    for mode, fn in MODES.items():
        close(fn(loss, mask, full_norm(mask)), v["outputs"]["agg_loss"][mode])


def test_ppo_clip_matches_reference(vectors):
    v = vectors("grpo.json")
    x = v["inputs"]
    mask = torch.tensor(x["response_mask"])
    adv = torch.tensor(v["outputs"]["grpo_advantage"][0]["advantage_per_sequence"])
    logp, old = torch.tensor(x["log_prob"]), torch.tensor(x["old_log_prob"])
    for case in v["outputs"]["policy_loss"].values():
        loss, stats = ppo_clip(logp, old, adv, mask, clip_low=case["clip_ratio_low"],
                               clip_high=case["clip_ratio_high"], dual_clip=case["clip_ratio_c"])
        close(loss, case["per_token_loss"])
        tokens = mask.sum()
        for mode in ("token-mean", "seq-mean-token-mean"):
            res = case["results"][mode]
            close(MODES[mode](loss, mask, full_norm(mask)), res["pg_loss"])
            close(stats["clip_frac"].sum() / tokens, res["actor/pg_clipfrac"])
            close(stats["dual_clip_frac"].sum() / tokens, res["actor/pg_clipfrac_lower"])
            close(stats["ppo_kl"].sum() / tokens, res["actor/ppo_kl"])


def test_ppo_clip_docstring_examples():
    m = torch.ones(1, 1)
    loss, stats = ppo_clip(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1), torch.tensor([1.0]), m,
                           clip_low=0.2, clip_high=0.28)
    close(loss, [[-1.28]])
    assert stats["clip_frac"].item() == 1.0
    loss, _ = ppo_clip(torch.log(torch.tensor([[5.0]])), torch.zeros(1, 1), torch.tensor([-1.0]), m, dual_clip=3.0)
    close(loss, [[3.0]])


def test_ratio_one_gives_reinforce_gradient():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = ppo_clip(logp, logp.detach(), torch.tensor([0.5]), torch.ones(1, 2))
    loss.sum().backward()
    close(logp.grad, [[-0.5, -0.5]])


@pytest.mark.parametrize("est", ["k1", "abs", "k2", "k3", "k3+"])
def test_kl_values_and_gradients_match_reference(vectors, est):
    v = vectors("grpo.json")
    x = v["inputs"]
    mask = torch.tensor(x["response_mask"])
    first = torch.tensor(x["old_log_prob"], requires_grad=True)
    value = kl_estimate(first, torch.tensor(x["ref_log_prob"]), est) * mask
    value.sum().backward()
    close(value.detach(), v["outputs"]["kl"][est]["value"])
    close(first.grad, v["outputs"]["kl"][est]["grad_wrt_logprob"])


def test_kl_hand_values():
    d = torch.tensor([0.5])
    close(kl_estimate(d, torch.zeros(1), "k1"), [0.5])
    close(kl_estimate(d, torch.zeros(1), "k2"), [0.125])
    close(kl_estimate(d, torch.zeros(1), "k3"), [torch.exp(torch.tensor(-0.5)) - 0.5])
    close(kl_estimate(-d, torch.zeros(1), "abs"), [0.5])


def test_kl_in_reward_and_in_loss_match_reference(vectors):
    v = vectors("grpo.json")
    x = v["inputs"]
    mask = torch.tensor(x["response_mask"])
    old, ref = torch.tensor(x["old_log_prob"]), torch.tensor(x["ref_log_prob"])
    beta = v["outputs"]["kl_in_reward"]["beta"]
    shaped = kl_in_reward(torch.tensor(x["rewards_binary"], dtype=torch.float32), old, ref, mask, beta)
    close(shaped, torch.tensor(v["outputs"]["kl_in_reward"]["token_level_rewards"]).sum(-1), rtol=1e-5, atol=1e-5)
    k3 = kl_estimate(old, ref, "k3") * mask
    for mode, want in v["outputs"]["kl_loss_k3"].items():
        close(MODES[mode](k3, mask, full_norm(mask)), want)


def test_kl_docstring_example_in_reward():
    r = kl_in_reward(torch.tensor([1.0]), torch.tensor([[0.1, 0.3]]), torch.zeros(1, 2), torch.ones(1, 2), 0.5)
    close(r, [0.8])
