"""Checkpoints: written atomically, checked against a manifest, the last K kept, found by `resume: auto`.

Layout of `<output_dir>/checkpoints/step_0000040/`:
    model/          HF format (config, safetensors weights, tokenizer): loadable on its own; under
                    FSDP2/ZeRO-3 the weights are gathered from the shards before rank 0 writes them.
                    With model.lora only in the run's last checkpoint, holding the merged weights
    adapter/        model.lora only: peft's adapter (adapter_config.json, adapter_model.safetensors)
                    and the tokenizer; the base weights come from model.path on resume
    state.pt        step, optimiser (when every process holds all of it), scheduler, every plug-in's
                    state_dict, sampler position
    rng_rank<r>.pt  every random generator of process r (python, numpy, torch, cuda), as tensors
    optimizer_rank<r>.pt   FSDP2 only: process r's part of the optimiser state
    deepspeed/      ZeRO-2/3 only: DeepSpeed's own checkpoint (per-process optimiser partitions)
    config.yaml     the resolved recipe
    manifest.json   written last: the step, and every other file of the folder (every process's
                    files included) with its size and sha256
A sharded optimiser state resumes only with the same learner.strategy and number of processes.

Writing. Nothing is written when a weight tensor is NaN or inf (CheckpointError naming the step and
the count). The folder is assembled as `.tmp-step_0000040` (stale `.tmp-*` folders of a crashed run
are removed first) and renamed in one `os.replace`, so a run killed while saving leaves the previous
checkpoint intact and no half-written one that looks complete. Older checkpoints are pruned to
`keep_last` only after the new one is in place and checked, so keeping N checkpoints needs disk
room for N+1. A full disk stops the run with CheckpointError "no space left writing checkpoint
step N to DIR"; the partial folder is removed and the earlier checkpoints are kept.

Reading. Nothing is unpickled beyond plain data: our files load with `torch.load(weights_only=True)`
(tensors, numbers, strings, lists, dicts), and every pickle in the folder is scanned first
(`torch.serialization.get_unsafe_globals_in_checkpoint` reads the pickle without running it) for
anything that would call code; DeepSpeed's own files, which DeepSpeed loads with the full unpickler,
may hold only its loss-scaler and stage classes besides plain data. `resume: auto` checks the
newest checkpoint (manifest present, every file there with its size and sha256, pickles plain);
when it is broken it says so in one line and falls back to the newest complete one. A checkpoint
named exactly by `run.resume` must be complete: otherwise CheckpointError. A checkpoint without a
manifest (written before rlvr kept one) is accepted with a warning after the checks that need no
manifest: required files present, safetensors sizes agree with their headers, `.pt` archives intact.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr.errors import CheckpointError
from rlvr.learner import lora

_STEP_DIR = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
RNG_FORMAT = 2  # 1 (unversioned): python and numpy states as pickled tuples/ndarrays

# Globals DeepSpeed's optimiser files hold beyond torch's plain-data set (ZeRO-2/3, fp32/bf16/fp16):
# its loss scalers (plain attribute holders), plus any of its enums and plain dataclasses (see
# `_harmless_deepspeed`). DeepSpeed loads these files with the full unpickler, so anything else
# found in them is refused rather than run.
_DEEPSPEED_GLOBALS = frozenset({
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
})
# What rng files written before RNG_FORMAT 2 need: numpy's array rebuild (a plain uint32 array).
_LEGACY_RNG_GLOBALS = frozenset({"numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
                                 "numpy.core.multiarray._reconstruct", "numpy.dtypes.UInt32DType"})


# ---- random generators ------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Every generator of this process as tensors and numbers (loadable with weights_only=True)."""
    version, internal, gauss_next = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "format": RNG_FORMAT,
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (or the older pickled-tuple format)."""
    if state.get("format") == RNG_FORMAT:
        py, npy = state["python"], state["numpy"]
        random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
        np.random.set_state((npy["kind"], npy["key"].numpy().astype(np.uint32), int(npy["pos"]),
                             int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    else:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- finding and checking checkpoints ---------------------------------------------------------

def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `checkpoints/step_N` folder, oldest first (temporary folders excluded)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def sha256_file(path: Path) -> str:
    """The file's sha256 as 64 hex digits, read in chunks (checkpoint manifests list one per file)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(folder: Path) -> list[str]:
    """Every regular file under `folder`, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _hash_all(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """sha256 of each file, several at a time (hashlib releases the GIL: ~1.5 GB/s per core)."""
    names = sorted(names, key=lambda n: -(folder / n).stat().st_size)
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return dict(zip(names, pool.map(lambda n: sha256_file(folder / n), names)))


def write_manifest(folder: Path, step: int) -> dict[str, Any]:
    """List every file of `folder` with its size and sha256 in `folder/manifest.json` (written last)."""
    names = [n for n in _files(folder) if n != MANIFEST]
    digests = _hash_all(folder, names)
    manifest = {"format": MANIFEST_FORMAT, "step": step, "hash": "sha256",
                "files": {n: {"size": (folder / n).stat().st_size, "sha256": digests[n]} for n in names}}
    with open(folder / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return manifest


def _harmless_deepspeed(name: str) -> bool:
    """A DeepSpeed class whose unpickling only assigns fields: a loss scaler, an enum, or a dataclass
    with the generated __init__ and no __post_init__/__new__/__setstate__ of its own (e.g. ZeRO-2's
    `fragment_address`, ZeRO's `ZeroStageEnum`). Only modules DeepSpeed has already imported are
    looked at, so a name in a checkpoint never chooses what gets imported."""
    if name in _DEEPSPEED_GLOBALS:
        return True
    module, _, attr = name.rpartition(".")
    if not module.startswith("deepspeed."):
        return False
    if "deepspeed" not in sys.modules:  # the package itself (a fixed name), as a ZeRO run imports it anyway
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            return False
    obj = getattr(sys.modules.get(module), attr, None)
    if not isinstance(obj, type):
        return False
    if issubclass(obj, enum.Enum):
        return True
    own = vars(obj)
    return (dataclasses.is_dataclass(obj) and not any(k in own for k in ("__post_init__", "__new__", "__setstate__"))
            and getattr(own.get("__init__"), "__code__", None) is not None
            and own["__init__"].__code__.co_filename == "<string>")  # written by @dataclass, not by hand


def _refused_globals(rel: str, found: Iterable[str]) -> list[str]:
    """The globals of a pickle at `rel` (beyond torch's plain-data set) that must not be loaded."""
    if rel.startswith("deepspeed/"):
        return sorted(g for g in found if not _harmless_deepspeed(g))
    allowed = _LEGACY_RNG_GLOBALS if re.fullmatch(r"rng_rank\d+\.pt", rel) else frozenset()
    return sorted(set(found) - allowed)


def pickle_problem(path: Path, rel: str) -> str | None:
    """Why the torch pickle at `path` must not be loaded (it would construct or call something other
    than plain data), or None. Reads the pickle's opcodes without executing any of them."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # not a torch zip archive, truncated, or an opcode the scanner refuses
        return f"{rel} is not a readable torch file ({_first_line(e)})"
    unsafe = _refused_globals(rel, found)
    if unsafe:
        return f"{rel} holds pickled objects that would run code ({', '.join(unsafe[:3])}); rlvr never loads those"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _safetensors_problem(path: Path, rel: str) -> str | None:
    """A safetensors file whose size disagrees with its own header (truncated or padded), or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 0 or 8 + n > size:
                return f"{rel} is truncated (size {size}, shorter than its header)"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        return f"{rel} has an unreadable header ({_first_line(e)})"
    if 8 + n + end != size:
        return f"{rel}: size {size}, its header says {8 + n + end}"
    return None


def _problem_with_manifest(folder: Path, manifest: dict[str, Any], hashes: bool) -> str | None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest.json lists no files"
    for rel, entry in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != entry.get("size"):
            return f"{rel}: size {size}, manifest says {entry.get('size')}"
    if hashes:
        digests = _hash_all(folder, files)
        for rel in sorted(files):
            if digests[rel] != files[rel].get("sha256"):
                return f"{rel}: contents differ from the manifest (sha256)"
    return None


def _problem_without_manifest(folder: Path) -> str | None:
    """The checks that need no manifest: the files every checkpoint has, and intact archives."""
    adapter = (folder / "adapter").is_dir()
    for rel in ("state.pt", "rng_rank0.pt", f"adapter/{lora.ADAPTER_FILE}" if adapter else "model/config.json"):
        if not (folder / rel).is_file():
            return f"{rel} is missing"
    weights = sorted((folder / "model").glob("*.safetensors")) + sorted((folder / "adapter").glob("*.safetensors"))
    if not weights and not adapter:
        return "model/ holds no safetensors weights"
    index = folder / "model" / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, AttributeError) as e:
            return f"model/{index.name} is unreadable ({_first_line(e)})"
        missing = sorted(s for s in shards if not (folder / "model" / s).is_file())
        if missing:
            return f"model/{missing[0]} is missing"
    for path in weights:
        if problem := _safetensors_problem(path, path.relative_to(folder).as_posix()):
            return problem
    return None


def check_checkpoint(folder: str | Path, *, hashes: bool = True) -> tuple[str | None, str | None]:
    """(problem, note) for a checkpoint folder: `problem` says why it cannot be resumed from (None when
    it can); `note` is a warning worth printing for a usable one (no manifest).

    With `hashes`, every file's sha256 is compared with the manifest (about 1 s per 1.5 GB, several
    files at a time); without, only presence and sizes (for a folder this process has just written).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder", None
    if not any(folder.iterdir()):
        return "empty folder", None
    note = None
    if (folder / MANIFEST).is_file():
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            step = manifest["step"] if isinstance(manifest, dict) else None
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            return f"manifest.json is unreadable ({_first_line(e)})", None
        m = _STEP_DIR.match(folder.name)
        if m and step != int(m.group(1)):
            return f"manifest.json is for step {step}", None
        problem = _problem_with_manifest(folder, manifest, hashes)
    else:
        problem = _problem_without_manifest(folder)
        note = "has no manifest.json (written by an older rlvr, or the file was removed): its files were " \
               "checked for completeness but not against hashes"
    if problem is None:
        for path in sorted(folder.rglob("*.pt")):
            if problem := pickle_problem(path, path.relative_to(folder).as_posix()):
                break
    return problem, note


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _pick_checkpoint(resume: str, run_dir: Path) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from and the lines to print; raises CheckpointError when there is none
    that `resume` allows."""
    if resume == "never":
        return None, []
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"run.resume: {path} is not a checkpoint folder (no such folder)")
        problem, note = check_checkpoint(path)
        if problem is not None:
            raise CheckpointError(f"run.resume: checkpoint {path} is broken: {problem}; name another "
                                  "checkpoint, or use run.resume=auto to take the newest complete one")
        return path, [f"rlvr: warning: checkpoint {path.name} {note}"] if note else []
    lines, broken = [], []
    found = list_checkpoints(run_dir)
    for _, path in reversed(found):
        problem, note = check_checkpoint(path)
        if problem is None:
            lines = [f"{line}; resuming from {path.name}" for line in lines]
            return path, lines + ([f"rlvr: warning: checkpoint {path.name} {note}"] if note else [])
        broken.append(path.name)
        lines.append(f"rlvr: checkpoint {path.name} is broken ({problem})")
    if found:
        raise CheckpointError(
            f"run.resume=auto: none of the {len(found)} checkpoints in {Path(run_dir) / 'checkpoints'} is "
            f"complete ({'; '.join(line.removeprefix('rlvr: checkpoint ') for line in lines)}); move the "
            "folder aside to start afresh, or name a checkpoint in run.resume")
    return None, []


