"""Checkpoint integrity: a broken or hostile checkpoint folder is named, never trusted, never executed.

Every test breaks real files of a real run (a 4-step quickstart run with checkpoints at steps 2 and
4) and then resumes it the way a user does (`train` with run.resume=auto or a path), asserting the
line the user sees and what is left on disk. The payload tests plant a real pickle that would
create a marker file when unpickled and check the marker never appears.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rlvr.errors import CheckpointError
from rlvr.learner.checkpoint import (
    MANIFEST,
    check_checkpoint,
    list_checkpoints,
    load_checkpoint_state,
    load_plain,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_manifest,
)
from tests.integration.conftest import ROOT, run_recipe

pytestmark = pytest.mark.faults

RECIPE = ROOT / "recipes" / "quickstart.yaml"
ARGS = ["checkpoint.every=2", "checkpoint.keep_last=3", "eval.every=0", "eval.at_start=false",
        "metrics.sinks=[jsonl]", "metrics.plot=false", "sampling.prompts_per_step=8", "rollout.batch_prompts=8"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, models) -> Path:
    """A finished 4-step run with complete checkpoints step_0000002 and step_0000004 (built once)."""
    run = run_recipe(RECIPE, tmp_path_factory.mktemp("good") / "run", models, "run.steps=4", *ARGS)
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    return run


@pytest.fixture
def run_dir(good_run, tmp_path) -> Path:
    """A private copy of the good run to break."""
    return Path(shutil.copytree(good_run, tmp_path / "run"))


def resume(run: Path, models: Path, *extra: str, steps: int = 4) -> Path:
    return run_recipe(RECIPE, run, models, f"run.steps={steps}", *ARGS, "run.resume=auto", *extra)


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:07d}"


def checkpoint_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("rlvr: checkpoint") or "rlvr: warning: checkpoint" in line]


def resumed_at(err: str) -> str:
    lines = [line for line in err.splitlines() if "resuming at step" in line or "fresh start" in line]
    assert lines, err
    return lines[-1]


def resign(folder: Path) -> None:
    """What someone who controls the folder can do: rewrite the manifest to match tampered files."""
    step = json.loads((folder / MANIFEST).read_text())["step"]
    (folder / MANIFEST).unlink()
    write_manifest(folder, step)


# ---- a broken newest checkpoint: named in one line, the newest complete one is used ------------------

def _truncate_weights(run: Path) -> str:
    f = step_dir(run, 4) / "model" / "model.safetensors"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[: size // 2])
    return f"model/model.safetensors: size {size // 2}, manifest says {size}"


def _delete_rng(run: Path) -> str:
    (step_dir(run, 4) / "rng_rank0.pt").unlink()
    return "rng_rank0.pt is missing"


def _garbage_state(run: Path) -> str:
    f = step_dir(run, 4) / "state.pt"
    f.write_bytes(os.urandom(f.stat().st_size))  # same size: only the hash can tell
    return "state.pt: contents differ from the manifest (sha256)"


def _empty_newer(run: Path) -> str:
    step_dir(run, 6).mkdir()
    return "empty folder"


BREAKS = {"truncated_weights": (_truncate_weights, 4), "deleted_rng": (_delete_rng, 4),
          "garbage_state": (_garbage_state, 4), "empty_newer_folder": (_empty_newer, 6)}


@pytest.mark.parametrize("name", list(BREAKS))
def test_broken_newest_checkpoint_is_named_and_skipped(name, run_dir, capsys):
    breaks, broken_step = BREAKS[name]
    problem = breaks(run_dir)
    fallback = 4 if broken_step == 6 else 2
    assert resolve_resume("auto", run_dir) == step_dir(run_dir, fallback)
    expected = f"rlvr: checkpoint step_{broken_step:07d} is broken ({problem}); resuming from step_{fallback:07d}"
    assert checkpoint_lines(capsys.readouterr().err) == [expected]


@pytest.mark.slow
def test_training_resumes_from_the_newest_complete_checkpoint(run_dir, models, capsys):
    """End to end: the run goes on from step 2, and its own step 4 replaces the broken one."""
    problem = _truncate_weights(run_dir)
    resume(run_dir, models, steps=5)
    err = capsys.readouterr().err
    assert checkpoint_lines(err) == [f"rlvr: checkpoint step_0000004 is broken ({problem}); resuming from "
                                     "step_0000002"], err
    assert "resuming at step 2" in resumed_at(err), err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [s for s, _ in list_checkpoints(run_dir)] == [2, 4, 5]
    for _, folder in list_checkpoints(run_dir):
        assert check_checkpoint(folder) == (None, None), folder


def test_checkpoint_named_in_run_resume_must_be_complete(run_dir, models):
    problem = _truncate_weights(run_dir)
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    with pytest.raises(CheckpointError) as e:
        resume(run_dir, models, f"run.resume={step_dir(run_dir, 4)}", steps=5)
    assert str(e.value).startswith(f"run.resume: checkpoint {step_dir(run_dir, 4)} is broken: {problem}")
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before  # nothing touched


def test_no_complete_checkpoint_stops_instead_of_starting_over(run_dir, models):
    _truncate_weights(run_dir)
    (step_dir(run_dir, 2) / "rng_rank0.pt").unlink()
    metrics = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match=r"none of the 2 checkpoints .* is complete .*step_0000004 is broken "
                                              r"\(model/model.safetensors: size .*step_0000002 is broken "
                                              r"\(rng_rank0.pt is missing\)"):
        resume(run_dir, models, steps=5)
    assert (run_dir / "metrics.jsonl").read_text() == metrics  # a fresh start would have moved it aside


def test_checkpoint_without_manifest_is_checked_and_accepted_with_a_warning(run_dir, capsys):
    """A checkpoint written before manifests existed resumes (with a warning); one whose weights are
    truncated is still caught, by the safetensors header, and skipped."""
    (step_dir(run_dir, 4) / MANIFEST).unlink()
    assert resolve_resume("auto", run_dir) == step_dir(run_dir, 4)
    assert checkpoint_lines(capsys.readouterr().err) == [
        "rlvr: warning: checkpoint step_0000004 has no manifest.json (written by an older rlvr, or the file was "
        "removed): its files were checked for completeness but not against hashes"]

    f = step_dir(run_dir, 4) / "model" / "model.safetensors"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[:-100])
    assert resolve_resume("auto", run_dir) == step_dir(run_dir, 2)
    assert checkpoint_lines(capsys.readouterr().err) == [
        f"rlvr: checkpoint step_0000004 is broken (model/model.safetensors: size {size - 100}, its header says "
        f"{size}); resuming from step_0000002"]


# ---- no code stored in a checkpoint ever runs --------------------------------------------------------

class Payload:
    """Unpickling this runs `touch <marker>`: a stand-in for any code hidden in a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(folder: Path, name: str, marker: Path) -> None:
    original = torch.load(folder / name, weights_only=True)
    torch.save({**original, "extra": Payload(marker)}, folder / name)


