"""Stage 5: the policy-gradient update, on one process or many (through accelerate).

One RL step = `epochs_per_step` passes over the step's samples, each cut into
`mini_batches_per_step` optimiser steps, each made of token-budget micro-batches whose losses
are divided by step-global counts (batching.py, aggregation.py), so the update is the same
whatever the micro-batch or process split.

Distributed strategies (distributed.py): under DDP and ZeRO-2 every process holds the full
parameters; under FSDP2 and ZeRO-3 they are sharded, so every forward pass is a collective and all
processes run the same number of them (`Batcher.equalise`). DeepSpeed owns the optimiser step and
the clipping (engine.step at the accumulation boundary); under the other strategies the learner
clips and steps itself.

Non-finite updates (guard.py): before an optimiser step the learner checks the mini-batch's loss
(summed over processes) and the gradient norm; if either is NaN or inf on any process, every
process drops the gradients and skips that step.

The other parts live next to this file: the optimiser and schedule (optim.py), the optimiser's
per-process shards in checkpoints (shards.py), whole-weight export and the weight-sync probe
(weights.py), per-sample gradient norms (grad_norms.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from rlvr.learner import grad_norms, lora, shards, weights
from rlvr.learner.batching import Batcher, BatchingConfig
from rlvr.learner.distributed import SHARDED, global_sum, strategy_of
from rlvr.learner.guard import NonFiniteGuard, nonfinite_part
from rlvr.learner.logprobs import response_logprobs
from rlvr.learner.optim import OptimConfig, make_optimizer, make_scheduler
from rlvr.learner.policy_loss import KLSettings, kl_estimate
from rlvr.learner.rollout_correction import mismatch_stats
from rlvr.types import AdvantageBatch, LossNorm, MicroBatch


class Learner:
    """The policy being trained, its optimiser, and the update of one RL step (`step`).

    `model` is the HF policy (prepared here for the strategy; with LoRA a peft model, whose optimiser
    holds the adapters only), `ref_model` the frozen KL reference or None (`ref_is_base`: the policy's
    base weights, its adapters switched off, are the reference instead); `policy_loss` maps log-probs
    to a per-token loss [B, T], `aggregation` turns that into a scalar, `rollout_correction` (or
    None) weighs tokens by engine/learner importance ratios.
    `temperature` is the rollout temperature every log-prob is taken at; `logprob_chunk_tokens` is the
    chunk of positions whose logits exist at once (0: the full [B, T, V] logits; see logprobs.py);
    `share_prompts` runs each distinct prompt of a micro-batch once (logprobs.py), on one process only.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        ref_model: torch.nn.Module | None,
        accelerator: Accelerator,
        *,
        policy_loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
        aggregation: Callable[[torch.Tensor, torch.Tensor, LossNorm], torch.Tensor],
        optim: OptimConfig,
        batching: BatchingConfig,
        temperature: float,
        kl: KLSettings | None = None,
        rollout_correction: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None,
        max_nonfinite_steps: int = 3,
        old_is_behaviour: bool = False,
        logprob_chunk_tokens: int = 512,
        ref_is_base: bool = False,
        share_prompts: bool = True,
    ):
        self.acc = accelerator
        self.policy_loss, self.aggregation = policy_loss, aggregation
        self.rollout_correction = rollout_correction
        # the ratio is taken against the log-probs recorded at generation (AdvantageBatch.old_logprobs
        # holds them): the engine/learner mismatch is then measured from the learner's own log-probs
        self.old_is_behaviour = old_is_behaviour
        self.optim, self.temperature = optim, temperature
        self.kl = kl if kl is not None else KLSettings()  # None: no KL term
        self.batcher = Batcher(accelerator, batching)
        self.guard = NonFiniteGuard(max_nonfinite_steps)
        self.strategy = strategy_of(accelerator)
        self.chunk_tokens = logprob_chunk_tokens
        # one process only: with sharing allowed on two DDP processes the 1-vs-2-process test hung.
        # Forwards hold collectives (DDP's buffer broadcast, FSDP2's and ZeRO-3's all-gathers) and a
        # rank whose micro-batch repeats no prompt runs one forward where another runs two.
        self.share_prompts = share_prompts and accelerator.num_processes == 1
        if lora.is_lora(model) and (problem := lora.strategy_problem(self.strategy)):
            raise ValueError(problem)
        optimizer = make_optimizer(model, optim)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        # DeepSpeed wraps the module in its engine, which steps, clips and zeroes gradients itself
        self.engine = self.model if self.strategy.startswith("zero") else None
        applies = self.engine.basic_optimizer if self.engine is not None else optimizer
        self.scheduler = make_scheduler(applies, optim, batching.updates_per_step)
        # The reference model stays a plain frozen module on every process, even under FSDP2/ZeRO-3:
        # it has no gradients or optimiser state, so sharding it would only save one copy of its
        # weights, at the price of a collective in every reference forward; unsharded, its forwards
        # need no lock-step between processes.
        self.ref_model = ref_model.to(accelerator.device) if ref_model is not None else None
        # LoRA: the reference is the policy with its adapters switched off (the frozen base weights)
        self.ref_is_base = ref_is_base

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
        return self.batcher.cfg.updates_per_step > 1 or (self.kl.coef > 0 and not self.kl.in_loss)

    @property
    def epochs(self) -> int:
        """Passes over each step's samples (learner.epochs_per_step)."""
        return self.batcher.cfg.epochs_per_step

    @property
    def pad_id(self) -> int:
        """The token id that pads prompts and responses in micro-batches."""
        return self.batcher.cfg.pad_id

    @torch.no_grad()
    def logprobs(self, batch: AdvantageBatch, use_ref: bool) -> torch.Tensor:
        """[N, T] log-probs of every response token under the policy or the reference model (0 at
        padding). Collective for the policy: every process calls it, with its own batch."""
        base = use_ref and self.ref_is_base
        model = self.unwrapped if base else self.ref_model if use_ref else self.model
        out = torch.zeros_like(batch.scored.rollouts.rollout_logprobs)
        # the policy's forwards may be collective (see Batcher.equalise); the reference model is local
        with model.disable_adapter() if base else nullcontext():
            for mb, scale in self.batcher.scoring(batch, collective=not use_ref):
                lp, _ = response_logprobs(model, mb, self.temperature, chunk_tokens=self.chunk_tokens,
                                          share_prompts=self.share_prompts)
                if scale:
                    out[mb.index, : lp.shape[1]] = lp.float().cpu() * mb.response_mask
        return out

    def sequence_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """[S - 1] log p(token_i | tokens_<i) at temperature 1 under the current policy for S tokens
        (the learner's side of the weight-sync probe; every process calls it under sharding). In the
        weights' own precision, not under mixed precision's autocast: the probe compares weights,
        and a float32 engine then matches to rounding (bf16 autocast alone differs by up to 0.5)."""
        with weights.native_precision(self.unwrapped):
            return weights.sequence_logprobs(self.model, token_ids, self.chunk_tokens)

    def full_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, full tensor) of every policy parameter, for pushing into a rollout engine or a
        checkpoint; collective under FSDP2 and ZeRO-3 (see `weights.full_weights`)."""
        return weights.full_weights(self.unwrapped, self.strategy)

    def grad_norms(self, prompt_ids: list[list[int]], response_ids: list[list[int]], param_match: str) -> list[float]:
        """Per (prompt, response) pair given to this process, the norm of the gradient of
        -sum_t log pi(y_t) on the first parameter whose name contains `param_match` (see
        grad_norms.py); N pairs -> N floats. Every process may call it with its own pairs (none
        included): the backward passes are never synced. Raises ValueError under a strategy that
        shards gradients."""
        problem = grad_norms.whole_gradients_problem("sampling.allocator", self.strategy)
        if problem is not None:
            raise ValueError(problem)
        return grad_norms.per_sample_grad_norms(self.model, self.unwrapped, self.acc, prompt_ids, response_ids,
                                                param_match, self.temperature, self.pad_id, self.chunk_tokens)

    def step(self, batch: AdvantageBatch, step: int = 0) -> dict[str, float]:
        """One RL step's update, collective; `step` only labels the non-finite bookkeeping (`self.guard`).

        Returns the learner/ metrics: each loss statistic summed over processes and averaged over
        the optimiser steps, the mean gradient norm before clipping, the lr, and the guard's counts.
        """
        self.model.train()
        self.guard.begin_step()
        sums: dict[str, float] = {}
        norms = []
        kept = 0  # samples of this process that went through a pass (each optimiser step counts its own)
        for mbs in self.batcher.mini_batches(batch):
            kept += sum(mb.index.numel() for mb, scale in mbs if scale)
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
            norms.append(self._clip_and_step(mini_loss))
        seen = len(batch.scored.rollouts) * self.epochs  # every epoch's mini-batches cover every sample once
        *summed, kept, seen = global_sum(self.acc, [*sums.values(), float(kept), float(seen)])
        metrics = {f"learner/{k}": v / len(norms) for k, v in zip(sums, summed)}
        if self.batcher.cfg.skip_zero_advantage:  # samples whose advantage was 0: left out, the gradient unchanged
            metrics["learner/zero_adv_skipped"] = 1.0 - kept / max(seen, 1.0)
        metrics["learner/grad_norm"] = sum(norms) / len(norms)
        metrics["learner/lr"] = self.scheduler.get_last_lr()[0]
        metrics.update(self.guard.end_step(step))
        return metrics

    def imitate(self, batch: AdvantageBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One supervised step (the `warmup`), collective: minimise -sum log pi(y_t) over the model
        tokens of `batch` (response_mask; an environment's tokens are context), divided by those
        tokens' count over all processes, at temperature 1, with `optimizer` (not the RL one).

        Returns warmup/loss (the mean negative log-likelihood per token) and warmup/grad_norm.
        """
        if self.engine is not None:
            raise ValueError(f"warmup: not available under learner.strategy {self.strategy} (DeepSpeed owns the "
                             "optimiser); run the warm-up with single, ddp or fsdp2, or train the demonstrations "
                             "beforehand and point model.path at the result")
        self.model.train()
        optimizer.zero_grad(set_to_none=True)
        mbs = self.batcher.optimiser_step(batch, torch.arange(len(batch.scored.rollouts)))
        nll = 0.0
        for i, (mb, scale) in enumerate(mbs):
            last = i == len(mbs) - 1
            with self._accumulating(last):
                logp, _ = response_logprobs(self.model, mb, 1.0, chunk_tokens=self.chunk_tokens,
                                            share_prompts=self.share_prompts)
                loss = -(logp * mb.response_mask.to(logp.device)).sum() / max(mb.norm.tokens, 1.0)
                self._backward(loss * scale * self.acc.num_processes, last)
            nll += float(loss.detach()) * scale
        limit = self.optim.max_grad_norm if self.optim.max_grad_norm is not None else float("inf")
        grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), limit))
        (total,) = global_sum(self.acc, [nll])
        if math.isfinite(total) and math.isfinite(grad_norm):  # a non-finite step is dropped, as in `step`
            optimizer.step()
        return {"warmup/loss": total, "warmup/grad_norm": grad_norm}

    def _micro_loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        device = self.acc.device
        logp, entropy = response_logprobs(self.model, mb, self.temperature, with_entropy=True,
                                          chunk_tokens=self.chunk_tokens, share_prompts=self.share_prompts)
        mask = mb.response_mask.to(device)
        old = mb.old_logprobs.to(device) if mb.old_logprobs is not None else logp.detach()
        adv = (mb.advantages * mb.weights).to(device)
        tok_loss, tok_stats = self.policy_loss(logp, old, adv, mask)
        rollout_lp = mb.rollout_logprobs.to(device)
        mine = logp.detach() if self.old_is_behaviour else old
        tok_stats = {**tok_stats, **mismatch_stats(mine, rollout_lp, mask)}
        if self.rollout_correction is not None:
            is_weights, is_stats = self.rollout_correction(old, rollout_lp, mask)
            tok_loss = tok_loss * is_weights
            tok_stats.update(is_stats)
        pg = self.aggregation(tok_loss, mask, mb.norm)
        loss = pg
        stats = {"pg_loss": float(pg.detach())}
        if self.ref_model is not None or self.ref_is_base:
            kl = kl_estimate(logp, mb.ref_logprobs.to(device), self.kl.estimator) * mask
            kl_agg = self.aggregation(kl, mask, mb.norm)
            if self.kl.in_loss:
                loss = loss + self.kl.coef * kl_agg
            stats["kl"] = float(kl_agg.detach())
        stats["loss"] = float(loss.detach())
        # per-token metrics average over the tokens that went through a forward pass (all of them unless
        # zero-advantage samples were left out: see Batcher)
        tokens = max(mb.norm.tokens if mb.norm.kept_tokens is None else mb.norm.kept_tokens, 1.0)
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
            limit = self.optim.max_grad_norm if self.optim.max_grad_norm is not None else float("inf")
            norm = float(self.acc.clip_grad_norm_(self.model.parameters(), limit))
            # one small all-reduce: the loss summed over processes, and whether any process saw a bad norm
            # (under DDP and FSDP2 the norm is already global; the flag makes the decision collective anyway)
            loss, bad_norms = global_sum(self.acc, [local_loss, float(not math.isfinite(norm))])
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

        (loss,) = global_sum(self.acc, [local_loss])
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

    def state_dict(self) -> dict[str, Any]:
        """Schedule, generator and, when every process holds all of it, the optimiser state; a sharded
        optimiser state is written by `save_shards` instead (one part per process)."""
        state = {"scheduler": self.scheduler.state_dict(), "generator": self.batcher.generator.get_state(),
                 "strategy": self.strategy, "processes": self.acc.num_processes, "nonfinite": self.guard.state_dict()}
        if not shards.optimizer_sharded(self.strategy):
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved; a sharded optimiser state follows with `load_shards`."""
        shards.check_resumable(state, self.strategy, self.acc.num_processes)
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batcher.generator.set_state(state["generator"])
        self.guard.load_state_dict(state.get("nonfinite", {}))  # absent in checkpoints from before the guard

    def save_shards(self, folder: Path) -> None:
        """Collective: every process writes its part of a sharded optimiser state into `folder`
        (shards.py); nothing under single and ddp."""
        shards.save_shards(folder, self.strategy, self.optimizer, self.engine, self.acc.process_index)

    def load_shards(self, folder: Path) -> None:
        """Collective: the counterpart of `save_shards` (after `load_state_dict` checked compatibility)."""
        shards.load_shards(folder, self.strategy, self.optimizer, self.engine, self.acc.process_index)