def resolve_resume(resume: str, run_dir: str | Path, accelerator: Any = None) -> Path | None:
    """'never' -> None; 'auto' -> newest complete checkpoint of run_dir, or None when there is none;
    otherwise that checkpoint folder, which must be complete (CheckpointError if not).

    A broken newer checkpoint is reported in one line (folder and problem) and skipped. Under several
    processes the main process checks (hashing each file once) and the others follow its choice.
    """
    main = accelerator is None or accelerator.is_main_process
    if accelerator is None or accelerator.num_processes == 1:
        path, lines = _pick_checkpoint(resume, Path(run_dir))
        for line in lines:
            _say(line)
        return path
    from accelerate.utils import broadcast_object_list

    choice: list[Any] = [None]
    failed: Exception | None = None
    if main:
        try:
            path, lines = _pick_checkpoint(resume, Path(run_dir))
            for line in lines:
                _say(line)
            choice[0] = ("ok", None if path is None else str(path))
        except Exception as e:  # the others wait in the broadcast below: tell them before raising
            failed = e
            choice[0] = ("error", str(e) if isinstance(e, CheckpointError) else
                         f"checking the checkpoints of {run_dir} failed on the main process: {_first_line(e)}")
    broadcast_object_list(choice)
    if failed is not None:
        raise failed
    kind, value = choice[0]
    if kind == "error":
        raise CheckpointError(value)
    return None if value is None else Path(value)


