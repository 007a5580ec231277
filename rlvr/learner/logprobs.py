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
    logits = out.logits[:, :-1, :].float() / temperature  # [B, T, V]
    # log p = logit - logsumexp: unlike log_softmax this keeps no second [B, T, V] tensor for backward
    lse = torch.logsumexp(logits, dim=-1)  # [B, T]
    logp = logits.gather(-1, mb.response_ids.to(device).unsqueeze(-1)).squeeze(-1) - lse
    entropy = token_entropy(logits.detach(), lse.detach()) if with_entropy else None
    return logp, entropy


@torch.no_grad()
def token_entropy(logits: torch.Tensor, lse: torch.Tensor, chunk_rows: int = 1024) -> torch.Tensor:
    """H = logsumexp(l) - sum_v softmax(l)_v * l_v per position, [B, T, V] -> [B, T].

    Computed over chunks of positions so the softmax temporary stays chunk_rows x V (a 150k
    vocabulary at 4k response tokens would otherwise need a second 2.4 GB tensor).
    Example: logits [0, 0] -> H = log 2 = 0.693.
    """
    flat, flat_lse = logits.reshape(-1, logits.shape[-1]), lse.reshape(-1)
    out = torch.empty_like(flat_lse)
    for s in range(0, flat.shape[0], chunk_rows):
        rows = flat[s : s + chunk_rows]
        probs = torch.exp(rows - flat_lse[s : s + chunk_rows, None])
        out[s : s + chunk_rows] = flat_lse[s : s + chunk_rows] - (probs * rows).sum(-1)
    return out.view_as(lse)
