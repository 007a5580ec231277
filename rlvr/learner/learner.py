"""Stage 5: the policy-gradient update, on one process or many (through accelerate).

One RL step = `epochs_per_step` passes over the step's samples, each cut into
`mini_batches_per_step` optimiser steps, each made of token-budget micro-batches whose losses
are divided by step-global counts (see aggregation.py), so the update is the same whatever the
micro-batch or process split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from accelerate import Accelerator

from rlvr.buffer import pack, split_mini_batches
from rlvr.learner.logprobs import response_logprobs
from rlvr.learner.policy_loss import kl_estimate
from rlvr.types import AdvantageBatch, LossNorm, MicroBatch


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up over `warmup` optimiser steps, then constant or cosine down to min_ratio.

    Example: warmup 2, total 6, cosine, min 0 -> 0.5, 1.0, 1.0, 0.854, 0.5, 0.146 at steps 0..5.
    """

    def f(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (i - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


class Learner:
    def __init__(
        self,
        model: torch.nn.Module,
        ref_model: torch.nn.Module | None,
        accelerator: Accelerator,
        *,
        policy_loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
        aggregation: Callable[[torch.Tensor, torch.Tensor, LossNorm], torch.Tensor],
        lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        warmup_steps: int,
        schedule: str,
        min_lr_ratio: float,
        total_steps: int,
        max_grad_norm: float | None,
        mini_batches_per_step: int,
        epochs_per_step: int,
        micro_batch_tokens: int,
        temperature: float,
        max_new_tokens: int,
        kl_coef: float,
        kl_estimator: str,
        kl_in_loss: bool,
        pad_id: int,
        seed: int,
    ):
        self.acc = accelerator
        self.policy_loss = policy_loss
        self.aggregation = aggregation
        self.max_grad_norm = max_grad_norm
        self.mini_batches = mini_batches_per_step
        self.epochs = epochs_per_step
        self.budget = micro_batch_tokens
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.kl_coef, self.kl_estimator, self.kl_in_loss = kl_coef, kl_estimator, kl_in_loss
        self.pad_id = pad_id
        self.generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=lr, betas=betas, weight_decay=weight_decay
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        updates = mini_batches_per_step * epochs_per_step
        # stepped by hand: accelerate's scheduler wrapper would step once per process
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(warmup_steps * updates, total_steps * updates, schedule, min_lr_ratio)
        )
        self.ref_model = ref_model.to(accelerator.device) if ref_model is not None else None

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.acc.unwrap_model(self.model)

    @property
    def needs_old_logprobs(self) -> bool:
        """With a single update per step the old policy is the current one: ratio = 1 exactly."""
        return self.mini_batches * self.epochs > 1 or (self.kl_coef > 0 and not self.kl_in_loss)

    def _global_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.acc.device)
        return self.acc.reduce(t, reduction="sum").tolist() if self.acc.num_processes > 1 else values

    def _norm(self, batch: AdvantageBatch, rows: torch.Tensor) -> LossNorm:
        tokens, seqs = self._global_sum([float(batch.scored.rollouts.lengths[rows].sum()), float(rows.numel())])
        return LossNorm(tokens=tokens, sequences=seqs, max_response_tokens=self.max_new_tokens)

    def _equalise(self, mbs: list[MicroBatch]) -> list[tuple[MicroBatch, float]]:
        """Pair each micro-batch with a loss scale; ranks with fewer micro-batches repeat one at scale 0
        so every process runs the same number of backward passes (DDP all-reduces in each)."""
        count = len(mbs)
        if self.acc.num_processes > 1:
            t = torch.tensor([count], device=self.acc.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            count = int(t)
        return [(mb, 1.0) for mb in mbs] + [(mbs[0], 0.0)] * (count - len(mbs))

    @torch.no_grad()
    def logprobs(self, batch: AdvantageBatch, use_ref: bool) -> torch.Tensor:
        """[N, T] log-probs of every response token under the policy or the reference model."""
        model = self.ref_model if use_ref else self.model
        ro = batch.scored.rollouts
        out = torch.zeros_like(ro.rollout_logprobs)
        norm = LossNorm(1.0, 1.0, self.max_new_tokens)
        for mb in pack(batch, torch.arange(len(ro)), norm, self.budget, self.pad_id):
            lp, _ = response_logprobs(model, mb, self.temperature)
            out[mb.index, : lp.shape[1]] = lp.float().cpu() * mb.response_mask
        return out

    def step(self, batch: AdvantageBatch) -> dict[str, float]:
        self.model.train()
        sums: dict[str, float] = {}
        grad_norms = []
        n = len(batch.scored.rollouts)
        updates = 0
        for _ in range(self.epochs):
            for rows in split_mini_batches(n, self.mini_batches, self.generator):
                norm = self._norm(batch, rows)
                mbs = self._equalise(pack(batch, rows, norm, self.budget, self.pad_id))
                self.optimizer.zero_grad(set_to_none=True)
                for i, (mb, scale) in enumerate(mbs):
                    last = i == len(mbs) - 1
                    with self.acc.no_sync(self.model) if not last else nullcontext():
                        loss, stats = self._micro_loss(mb)
                        # DDP averages gradients over processes; the normalisers already span them
                        self.acc.backward(loss * scale * self.acc.num_processes)
                    if scale:
                        for k, v in stats.items():
                            sums[k] = sums.get(k, 0.0) + v
                grad_norms.append(self._clip_and_step())
                updates += 1
        totals = dict(zip(sums, self._global_sum(list(sums.values()))))
        metrics = {f"learner/{k}": v / updates for k, v in totals.items()}
        metrics["learner/grad_norm"] = sum(grad_norms) / len(grad_norms)
        metrics["learner/lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def _micro_loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        device = self.acc.device
        logp, entropy = response_logprobs(self.model, mb, self.temperature, with_entropy=True)
        mask = mb.response_mask.to(device)
        old = mb.old_logprobs.to(device) if mb.old_logprobs is not None else logp.detach()
        adv = (mb.advantages * mb.weights).to(device)
        tok_loss, tok_stats = self.policy_loss(logp, old, adv, mask)
        pg = self.aggregation(tok_loss, mask, mb.norm)
        loss = pg
        stats = {"pg_loss": float(pg.detach())}
        if self.ref_model is not None:
            kl = kl_estimate(logp, mb.ref_logprobs.to(device), self.kl_estimator) * mask
            kl_agg = self.aggregation(kl, mask, mb.norm)
            if self.kl_in_loss:
                loss = loss + self.kl_coef * kl_agg
            stats["kl"] = float(kl_agg.detach())
        stats["loss"] = float(loss.detach())
        tokens = max(mb.norm.tokens, 1.0)
        for k, v in tok_stats.items():
            stats[k] = float(v.sum()) / tokens
        stats["entropy"] = float((entropy * mask).sum()) / tokens
        diff = (logp.detach() - mb.rollout_logprobs.to(device)).abs() * mask
        stats["rollout_logprob_diff"] = float(diff.sum()) / tokens
        return loss, stats

    def _clip_and_step(self) -> float:
        limit = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        norm = self.acc.clip_grad_norm_(self.model.parameters(), limit)
        self.optimizer.step()
        self.scheduler.step()
        return float(norm)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
