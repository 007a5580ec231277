"""One RL step's samples as the learner's passes: optimiser steps made of token-budget micro-batches.

An RL step is `epochs_per_step` passes over its samples, each shuffled into `mini_batches_per_step`
mini-batches (one optimiser step each), each packed into micro-batches of at most
`micro_batch_tokens` tokens (rows x padded width). Every micro-batch of a mini-batch carries the
mini-batch's normalisers counted over all processes (aggregation.py divides by them), so the update
does not depend on how the samples are split into micro-batches or processes.

With `skip_zero_advantage` (set where it is exact: see `skip_is_exact`) a sample whose advantage is
exactly 0, such as every sample of a GRPO group whose rewards are all equal, is left out of the
forward and backward passes; the normalisers still count it, so the gradient is the same and the
step is cheaper by the share of such samples.

Under FSDP2 and ZeRO-3 every forward pass is a collective, and under every multi-process strategy
the backward passes synchronise, so all processes must run the same number of them: `equalise`
pads the shorter lists with a repeated micro-batch whose loss scale is 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from rlvr.buffer import as_batch, informative_rows, pack, split_mini_batches
from rlvr.learner.distributed import global_sum
from rlvr.types import AdvantageBatch, LossNorm, MicroBatch, Prompt, Rollouts, ScoredRollouts


@dataclass(frozen=True)
class BatchingConfig:
    """How a step's samples become passes (the `learner` section, plus what packing needs)."""

    mini_batches_per_step: int   # optimiser steps per pass over the step's samples
    epochs_per_step: int         # passes over the step's samples
    micro_batch_tokens: int      # token budget of one forward/backward
    max_new_tokens: int          # rollout.max_new_tokens: the constant some aggregations divide by
    pad_id: int
    seed: int                    # seeds the shuffle of samples into mini-batches
    skip_zero_advantage: bool = False  # leave zero-advantage samples out of the passes (exact only where
    #                                    the loss is 0 for them: `skip_is_exact`)

    @property
    def updates_per_step(self) -> int:
        """Optimiser steps per RL step. Example: 2 mini-batches x 3 epochs -> 6."""
        return self.mini_batches_per_step * self.epochs_per_step


def skip_is_exact(policy_loss: Any, aggregation: Any, kl_in_loss: bool) -> bool:
    """Whether leaving zero-advantage samples out of the update leaves the gradient unchanged.

    It does when the policy loss is 0 (value and gradient) on every token of a row whose advantage
    is 0, the aggregation is a sum over rows divided by the step-global normalisers only (so a row
    of 0 loss adds nothing), and no KL term in the loss acts on every row. The loss and aggregation
    plug-ins (the function or class a recipe names) say so themselves, as attributes:
    `zero_at_zero_advantage = True` and `row_separable = True`; the built-ins do, and a plug-in
    that does not declare it gets every sample.

    Example: (ppo_clip, token_mean, False) -> True; (ppo_clip, token_mean, True) -> False;
    (a plug-in loss without the attribute, token_mean, False) -> False.
    """
    return (getattr(policy_loss, "zero_at_zero_advantage", False) is True
            and getattr(aggregation, "row_separable", False) is True and not kl_in_loss)


