"""The policy's weights as the rest of the trainer sees them: whole tensors by HF name, for pushing
into a rollout engine, and the log-probs of one token sequence, the learner's side of the probe that
checks the engine got them right (rlvr/rollout/sync.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rlvr.learner import lora
from rlvr.learner.logprobs import response_logprobs
from rlvr.types import LossNorm, MicroBatch


def full_weights(model: torch.nn.Module, strategy: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) of every parameter of the unwrapped HF `model`, in `named_parameters()`
    order ("model.layers.0.self_attn.q_proj.weight"; tied weights appear once). A LoRA model gives
    its merged weights under the base model's names (lora.merged_weights).

    Collective under FSDP2 and ZeRO-3: every process must drain the iterator, in step. Each
    parameter is gathered when it is reached and released before the next one, so the extra
    memory is one full parameter. A tensor is valid until the iterator advances and must not be
    modified (without sharding it is the live parameter): copy it to keep it.
    """
    if lora.is_lora(model):  # the base model's names, the adapters merged in (single and ddp only)
        yield from lora.merged_weights(model)
        return
    if strategy == "zero3":
        import deepspeed

        for name, p in model.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                yield name, p.detach()
        return
    from torch.distributed.tensor import DTensor

    for name, p in model.named_parameters():
        t = p.detach()
        yield name, t.full_tensor() if isinstance(t, DTensor) else t


@contextmanager
def native_precision(module: torch.nn.Module) -> Iterator[None]:
    """Forward passes of `module` (the unwrapped policy) in its weights' own dtype for the duration.

    Under mixed precision, accelerate replaces a prepared module's `forward` by one that runs in
    autocast, and keeps the replaced method as `_original_forward`; that one is put back while the
    context lasts (hooks, DDP and FSDP2 still run: only the autocast is gone). A module without
    the wrapper is left as it is.
    """
    original, wrapped = module.__dict__.get("_original_forward"), module.__dict__.get("forward")
    if original is None or wrapped is None:
        yield
        return
    module.forward = original
    try:
        yield
    finally:
        module.forward = wrapped


@torch.no_grad()
def sequence_logprobs(model: torch.nn.Module, token_ids: list[int], chunk_tokens: int = 0) -> torch.Tensor:
    """[S - 1] log p(token_i | tokens_<i) at temperature 1 under `model` (the prepared policy) for one
    sequence of S tokens, in eval mode (the training mode is restored afterwards); collective when
    the model is sharded; `chunk_tokens` as in `response_logprobs`. Example: 5 tokens -> 4 log-probs, of tokens 1..4.
    """
    ids = torch.tensor([token_ids])
    ones = torch.ones_like(ids)
    mb = MicroBatch(ids, ones, ids[:, 1:], ones[:, 1:].float(), torch.zeros(1), torch.ones(1), None, None,
                    torch.zeros(1, ids.shape[1] - 1), LossNorm(1.0, 1.0, 1), torch.zeros(1, dtype=torch.long))
    was_training = model.training
    model.eval()
    try:
        lp, _ = response_logprobs(model, mb, 1.0, chunk_tokens=chunk_tokens)
    finally:
        model.train(was_training)
    return lp[0].float().cpu()
