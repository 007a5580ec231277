"""The rollout-engine protocol: every engine returns the same `Rollouts` record."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from rlvr.types import PromptBatch, Rollouts

# a thunk every process calls (collective under sharded learners): (HF parameter name, full tensor)
WeightsFn = Callable[[], Iterable[tuple[str, torch.Tensor]]]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # learner log-probs use the same temperature
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    greedy: bool = False
    stop: tuple[str, ...] = field(default_factory=tuple)


class RolloutEngine(Protocol):
    shares_learner_weights: bool  # True: generates with the learner's own module (nothing to push)

    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        """G_j samples of each prompt j of the batch, as N contiguous rows (prompt order, then sample order)."""
        ...

    def update_weights(self, weights: WeightsFn) -> None:
        """Make the engine generate with the learner's current weights (every process calls it)."""
        ...

    def sequence_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """[S - 1] log p(token_i | tokens_<i) at temperature 1, S = len(token_ids): the weight-sync probe."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory for the update (engines without a sleep mode do nothing)."""
        ...


class GenerationAborted(Exception):
    """A worker stopped a generation because new weights arrived (`rollout.in_flight: abort`)."""


class NoEngine:
    """The engine of a learner process without a rollout worker of its own (disaggregated runs,
    processes other than 0): it takes part in every weight push, since gathering the weights may
    be collective (FSDP2, ZeRO-3), and has nothing to probe."""

    shares_learner_weights = False

    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        """Never called: process 0 generates every process's groups."""
        raise RuntimeError("rollout: this learner process has no rollout worker (process 0 generates for all)")

    def update_weights(self, weights: WeightsFn) -> None:
        """Take part in gathering the weights; nothing is kept."""
        for _ in weights():
            pass

    def sequence_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """No engine, no gap: an empty probe (rlvr.rollout.sync.probe_gap reads it as 0)."""
        return torch.zeros(0)

    def sleep(self) -> None:
        """Nothing to free."""


def cut_response(tokens: Sequence[int], decode: Callable[[Sequence[int]], str], eos_ids: Sequence[int],
                 pad_id: int | None, stop: Sequence[str]) -> tuple[int, str, str]:
    """Length kept, finish reason and text of one generated row (the same rule for every engine).

    Tokens after the first EOS (or pad) are not part of the response. A stop string ends the
    response at the token that completes it (the token stays: the model chose it) and the text
    drops the stop string; an EOS token stays in the response too.
    Example: tokens "4", "2", "\n", "x" with stop "\n" -> (3, "stop", "42").
    """
    toks = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)  # ints, not 0-d tensors
    end = next((i for i, t in enumerate(toks) if t in eos_ids or t == pad_id), len(toks))
    text = decode(toks[:end])
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if hits:
        pos, s = min(hits)
        n = next(n for n in range(1, end + 1) if s in decode(toks[:n]))
        return n, "stop", text[:pos]
    if end < len(toks) and toks[end] in eos_ids:
        return end + 1, "stop", text
    return end, ("length" if end == len(toks) else "stop"), text


def assemble_rollouts(batch: PromptBatch, group: list[int], tokens: list[Sequence[int]],
                      logprobs: list[Sequence[float]], decode: Callable[[Sequence[int]], str],
                      eos_ids: Sequence[int], pad_id: int, stop: Sequence[str]) -> Rollouts:
    """Rows of generated tokens and their log-probs (N lists) -> a right-padded `Rollouts` record."""
    cuts = [cut_response(t, decode, eos_ids, pad_id, stop) for t in tokens]
    width = max([n for n, _, _ in cuts] + [1])
    response_ids = torch.full((len(tokens), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(tokens), width))
    lps = torch.zeros((len(tokens), width))
    for i, (n, _, _) in enumerate(cuts):
        response_ids[i, :n] = torch.as_tensor(tokens[i][:n], dtype=torch.long)
        mask[i, :n] = 1.0
        lps[i, :n] = torch.as_tensor(logprobs[i][:n], dtype=torch.float32)
    return Rollouts(prompts=batch.prompts, group=torch.tensor(group, dtype=torch.long), response_ids=response_ids,
                    response_mask=mask, rollout_logprobs=lps, texts=[c[2] for c in cuts],
                    finish_reason=[c[1] for c in cuts])


def end_token_ids(generation_eos: int | Sequence[int] | None, tokenizer_eos: int | None) -> list[int]:
    """The ids that end a response, for every engine: the model's generation config (chat models
    list several, e.g. an end-of-turn marker besides end-of-text) plus the tokenizer's EOS.
    Example: (2, 7) -> [2, 7]; ([2, 7], 2) -> [2, 7]; (None, 5) -> [5]."""
    ids = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    if tokenizer_eos is not None and tokenizer_eos not in ids:
        ids.append(tokenizer_eos)
    return ids


def rows_of(batch: PromptBatch) -> list[int]:
    """The prompt index of every sample row: samples_per_prompt [2, 1] -> [0, 0, 1]."""
    return [j for j, g in enumerate(batch.samples_per_prompt) for _ in range(g)]

