"""grpo.json: GRPO / Dr. GRPO advantages, loss aggregations, clipped surrogate, KL estimators.

Every case and mode the file holds is checked; mode names map to rlvr's aggregations (the verl
name with dashes, and `seq-mean-token-sum-norm(loss_scale_factor=F)` as a constant F).
"""

import re

import torch

from rlvr.advantage import GRPO, DrGRPO
from rlvr.learner.aggregation import (
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
)
from rlvr.learner.policy_loss import kl_estimate, kl_in_reward, ppo_clip
from rlvr.types import AdvantageInput, LossNorm
from tests.conformance.conftest import assert_close, load_vectors

AGG = {"token-mean": token_mean, "seq-mean-token-mean": seq_mean_token_mean,
       "seq-mean-token-sum": seq_mean_token_sum, "seq-mean-token-sum-norm": seq_mean_token_sum_norm}


def aggregate(mode: str, loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl's agg_loss(mode) with one micro-batch = the whole batch (T = the tensor width unless a
    loss_scale_factor is given)."""
    m = re.fullmatch(r"seq-mean-token-sum-norm\(loss_scale_factor=([0-9.]+)\)", mode)
    width = int(float(m.group(1))) if m else mask.shape[1]
    fn = seq_mean_token_sum_norm if m else AGG[mode]
    return fn(loss, mask, LossNorm(float(mask.sum()), float(mask.shape[0]), width))


def inputs():
    v = load_vectors("grpo.json")
    x = v["inputs"]
    ids = {u: i for i, u in enumerate(dict.fromkeys(x["uid"]))}
    return v, x, torch.tensor([ids[u] for u in x["uid"]]), torch.tensor(x["response_mask"])


def test_advantages_every_case():
    v, x, group, mask = inputs()
    for i, case in enumerate(v["outputs"]["grpo_advantage"]):
        est = (GRPO if case["norm_adv_by_std"] else DrGRPO)(epsilon=case["epsilon"])
        rewards = torch.tensor(case["rewards"], dtype=torch.float32)
        out = est(AdvantageInput(group, rewards, {}, mask.sum(-1), x["uid"], 0)).advantages
        assert_close(out, case["advantage_per_sequence"], f"grpo_advantage[{i}]")
        assert_close(out[:, None] * mask, case["advantage_token_matrix"], f"grpo_advantage[{i}].tokens")


def test_aggregations_every_mode():
    v, x, _, mask = inputs()
    loss = torch.tensor(x["loss_mat"])
    for mode, want in v["outputs"]["agg_loss"].items():
        assert_close(aggregate(mode, loss, mask), want, f"agg_loss[{mode}]")


def test_policy_loss_every_config_and_mode():
    v, x, _, mask = inputs()
    adv = torch.tensor(v["outputs"]["grpo_advantage"][0]["advantage_per_sequence"])
    logp, old = torch.tensor(x["log_prob"]), torch.tensor(x["old_log_prob"])
    tokens = mask.sum()
    for name, case in v["outputs"]["policy_loss"].items():
        loss, stats = ppo_clip(logp, old, adv, mask, clip_low=case["clip_ratio_low"], clip_high=case["clip_ratio_high"],
                               dual_clip=case["clip_ratio_c"])
        assert_close(loss, case["per_token_loss"], f"policy_loss[{name}].per_token_loss")
        for mode, res in case["results"].items():
            assert_close(aggregate(mode, loss, mask), res["pg_loss"], f"policy_loss[{name}][{mode}]")
            assert_close(stats["clip_frac"].sum() / tokens, res["actor/pg_clipfrac"], f"{name}.clipfrac")
            assert_close(stats["dual_clip_frac"].sum() / tokens, res["actor/pg_clipfrac_lower"], f"{name}.lower")
            assert_close(stats["ppo_kl"].sum() / tokens, res["actor/ppo_kl"], f"{name}.ppo_kl")


def test_kl_every_estimator_value_and_gradient():
    v, x, _, mask = inputs()
    for est, case in v["outputs"]["kl"].items():
        first = torch.tensor(x["old_log_prob"], requires_grad=True)
        value = kl_estimate(first, torch.tensor(x["ref_log_prob"]), est) * mask
        value.sum().backward()
        assert_close(value.detach(), case["value"], f"kl[{est}].value")
        assert_close(first.grad, case["grad_wrt_logprob"], f"kl[{est}].grad")


def test_kl_in_reward_and_in_loss():
    v, x, _, mask = inputs()
    old, ref = torch.tensor(x["old_log_prob"]), torch.tensor(x["ref_log_prob"])
    kr = v["outputs"]["kl_in_reward"]
    rewards = torch.tensor(x["rewards_binary"], dtype=torch.float32)
    lengths = mask.sum(-1).long()
    token_rewards = -kr["beta"] * kl_estimate(old, ref, kr["kl_penalty"]) * mask
    token_rewards[torch.arange(len(lengths)), lengths - 1] += rewards
    assert_close(token_rewards, kr["token_level_rewards"], "kl_in_reward.token_level_rewards")
    assert_close(kl_in_reward(rewards, old, ref, mask, kr["beta"]), torch.tensor(kr["token_level_rewards"]).sum(-1).tolist(),
                 "kl_in_reward.sequence")
    k3 = kl_estimate(old, ref, "k3") * mask
    for mode, want in v["outputs"]["kl_loss_k3"].items():
        assert_close(aggregate(mode, k3, mask), want, f"kl_loss_k3[{mode}]")