# ---- writing ----------------------------------------------------------------------------------

def _nonfinite(state: dict[str, Any]) -> tuple[list[str], int]:
    """(names of floating tensors holding NaN or inf, number of floating tensors checked)."""
    floats = [(k, v) for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()]
    return [k for k, v in floats if not bool(torch.isfinite(v).all())], len(floats)


def _save_torch(obj: Any, path: Path) -> None:
    # through a Python file object, so a full disk surfaces as OSError(ENOSPC) in the error chain
    # (torch.save to a path reports it only as "unexpected pos ... inline_container.cc")
    with open(path, "wb") as f:
        torch.save(obj, f)


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space (ENOSPC/EDQUOT anywhere in the chain, safetensors' os
    error 28, or, for writers that hide the errno, less than 1 MiB left on the file system)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "os error 28" in str(e):
            return True
        e = e.__cause__ or e.__context__
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _unplain(obj: Any, where: str) -> str | None:
    """Where in `obj` something other than plain data sits (for the message; torch's scan decides)."""
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device)):
        return None
    if type(obj) in (torch.Tensor, torch.nn.Parameter):
        return None
    if isinstance(obj, dict) and type(obj).__module__ in ("builtins", "collections"):
        for k, v in obj.items():
            if found := _unplain(k, f"{where} key {k!r}") or _unplain(v, f"{where}[{k!r}]"):
                return found
        return None
    if type(obj) in (list, tuple, set):
        for i, v in enumerate(obj):
            if found := _unplain(v, f"{where}[{i}]"):
                return found
        return None
    return f"{where} ({type(obj).__module__}.{type(obj).__qualname__})"


