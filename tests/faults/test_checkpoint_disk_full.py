"""A real full disk during a checkpoint: a small tmpfs holds the run folder.

`rlvr train` runs in a subprocess inside its own user and mount namespace (`unshare -rm`), where
it may mount a tmpfs of a chosen size without being root on the host; the mount disappears with the
namespace, so nothing is left mounted whatever happens. The run folder is copied out before the
namespace ends, to check what survived. Skipped, with the reason, where such a mount is refused.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr.learner.checkpoint import check_checkpoint, list_checkpoints
from tests.integration.conftest import ROOT, run_recipe

pytestmark = [pytest.mark.faults, pytest.mark.slow]

RECIPE = ROOT / "recipes" / "quickstart.yaml"
ARGS = ["eval.every=0", "eval.at_start=false", "metrics.sinks=[jsonl]", "metrics.plot=false",
        "sampling.prompts_per_step=8", "rollout.batch_prompts=8", "checkpoint.every=1"]


def _mount_refusal(where: Path) -> str | None:
    """Why a tmpfs cannot be mounted in a private namespace here, or None when it can."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(where))}"],
                          capture_output=True, text=True, timeout=30)
    return None if done.returncode == 0 else f"unshare -rm + mount tmpfs refused: {done.stderr.strip()[:200]}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, int]:
    """(models folder with the tiny model built, size in bytes of one checkpoint of this recipe)."""
    base = tmp_path_factory.mktemp("diskfull")
    if reason := _mount_refusal(base / "probe"):
        pytest.skip(f"no small file system to fill: {reason}")
    models = base / "models"
    run = run_recipe(RECIPE, base / "sizing", models, "run.steps=1", *ARGS)
    ckpt = list_checkpoints(run)[-1][1]
    return models, sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())


def _train_in_tmpfs(size: int, workdir: Path, models: Path, runs: list[tuple[str, list[str]]]) -> list[tuple]:
    """Mount a `size`-byte tmpfs at workdir/mnt; for each (shell, overrides) of `runs` run the shell
    command, then `rlvr train` with the run folder on the tmpfs, then copy the run folder out to
    workdir/after<i>. Returns [(exit code, stderr, copied run folder)] per run."""
    mnt = workdir / "mnt"
    mnt.mkdir()
    q = lambda p: shlex.quote(str(p))
    script = f"mount -t tmpfs -o size={size} tmpfs {q(mnt)}"
    for i, (shell, extra) in enumerate(runs):
        cmd = [sys.executable, "-m", "rlvr", "train", str(RECIPE), *ARGS, f"model.path={models / 'tiny-digits'}",
               f"run.output_dir={mnt / 'run'}", *extra]
        script += (f" && {{ {shell or 'true'}; }} && {{ {shlex.join(cmd)} 2>{q(workdir / f'err{i}')}; "
                   f"echo $? > {q(workdir / f'rc{i}')}; }} && cp -a {q(mnt / 'run')} {q(workdir / f'after{i}')}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    results = []
    for i in range(len(runs)):
        rc = workdir / f"rc{i}"
        assert rc.is_file(), f"run {i} did not finish:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        results.append((int(rc.read_text()), (workdir / f"err{i}").read_text(), workdir / f"after{i}"))
    return results


def _names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_disk_full_during_checkpoint_keeps_the_previous_ones(setup, tmp_path):
    """Room for two checkpoints and a half; keep_last=2 needs room for three, so step 3's save
    fails. The user sees one line; the partial folder is gone; steps 1 and 2 are intact. After
    freeing space (deleting step 1) the run resumes from step 2 and finishes."""
    models, ckpt = setup
    common = ["run.steps=3", "checkpoint.keep_last=2"]
    first = tmp_path / "mnt" / "run" / "checkpoints" / "step_0000001"
    (rc, err, after), (rc2, err2, after2) = _train_in_tmpfs(
        int(2.5 * ckpt), tmp_path, models, [("", common), (f"rm -r {shlex.quote(str(first))}", common)])

    assert rc == 1, err[-3000:]
    lines = [line for line in err.splitlines() if "no space left" in line]
    assert lines == [f"error: no space left writing checkpoint step 3 to {tmp_path / 'mnt' / 'run' / 'checkpoints'}: "
                     "the partial folder was removed and the earlier checkpoints are kept; free some space and "
                     "resume (keeping checkpoint.keep_last=2 checkpoints needs room for 3)"], err[-3000:]
    assert "Traceback" not in err and "inline_container" not in err, err[-3000:]
    assert _names(after) == ["step_0000001", "step_0000002"]  # no .tmp-step_0000003 left behind
    for _, folder in list_checkpoints(after):
        assert check_checkpoint(folder) == (None, None), folder

    assert rc2 == 0, err2[-3000:]
    assert "resuming at step 2" in err2, err2[-3000:]
    assert _names(after2) == ["step_0000002", "step_0000003"]
    for _, folder in list_checkpoints(after2):
        assert check_checkpoint(folder) == (None, None), folder


def test_stale_temporary_folder_never_blocks_a_later_run(setup, tmp_path):
    """A `.tmp-step_*` left by a crash (here big enough that it and two checkpoints do not fit) is
    removed by the next save instead of filling the disk; resume never mistakes it for a checkpoint."""
    models, ckpt = setup
    stale = tmp_path / "mnt" / "run" / "checkpoints" / ".tmp-step_0000009"
    plant = f"mkdir -p {shlex.quote(str(stale))} && head -c {int(1.2 * ckpt)} /dev/zero > {shlex.quote(str(stale / 'junk'))}"
    [(rc, err, after)] = _train_in_tmpfs(int(2.5 * ckpt), tmp_path, models,
                                          [(plant, ["run.steps=2", "checkpoint.keep_last=1"])])
    assert rc == 0, err[-3000:]
    assert "fresh start" in err, err[-3000:]
    assert _names(after) == ["step_0000002"]
    assert check_checkpoint(after / "checkpoints" / "step_0000002") == (None, None)