@pytest.mark.parametrize("name", ["state.pt", "rng_rank0.pt"])
def test_pickle_payload_in_checkpoint_never_runs(name, run_dir, models, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    folder = step_dir(run_dir, 4)
    _plant(folder, name, marker)
    resign(folder)  # the manifest agrees: only the pickle scan and weights_only stand in the way

    # named exactly: refused with the reason
    with pytest.raises(CheckpointError, match=rf"is broken: {name} holds pickled objects that would run code "
                                              r"\(posix.system\)"):
        resume(run_dir, models, f"run.resume={folder}", steps=5)
    # loading the file directly (what the loop does after the checks) refuses it too
    with pytest.raises(CheckpointError, match=rf"{name} holds objects other than plain data .*posix.system"):
        load_checkpoint_state(folder, 0)
    # auto: skipped in one line, in favour of step 2
    capsys.readouterr()
    assert resolve_resume("auto", run_dir) == step_dir(run_dir, 2)
    err = capsys.readouterr().err
    assert checkpoint_lines(err) == [f"rlvr: checkpoint step_0000004 is broken ({name} holds pickled objects that "
                                     "would run code (posix.system); rlvr never loads those); resuming from "
                                     "step_0000002"], err
    assert not marker.exists(), "the payload ran"


def test_rng_state_is_plain_data_and_restores_exactly(tmp_path):
    """Every generator comes back exactly, including python's cached gauss and numpy's cached normal."""
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.gauss(0, 1), np.random.randn()  # leave a cached second normal in both

    def draws():
        return [random.random(), random.gauss(0, 1), *np.random.randn(3).tolist(), *torch.rand(3).tolist()]

    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = draws()
    set_rng_state(load_plain(tmp_path / "rng.pt"))  # weights_only=True, no numpy allowlist needed
    assert draws() == expected

    # the format before this one (pickled numpy array) still resumes, via a four-name numpy allowlist
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(old, tmp_path / "old.pt")
    expected = draws()
    set_rng_state(load_plain(tmp_path / "old.pt", ["numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType",
                                                    "numpy._core.multiarray._reconstruct"]))
    assert draws() == expected


# ---- never write non-finite weights; never prune the last good checkpoint ----------------------------

class _OneProcess:
    """The accelerate surface save_checkpoint uses, for one process without a launcher."""

    is_main_process, process_index, num_processes = True, 0, 1

    def get_state_dict(self, model):
        return model.state_dict()

    def unwrap_model(self, model):
        return model

    def wait_for_everyone(self):
        pass


def _save(run: Path, step: int, model, tokenizer, state=None):
    return save_checkpoint(run, step, model=model, tokenizer=tokenizer, state=state or {"step": step, "plugins": {}},
                           config_yaml="x: 1\n", keep_last=1, accelerator=_OneProcess())


@pytest.fixture
def tiny(good_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = step_dir(good_run, 4) / "model"
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def test_nonfinite_weights_are_never_saved_and_the_good_checkpoint_survives(tiny, tmp_path):
    model, tokenizer = tiny
    good = _save(tmp_path, 1, model, tokenizer)
    names = [n for n, t in model.state_dict().items() if t.is_floating_point()]
    with torch.no_grad():
        model.get_parameter("model.layers.0.mlp.up_proj.weight")[0, 0] = float("nan")
        model.get_parameter("model.norm.weight")[1] = float("inf")
    with pytest.raises(CheckpointError) as e:
        _save(tmp_path, 2, model, tokenizer)
    assert str(e.value) == (f"checkpoint step 2 not written: 2 of {len(names)} weight tensors hold NaN or inf "
                            f"(first: model.layers.0.mlp.up_proj.weight); the earlier checkpoints in "
                            f"{tmp_path / 'checkpoints'} are kept")
    # keep_last=1, yet the good step 1 is still there, complete; nothing of step 2 was written
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [good.name]
    assert check_checkpoint(good) == (None, None)


def test_state_that_is_not_plain_data_is_refused_when_saving(tiny, tmp_path):
    """A plug-in whose state_dict holds a numpy array would make the checkpoint unloadable: caught when
    saving, with where it sits, and the earlier checkpoint is kept."""
    model, tokenizer = tiny
    good = _save(tmp_path, 1, model, tokenizer)
    state = {"step": 2, "plugins": {"sampler": {"scores": np.zeros(3)}}}
    with pytest.raises(CheckpointError, match=r"checkpoint step 2 not written: state.pt holds pickled objects .*"
                                              r"at state\['plugins'\]\['sampler'\]\['scores'\] \(numpy.ndarray\)"):
        _save(tmp_path, 2, model, tokenizer, state)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [good.name]