def _remove_stale(root: Path) -> None:
    """Temporary folders of a save that crashed or ran out of space: never needed, only in the way."""
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def _agree(accelerator: Any, failure: str | None) -> str | None:
    """Every process learns the first failure of any process (collective; also a barrier)."""
    if accelerator.num_processes == 1:
        return failure
    from accelerate.utils import gather_object

    found = [f for f in gather_object([failure]) if f is not None]
    return found[0] if found else None


def _from_main(accelerator: Any, value: Any) -> Any:
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box)
    return box[0]


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
    export: bool = False,
) -> Path:
    """Write checkpoint `step` (all processes call this; rank 0 writes the shared files and the manifest).

    A LoRA model (lora.is_lora) saves its adapter in `adapter/` instead of the weights in `model/`;
    with `export` (the run's last step) the merged model goes to `model/` too, so that the last
    checkpoint's `model/` is the trained model whether or not the run trained adapters.

    `shards(folder)`, when given, runs on every process and writes that process's files (a
    sharded optimiser state) into the folder before it is renamed into place. Raises CheckpointError,
    on every process, when the weights are not finite (nothing written), the disk is full, or a
    plug-in state is not plain data (the partial folder removed, earlier checkpoints kept).
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}"
    main = accelerator.is_main_process

    unwrapped = accelerator.unwrap_model(model)
    adapter = lora.is_lora(unwrapped)
    # collective without LoRA: gathers sharded weights onto rank 0
    model_state = lora.adapter_state(unwrapped) if adapter else accelerator.get_state_dict(model)
    bad = _from_main(accelerator, _nonfinite(model_state) if main else None)
    if bad[0]:
        raise CheckpointError(
            f"checkpoint step {step} not written: {len(bad[0])} of {bad[1]} weight tensors hold NaN or inf "
            f"(first: {bad[0][0]}); the earlier checkpoints in {root} are kept")

    failure: str | None = None
    cause: BaseException | None = None  # this process's own exception, kept for `rlvr --debug`

    def attempt(write: Callable[[], None], *, collective: bool = False) -> None:
        """Run one write unless this process already failed; a collective write (DeepSpeed's save)
        runs regardless, so every process still reaches the same collectives; the first failure wins."""
        nonlocal failure, cause
        if failure is not None and not collective:
            return
        try:
            write()
        except Exception as e:
            if failure is not None:
                return
            cause = e
            if _disk_full(e, root):
                failure = (f"no space left writing checkpoint step {step} to {root}: the partial folder was "
                           f"removed and the earlier checkpoints are kept; free some space and resume "
                           f"(keeping checkpoint.keep_last={keep_last} checkpoints needs room for {keep_last + 1})")
            elif isinstance(e, CheckpointError):
                failure = str(e)
            else:
                failure = (f"writing checkpoint step {step} to {root} failed on process "
                           f"{accelerator.process_index}: {_first_line(e)}")

    if main:
        def prepare() -> None:
            root.mkdir(parents=True, exist_ok=True)
            _remove_stale(root)
            tmp.mkdir()
        attempt(prepare)
    failure = _agree(accelerator, failure)
    if failure is None:
        attempt(lambda: _save_torch(rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt"))
        if shards is not None:
            attempt(lambda: shards(tmp), collective=True)
    if main:
        def write_shared() -> None:
            if adapter:
                lora.save_adapter(unwrapped, tmp / "adapter")
                tokenizer.save_pretrained(tmp / "adapter")
            else:
                weights = _without_tied_aliases(model_state, unwrapped)
                unwrapped.save_pretrained(tmp / "model", state_dict=weights, safe_serialization=True)
            if adapter and export:
                lora.save_merged(unwrapped, tmp / "model")
            if not adapter or export:
                tokenizer.save_pretrained(tmp / "model")
            _save_torch(state, tmp / "state.pt")
            if problem := pickle_problem(tmp / "state.pt", "state.pt"):
                where = _unplain(state, "state")
                raise CheckpointError(
                    f"checkpoint step {step} not written: {problem}" + (f", at {where}" if where else "")
                    + "; a plug-in's state_dict() must return tensors, numbers, strings, lists and dicts")
            (tmp / "config.yaml").write_text(config_yaml)
        attempt(write_shared)
    failure = _agree(accelerator, failure)  # every process's files are in place (or one failed)
    if main and failure is None:
        def seal() -> None:
            for path in sorted(tmp.rglob("*.pt")):
                rel = path.relative_to(tmp).as_posix()
                if problem := pickle_problem(path, rel):
                    if rel.startswith("deepspeed/"):  # DeepSpeed's format, not ours: say so, keep the save
                        _say(f"rlvr: warning: checkpoint step {step}: {problem}, so resuming from it will be "
                             "refused (the model/ weights are fine)")
                        continue
                    raise CheckpointError(f"checkpoint step {step} not written: {problem}")
            write_manifest(tmp, step)
        attempt(seal)
    failure = _agree(accelerator, failure)
    if failure is not None:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        raise CheckpointError(failure) from cause
    problem = None
    if main:
        _install(tmp, final)
        problem, _ = check_checkpoint(final, hashes=False)  # the hashes were just taken from these files
        if problem is None:
            _prune(run_dir, final, keep_last)
    problem = _from_main(accelerator, problem)
    if problem is not None:
        raise CheckpointError(f"checkpoint {final} is broken right after writing it ({problem}); "
                              "nothing was pruned")
    return final


def _install(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place; an existing folder of the same step (from a run that
    resumed from an earlier checkpoint) is moved aside first and deleted only afterwards."""
    if final.exists():
        old = final.with_name(f".tmp-old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _prune(run_dir: str | Path, newest: Path, keep_last: int) -> None:
    """Keep `newest` and the keep_last - 1 newest complete checkpoints before it; delete the other
    earlier ones (broken ones included). Later steps (an abandoned branch of a run resumed from an
    earlier checkpoint) are left alone: the run replaces them when it gets there."""
    step = int(_STEP_DIR.match(newest.name).group(1))
    earlier = [p for s, p in reversed(list_checkpoints(run_dir)) if s < step]
    kept = 1
    for path in earlier:
        if kept < keep_last and check_checkpoint(path, hashes=False)[0] is None:
            kept += 1
        else:
            shutil.rmtree(path, ignore_errors=True)


def _without_tied_aliases(state: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Drop the second name of tied parameters (e.g. lm_head.weight tied to the embedding).

    A gathered state dict (FSDP2) holds separate copies of tied tensors, which save_pretrained can
    no longer recognise as shared by their storage, so the file would hold the tensor twice.
    """
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k: v for k, v in state.items() if k not in aliases}


# ---- reading ----------------------------------------------------------------------------------

def load_plain(path: Path, allowed: Iterable[str] = ()) -> Any:
    """torch.load with weights_only=True (plus the named harmless globals); CheckpointError when the
    file holds anything else, so no code stored in a checkpoint ever runs."""
    safe = [_GLOBALS_BY_NAME[n] for n in allowed if n in _GLOBALS_BY_NAME]
    where = f"checkpoint {path.parent.name}: {path.name}"
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a page of advice around one line that names what was refused
        detail = next((line.strip() for line in str(e).splitlines()
                       if any(w in line for w in ("GLOBAL", "Unsupported", "Can only build", "Unpickler error:"))),
                      _first_line(e))
        raise CheckpointError(f"{where} holds objects other than plain data ({detail[:300]}); rlvr loads "
                              "checkpoints with weights_only=True and never runs code stored in them") from None
    except (EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{where} is unreadable ({_first_line(e)})") from None
    except RuntimeError as e:
        if "PytorchStreamReader" not in str(e) and "zip archive" not in str(e):
            raise
        raise CheckpointError(f"{where} is unreadable ({_first_line(e)})") from None


def _numpy_rebuild_globals() -> dict[str, Any]:
    """The numpy objects a pre-format-2 rng file refers to (a uint32 array); None where this numpy
    version lacks one."""
    import numpy.dtypes

    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    return {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype, "numpy.dtypes.UInt32DType": numpy.dtypes.UInt32DType,
            "numpy._core.multiarray._reconstruct": (reconstruct, "numpy._core.multiarray._reconstruct"),
            "numpy.core.multiarray._reconstruct": (reconstruct, "numpy.core.multiarray._reconstruct")}


_GLOBALS_BY_NAME = _numpy_rebuild_globals()


def load_checkpoint_state(path: str | Path, process_index: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(trainer state, this process's RNG state or None if it was saved with fewer processes).

    Both load with weights_only=True; CheckpointError when a file holds anything but plain data."""
    path = Path(path)
    state = load_plain(path / "state.pt")
    rng_file = path / f"rng_rank{process_index}.pt"
    rng = load_plain(rng_file, _LEGACY_RNG_GLOBALS) if rng_file.is_file() else None
    return state, rng
