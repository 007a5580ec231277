"""The optimiser state when each process holds a different part of it (FSDP2, ZeRO-2, ZeRO-3).

Under single and ddp every process holds the whole optimiser state: the learner's `state_dict`
carries it into the checkpoint's state.pt. Under the sharded strategies it stays out of state.pt
and each process writes and reads its own part here, inside the checkpoint folder:

    fsdp2        optimizer_rank<r>.pt   AdamW's state for this process's parameter shards
    zero2/zero3  deepspeed/             DeepSpeed's own checkpoint (per process: fp32 master
                                        partition and AdamW state; the module file it also writes
                                        duplicates the HF weights under ZeRO-2)

Such a state resumes only with the same strategy and number of processes (`check_resumable`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlvr.learner.distributed import local_optimizer_state, sharded_optimizer_state


def optimizer_sharded(strategy: str) -> bool:
    """Each process holds a different part of the optimiser state (fsdp2, zero2, zero3)."""
    return strategy not in ("single", "ddp")


def check_resumable(state: dict[str, Any], strategy: str, processes: int) -> None:
    """Raise ValueError unless the learner state `state` (its `state_dict`) resumes under `strategy`
    on `processes` processes: the optimiser state is in state.pt exactly when it is not sharded, and
    a sharded one needs the strategy and process count it was saved with.

    Example: saved by fsdp2 on 2 processes, resumed by fsdp2 on 4 -> ValueError naming both.
    """
    saved = (state.get("strategy", "single"), state.get("processes", 1))
    sharded = optimizer_sharded(strategy)
    if ("optimizer" in state) == sharded or (sharded and saved != (strategy, processes)):
        raise ValueError(
            f"run.resume: the checkpoint's optimiser state was saved with learner.strategy {saved[0]} on "
            f"{saved[1]} process(es), this run is {strategy} on {processes}; a sharded "
            "optimiser state resumes only with the same strategy and number of processes")


def save_shards(folder: Path, strategy: str, optimizer: Any, engine: Any | None, rank: int) -> None:
    """Collective: this process (`rank`) writes its part of a sharded optimiser state into `folder`
    (see the module docstring); nothing under single and ddp. `engine` is the DeepSpeed engine
    under ZeRO, else None; `optimizer` the prepared optimiser."""
    if engine is not None:
        engine.save_checkpoint(str(folder / "deepspeed"), tag="optimizer", save_latest=False)
    elif strategy == "fsdp2":
        torch.save(local_optimizer_state(optimizer.state_dict()), folder / f"optimizer_rank{rank}.pt")


def load_shards(folder: Path, strategy: str, optimizer: Any, engine: Any | None, rank: int) -> None:
    """Collective: the counterpart of `save_shards` (after `check_resumable`).

    Our shard files load with weights_only=True; DeepSpeed loads its own files with the full
    unpickler, so their pickles are scanned first and refused if they would run code."""
    from rlvr.errors import CheckpointError
    from rlvr.learner.checkpoint import load_plain, pickle_problem

    if engine is not None:
        for file in sorted((folder / "deepspeed").rglob("*.pt")):
            if problem := pickle_problem(file, file.relative_to(folder).as_posix()):
                raise CheckpointError(f"checkpoint {folder.name}: {problem}")
        path, _ = engine.load_checkpoint(str(folder / "deepspeed"), tag="optimizer",
                                         load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise CheckpointError(f"run.resume: no DeepSpeed optimiser state in {folder / 'deepspeed'}")
    elif strategy == "fsdp2":
        local = load_plain(folder / f"optimizer_rank{rank}.pt")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        optimizer.load_state_dict(sharded_optimizer_state(local, params))
