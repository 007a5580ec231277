"""LoRA (low-rank adapters) through the `peft` library: `model.lora` in the recipe.

Each targeted linear layer y = W x becomes y = W x + (alpha / r) * B (A x), with A [r, in] and
B [out, r] trained and W frozen (Hu et al. 2021, "LoRA", eq. 3). B starts at zero, so step 0 is
the base model exactly. What the rest of rlvr sees of it:

- the optimiser holds A and B only (they are the only parameters with requires_grad);
- checkpoints hold the adapter (`adapter/`: peft's adapter_config.json and adapter_model.safetensors,
  plus the tokenizer), never the base weights, which come back from model.path on resume;
- the rollout engine gets merged tensors under the base model's own names (W + (alpha / r) B A for
  every adapted layer, the other parameters as they are), so vLLM loads them like any full update;
- the KL reference, unless model.ref_path names another model, is the policy with its adapters
  switched off (`disable_adapter()`): the base model without a second copy of it in memory;
- the run's final checkpoint also holds `model/`, the merged model, which plain transformers loads.

Only strategies whose processes hold whole parameters (single, ddp) run it: see `strategy_problem`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

ADAPTER = "default"  # peft's name for the one adapter rlvr trains
ADAPTER_FILE = "adapter_model.safetensors"


def peft_missing() -> str:
    """The message for a recipe with model.lora where peft is not installed."""
    return "model.lora: needs the peft package, which is not installed (pip install -e '.[lora]')"


def strategy_problem(strategy: str) -> str | None:
    """Why model.lora cannot run under `strategy` ('single', 'ddp', 'fsdp2', 'zero2', 'zero3'), or None.

    Under FSDP2 and ZeRO the parameters or their optimiser state are split over processes; rlvr's
    merged weight push, adapter checkpoints and adapters-off reference read whole parameters, and that
    combination has not been built or tested. Example: 'fsdp2' -> a message naming both keys.
    """
    if strategy in ("single", "ddp"):
        return None
    return (f"model.lora: not supported with learner.strategy {strategy} (adapters train under single-process "
            "and ddp runs); use learner.strategy: ddp, whose memory the small adapter optimiser already keeps low")


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Sorted short names of the model's linear layers that may get adapters, the output head left
    out. Example: a Qwen2 model -> ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted({name.rpartition(".")[2] for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and m is not head})


def target_problems(model: torch.nn.Module, targets: list[str] | str) -> list[str]:
    """model.lora.target_modules entries that match no adaptable linear layer of `model` (peft's rule:
    a module whose full name equals the entry or ends with '.' + entry), with the names that would."""
    if isinstance(targets, str):  # all-linear
        return []
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear)]
    return [f"model.lora.target_modules: {t!r} matches no linear module of the model; its linear modules are "
            f"{', '.join(linear_module_names(model))} (or all-linear)" for t in missing]


def add_adapters(model: torch.nn.Module, *, r: int, alpha: float, dropout: float,
                 target_modules: list[str] | str) -> torch.nn.Module:
    """`model` wrapped by peft with fresh adapters (A random, B zero: the same outputs as before);
    every other parameter frozen. Raises ValueError naming model.lora.target_modules when an entry
    matches nothing, ImportError when peft is missing."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError(peft_missing()) from None
    if problems := target_problems(model, target_modules):
        raise ValueError("; ".join(problems))
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules))
    return get_peft_model(model, config, adapter_name=ADAPTER)


def is_lora(model: torch.nn.Module) -> bool:
    """Whether `model` (unwrapped) carries peft adapters."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors by peft's saved names ('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight')."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=ADAPTER)


def save_adapter(model: torch.nn.Module, folder: Path) -> None:
    """adapter_config.json and adapter_model.safetensors into `folder` (the adapter only)."""
    model.save_pretrained(str(folder), selected_adapters=[ADAPTER], safe_serialization=True)


def load_adapter(model: torch.nn.Module, folder: Path) -> None:
    """Put the adapter saved in `folder` into `model` (made by `add_adapters` with the same settings).
    Raises ValueError when the file's tensors and the model's adapters differ (another model.lora)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(Path(folder) / ADAPTER_FILE))
    expected = set(adapter_state(model))
    if set(saved) != expected:
        odd = sorted(set(saved) ^ expected)
        raise ValueError(f"{folder}: the saved adapter has other tensors than model.lora makes for this model "
                         f"({len(odd)} differ, e.g. {odd[0]}); resume with the model.lora it was trained with")
    set_peft_model_state_dict(model, saved, adapter_name=ADAPTER)


@torch.no_grad()
def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(base model's name, tensor) of every parameter as if the adapters were merged into it: the
    names of the model before `add_adapters`, in its order, tied weights once, no adapter tensors.

    An adapted layer's weight is W + (alpha / r) * B @ A (a new tensor); every other tensor is the live
    parameter, valid until the iterator advances. Example: with r = 1, alpha = 2, W = 0 [2, 2],
    A = [[1, 0]], B = [[1], [2]] the layer's weight comes out as [[2, 0], [4, 0]].
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, p in base.named_parameters():
        if any(part.startswith("lora_") for part in name.split(".")):
            continue  # the adapter's own tensors (...q_proj.lora_A.default.weight)
        owner, _, leaf = name.rpartition(".")
        if owner.endswith(".base_layer") and (layer_name := owner.removesuffix(".base_layer")) in layers:
            t = p.detach()
            if leaf == "weight":
                t = t + layers[layer_name].get_delta_weight(ADAPTER).to(t.dtype)
            yield f"{layer_name}.{leaf}", t
        else:
            yield name, p.detach()


def save_merged(model: torch.nn.Module, folder: Path) -> None:
    """The merged model (`merged_weights`) as a transformers folder (config and safetensors) that
    loads without peft; the live model keeps its adapters."""
    base = model.get_base_model()
    base.save_pretrained(str(folder), state_dict=dict(merged_weights(model)), safe_serialization=True)
