"""Per-sample gradient norms: how strongly each response pulls on one parameter (GVM's stage 1).

For a response y to a prompt x, the norm of the gradient of -sum_t log pi(y_t | x, y_<t) with
respect to one parameter tensor (the first whose name contains a given string, e.g. the token
embeddings). One backward per response, on this process alone: the gradients must be whole and
local, which holds under single and ddp (no_sync keeps DDP from averaging them over processes) but
not under fsdp2, zero2 or zero3, where each process holds only a shard of every gradient.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from rlvr.buffer import pack
from rlvr.learner.batching import pairs_batch
from rlvr.learner.logprobs import response_logprobs
from rlvr.types import LossNorm

# strategies under which each process holds whole gradients of its own backward passes
WHOLE_GRADIENTS = ("single", "ddp")


def whole_gradients_problem(who: str, strategy: str) -> str | None:
    """Why `who` (a config key and value) cannot get per-sample gradient norms under `strategy`
    (as `strategy_of` names it), or None when it can.

    Example: ("sampling.allocator.name: gvm", "fsdp2") -> "sampling.allocator.name: gvm needs whole
    local gradients (learner.strategy: ddp, or a single process); fsdp2 shards them".
    """
    if strategy in WHOLE_GRADIENTS:
        return None
    return f"{who} needs whole local gradients (learner.strategy: ddp, or a single process); {strategy} shards them"


def per_sample_grad_norms(model: torch.nn.Module, unwrapped: torch.nn.Module, acc: Accelerator,
                          prompt_ids: list[list[int]], response_ids: list[list[int]], param_match: str,
                          temperature: float, pad_id: int, chunk_tokens: int = 0) -> list[float]:
    """Per (prompt, response) pair, the gradient norm of -sum_t log pi(y_t) at `temperature` on the
    first trained parameter of `unwrapped` whose name contains `param_match`; `model` is the prepared
    (possibly DDP-wrapped) policy; `chunk_tokens` as in `response_logprobs`. Gradients are cleared afterwards.

    Shapes: one micro-batch [1, S] per pair, log-probs [1, T]; returns N floats for N pairs.
    Example: pairs (x1, y1), (x2, y2) with param_match "embed_tokens" -> [|g1|, |g2|], g_i the
    gradient of pair i's loss on the [V, H] token embedding.
    """
    named = [(n, p) for n, p in unwrapped.named_parameters() if param_match in n]
    param = next((p for _, p in named if p.requires_grad), None)
    if param is None and named:  # model.lora: the base weights are frozen and get no gradient
        raise ValueError(f"sampling.allocator.act_params: every parameter whose name contains {param_match!r} is "
                         "frozen (model.lora trains only the adapters); name a trained one, e.g. 'lora_B' (the "
                         "gradient on lora_A is zero while B is)")
    if param is None:
        raise ValueError(f"sampling.allocator.act_params: no parameter name contains {param_match!r}")
    norms = []
    for prompt, response in zip(prompt_ids, response_ids):
        batch = pairs_batch([prompt], [response], pad_id)
        mb = pack(batch, torch.arange(1), LossNorm(1.0, 1.0, 1), 10**9, pad_id)[0]
        param.grad = None
        with acc.no_sync(model):
            lp, _ = response_logprobs(model, mb, temperature, chunk_tokens=chunk_tokens)
            (-(lp * mb.response_mask.to(lp.device)).sum()).backward()
        norms.append(float(param.grad.norm()))
    model.zero_grad(set_to_none=True)
    return norms
