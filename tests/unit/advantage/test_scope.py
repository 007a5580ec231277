"""What an estimator's advantages wait for (its scope), and so when a run computes them."""

import pytest
import torch

from rlvr.advantage.filters import select_groups
from rlvr.config import apply_overrides, validate
from rlvr.registry import ADVANTAGE
from rlvr.run.setup import advantage_timing
from rlvr.types import AdvantageOutput, Rollouts, ScoredRollouts, advantage_scope

BASE = {"model": {"path": "m"}, "data": {"train": {"path": "synthetic:succ"}},
        "reward": {"functions": [{"name": "exact"}]}, "eval": {"at_start": False}}


@pytest.mark.parametrize("name,kwargs,scope", [
    ("grpo", {}, "group"), ("dr_grpo", {}, "group"), ("rloo", {}, "group"),
    ("stratified", {}, "group"),  # strata inside each prompt's group
    ("stratified", {"batch_level": True}, "batch"),  # strata pooled across the step's prompts
    ("bnpo", {}, "batch"),  # a Beta fitted to the batch's group means
    ("delta_l", {}, "batch"),  # length weights normalised over the batch
])
def test_builtin_scopes(name, kwargs, scope):
    assert advantage_scope(ADVANTAGE.get(name)(**kwargs)) == scope


def test_a_user_estimator_without_a_scope_waits_for_the_batch_and_a_bad_one_is_named():
    class Mine:
        def __call__(self, inp):
            return AdvantageOutput(inp.rewards)

    assert advantage_scope(Mine()) == "batch"
    Mine.scope = "prompt"
    with pytest.raises(ValueError, match="advantage estimator Mine: scope must be 'group' or 'batch', got 'prompt'"):
        advantage_scope(Mine())


@pytest.mark.parametrize("overrides,name,timing", [
    (["rollout.mode=disaggregated"], "grpo", "produced"),
    (["rollout.mode=disaggregated", "advantage={name: delta_l}", "loss.aggregation={name: delta_l}"], "delta_l", "step"),
    (["rollout.mode=disaggregated", "loss.kl.coef=0.1", "loss.kl.where=reward"], "grpo", "step"),
    (["rollout.mode=disaggregated", "loss.kl.coef=0.1", "loss.kl.where=loss"], "grpo", "produced"),
    ([], "grpo", "step"),  # colocated: the step generates, scores and estimates in turn anyway
])
def test_when_advantages_are_computed(overrides, name, timing):
    cfg = validate(apply_overrides(BASE, overrides))
    assert advantage_timing(cfg, ADVANTAGE.get(name)()) == timing


def test_selecting_whole_groups_keeps_their_advantages():
    ro = Rollouts(prompts=[None, None, None], group=torch.tensor([0, 0, 1, 2, 2]), response_ids=torch.zeros(5, 2),
                  response_mask=torch.ones(5, 2), rollout_logprobs=torch.zeros(5, 2), texts=list("abcde"),
                  finish_reason=["stop"] * 5)
    est = AdvantageOutput(torch.tensor([1.0, -1.0, 0.0, 2.0, -2.0]), torch.tensor([1.0, 1.0, 0.5, 2.0, 2.0]), {"m": 1.0})
    scored = ScoredRollouts(ro, torch.zeros(5), {}, torch.zeros(5, dtype=torch.bool), {}, est)
    sub = select_groups(scored, [2, 0])
    assert sub.estimated.advantages.tolist() == [2.0, -2.0, 1.0, -1.0]
    assert sub.estimated.weights.tolist() == [2.0, 2.0, 1.0, 1.0] and sub.estimated.metrics == {"m": 1.0}
    assert select_groups(ScoredRollouts(ro, torch.zeros(5), {}, torch.zeros(5, dtype=torch.bool)), [1]).estimated \
        is None
