"""Groups of different sizes (GVM allocations) flow through every built-in estimator."""

import pytest
import torch

from rlvr.registry import ADVANTAGE
from rlvr.types import AdvantageInput

SIZES = [5, 1, 3, 2, 8]  # a singleton group included


def batch():
    g = torch.Generator().manual_seed(0)
    group = torch.cat([torch.full((n,), j) for j, n in enumerate(SIZES)])
    n = len(group)
    rewards = (torch.rand(n, generator=g) > 0.5).float()
    rewards[group == 3] = 1.0  # one zero-variance group
    return AdvantageInput(group, rewards, {"acc": rewards}, torch.randint(1, 9, (n,), generator=g),
                          [f"p#{int(j)}" for j in group], 1, strata=[int(x) % 2 for x in range(n)])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "bnpo", "stratified", "delta_l", "spo"])
def test_every_estimator_handles_groups_of_varying_size(name):
    inp = batch()
    out = ADVANTAGE.get(name)()(inp)
    assert out.advantages.shape == inp.rewards.shape
    assert torch.isfinite(out.advantages).all()
    if out.weights is not None:
        assert out.weights.shape == inp.rewards.shape and torch.isfinite(out.weights).all()
    if name != "spo":  # group-relative estimators: a zero-variance group carries no signal
        assert out.advantages[inp.group == 3].abs().max() == 0
    # permuting the samples permutes the advantages
    perm = torch.randperm(len(inp.group), generator=torch.Generator().manual_seed(1))
    shuffled = AdvantageInput(inp.group[perm], inp.rewards[perm], {k: v[perm] for k, v in inp.components.items()},
                              inp.lengths[perm], [inp.prompt_uids[i] for i in perm], 1,
                              strata=[inp.strata[i] for i in perm])
    torch.testing.assert_close(ADVANTAGE.get(name)()(shuffled).advantages, out.advantages[perm], rtol=1e-5, atol=1e-6)
