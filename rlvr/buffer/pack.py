"""Stage 4: scored samples -> mini-batches (one optimiser step each) -> micro-batches.

Micro-batches are packed by a token budget (rows x padded width), longest first, so padding
stays small and memory per forward is bounded whatever the response lengths are.
"""

from __future__ import annotations

import torch

from rlvr.types import AdvantageBatch, LossNorm, MicroBatch, ScoredRollouts


def as_batch(scored: ScoredRollouts) -> AdvantageBatch:
    """Samples without advantages (zeros) or log-probs, to pack them for log-prob or gradient passes."""
    n = len(scored.rollouts)
    return AdvantageBatch(scored, torch.zeros(n), torch.ones(n), None, None)


def split_mini_batches(n: int, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffle row indices 0..n-1 and cut them into `count` nearly equal mini-batches.

    Example: n = 5, count = 2 -> two index tensors of sizes 3 and 2 (a seeded permutation).
    """
    order = torch.randperm(n, generator=generator) if count > 1 else torch.arange(n)
    return [chunk for chunk in torch.tensor_split(order, count) if chunk.numel()]


def informative_rows(advantages: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The `rows` whose weighted advantage is not exactly 0, in order; the first row when none is.

    advantages, weights [N]; rows [K] long. Where the policy loss is 0 at advantage 0 and nothing else
    (no KL term in the loss) acts on a row, the rows left out contribute exactly 0 to the gradient, so
    the update is the same without their forward and backward passes. One row is kept even then, so
    the optimiser step still runs on every process (DDP and ZeRO need each rank's backward).
    Example: advantages [0.5, 0, -0.5, 0], weights 1, rows [3, 1, 0] -> [0]; rows [3, 1] -> [3].
    """
    keep = rows[(advantages[rows] * weights[rows]) != 0]
    return keep if keep.numel() else rows[:1]


def plan_micro_batches(prompt_lens: list[int], resp_lens: list[int], rows: list[int], budget: int) -> list[list[int]]:
    """Group `rows` so that rows x (max prompt + max response) <= budget (at least one row each).

    Example: lengths (prompt+response) 10, 9, 3, 2 with budget 20 -> [[10, 9], [3, 2]] by row.
    """
    order = sorted(rows, key=lambda r: prompt_lens[r] + resp_lens[r], reverse=True)
    plans: list[list[int]] = []
    cur: list[int] = []
    wp = wr = 0
    for r in order:
        np_, nr = max(wp, prompt_lens[r]), max(wr, resp_lens[r])
        if cur and (len(cur) + 1) * (np_ + nr) > budget:
            plans.append(cur)
            cur, np_, nr = [], prompt_lens[r], resp_lens[r]
        cur.append(r)
        wp, wr = np_, nr
    if cur:
        plans.append(cur)
    return plans


def make_micro_batch(batch: AdvantageBatch, rows: list[int], norm: LossNorm, pad_id: int) -> MicroBatch:
    """The B = len(rows) samples `rows` of the step batch as one `MicroBatch`, padded only to their own widths.

    Prompts are left-padded and responses right-padded (to the longest response of these rows, at
    least 1), so S = longest prompt + T. Example: prompts [5] and [6, 7], responses 2 and 1 tokens
    -> input_ids [[pad, 5, r, r], [6, 7, r, pad]], T = 2, S = 4.
    """
    ro = batch.scored.rollouts
    idx = torch.tensor(rows, dtype=torch.long)
    prompts = [ro.prompts[int(ro.group[r])].token_ids for r in rows]
    lens = ro.widths[idx]  # the environment's tokens of an episode too (context, not trained)
    width_r = max(int(lens.max()), 1)
    width_p = max(len(p) for p in prompts)
    b = len(rows)
    input_ids = torch.full((b, width_p + width_r), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width_p + width_r), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width_p - len(p) : width_p] = torch.tensor(p, dtype=torch.long)
        attn[i, width_p - len(p) : width_p] = 1
    resp_ids = ro.response_ids[idx, :width_r]
    resp_mask = ro.response_mask[idx, :width_r]
    input_ids[:, width_p:] = resp_ids
    attn[:, width_p:] = ro.present[idx, :width_r].long()

    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[idx, :width_r]

    return MicroBatch(
        input_ids=input_ids,
        attention_mask=attn,
        response_ids=resp_ids,
        response_mask=resp_mask,
        advantages=batch.advantages[idx],
        weights=batch.weights[idx],
        old_logprobs=cut(batch.old_logprobs),
        ref_logprobs=cut(batch.ref_logprobs),
        rollout_logprobs=cut(ro.rollout_logprobs),
        norm=norm,
        index=idx,
    )


def pack(batch: AdvantageBatch, rows: torch.Tensor, norm: LossNorm, budget: int, pad_id: int) -> list[MicroBatch]:
    """Micro-batches covering `rows` of the step batch, all sharing one normaliser."""
    ro = batch.scored.rollouts
    prompt_lens = [len(ro.prompts[int(g)].token_ids) for g in ro.group]
    resp_lens = ro.widths.tolist()
    plans = plan_micro_batches(prompt_lens, resp_lens, rows.tolist(), budget)
    return [make_micro_batch(batch, p, norm, pad_id) for p in plans]
