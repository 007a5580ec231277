"""Checkpoints: written atomically, the last K kept, found again by `resume: auto`.

Layout of `<output_dir>/checkpoints/step_0000040/`:
    model/          HF format (config, safetensors weights, tokenizer): loadable on its own; under
                    FSDP2/ZeRO-3 the weights are gathered from the shards before rank 0 writes them
    state.pt        step, optimiser (when every process holds all of it), scheduler, every plug-in's
                    state_dict, sampler position
    rng_rank<r>.pt  every random generator of process r (python, numpy, torch, cuda)
    optimizer_rank<r>.pt   FSDP2 only: process r's part of the optimiser state
    deepspeed/      ZeRO-2/3 only: DeepSpeed's own checkpoint (per-process optimiser partitions)
    config.yaml     the resolved recipe
A sharded optimiser state resumes only with the same learner.strategy and number of processes.
The folder is assembled as `.tmp-step_0000040` and renamed in one `os.replace`, so a run killed
while saving leaves the previous checkpoint intact and no half-written one that looks complete.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def resolve_resume(resume: str, run_dir: str | Path) -> Path | None:
    """'never' -> None; 'auto' -> latest checkpoint of run_dir or None; otherwise a checkpoint path."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"run.resume: {path} is not a checkpoint folder (no state.pt)")
    return path


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    config_yaml: str,
    keep_last: int,
    accelerator: Any,
    shards: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint `step` (all processes call this; rank 0 writes the shared files).

    `shards(folder)`, when given, runs on every process and writes that process's files (a
    sharded optimiser state) into the folder before it is renamed into place.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt")
    if shards is not None:
        shards(tmp)
    model_state = accelerator.get_state_dict(model)  # collective: gathers sharded weights onto rank 0
    if main:
        unwrapped = accelerator.unwrap_model(model)
        model_state = _without_tied_aliases(model_state, unwrapped)
        unwrapped.save_pretrained(tmp / "model", state_dict=model_state, safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(state, tmp / "state.pt")
        (tmp / "config.yaml").write_text(config_yaml)
    accelerator.wait_for_everyone()
    if main:
        if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _without_tied_aliases(state: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Drop the second name of tied parameters (e.g. lm_head.weight tied to the embedding).

    A gathered state dict (FSDP2) holds separate copies of tied tensors, which save_pretrained can
    no longer recognise as shared by their storage, so the file would hold the tensor twice.
    """
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k: v for k, v in state.items() if k not in aliases}


def load_checkpoint_state(path: str | Path, process_index: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(trainer state, this process's RNG state or None if it was saved with fewer processes)."""
    path = Path(path)
    state = torch.load(path / "state.pt", weights_only=False)
    rng_file = path / f"rng_rank{process_index}.pt"
    rng = torch.load(rng_file, weights_only=False) if rng_file.is_file() else None
    return state, rng
