import math

import torch

from rlvr.advantage.nonfinite import zero_nonfinite as _zero_nonfinite
from rlvr.types import AdvantageOutput


def test_nonfinite_advantages_and_weights_become_zero_and_are_counted():
    out = AdvantageOutput(torch.tensor([1.0, float("nan"), 2.0, float("inf")]), torch.tensor([1.0, 1.0, float("nan"), 1.0]))
    frac = _zero_nonfinite(out)
    assert frac == 0.75
    assert out.advantages.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert out.weights.tolist() == [1.0, 0.0, 0.0, 0.0]
    clean = AdvantageOutput(torch.tensor([0.5, -0.5]))
    assert _zero_nonfinite(clean) == 0.0 and clean.advantages.tolist() == [0.5, -0.5]
    assert all(math.isfinite(x) for x in clean.advantages.tolist())
