"""Stage 5: the policy-gradient update, on one process or many (through accelerate).

One RL step = `epochs_per_step` passes over the step's samples, each cut into
`mini_batches_per_step` optimiser steps, each made of token-budget micro-batches whose losses
are divided by step-global counts (see aggregation.py), so the update is the same whatever the
micro-batch or process split.

Distributed strategies (rlvr/learner/distributed.py): under DDP and ZeRO-2 every process holds
the full parameters; under FSDP2 and ZeRO-3 they are sharded, so every forward pass is a
collective and all processes must run the same number of them (`_equalise`). DeepSpeed owns the
optimiser step and the clipping (engine.step at the accumulation boundary); under the other
strategies the learner clips and steps itself.

Non-finite updates: before an optimiser step the learner checks the mini-batch's loss (summed over
processes) and the gradient norm; if either is NaN or inf on any process, every process drops the
gradients and skips that step (`NonFiniteGuard` counts it; the loop stops the run after
`learner.max_nonfinite_steps` RL steps in a row with a skipped update).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from rlvr.buffer import pack, split_mini_batches
from rlvr.learner.distributed import SHARDED, local_optimizer_state, sharded_optimizer_state, strategy_of
from rlvr.learner.logprobs import response_logprobs
from rlvr.learner.policy_loss import kl_estimate
from rlvr.learner.rollout_correction import mismatch_stats
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


def nonfinite_part(loss: float, grad_norm: float | None, loss_scaled: bool = False) -> str | None:
    """What went non-finite in one mini-batch: "loss", "gradient norm", "loss and gradient norm",
    or None when the update is safe to apply.

    A norm of None (DeepSpeed with the norm turned off) is not evidence either way. Under fp16
    loss scaling an overflowing gradient with a finite loss is routine (the scaler skips that step
    and lowers the scale), so only the loss counts there.
    Example: nonfinite_part(nan, inf) -> "loss and gradient norm"; nonfinite_part(0.3, 1.2) -> None.
    """
    bad_loss = not math.isfinite(loss)
    bad_norm = grad_norm is not None and not math.isfinite(grad_norm) and not loss_scaled
    if bad_loss and bad_norm:
        return "loss and gradient norm"
    return "loss" if bad_loss else "gradient norm" if bad_norm else None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


@dataclass
class NonFiniteGuard:
    """Counts optimiser steps skipped because the loss or the gradient norm was NaN/inf, and says
    when the run should stop: after `max_steps` RL steps IN A ROW that each skipped at least one
    update. Consecutive rather than total, so that a rare bad batch in a long run costs one update
    while a run whose every step is broken (weights already garbage, a loss that always overflows)
    stops within a few steps. Checkpointed with the learner, so a resumed run keeps its count.
    """

    max_steps: int = 3
    total: int = 0                  # updates skipped since the run began (logged as learner/nonfinite_total)
    streak: int = 0                 # RL steps in a row with a skipped update
    first_step: int | None = None   # first step of the current streak
    what: str = ""                  # what went non-finite in the last skipped update
    values: str = ""                # "loss=nan, grad_norm=inf" of the last skipped update
    step: int = 0                   # the RL step last closed, and its skipped / attempted updates
    skipped: int = 0
    updates: int = 0

    def record(self, part: str | None, loss: float, grad_norm: float | None) -> None:
        """One optimiser step's verdict (`nonfinite_part`), taken alike on every process."""
        self.updates += 1
        if part is not None:
            self.skipped += 1
            self.total += 1
            self.what, self.values = part, f"loss={_fmt(loss)}, grad_norm={_fmt(grad_norm)}"

    def end_step(self, step: int) -> dict[str, float]:
        """Close RL step `step` (its updates were `record`ed): update the streak, return its metrics."""
        if self.skipped:
            self.first_step = step if self.streak == 0 else self.first_step
            self.streak += 1
        else:
            self.streak, self.first_step = 0, None
        self.step = step
        return {"learner/nonfinite_skipped": float(self.skipped), "learner/nonfinite_total": float(self.total)}

    def begin_step(self) -> None:
        self.skipped = self.updates = 0

    def warning(self) -> str | None:
        """One line about the step just closed if it skipped an update, else None."""
        if not self.skipped:
            return None
        return (f"learner: step {self.step}: skipped {self.skipped} of {self.updates} update(s), non-finite "
                f"{self.what} ({self.values}); {self.streak} step(s) in a row, the run stops at {self.max_steps} "
                "(learner.max_nonfinite_steps)")

    @property
    def should_stop(self) -> bool:
        return self.streak >= self.max_steps

    def stop_message(self) -> str:
        """Why the run stops (the loop adds where the last checkpoint is)."""
        span = f"steps {self.first_step}-{self.step}" if self.first_step != self.step else f"step {self.step}"
        return (f"learner: {self.streak} step(s) in a row had a non-finite {self.what} ({span}; last at step "
                f"{self.step}: {self.values}); their updates were skipped and the run stopped "
                f"(learner.max_nonfinite_steps={self.max_steps})")

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "streak": self.streak, "first_step": self.first_step, "what": self.what,
                "values": self.values}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.streak = int(state.get("total", 0)), int(state.get("streak", 0))
        self.first_step, self.what, self.values = state.get("first_step"), state.get("what", ""), state.get("values", "")


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
        rollout_correction: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None,
        max_nonfinite_steps: int = 3,
    ):
        self.acc = accelerator
        self.rollout_correction = rollout_correction  # importance weights engine -> learner, or None
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
        self.guard = NonFiniteGuard(max_nonfinite_steps)
        self.strategy = strategy_of(accelerator)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=lr, betas=betas, weight_decay=weight_decay
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        # DeepSpeed wraps the module in its engine, which steps, clips and zeroes gradients itself
        self.engine = self.model if self.strategy.startswith("zero") else None
        updates = mini_batches_per_step * epochs_per_step
        # stepped by hand: accelerate's scheduler wrapper would step once per process. It drives the
        # optimiser that applies the update: the AdamW built above (accelerate and DeepSpeed swap its
        # parameter groups for sharded or flat ones), or DeepSpeed's CPU Adam under optimiser offload
        applies = self.engine.basic_optimizer if self.engine is not None else optimizer
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            applies, lr_lambda(warmup_steps * updates, total_steps * updates, schedule, min_lr_ratio)
        )
        # The reference model stays a plain frozen module on every process, even under FSDP2/ZeRO-3:
        # it has no gradients or optimiser state, so sharding it would only save one copy of its
        # weights, at the price of a collective in every reference forward; unsharded, its forwards
        # need no lock-step between processes.
        self.ref_model = ref_model.to(accelerator.device) if ref_model is not None else None

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The HF model (its class, parameter names, generate()); under FSDP2 and ZeRO-3 it holds
        shards and each forward is collective (see `sharded`)."""
        return self.acc.unwrap_model(self.model)

    @property
    def sharded(self) -> bool:
        """Parameters are split across processes (FSDP2, ZeRO-3): every forward of the policy, and so
        every generate() step, must run on all processes together."""
        return self.strategy in SHARDED

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
        so every process runs the same number of forward and backward passes (DDP all-reduces in the
        last backward, FSDP2/ZeRO gather and reduce in every one, DDP syncs buffers in forwards)."""
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
        mbs = pack(batch, torch.arange(len(ro)), norm, self.budget, self.pad_id)
        # the policy's forwards may be collective (see _equalise); the reference model is local
        for mb, scale in self._equalise(mbs) if not use_ref else [(mb, 1.0) for mb in mbs]:
            lp, _ = response_logprobs(model, mb, self.temperature)
            if scale:
                out[mb.index, : lp.shape[1]] = lp.float().cpu() * mb.response_mask
        return out

    @torch.no_grad()
    def sequence_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """[len - 1] log p(token_i | tokens_<i) at temperature 1 under the current policy (the
        learner's side of the weight-sync probe; every process calls it under sharding)."""
        ids = torch.tensor([token_ids])
        ones = torch.ones_like(ids)
        mb = MicroBatch(ids, ones, ids[:, 1:], ones[:, 1:].float(), torch.zeros(1), torch.ones(1), None, None,
                        torch.zeros(1, ids.shape[1] - 1), LossNorm(1.0, 1.0, 1), torch.zeros(1, dtype=torch.long))
        was_training = self.model.training
        self.model.eval()
        try:
            lp, _ = response_logprobs(self.model, mb, 1.0)
        finally:
            self.model.train(was_training)
        return lp[0].float().cpu()

    def full_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, full tensor) of every policy parameter, for pushing into a rollout engine or a
        checkpoint, in `named_parameters()` order of the HF model ("model.layers.0.self_attn.q_proj.weight";
        tied weights appear once).

        Collective under FSDP2 and ZeRO-3: every process must drain the iterator, in step. Each
        parameter is gathered when it is reached and released before the next one, so the extra
        memory is one full parameter. A tensor is valid until the iterator advances and must not be
        modified (without sharding it is the live parameter): copy it to keep it.
        """
        model = self.unwrapped
        if self.strategy == "zero3":
            import deepspeed

            for name, p in model.named_parameters():
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    yield name, p.detach()
            return
        from torch.distributed.tensor import DTensor

        for name, p in model.named_parameters():
            t = p.detach()
            yield name, t.full_tensor() if isinstance(t, DTensor) else t

    def step(self, batch: AdvantageBatch, step: int = 0) -> dict[str, float]:
        """One RL step's update; `step` only labels the non-finite bookkeeping (`self.guard`)."""
        self.model.train()
        self.guard.begin_step()
        sums: dict[str, float] = {}
        grad_norms = []
        n = len(batch.scored.rollouts)
        updates = 0
        for _ in range(self.epochs):
            for rows in split_mini_batches(n, self.mini_batches, self.generator):
                norm = self._norm(batch, rows)
                mbs = self._equalise(pack(batch, rows, norm, self.budget, self.pad_id))
                self.optimizer.zero_grad(set_to_none=True)
                mini_loss = 0.0
                for i, (mb, scale) in enumerate(mbs):
                    last = i == len(mbs) - 1
                    with self._accumulating(last):
                        loss, stats = self._micro_loss(mb)
                        # every strategy averages gradients over processes; the normalisers already span them
                        self._backward(loss * scale * self.acc.num_processes, last)
                    if scale:
                        mini_loss += stats["loss"]
                        for k, v in stats.items():
                            sums[k] = sums.get(k, 0.0) + v
                grad_norms.append(self._clip_and_step(mini_loss))
                updates += 1
        totals = dict(zip(sums, self._global_sum(list(sums.values()))))
        metrics = {f"learner/{k}": v / updates for k, v in totals.items()}
        metrics["learner/grad_norm"] = sum(grad_norms) / len(grad_norms)
        metrics["learner/lr"] = self.scheduler.get_last_lr()[0]
        metrics.update(self.guard.end_step(step))
        return metrics

    def _micro_loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        device = self.acc.device
        logp, entropy = response_logprobs(self.model, mb, self.temperature, with_entropy=True)
        mask = mb.response_mask.to(device)
        old = mb.old_logprobs.to(device) if mb.old_logprobs is not None else logp.detach()
        adv = (mb.advantages * mb.weights).to(device)
        tok_loss, tok_stats = self.policy_loss(logp, old, adv, mask)
        rollout_lp = mb.rollout_logprobs.to(device)
        tok_stats = {**tok_stats, **mismatch_stats(old, rollout_lp, mask)}
        if self.rollout_correction is not None:
            is_weights, is_stats = self.rollout_correction(old, rollout_lp, mask)
            tok_loss = tok_loss * is_weights
            tok_stats.update(is_stats)
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
        return loss, stats

    def _accumulating(self, last: bool) -> AbstractContextManager:
        """Gradients stay local until the last micro-batch of a mini-batch (DDP no_sync, FSDP2
        set_requires_gradient_sync). DeepSpeed learns the boundary in `_backward` instead."""
        return nullcontext() if last or self.engine is not None else self.acc.no_sync(self.model)

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        if self.engine is None:
            self.acc.backward(loss)
            return
        # DeepSpeed: reduce (ZeRO-2) or reduce-scatter (ZeRO-3) into the partitions and keep
        # accumulating; the optimiser step waits for engine.step() in _clip_and_step
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss)

    def _clip_and_step(self, local_loss: float) -> float:
        """Clip to max_grad_norm and apply AdamW, unless the mini-batch's loss (`local_loss`, this
        process's part) or the gradient norm is non-finite on any process: then every process drops
        the gradients instead (recorded in `self.guard`). Returns the norm before clipping.

        The LR schedule advances either way: it is a function of training progress (RL steps,
        counted against run.steps), so a skipped update does not shift warm-up or the cosine's end,
        and every strategy (including DeepSpeed, whose own scheduler would pause) keeps one rule.
        """
        if self.engine is not None:
            norm, part, loss = self._deepspeed_step(local_loss)
        else:
            limit = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
            norm = float(self.acc.clip_grad_norm_(self.model.parameters(), limit))
            # one small all-reduce: the loss summed over processes, and whether any process saw a bad norm
            # (under DDP and FSDP2 the norm is already global; the flag makes the decision collective anyway)
            loss, bad_norms = self._global_sum([local_loss, float(not math.isfinite(norm))])
            scaled = self.acc.scaler is not None
            part = nonfinite_part(loss, math.inf if bad_norms else norm, loss_scaled=scaled)
            if part is None or scaled:
                # under fp16 loss scaling the scaler must see every step (it skips overflowing ones and
                # lowers its scale; a NaN loss gives NaN gradients, which it skips too)
                self.optimizer.step()
            else:
                self.optimizer.zero_grad(set_to_none=True)
        self.guard.record(part, loss, norm)
        with warnings.catch_warnings():
            # torch warns when the first scheduler step comes before any optimiser step (a skipped first update)
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.scheduler.step()
        return norm

    def _deepspeed_step(self, local_loss: float) -> tuple[float, str | None, float]:
        """engine.step() under ZeRO, which cannot be told to skip: DeepSpeed skips the update itself when
        the gradient norm is NaN/inf (its overflow check: fp16 and fp32, ZeRO-3, and bf16 under ZeRO-2
        with `bf16.check_grad_overflow`, on by default in recent DeepSpeed) and zeroes the gradients
        either way; a non-finite loss gives non-finite gradients, so it is skipped too. Afterwards
        `was_step_applied()` says what happened. Should a DeepSpeed build apply such an update anyway,
        the weights may already be NaN: the run stops at once rather than train on or save them."""
        from rlvr.errors import RunStopped

        (loss,) = self._global_sum([local_loss])
        self.engine.step()  # clips to gradient_clipping (= max_grad_norm), steps, zeroes gradients
        norm = self.engine.get_global_grad_norm()  # None if the DeepSpeed json turned the norm off
        norm = None if norm is None else float(norm)
        part = nonfinite_part(loss, norm, loss_scaled=self.engine.fp16_enabled())
        if part is not None and self.engine.was_step_applied():
            raise RunStopped(
                f"learner: DeepSpeed applied an update whose {part} was non-finite (loss={loss:.4g}, grad_norm="
                f"{norm}); this DeepSpeed build does not skip such steps, so the weights may be NaN and nothing "
                "more is saved. Set \"bf16\": {\"check_grad_overflow\": true} in the DeepSpeed json or upgrade "
                "DeepSpeed, then resume from the last checkpoint.")
        if part is None and not self.engine.was_step_applied() and not self.engine.fp16_enabled():
            part = "gradient norm"  # DeepSpeed found an overflow the reported norm does not show
        return (math.nan if norm is None else norm), part, loss

    @property
    def _optimizer_sharded(self) -> bool:
        """Each process holds a different part of the optimiser state (FSDP2, ZeRO-2, ZeRO-3)."""
        return self.strategy not in ("single", "ddp")

    def state_dict(self) -> dict[str, Any]:
        """Schedule, generator and, when every process holds all of it, the optimiser state; a sharded
        optimiser state is written by `save_shards` instead (one part per process)."""
        state = {"scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
                 "strategy": self.strategy, "processes": self.acc.num_processes, "nonfinite": self.guard.state_dict()}
        if not self._optimizer_sharded:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved; a sharded optimiser state follows with `load_shards`."""
        saved = (state.get("strategy", "single"), state.get("processes", 1))
        if ("optimizer" in state) == self._optimizer_sharded or (
                self._optimizer_sharded and saved != (self.strategy, self.acc.num_processes)):
            raise ValueError(
                f"run.resume: the checkpoint's optimiser state was saved with learner.strategy {saved[0]} on "
                f"{saved[1]} process(es), this run is {self.strategy} on {self.acc.num_processes}; a sharded "
                "optimiser state resumes only with the same strategy and number of processes")
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.guard.load_state_dict(state.get("nonfinite", {}))  # absent in checkpoints from before the guard

    def save_shards(self, folder: Path) -> None:
        """Collective: every process writes its part of a sharded optimiser state into `folder`.

        fsdp2: optimizer_rank<r>.pt, AdamW's state for this process's parameter shards.
        zero2/zero3: DeepSpeed's own checkpoint in deepspeed/ (per process: fp32 master partition
        and AdamW state; the module file it also writes duplicates the HF weights under ZeRO-2).
        """
        if self.engine is not None:
            self.engine.save_checkpoint(str(folder / "deepspeed"), tag="optimizer", save_latest=False)
        elif self.strategy == "fsdp2":
            torch.save(local_optimizer_state(self.optimizer.state_dict()),
                       folder / f"optimizer_rank{self.acc.process_index}.pt")

    def load_shards(self, folder: Path) -> None:
        """Collective: the counterpart of `save_shards` (after `load_state_dict` checked compatibility).

        Our shard files load with weights_only=True; DeepSpeed loads its own files with the full
        unpickler, so their pickles are scanned first and refused if they would run code."""
        from rlvr.errors import CheckpointError
        from rlvr.learner.checkpoint import load_plain, pickle_problem

        if self.engine is not None:
            for file in sorted((folder / "deepspeed").rglob("*.pt")):
                if problem := pickle_problem(file, file.relative_to(folder).as_posix()):
                    raise CheckpointError(f"checkpoint {folder.name}: {problem}")
            path, _ = self.engine.load_checkpoint(str(folder / "deepspeed"), tag="optimizer",
                                                  load_optimizer_states=True, load_lr_scheduler_states=False)
            if path is None:
                raise CheckpointError(f"run.resume: no DeepSpeed optimiser state in {folder / 'deepspeed'}")
        elif self.strategy == "fsdp2":
            local = load_plain(folder / f"optimizer_rank{self.acc.process_index}.pt")
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            self.optimizer.load_state_dict(sharded_optimizer_state(local, params))
