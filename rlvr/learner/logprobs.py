"""Per-token log-probs (and entropy) of the response tokens of a micro-batch."""

from __future__ import annotations

import torch

from rlvr.types import MicroBatch


def response_logprobs(
    model: torch.nn.Module, mb: MicroBatch, temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | x, y_<t) at `temperature` for the last T columns of the micro-batch.

    Shapes: input_ids [B, S], response_ids [B, T] -> logprobs [B, T] (float32), entropy [B, T]
    (float32, no gradient) or None. Only the last T+1 positions' logits are computed, and the
    logits at position s predict token s+1, hence the [:-1] slice.
    """
    device = next(model.parameters()).device
    ids = mb.input_ids.to(device)
    attn = mb.attention_mask.to(device)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    t = mb.response_ids.shape[1]
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=t + 1, use_cache=False)
    logits = out.logits[:, :-1, :].float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, mb.response_ids.to(device).unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