class Batcher:
    """Cuts step batches into (micro-batch, loss scale) lists; the same count on every process.

    Holds the generator that shuffles samples into mini-batches (checkpointed by the learner).
    """

    def __init__(self, acc: Accelerator, cfg: BatchingConfig):
        self.acc, self.cfg = acc, cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def mini_batches(self, batch: AdvantageBatch) -> Iterator[list[tuple[MicroBatch, float]]]:
        """The optimiser steps of one RL step, in order: each its micro-batches with their loss scale.

        Collective (the normalisers are summed over processes, the counts equalised), so every
        process draws the next mini-batch at the same time. With N samples, 2 mini-batches and 1
        epoch: two lists, covering rows of sizes ceil(N/2) and floor(N/2) of a seeded permutation.
        """
        n = len(batch.scored.rollouts)
        for _ in range(self.cfg.epochs_per_step):
            for rows in split_mini_batches(n, self.cfg.mini_batches_per_step, self.generator):
                yield self.optimiser_step(batch, rows, skip_zero=self.cfg.skip_zero_advantage)

    def optimiser_step(self, batch: AdvantageBatch, rows: torch.Tensor,
                       skip_zero: bool = False) -> list[tuple[MicroBatch, float]]:
        """The micro-batches of one optimiser step over `rows`, with the step's normalisers counted
        over all processes (collective). Example: rows [0, 1, 2] of 3 samples -> every sample once;
        with skip_zero and advantages [0.5, 0, -0.5] -> rows 0 and 2, normalised as if row 1 were there.
        """
        kept = informative_rows(batch.advantages, batch.weights, rows) if skip_zero else rows
        norm = self._norm(batch, rows, kept)
        return self.equalise(pack(batch, kept, norm, self.cfg.micro_batch_tokens, self.cfg.pad_id))

    def scoring(self, batch: AdvantageBatch, collective: bool) -> list[tuple[MicroBatch, float]]:
        """Every sample of `batch` once, for a pass without gradients (normalisers of 1).

        `collective`: the model's forwards are collective (the policy), so the count is equalised;
        a local model (the frozen reference) gets every micro-batch at scale 1.
        """
        norm = LossNorm(1.0, 1.0, self.cfg.max_new_tokens)
        mbs = pack(batch, torch.arange(len(batch.scored.rollouts)), norm, self.cfg.micro_batch_tokens,
                   self.cfg.pad_id)
        return self.equalise(mbs) if collective else [(mb, 1.0) for mb in mbs]

    def equalise(self, mbs: list[MicroBatch]) -> list[tuple[MicroBatch, float]]:
        """Pair each micro-batch with a loss scale; ranks with fewer micro-batches repeat one at scale 0
        so every process runs the same number of forward and backward passes (DDP all-reduces in the
        last backward, FSDP2/ZeRO gather and reduce in every one, DDP syncs buffers in forwards).

        Example: 3 micro-batches here, 5 on another process -> [(a, 1), (b, 1), (c, 1), (a, 0), (a, 0)].
        """
        count = len(mbs)
        if self.acc.num_processes > 1:
            t = torch.tensor([count], device=self.acc.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            count = int(t)
        return [(mb, 1.0) for mb in mbs] + [(mbs[0], 0.0)] * (count - len(mbs))

    def _norm(self, batch: AdvantageBatch, rows: torch.Tensor, kept: torch.Tensor) -> LossNorm:
        lengths = batch.scored.rollouts.lengths
        tokens, seqs, kept_tokens = global_sum(
            self.acc, [float(lengths[rows].sum()), float(rows.numel()), float(lengths[kept].sum())])
        return LossNorm(tokens=tokens, sequences=seqs, max_response_tokens=self.cfg.max_new_tokens,
                        kept_tokens=kept_tokens)


def pairs_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> AdvantageBatch:
    """Given (prompt, response) token pairs, one group each, as a batch the learner can pack.

    Shapes: N pairs -> response_ids and response_mask [N, T] with T the longest response (at least 1),
    rollout log-probs zero, advantages zero. Example: responses [5, 6] and [7] -> response_ids
    [[5, 6], [7, pad]], response_mask [[1, 1], [1, 0]].
    """
    n = len(prompt_ids)
    width = max([len(r) for r in response_ids] + [1])
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros(n, width)
    for i, r in enumerate(response_ids):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1.0
    prompts = [Prompt(f"probe#{i}", "", p, None, {}) for i, p in enumerate(prompt_ids)]
    ro = Rollouts(prompts, torch.arange(n), ids, mask, torch.zeros(n, width), [""] * n, ["stop"] * n)
    return as_batch(ScoredRollouts(ro, torch.zeros(n), {}, torch.zeros(n, dtype=torch.bool)))
