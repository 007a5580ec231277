"""scripts/slurm/train.sbatch under a fake Slurm: one node, 2 CPU processes (gloo), the tiny quickstart."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLURM = ROOT / "scripts" / "slurm"


def test_scripts_parse():
    for script in ("train.sbatch", "launch.sh", "fake_slurm.sh"):
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
