"""The embedded engine: batched `transformers` generate in the learner's process.

It generates with the learner's own module (no copy), so after every optimiser step the engine
already holds the new weights; `update_weights` only has work to do when the engine was given a
separate copy (e.g. a bf16 inference copy of an fp32 learner).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from rlvr.rollout.base import SamplingParams
from rlvr.types import PromptBatch, Rollouts


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


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


class HFEngine:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, batch_prompts: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_prompts = batch_prompts
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)

    def update_weights(self, model: torch.nn.Module) -> None:
        if model is self.model:
            return
        with torch.no_grad():
            src = dict(model.named_parameters())
            for name, p in self.model.named_parameters():
                p.copy_(src[name].to(p.dtype))

    @torch.no_grad()
    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        group = [j for j, g in enumerate(batch.samples_per_prompt) for _ in range(g)]
        seqs = [batch.prompts[j].token_ids for j in group]
        ids_out, lp_out = [], []
        was_training = self.model.training
        self.model.eval()
        try:
            step = max(1, self.batch_prompts * max(batch.samples_per_prompt or [1]))
            for s in range(0, len(seqs), step):
                ids, lps = self._generate_chunk(seqs[s : s + step], params)
                ids_out += ids
                lp_out += lps
        finally:
            self.model.train(was_training)
        return self._assemble(batch, group, ids_out, lp_out, params)

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
        )
        if not params.greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        else:  # neutralise sampling defaults a checkpoint's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            stops = StopOnStrings(self.tokenizer, params.stop, input_ids.shape[1])
            kwargs["stopping_criteria"] = StoppingCriteriaList([stops])
        out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device), **kwargs)
        new = out.sequences[:, input_ids.shape[1] :].cpu()
        # log p of each generated token under the policy at this temperature (learner's convention)
        temp = 1.0 if params.greedy else params.temperature
        lps = torch.stack(
            [torch.log_softmax(lg.float() / temp, -1).gather(-1, new[:, t : t + 1]).squeeze(-1).cpu()
             for t, lg in enumerate(out.logits)], dim=1
        ) if new.shape[1] else torch.zeros(new.shape)
        return list(new), list(lps)

    def _cut(self, tokens: torch.Tensor, stop: tuple[str, ...]) -> tuple[int, str, str]:
        """Length kept, finish reason and text of one generated row.

        Tokens after the first EOS are padding. A stop string ends the response at the token
        that completes it (the token stays in the response: the model chose it); the text
        drops the stop string.
        """
        toks = tokens.tolist()
        end = next((i for i, t in enumerate(toks) if t in self.eos_ids or t == self.pad_id), len(toks))
        decode = lambda n: self.tokenizer.decode(toks[:n], skip_special_tokens=True)
        text = decode(end)
        hits = [(text.find(s), s) for s in stop if s and s in text]
        if hits:
            pos, s = min(hits)
            n = next(n for n in range(1, end + 1) if s in decode(n))
            return n, "stop", text[:pos]
        if end < len(toks) and toks[end] in self.eos_ids:
            return end + 1, "stop", text
        return end, ("length" if end == len(toks) else "stop"), text

    def _assemble(self, batch, group, ids_out, lp_out, params) -> Rollouts:
        cuts = [self._cut(t, params.stop) for t in ids_out]
        width = max([n for n, _, _ in cuts] + [1])
        n_rows = len(ids_out)
        response_ids = torch.full((n_rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n_rows, width))
        logprobs = torch.zeros((n_rows, width))
        for i, (n, _, _) in enumerate(cuts):
            response_ids[i, :n] = ids_out[i][:n]
            mask[i, :n] = 1.0
            logprobs[i, :n] = lp_out[i][:n]
        return Rollouts(
            prompts=batch.prompts,
            group=torch.tensor(group, dtype=torch.long),
            response_ids=response_ids,
            response_mask=mask,
            rollout_logprobs=logprobs,
            texts=[c[2] for c in cuts],
            finish_reason=[c[1] for c in cuts],
        )
