"""RL alone teaches a tiny random model a prompt-dependent task within a bounded number of steps."""

import json

import pytest

from rlvr.config import validate
from rlvr.loop import train


def recipe(tmp_path, **learner):
    return validate({
        "run": {"name": "learn-succ", "output_dir": str(tmp_path / "run"), "steps": 150, "seed": 0},
        "model": {"path": str(tmp_path / "tiny-succ"),
                  "build_tiny": {"arch": "qwen2", "characters": "0123456789>"}},
        "data": {
            "train": {"path": "synthetic:succ", "split": "train", "args": {"num_rows": 2000, "pad_width": 2}},
            "eval": {"path": "synthetic:succ", "split": "test", "args": {"num_rows": 20, "pad_width": 2}},
            "chat_template": False,
        },
        "sampling": {"prompts_per_step": 32, "samples_per_prompt": 8},
        "rollout": {"max_new_tokens": 4},
        "reward": {"functions": [{"name": "exact"}]},
        "learner": {"lr": 3e-4, **learner},
        "eval": {"every": 50},
        "checkpoint": {"at_end": False},
        "metrics": {"sinks": ["jsonl"], "plot": False},
    })


@pytest.mark.slow
def test_tiny_model_learns_successor_digit_by_rl(tmp_path):
    run_dir = train(recipe(tmp_path))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    assert sorted(evals) == [0, 50, 100, 150]
    # 20 held-out prompts never trained on; answers uniform over 10 digits, chance 0.1
    assert evals[0] <= 0.3
    assert evals[150] >= 0.8, evals
    rewards = [r["reward/total/mean"] for r in rows if "reward/total/mean" in r]
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.4
