"""The vectors folder is complete, and an incomplete or broken one fails the conformance tests
(a missing file used to be a skip, so $RLVR_VECTORS_DIR pointing at a partial folder passed)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance.conftest import VECTOR_FILES, VECTORS_DIR, read_vectors

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "tests" / "vectors"


def test_every_vector_file_is_listed():
    """VECTOR_FILES names exactly the snapshot's files, so a new vector file cannot go unchecked."""
    assert sorted(VECTOR_FILES) == sorted(p.name for p in SNAPSHOT.glob("*.json"))


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_vector_file_present_and_readable(name):
    assert read_vectors(name), f"{name} in {VECTORS_DIR} is empty"


def run_conformance(vectors: Path) -> subprocess.CompletedProcess:
    """The conformance tests (not this file) in a fresh pytest reading `vectors`."""
    env = {**os.environ, "RLVR_VECTORS_DIR": str(vectors)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/conformance",
           f"--ignore={Path(__file__).relative_to(ROOT)}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_an_incomplete_or_broken_vectors_folder_fails(tmp_path):
    partial = tmp_path / "vectors"
    partial.mkdir()
    missing = {"spo.json", "gvm.json"}
    for name in set(VECTOR_FILES) - missing:
        shutil.copy(SNAPSHOT / name, partial / name)
    (partial / "vas.json").write_text('{"method": "vas", "inputs": ')  # cut short
    out = run_conformance(partial)
    log = out.stdout + out.stderr
    assert out.returncode == 1, f"rc {out.returncode}: a partial vectors folder must fail the tests\n{log}"
    for name in missing:
        assert f"vector file {name} is missing in {partial} ($RLVR_VECTORS_DIR)" in log, log
    assert f"vector file {partial / 'vas.json'} is not valid JSON" in log, log
    # the files that are there are still checked, and pass
    assert "test_grpo.py" not in "".join(line for line in log.splitlines() if line.startswith("FAILED")), log
    assert json.loads((SNAPSHOT / "grpo.json").read_text())  # the snapshot itself was untouched
