"""masked_mean and tensor_stats on hand-computed numbers."""

import math

import pytest
import torch

from rlvr.metrics.stats import masked_mean, tensor_stats


def test_masked_mean_all_and_per_row() -> None:
    x = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    assert masked_mean(x, mask, dim=-1).tolist() == pytest.approx([1.5, 4.0])


def test_masked_mean_empty_mask_is_zero_not_nan() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert masked_mean(x, torch.zeros_like(x)).item() == 0.0
    assert masked_mean(x, mask, dim=1).tolist() == [0.0, 3.0]


def test_masked_mean_weights() -> None:
    x = torch.tensor([1.0, 3.0])
    assert masked_mean(x, torch.tensor([0.25, 0.75])).item() == pytest.approx(2.5)


def test_tensor_stats_values() -> None:
    out = tensor_stats("rollout/len", torch.tensor([2, 4, 6]))
    assert out == pytest.approx(
        {
            "rollout/len/mean": 4.0,
            "rollout/len/std": math.sqrt(8 / 3),
            "rollout/len/min": 2.0,
            "rollout/len/max": 6.0,
        }
    )
    assert all(type(v) is float for v in out.values())


def test_tensor_stats_single_and_empty() -> None:
    assert tensor_stats("a", torch.tensor([[5.0]])) == {
        "a/mean": 5.0,
        "a/std": 0.0,
        "a/min": 5.0,
        "a/max": 5.0,
    }
    assert tensor_stats("a", torch.empty(0)) == {}
