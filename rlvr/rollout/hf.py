"""The embedded engine: batched `transformers` generate in the learner's process.

It generates with the learner's own module (no copy), so after every optimiser step the engine
already holds the new weights; `update_weights` only has work to do when the engine was given a
separate copy (e.g. a bf16 inference copy of an fp32 learner).
"""

from __future__ import annotations

import inspect
import threading

import torch
from transformers import (
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from rlvr.rollout.base import (
    GenerationAborted,
    SamplingParams,
    WeightsFn,
    assemble_rollouts,
    end_token_ids,
    rows_of,
)
from rlvr.types import PromptBatch, Rollouts


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[[5, 6], [7]] -> ids [[5, 6], [pad, 7]], mask [[1, 1], [0, 1]]."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
    return ids, mask


class StopOnStrings(StoppingCriteria):
    """Stops a row once its *generated* text contains a stop string.

    transformers' own `stop_strings` also matches across the end of the prompt (a prompt ending
    in "=" with stop "==" stops after one generated "="); serving engines match the completion
    only, and so does this. Only the last few tokens are decoded each step.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: tuple[str, ...], prompt_width: int):
        self.tokenizer = tokenizer
        self.stops = stops
        self.start = prompt_width
        self.window = max(len(s) for s in stops) + 1  # every token decodes to >= 1 character

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        tail = input_ids[:, self.start :][:, -self.window :]
        texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


class StopOnEvent(StoppingCriteria):
    """Stops every row once `event` is set (an interruptible worker's abort)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def distinct_prompts(seqs: list[list[int]]) -> tuple[list[int], list[int]]:
    """The first row of each distinct prompt in `seqs`, and for every row the place of its prompt in that list.

    Example: [[1, 2], [1, 2], [3], [1, 2]] -> ([0, 2], [0, 0, 1, 0]).
    """
    place: dict[tuple[int, ...], int] = {}
    firsts, owner = [], []
    for i, s in enumerate(seqs):
        if tuple(s) not in place:
            place[tuple(s)] = len(firsts)
            firsts.append(i)
        owner.append(place[tuple(s)])
    return firsts, owner


class HFEngine:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, batch_prompts: int = 64,
                 shares_learner_weights: bool = True, synced: bool = False, interruptible: bool = False,
                 share_prefill: bool = True):
        self.model = model
        # share_prefill: a prompt sampled G times is run through the model once, and its keys and values
        # are repeated for its G rows (the serving engines do the same). Not when synced: that extra
        # forward is collective, and a process whose chunk repeats no prompt would not run it. Models
        # that cannot take a transformers DynamicCache or `logits_to_keep` generate as before.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
        self.share_prefill = (share_prefill and not synced
                              and getattr(base, "_supports_default_dynamic_cache", lambda: False)()
                              and "logits_to_keep" in inspect.signature(base.forward).parameters)
        # interruptible: a worker generating on its own thread; `abort` (new weights are coming) ends the
        # running generate() at its next token with GenerationAborted, and `resume` lets the next one run
        self.interruptible = interruptible
        self._abort = threading.Event()
        # synced: the model is sharded over processes (FSDP2, ZeRO-3), so each forward is collective:
        # every process runs the same number of generate() calls, and ranks that finish a call early
        # keep stepping with the others (transformers' synced_gpus) instead of deadlocking them
        self.synced = synced
        self.shares_learner_weights = shares_learner_weights  # False: a separate copy that pushes refresh
        self.tokenizer = tokenizer
        self.batch_prompts = batch_prompts
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = end_token_ids(model.generation_config.eos_token_id, tokenizer.eos_token_id)

    def abort(self) -> None:
        """Stop the generation in flight (it raises GenerationAborted) and refuse new ones until `resume`."""
        self._abort.set()

    def resume(self) -> None:
        """Generate again after an `abort`."""
        self._abort.clear()

    def update_weights(self, weights: WeightsFn) -> None:
        """Copy the learner's tensors into this engine's model; nothing to do when it is the learner's own."""
        if self.shares_learner_weights:
            return
        with torch.no_grad():
            own = dict(self.model.named_parameters())
            for name, tensor in weights():
                own[name].copy_(tensor.to(own[name].device, own[name].dtype))

    @torch.no_grad()
    def sequence_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """[S - 1] float32 log p(token_i | tokens_<i) at temperature 1, S = len(token_ids) (the sync probe)."""
        device = next(self.model.parameters()).device
        logits = self.model(input_ids=torch.tensor([token_ids], device=device), use_cache=False).logits[0, :-1]
        lp = torch.log_softmax(logits.float(), -1)
        return lp.gather(-1, torch.tensor(token_ids[1:], device=device).unsqueeze(-1)).squeeze(-1).cpu()

    def sleep(self) -> None:
        """No-op: the in-process engine has no memory of its own to release before the update."""
        pass

    @torch.no_grad()
    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        """Sample with `model.generate` in chunks of `batch_prompts` prompts' samples; training mode is restored.

        Under synced (sharded) learners every process runs the same number of chunks, padding with
        throw-away ones, because each generate call is collective.
        """
        group = rows_of(batch)
        seqs = [batch.prompts[j].token_ids for j in group]
        ids_out, lp_out = [], []
        was_training = self.model.training
        self.model.eval()
        try:
            step = max(1, self.batch_prompts * max(batch.samples_per_prompt or [1]))
            chunks = range(0, len(seqs), step)
            missing = self._missing_chunks(len(chunks))  # agreed before any collective generate() call
            for s in chunks:
                ids, lps = self._generate_chunk(seqs[s : s + step], params)
                ids_out += ids
                lp_out += lps
            for _ in range(missing):  # results thrown away
                self._generate_chunk([seqs[0] if seqs else [self.pad_id]], params)
        finally:
            self.model.train(was_training)
        if self._abort.is_set():
            raise GenerationAborted("generation aborted: new weights arrived")
        return self._assemble(batch, group, ids_out, lp_out, params)

    def _missing_chunks(self, count: int) -> int:
        """How many throw-away generate() calls this process adds so that, when synced, all processes
        run as many as the busiest one (local sample counts, hence chunk counts, can differ)."""
        if not self.synced:
            return 0
        from accelerate.utils import gather_object

        return max(gather_object([count])) - count

    def _generate_chunk(self, seqs: list[list[int]], params: SamplingParams):
        device = next(self.model.parameters()).device
        input_ids, attn = left_pad(seqs, self.pad_id)
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=not params.greedy,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            output_logits=True,
            return_dict_in_generate=True,
            use_cache=True,
            synced_gpus=self.synced,
            # broken weights (NaN/inf logits) must not crash sampling with a raw torch error: the tokens are
            # then drawn from cleaned scores, their log-probs stay NaN, and the learner's non-finite guard
            # skips the update and stops the run (learner.max_nonfinite_steps). No effect on finite logits.
            remove_invalid_values=True,
        )
        if not params.greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        else:  # neutralise sampling defaults a checkpoint's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.share_prefill and input_ids.shape[1] > 1:
            firsts, owner = distinct_prompts(seqs)
            if len(firsts) < len(seqs):
                kwargs["past_key_values"] = self._prefill(input_ids[firsts], attn[firsts], owner, device)
        criteria = []
        if params.stop:
            criteria.append(StopOnStrings(self.tokenizer, params.stop, input_ids.shape[1]))
        if self.interruptible:
            criteria.append(StopOnEvent(self._abort))
        if criteria:
            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device), **kwargs)
        new = out.sequences[:, input_ids.shape[1] :].cpu()
        # log p of each generated token under the policy at this temperature (learner's convention)
        temp = 1.0 if params.greedy else params.temperature
        lps = torch.stack(
            [torch.log_softmax(lg.float() / temp, -1).gather(-1, new[:, t : t + 1]).squeeze(-1).cpu()
             for t, lg in enumerate(out.logits)], dim=1
        ) if new.shape[1] else torch.zeros(new.shape)
        return list(new), list(lps)

    def _prefill(self, ids: torch.Tensor, attn: torch.Tensor, owner: list[int], device) -> DynamicCache:
        """The cache of the distinct prompts `ids` [U, W] (left-padded) without their last token, repeated
        so that row i holds prompt owner[i]'s; generate() then runs the last prompt token and samples.

        The positions are the ones generate() gives a left-padded prompt (count of real tokens before,
        padding at 0), so each row's keys and values equal those of running its own prompt, to rounding.
        On SmolLM2-135M (8 prompts of 59 tokens x 4 samples, 2 CPU cores) the prompt pass of generate()
        took 1.2 s instead of 3.4 s.
        """
        ids, attn = ids[:, :-1].to(device), attn[:, :-1].to(device)
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).masked_fill(attn == 0, 0),
                   past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_select_indices(torch.tensor(owner, device=device))
        return cache

    def _assemble(self, batch, group, ids_out, lp_out, params) -> Rollouts:
        decode = lambda toks: self.tokenizer.decode(toks, skip_special_tokens=True)
        return assemble_rollouts(batch, group, ids_out, lp_out, decode, self.eos_ids, self.pad_id, params.stop)
