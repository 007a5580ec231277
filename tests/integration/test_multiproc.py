"""Data parallelism: two processes (DDP over gloo on CPU) give the update of one process."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_step.py"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


AGGREGATIONS = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "dr_grpo", "delta_l",
                "seq_mean_token_sum_norm"]


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_two_processes_match_one(tmp_path, aggregation):
    from rlvr.models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, str(SCRIPT), str(model), str(tmp_path / "one.pt"), aggregation], check=True, env=env, timeout=240)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    subprocess.run([*torchrun, str(SCRIPT), str(model), str(tmp_path / "two.pt"), aggregation], check=True, env=env, timeout=240)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["world"], two["world"]) == (1, 2)
    for key in ("learner/loss", "learner/pg_loss", "learner/grad_norm", "learner/entropy"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5), key
    assert one["metrics"]["learner/grad_norm"] > 0
    for name, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-4, atol=1e-6)
    shutil.rmtree(tmp_path / "tiny", ignore_errors=True)
