"""Helpers for resume-equivalence tests: crash a run after a checkpoint, and compare two runs.

The comparison is bitwise on CPU: every metric line of `metrics.jsonl` (in order, every key), every
tensor of the final checkpoint's model weights, and every tensor and value of the final
checkpoint's `.pt` files (optimiser, scheduler, plug-in states, RNG states) must be equal.

Only wall-clock measurements are left out of the metric comparison, since they differ between any
two runs: the keys named `perf/*_s` (seconds) and `*_per_s` (throughput), and the line's `time`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import rlvr.run.setup


class Killed(Exception):
    """Stands in for a kill: raised right after a checkpoint has been renamed into place."""


def is_timing(key: str) -> bool:
    """Wall-clock metrics (and the line's timestamp): the only keys that may differ between runs."""
    return key == "time" or key.endswith("_per_s") or (key.startswith("perf/") and key.endswith("_s"))


def metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every line of metrics.jsonl in file order, timing keys removed."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not is_timing(k)} for line in lines]


def metric_differences(a: list[dict], b: list[dict], limit: int = 20) -> list[str]:
    """Human-readable differences between two runs' metric lines (exact equality; null == null)."""
    out = []
    if [r.get("step") for r in a] != [r.get("step") for r in b]:
        out.append(f"step sequence differs: {[r.get('step') for r in a]} vs {[r.get('step') for r in b]}")
    for i, (ra, rb) in enumerate(zip(a, b)):
        if set(ra) != set(rb):
            out.append(f"line {i} (step {ra.get('step')}): keys only in one run: {sorted(set(ra) ^ set(rb))}")
        for k in sorted(set(ra) & set(rb)):
            if ra[k] != rb[k]:
                out.append(f"line {i} step {ra.get('step')} {k}: {ra[k]!r} vs {rb[k]!r}")
    return out[:limit]


def final_checkpoint(run_dir: Path) -> Path:
    found = sorted(p for p in (Path(run_dir) / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert found, f"no checkpoint in {run_dir}"
    return found[-1]


def weight_differences(a: Path, b: Path, folder: str = "model") -> list[str]:
    """Tensors of the two checkpoints' <folder>/*.safetensors (model/, or a LoRA run's adapter/) that
    are not bitwise equal."""
    out = []
    files = sorted(p.name for p in (a / folder).glob("*.safetensors"))
    assert files, f"no safetensors in {a / folder}"
    assert files == sorted(p.name for p in (b / folder).glob("*.safetensors")), (a, b)
    for name in files:
        wa, wb = load_file(a / folder / name), load_file(b / folder / name)
        if set(wa) != set(wb):
            out.append(f"{name}: tensor names differ: {sorted(set(wa) ^ set(wb))}")
        for key in sorted(set(wa) & set(wb)):
            if not torch.equal(wa[key], wb[key]):
                diff = (wa[key].double() - wb[key].double()).abs().max().item()
                out.append(f"{name}:{key}: max |diff| {diff:.3g}")
    return out


def _state_differences(a: Any, b: Any, where: str, out: list[str]) -> None:
    """Recursive exact comparison of two loaded state objects (dicts, lists, tensors, arrays, numbers)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or not torch.equal(a, b):
            out.append(f"{where}: tensors differ")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True):
            out.append(f"{where}: arrays differ")
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            out.append(f"{where}: keys differ {sorted(map(str, set(a) ^ set(b)))}")
        for k in a.keys() & b.keys():
            _state_differences(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: lengths {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _state_differences(x, y, f"{where}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        pass
    elif a != b:
        out.append(f"{where}: {a!r} vs {b!r}")


def state_differences(a: Path, b: Path) -> list[str]:
    """Differences between the `.pt` files (trainer, plug-in, optimiser and RNG states) of two checkpoints."""
    out: list[str] = []
    names = sorted(p.name for p in a.glob("*.pt"))
    assert names, f"no .pt state file in {a}"
    if names != sorted(p.name for p in b.glob("*.pt")):
        return [f"state files differ: {names} vs {sorted(p.name for p in b.glob('*.pt'))}"]
    for name in names:
        # our own test output: read with the full unpickler, whatever format the files use
        sa, sb = torch.load(a / name, weights_only=False), torch.load(b / name, weights_only=False)
        _state_differences(sa, sb, name, out)
    return out


def assert_same_run(straight: Path, resumed: Path, label: str = "") -> None:
    """The resumed run equals the uninterrupted one bitwise: metrics, final weights, final states."""
    a, b = metric_rows(straight), metric_rows(resumed)
    diffs = metric_differences(a, b)
    assert not diffs and len(a) == len(b), f"{label}: metrics differ after resume:\n" + "\n".join(diffs)
    ca, cb = final_checkpoint(straight), final_checkpoint(resumed)
    assert ca.name == cb.name, (label, ca, cb)
    for folder in ["model"] + ["adapter"] * (ca / "adapter").is_dir():
        diffs = weight_differences(ca, cb, folder)
        assert not diffs, f"{label}: final {folder} ({ca.name}) differs after resume:\n" + "\n".join(diffs)
    diffs = state_differences(ca, cb)
    assert not diffs, f"{label}: final checkpoint state ({ca.name}) differs after resume:\n" + "\n".join(diffs[:20])


def kill_after_checkpoint(run, monkeypatch, step: int = 2) -> None:
    """Call `run()` with the loop crashing right after the checkpoint of `step` is renamed into place.

    Same code path as a kill at that moment: the process loses everything not in the checkpoint
    (metric lines of later steps are not written yet).
    """
    real_save = rlvr.run.setup.save_checkpoint

    def save_then_die(run_dir, at, **kw):
        path = real_save(run_dir, at, **kw)
        if at == step:
            raise Killed
        return path

    monkeypatch.setattr(rlvr.run.setup, "save_checkpoint", save_then_die)
    try:
        with pytest.raises(Killed):
            run()
    finally:
        monkeypatch.setattr(rlvr.run.setup, "save_checkpoint", real_save)
