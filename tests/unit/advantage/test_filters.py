import torch

from rlvr.advantage.filters import concat_scored, informative_groups, select_groups
from rlvr.types import Prompt, Rollouts, ScoredRollouts


def scored(rewards, group, width=3, n_prompts=None):
    n = len(rewards)
    prompts = [Prompt(f"p#{j}", "", [1], "0", {}) for j in range(n_prompts or max(group) + 1)]
    lengths = torch.arange(n) % width + 1
    mask = (torch.arange(width) < lengths[:, None]).float()
    ro = Rollouts(prompts, torch.tensor(group), torch.arange(n * width).view(n, width), mask,
                  -torch.ones(n, width) * mask, [f"t{i}" for i in range(n)], ["stop"] * n)
    r = torch.tensor(rewards, dtype=torch.float32)
    return ScoredRollouts(ro, r, {"x": r * 2}, r > 0.5)


def test_informative_groups_docstring_example():
    s = scored([1, 0, 1, 1, 0], [0, 0, 1, 1, 2])
    assert informative_groups(s).tolist() == [True, False, True]


def test_select_groups_renumbers_and_keeps_rows_aligned():
    s = scored([1, 0, 1, 1, 0, 1], [0, 0, 1, 1, 2, 2])
    sub = select_groups(s, [2, 0])
    assert [p.uid for p in sub.rollouts.prompts] == ["p#2", "p#0"]
    assert sub.rollouts.group.tolist() == [0, 0, 1, 1]
    assert sub.rollouts.texts == ["t4", "t5", "t0", "t1"]
    assert sub.rewards.tolist() == [0, 1, 1, 0] and sub.components["x"].tolist() == [0, 2, 2, 0]
    assert torch.equal(sub.rollouts.response_ids[0], s.rollouts.response_ids[4])


def test_concat_pads_to_the_wider_batch():
    a, b = scored([1, 0], [0, 0], width=2), scored([0, 1, 1], [0, 1, 1], width=4)
    c = concat_scored(a, b, pad_id=-7)
    assert c.rollouts.group.tolist() == [0, 0, 1, 2, 2]
    assert c.rollouts.response_ids.shape == (5, 4)
    assert c.rollouts.response_ids[0, 2:].tolist() == [-7, -7]
    assert c.rollouts.response_mask[:2, 2:].sum() == 0
    assert torch.equal(c.rollouts.lengths, torch.cat([a.rollouts.lengths, b.rollouts.lengths]))
    assert len(c.rollouts.prompts) == 3 and c.rewards.tolist() == [1, 0, 0, 1, 1]
