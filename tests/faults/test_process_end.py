"""How an `rlvr train` process ends: the process group it made, and a native crash.

- A run's process group is destroyed when the run ends (left to the interpreter's exit, gloo's
  threads aborted a 2-process ZeRO-3 run that had finished: "terminate called without an active
  exception", exit -6, once in CI). ZeRO on one process without a launcher runs (it failed on a
  missing process group), twice in one Python process, and leaves the environment as it found it.
- A native abort (a C++ library's, here a user plug-in's os.abort()) prints the Python stack of
  every thread, so the exit code comes with where it happened.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.lifecycle_runs import ROOT, env, finish, start, step_lines

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed not installed (pip install -e .[deepspeed])")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    from rlvr.models.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("models")
    build_tiny_model(path / "tiny-digits")
    return path


_TWO_RUNS = """
import json, os, sys
import torch.distributed as dist
from rlvr.config import load_config
from rlvr.loop import train

out, models, strategy = sys.argv[1:4]
env_before = dict(os.environ)
for i in range(2):
    cfg = load_config("recipes/quickstart.yaml", [
        f"run.output_dir={out}/run{i}", f"model.path={models}/tiny-digits", f"learner.strategy={strategy}",
        "run.steps=2", "eval.at_start=false", "eval.every=0", "metrics.sinks=[jsonl]", "metrics.plot=false",
        "sampling.prompts_per_step=4"], check_inputs=True)
    train(cfg)
    print(json.dumps({"run": i, "group_left": dist.is_initialized(), "env_changed":
                      sorted(k for k in {**env_before, **os.environ} if env_before.get(k) != os.environ.get(k))}))
"""


@pytest.mark.slow
@pytest.mark.deepspeed
@needs_deepspeed
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_zero_on_one_process_without_a_launcher_runs_twice_and_leaves_no_group(tmp_path, models, strategy):
    proc = subprocess.run([sys.executable, "-c", _TWO_RUNS, str(tmp_path), str(models), strategy], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"run"')]
    assert lines == [{"run": i, "group_left": False, "env_changed": []} for i in (0, 1)]
    for i in (0, 1):
        assert step_lines(tmp_path / f"run{i}") == [1, 2]


@pytest.mark.slow
def test_a_native_abort_prints_where_every_thread_was(tmp_path, models):
    plugin = tmp_path / "crashing.py"
    plugin.write_text("import os\n\n\nclass AbortsAtStepTwo:\n"
                      "    def __call__(self, inp):\n"
                      "        os.abort()  # what a C++ library's std::terminate does to the process\n")
    proc = finish(start(tmp_path / "run", models, f"advantage={{name: {plugin}:AbortsAtStepTwo}}", "run.steps=3"))
    assert proc.returncode == -6, proc.stderr[-3000:]
    assert "Fatal Python error: Aborted" in proc.stderr
    # the plug-in's own line, then the loop's stage that called it
    assert f'File "{plugin}", line 6 in __call__' in proc.stderr, proc.stderr[-3000:]
    assert "in advantages" in proc.stderr and "in train" in proc.stderr
