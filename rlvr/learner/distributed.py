"""How several processes share the policy: DDP, FSDP2 or DeepSpeed ZeRO-2/3, all through accelerate.

`learner.strategy` picks one; `auto` takes what `accelerate launch --config_file` put in the
environment (ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED and their settings) and is plain data
parallel otherwise. `make_accelerator` builds the matching plugin; `strategy_of` reads back what
the accelerator actually runs (a single process is "single" whatever was asked for).

rlvr does its own micro-batching and loss normalisation (see learner.py), so the DeepSpeed
config is pinned to one micro-batch per optimiser step: the learner marks the accumulation
boundary itself on the last micro-batch of each mini-batch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

# strategies whose parameters are sharded: every forward pass all-gathers, so it is collective
SHARDED = ("fsdp2", "zero3")


def _env_flag(env: Mapping[str, str], key: str) -> bool:
    return env.get(key, "false").lower() in ("1", "true", "yes")


def launcher_strategy(env: Mapping[str, str] = os.environ) -> str | None:
    """The strategy `accelerate launch --config_file` configured through the environment, or None.

    Raises for set-ups rlvr does not run: FSDP version 1 (FSDP2 replaces it and is the only FSDP
    that runs on CPU) and ZeRO stage 0/1 requested through a DeepSpeed json.
    """
    if _env_flag(env, "ACCELERATE_USE_DEEPSPEED"):
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
        if config_file != "none":
            with open(config_file) as f:
                stage = str(json.load(f).get("zero_optimization", {}).get("stage", stage))
        if stage not in ("2", "3"):
            raise ValueError(f"learner.strategy: accelerate launch configured DeepSpeed ZeRO stage {stage}; "
                             "rlvr runs stages 2 and 3 (zero_stage: 2 or 3 in the accelerate config)")
        return f"zero{stage}"
    if _env_flag(env, "ACCELERATE_USE_FSDP"):
        if env.get("FSDP_VERSION", "1") != "2":
            raise ValueError("learner.strategy: accelerate launch configured FSDP version 1; rlvr runs FSDP2 "
                             "(fsdp_version: 2 in the accelerate config, see recipes/accelerate/fsdp2.yaml)")
        return "fsdp2"
    return None


def resolve_strategy(requested: str, env: Mapping[str, str] = os.environ) -> str:
    """`learner.strategy` made concrete: 'auto' becomes the launcher's choice or 'ddp'.

    An explicit strategy that contradicts the launcher's (e.g. zero3 under an FSDP config) is an
    error rather than a silent pick, because accelerate would apply the environment's plugin.
    """
    launched = launcher_strategy(env)
    if requested == "auto":
        return launched or "ddp"
    if launched is not None and launched != requested:
        raise ValueError(f"learner.strategy: {requested}, but accelerate launch configured {launched}; set "
                         f"learner.strategy=auto or {launched}, or launch with a matching --config_file")
    if requested in ("zero2", "zero3") and importlib.util.find_spec("deepspeed") is None:
        raise ImportError(f"learner.strategy: {requested} needs deepspeed (pip install -e .[deepspeed])")
    return requested


def planned_strategy(requested: str, env: Mapping[str, str] = os.environ) -> str | None:
    """What `strategy_of` will call the run of `learner.strategy` = `requested` in this launcher
    environment, known before any accelerator or model exists (for config checks); None when the
    environment names a set-up rlvr does not run (`resolve_strategy` says why when the run starts).

    One process (WORLD_SIZE unset or 1) runs ddp and fsdp2 as "single"; DeepSpeed stays zero2/zero3.
    Example: "auto" under torchrun with WORLD_SIZE=4 and no accelerate config -> "ddp".
    """
    try:
        launched = launcher_strategy(env)
    except (ValueError, OSError):
        return None
    strategy = (launched or "ddp") if requested == "auto" else requested
    if strategy in ("ddp", "fsdp2") and int(env.get("WORLD_SIZE", "1")) <= 1:
        return "single"
    return strategy


def resolve_mixed_precision(requested: str) -> str:
    """'auto' -> bf16 on a GPU that has it, else no (fp32 everywhere on CPU)."""
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def deepspeed_config(stage: int, max_grad_norm: float | None, env: Mapping[str, str] = os.environ
                     ) -> dict[str, Any]:
    """The DeepSpeed config rlvr trains with, on top of the launcher's json if it gave one.

    - train_micro_batch_size_per_gpu 1 and gradient_accumulation_steps 1: DeepSpeed's own
      accumulation (which divides the loss by its step count) stays off; the learner runs all
      micro-batches of a mini-batch, marks the last as the accumulation boundary and steps once.
      The batch size is bookkeeping only (rlvr passes no dataloader).
    - gradient_clipping = learner.max_grad_norm (0 = off): DeepSpeed clips inside engine.step,
      the learner never clips itself under DeepSpeed.
    - stage3_gather_16bit_weights_on_model_save: checkpoints hold full HF weights under ZeRO-3.
    """
    config: dict[str, Any] = {}
    config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none") if _env_flag(
        env, "ACCELERATE_USE_DEEPSPEED") else "none"
    if config_file != "none":
        with open(config_file) as f:
            config = json.load(f)
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise ValueError(f"learner.strategy: the DeepSpeed json {config_file} sets `{key}`; rlvr builds its "
                             f"own AdamW and schedule from the learner section, remove `{key}` from the json")
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = stage
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    for device_key, env_key in (("offload_optimizer", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"),
                                ("offload_param", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")):
        if env.get(env_key, "none") != "none" and device_key not in zero:
            zero[device_key] = {"device": env[env_key]}
    config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
                  gradient_clipping=float(max_grad_norm or 0.0), zero_allow_untested_optimizer=True)
    config.pop("train_batch_size", None)  # DeepSpeed derives it: 1 x 1 x processes
    return config


def make_accelerator(strategy: str, mixed_precision: str, max_grad_norm: float | None) -> Accelerator:
    """The Accelerator for a resolved strategy ('ddp', 'fsdp2', 'zero2', 'zero3').

    On a machine without CUDA everything runs on CPU over gloo. DeepSpeed is the exception to
    `cpu=True`: accelerate only selects DeepSpeed when cpu is False, so there the process group
    is created with the gloo backend explicitly and the device falls back to CPU by itself.
    """
    from accelerate.utils import InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    mp = resolve_mixed_precision(mixed_precision)
    kwargs: dict[str, Any] = {"mixed_precision": mp}
    if strategy == "fsdp2":
        from accelerate.utils import FullyShardedDataParallelPlugin

        policy: Any = None
        if mp in ("bf16", "fp16"):
            from torch.distributed.fsdp import MixedPrecisionPolicy

            # compute in low precision, reduce gradients in fp32 (small RL gradients lose less)
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if mp == "bf16" else torch.float16,
                                          reduce_dtype=torch.float32)
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            # one FSDP unit per decoder layer (the model's _no_split_modules) unless the launcher set one
            auto_wrap_policy=os.environ.get("FSDP_AUTO_WRAP_POLICY", "transformer_based_wrap"),
            mixed_precision_policy=policy,
            cpu_ram_efficient_loading=False,  # every process loads the checkpoint (see docs/architecture.md)
        )
        acc = Accelerator(cpu=not cuda, fsdp_plugin=plugin, **kwargs)
        if acc.distributed_type == DistributedType.MULTI_CPU:
            _fsdp_on_cpu(acc, plugin)
        return acc
    elif strategy in ("zero2", "zero3"):
        from accelerate.utils import DeepSpeedPlugin

        stage = int(strategy[-1])
        # once this plugin is selected, transformers builds every model loaded afterwards under
        # deepspeed.zero.Init for ZeRO-3: the policy is partitioned while it loads, so no process
        # ever holds all of it (the reference model opts out, see `whole_model_init`)
        config = deepspeed_config(stage, max_grad_norm)
        # accelerate refuses a full config next to DeepSpeed fields of an accelerate launch config
        # (ACCELERATE_CONFIG_DS_FIELDS); `deepspeed_config` already folded those fields in
        fields = os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
        try:
            kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=config)
        finally:
            if fields is not None:
                os.environ["ACCELERATE_CONFIG_DS_FIELDS"] = fields
        if not cuda:
            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
        _launched_alone()
        return Accelerator(cpu=False, **kwargs)
    return Accelerator(cpu=not cuda, **kwargs)


_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _launch_vars() -> dict[str, str]:
    """The environment variables that tell accelerate and DeepSpeed how this process was launched."""
    return {k: v for k, v in os.environ.items() if k in _LAUNCHER_VARS or k.startswith("ACCELERATE_")}


def _launched_alone() -> None:
    """Give a process started without a launcher the variables torchrun would give one process.

    DeepSpeed always runs in a process group; accelerate only makes one when a launcher set
    LOCAL_RANK, so `rlvr train` alone with ZeRO would fail on a missing group. `owned_process_group`
    puts the variables back as they were.
    """
    if "LOCAL_RANK" in os.environ:
        return
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(dict(zip(_LAUNCHER_VARS, ("0", "0", "1", "1", "127.0.0.1", str(port)), strict=True)))


def _fsdp_on_cpu(acc: Accelerator, plugin: Any) -> None:
    """Make a multi-process CPU accelerator run FSDP2.

    accelerate files every multi-process CPU run under MULTI_CPU and drops the FSDP plugin there
    (its FSDP switch only covers GPU-like devices), although FSDP2's fully_shard runs on CPU over
    gloo. Only CPU runs (CI, tests) take this path; GPU runs get FSDP from accelerate itself.
    """
    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin
    from accelerate.state import PartialState

    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


@contextmanager
def owned_process_group() -> Iterator[None]:
    """Destroy, on leaving, the process group that an Accelerator made inside (however it ends).

    Left to the interpreter's exit, gloo's threads are torn down while they still hold tensors and
    the process can abort after a run that succeeded ("terminate called without an active
    exception", exit -6: seen once in CI on a 2-process ZeRO-3 run; pytorch/pytorch#190489).
    A group that existed before is the caller's and is left alone. Accelerate's state of the group
    is forgotten with it, and the launch variables are put back as they were, so a later
    Accelerator in this process starts afresh.
    """
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    before = dist.is_available() and dist.is_initialized()
    launcher = _launch_vars()
    try:
        yield
    finally:
        if not before and dist.is_available() and dist.is_initialized():
            # local for gloo and NCCL: no other process needs to be here; DeepSpeed's own call also
            # drops the groups it keeps (a later run would find them destroyed)
            ds = sys.modules.get("deepspeed.comm")
            (ds.destroy_process_group if ds is not None and ds.is_initialized() else dist.destroy_process_group)()
            AcceleratorState._reset_state(reset_partial_state=True)
        for key in _launch_vars().keys() - launcher.keys():  # as they were: `_launched_alone` and
            del os.environ[key]  # accelerate's plugins (ACCELERATE_USE_DEEPSPEED) set some
        os.environ.update(launcher)


@contextmanager
def whole_model_init() -> Iterator[None]:
    """Load a model with whole tensors on this process even while ZeRO-3 is active.

    Under ZeRO-3 transformers partitions every model it loads (deepspeed.zero.Init) once
    accelerate selected the plugin; a module that stays outside DeepSpeed (the frozen reference
    model) must be loaded whole, or its forward sees empty weight shards.
    """
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("distributed_type") != DistributedType.DEEPSPEED:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    plugin = AcceleratorState().deepspeed_plugin
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def strategy_of(acc: Accelerator) -> str:
    """What the accelerator runs: 'single', 'ddp', 'fsdp2', 'zero2' or 'zero3'."""
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return f"zero{acc.state.deepspeed_plugin.zero_stage}"
    if acc.is_fsdp2:
        return "fsdp2"
    if acc.distributed_type == DistributedType.FSDP:
        raise ValueError("learner.strategy: FSDP version 1 is not supported; use fsdp2")
    return "ddp" if acc.num_processes > 1 else "single"


def global_sum(acc: Accelerator, values: list[float]) -> list[float]:
    """Each value summed over processes (float64, one all-reduce); the values themselves on one process.

    Example: two processes with [3.0, 1.0] and [5.0, 0.0] -> both get [8.0, 1.0].
    """
    t = torch.tensor(values, dtype=torch.float64, device=acc.device)
    return acc.reduce(t, reduction="sum").tolist() if acc.num_processes > 1 else values


def local_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """An optimiser state_dict under FSDP2 with every DTensor replaced by this process's shard
    (plain tensors pickle without the device mesh); the inverse is `sharded_optimizer_state`."""
    from torch.distributed.tensor import DTensor

    per_param = {i: {k: v.to_local().clone() if isinstance(v, DTensor) else v for k, v in s.items()}
                 for i, s in state["state"].items()}
    return {**state, "state": per_param}


def sharded_optimizer_state(state: dict[str, Any], params: list[torch.Tensor]) -> dict[str, Any]:
    """`local_optimizer_state` turned back into DTensors laid out like the parameters they belong to
    (`params` in the optimiser's order, which is how its state_dict numbers them)."""
    from torch.distributed.tensor import DTensor

    def restore(value: Any, p: torch.Tensor) -> Any:
        if not (isinstance(p, DTensor) and torch.is_tensor(value) and value.shape == p.to_local().shape
                and value.dim() > 0):
            return value  # e.g. AdamW's scalar step count
        return DTensor.from_local(value.to(p.device), p.device_mesh, p.placements, shape=p.shape,
                                  stride=p.stride(), run_check=False)

    per_param = {i: {k: restore(v, params[i]) for k, v in s.items()} for i, s in state["state"].items()}
    return {**state, "state": per_param}
