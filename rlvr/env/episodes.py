"""Multi-turn episodes: the model acts, the environment answers, until one of them ends it.

`run_episodes` plays every sample of a `PromptBatch` as one episode (a group's G episodes side by
side) through any engine's `generate`: each turn is one generate call over the episodes still
running, each conditioned on its own context as token ids (prompt, then every earlier turn's
tokens as generated, then the environment's inserted tokens), so turns are batched across
episodes and the hf, vllm and remote engines all serve them. An episode ends when the
environment says so (a tool environment: a reply without a tool call, the answer), after
`max_turns` model turns, or when its tokens (the model's and the environment's) would pass
`max_tokens`.

The result is one `Rollouts` row per episode whose response is everything after the prompt:
response_mask marks the model's tokens (the only ones trained and counted), env_mask the
environment's, rollout_logprobs the model's tokens' log-probs; texts is the last model turn (the
answer the rewards check) and contexts the text before it.

An environment may also define `finish(states, ends) -> list[dict]`, called once after every
episode of the batch has ended (`ends`: why each ended); what it returns for an episode joins
that episode's record (`Rollouts.episodes`), e.g. {"reward": 0.75, "metrics": {...}} from an
environment that scores its own episodes (the `env` reward reads it; rlvr/env/verifiers_env.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from rlvr.env.base import Environment
from rlvr.env.template import TurnTemplate
from rlvr.rollout.base import SamplingParams
from rlvr.types import Prompt, PromptBatch, Rollouts


@dataclass
class _Episode:
    prompt: Prompt
    group: int
    state: Any
    ids: list[int] = field(default_factory=list)  # every token after the prompt
    model: list[float] = field(default_factory=list)  # 1.0 on the model's tokens, 0.0 on the environment's
    logprobs: list[float] = field(default_factory=list)
    turn_start: int = 0  # where the latest model turn begins in `ids`
    answer: str = ""  # the latest model turn's text (stop strings removed)
    finish: str = "stop"  # the latest turn's finish reason
    turns: int = 0
    tool_calls: dict[str, int] = field(default_factory=dict)
    tool_errors: int = 0
    end: str = ""  # why the episode ended
    extra: dict[str, Any] = field(default_factory=dict)  # what the environment's `finish` added to the record


def run_episodes(engine: Any, batch: PromptBatch, params: SamplingParams, env: Environment, tokenizer: Any,
                 *, max_turns: int, max_tokens: int, template: TurnTemplate | None = None
                 ) -> tuple[Rollouts, dict[str, float]]:
    """Every sample of `batch` as an episode of `env`; returns the rollouts and the env/* metrics."""
    template = template or TurnTemplate(tokenizer)
    eos = set(getattr(engine, "eos_ids", None) or [tokenizer.eos_token_id])
    closing = set(template.closing_ids(tokenizer, eos))
    episodes = [_Episode(p, j, env.start(p.row)) for j, (p, g) in enumerate(zip(batch.prompts, batch.samples_per_prompt))
                for _ in range(g)]
    gen_s = env_s = 0.0
    for turn in range(max_turns):
        live = [e for e in episodes if not e.end]
        if not live:
            break
        contexts = [Prompt(e.prompt.uid, e.prompt.text, e.prompt.token_ids + e.ids, e.prompt.answer, e.prompt.row)
                    for e in live]
        t0 = time.perf_counter()
        ro = engine.generate(PromptBatch(contexts, [1] * len(live)), replace(params, max_new_tokens=min(
            params.max_new_tokens, max(max_tokens - min(len(e.ids) for e in live), 1))))
        gen_s += time.perf_counter() - t0
        for i, e in enumerate(live):
            n = int(ro.lengths[i])
            toks = ro.response_ids[i, :n].tolist()
            e.turn_start = len(e.ids)
            e.answer, e.finish, e.turns = ro.texts[i], ro.finish_reason[i], e.turns + 1
            if len(e.ids) + len(toks) > max_tokens:  # this episode's budget ends inside the turn
                toks = toks[: max_tokens - len(e.ids)]
                e.answer, e.finish, e.end = tokenizer.decode(toks, skip_special_tokens=True), "length", "max_tokens"
            e.ids += toks
            e.model += [1.0] * len(toks)
            e.logprobs += ro.rollout_logprobs[i, : len(toks)].tolist()
            if e.end:
                continue
            t0 = time.perf_counter()
            reply = env.respond(e.state, tokenizer.decode(toks, skip_special_tokens=True))
            env_s += time.perf_counter() - t0
            for name, c in reply.tool_calls.items():
                e.tool_calls[name] = e.tool_calls.get(name, 0) + c
            e.tool_errors += reply.tool_errors
            if reply.done:
                e.end = reply.reason or "env"
            elif turn == max_turns - 1:
                e.end = "max_turns"
            else:
                inserted = tokenizer.encode(template.between(reply.messages, closed=bool(toks) and toks[-1] in closing),
                                            add_special_tokens=False)
                if len(e.ids) + len(inserted) >= max_tokens:  # no room left for the model to act on it
                    e.end = "max_tokens"
                else:
                    e.ids += inserted
                    e.model += [0.0] * len(inserted)
                    e.logprobs += [0.0] * len(inserted)
    finish = getattr(env, "finish", None)
    if callable(finish):
        t0 = time.perf_counter()
        extra = finish([e.state for e in episodes], [e.end for e in episodes])
        env_s += time.perf_counter() - t0
        if len(extra) != len(episodes):
            raise ValueError(f"{type(env).__name__}.finish returned {len(extra)} records for {len(episodes)} episodes")
        for e, x in zip(episodes, extra):
            e.extra = dict(x)
    return _rollouts(batch, episodes, tokenizer), _metrics(episodes, gen_s, env_s)


def _rollouts(batch: PromptBatch, episodes: list[_Episode], tokenizer: Any) -> Rollouts:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max([len(e.ids) for e in episodes] + [1])
    n = len(episodes)
    ids = torch.full((n, width), pad, dtype=torch.long)
    model, env, lps = torch.zeros(n, width), torch.zeros(n, width), torch.zeros(n, width)
    for i, e in enumerate(episodes):
        k = len(e.ids)
        ids[i, :k] = torch.tensor(e.ids, dtype=torch.long)
        model[i, :k] = torch.tensor(e.model)
        env[i, :k] = 1.0 - model[i, :k]
        lps[i, :k] = torch.tensor(e.logprobs)
    return Rollouts(
        prompts=batch.prompts, group=torch.tensor([e.group for e in episodes], dtype=torch.long), response_ids=ids,
        response_mask=model, rollout_logprobs=lps, texts=[e.answer for e in episodes],
        finish_reason=[e.finish for e in episodes], env_mask=env,
        contexts=[tokenizer.decode(e.ids[: e.turn_start], skip_special_tokens=True) for e in episodes],
        episodes=[{**e.extra, "turns": e.turns, "tool_calls": dict(e.tool_calls), "tool_errors": e.tool_errors,
                   "end": e.end} for e in episodes])


def _metrics(episodes: list[_Episode], gen_s: float, env_s: float) -> dict[str, float]:
    """env/turns_mean, env/tool_calls_mean, env/tool_calls/<tool>, env/tool_errors_mean, env/end/<reason>
    (fraction of episodes), perf/env_s and perf/env_generate_s."""
    n = max(len(episodes), 1)
    out = {"env/turns_mean": sum(e.turns for e in episodes) / n,
           "env/tool_calls_mean": sum(sum(e.tool_calls.values()) for e in episodes) / n,
           "env/tool_errors_mean": sum(e.tool_errors for e in episodes) / n,
           "perf/env_s": env_s, "perf/env_generate_s": gen_s}
    for name in sorted({t for e in episodes for t in e.tool_calls}):
        out[f"env/tool_calls/{name}"] = sum(e.tool_calls.get(name, 0) for e in episodes) / n
    for reason in sorted({e.end for e in episodes}):
        out[f"env/end/{reason}"] = sum(e.end == reason for e in episodes) / n
    return out
