"""`warmup`: a few supervised steps on demonstrations before the first RL step (a cold start).

RL needs a policy that sometimes earns reward. A tiny model from random weights never writes a
JSON tool call, and a base model may never use the chat format a reward checks; imitation of a
few hundred worked examples gives them a start that RL then improves (the cold start of
DeepSeek-R1 and of tool-use RL recipes).

A demonstration is replayed through the same machinery as an RL episode: `Demonstrator` plays the
model, returning each row's scripted turns as token ids, and with an `env` the environment answers
between turns for real (`run_episodes`), so the trained sequence holds exactly the tokens an RL
rollout would hold: the model's turns as the model would end them, the environment's messages as
its chat template renders them. Only the model's tokens are trained (response_mask).

A turn ends the way the policy will end it: with an end-of-turn token, unless its text ends with
one of `rollout.stop` (then generation would stop there and the environment closes the turn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlvr.data.errors import DataError
from rlvr.env.episodes import run_episodes
from rlvr.env.template import TurnTemplate
from rlvr.learner.optim import fused_if_supported
from rlvr.rollout.base import SamplingParams
from rlvr.types import Prompt, PromptBatch, Rollouts, ScoredRollouts


def demonstration_turns(row: dict[str, Any], column: str, where: str, multi_turn: bool, max_turns: int) -> list[str]:
    """The model turns of one row's demonstration: `row[column]` as a list of non-empty strings.

    Example: {"demonstration": ["<tool_call>...</tool_call>", "85"]} -> both turns; "85" -> ["85"].
    Raises DataError naming the row (`where`, its uid "<source>#<index>") and the column when it
    is missing or not text.
    """
    value = row.get(column)
    turns = [value] if isinstance(value, str) else value
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t for t in turns):
        got = "is missing" if column not in row else f"holds {type(value).__name__} {str(value)[:60]}"
        raise DataError(f"warmup.column: training row {where}: column {column!r} {got}; a demonstration must be a "
                        "non-empty string or a list of non-empty strings (the model's turns)")
    if len(turns) > 1 and not multi_turn:
        raise DataError(f"warmup.column: training row {where}: its demonstration has {len(turns)} turns but the recipe "
                        "has no env to answer between them; give one string per row, or set env")
    if len(turns) > max_turns:
        raise DataError(f"warmup.column: training row {where}: its demonstration has {len(turns)} turns, more than "
                        f"rollout.max_turns ({max_turns}); RL could never play it")
    return turns


class Demonstrator:
    """An engine whose every reply is the next scripted turn of the episode it is asked about.

    `turns[uid]` are the model turns of the prompt with that uid; each `generate` call answers
    every context with its episode's next turn, encoded as ids and closed by `end_id` unless it
    ends with a stop string. Log-probs are zero (nothing was sampled).
    """

    def __init__(self, tokenizer: Any, turns: dict[str, list[str]], end_id: int, stop: Sequence[str]):
        self.tokenizer, self.turns, self.end_id, self.stop = tokenizer, turns, end_id, tuple(stop)
        self.played: dict[str, int] = {}
        self.eos_ids = [end_id]

    def encode(self, text: str, last: bool) -> list[int]:
        """A turn's ids as the policy would produce them (example: "85", last -> ids of "85" + [end_id])."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids if not last and text.endswith(self.stop) else ids + [self.end_id]

    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        """One sample per context: its episode's next turn (the last one again past the script's end)."""
        replies = []
        for p in batch.prompts:
            k = self.played.get(p.uid, 0)
            self.played[p.uid] = k + 1
            turns = self.turns[p.uid]
            text = turns[min(k, len(turns) - 1)]
            replies.append((text, self.encode(text, last=k >= len(turns) - 1)))
        n = len(replies)
        width = max(len(ids) for _, ids in replies)
        ids = torch.full((n, width), self.end_id, dtype=torch.long)
        mask = torch.zeros(n, width)
        for i, (_, r) in enumerate(replies):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1.0
        return Rollouts(batch.prompts, torch.arange(n), ids, mask, torch.zeros(n, width),
                        [t for t, _ in replies], ["stop"] * n)


def end_of_turn_id(tokenizer: Any, eos_ids: Sequence[int]) -> int:
    """The token that ends a model turn: the end-of-generation id the chat template closes a turn
    with (ChatML: <|im_end|>), else the tokenizer's EOS."""
    closing = TurnTemplate(tokenizer).closing_ids(tokenizer, eos_ids)
    return closing[0] if closing else tokenizer.eos_token_id


def demonstrations(prompts: list[Prompt], tokenizer: Any, env: Any, *, column: str, end_id: int,
                   stop: Sequence[str], max_turns: int, max_tokens: int) -> Rollouts:
    """The demonstrations of `prompts` as rollouts (one sample each), played through `env` when
    there is one. Example: the calculator row "13+72=" -> response = call tokens, the tool's
    message (env_mask), "85" + <|im_end|>; response_mask on the call and the answer only."""
    # one uid per demonstration: a row drawn twice in a batch is two episodes
    turns = {f"warmup#{i}": demonstration_turns(p.row, column, p.uid, env is not None, max_turns)
             for i, p in enumerate(prompts)}
    prompts = [Prompt(f"warmup#{i}", p.text, p.token_ids, p.answer, p.row) for i, p in enumerate(prompts)]
    engine = Demonstrator(tokenizer, turns, end_id, stop)
    batch = PromptBatch(prompts, [1] * len(prompts))
    params = SamplingParams(max_new_tokens=max_tokens)
    if env is None:
        return engine.generate(batch, params)
    return run_episodes(engine, batch, params, env, tokenizer, max_turns=max_turns, max_tokens=max_tokens)[0]


def warm_up(run: Any) -> None:
    """`warmup.steps` supervised steps on the recipe's demonstrations (fresh runs; `run` as setup
    builds it). Each step takes the next `batch_size` rows of a seeded shuffle of the first
    `max_rows` training rows, each process its share, and logs warmup/* at step 0."""
    from rlvr.buffer import as_batch  # set-up's own stage imports, kept local like step.py's

    w, r = run.cfg.warmup, run.cfg.rollout
    rows = run.train_prompts[: w.max_rows] if w.max_rows else run.train_prompts
    if w.batch_size % run.world:
        raise ValueError(f"warmup.batch_size ({w.batch_size}) must be a multiple of the number of processes "
                         f"({run.world})")
    eos = getattr(run.engine, "eos_ids", None) or [run.tokenizer.eos_token_id]
    end_id = end_of_turn_id(run.tokenizer, eos)
    budget = r.max_episode_tokens or r.max_turns * r.max_new_tokens
    for p in rows:  # a bad demonstration anywhere in the budget fails before any step
        demonstration_turns(p.row, w.column, p.uid, run.env is not None, r.max_turns)
    params = [p for p in run.learner.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=w.lr, **fused_if_supported(params))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(run.cfg.run.seed)).tolist()
    share = w.batch_size // run.world
    first = last = None
    for s in range(w.steps):
        start = s * w.batch_size
        picks = [order[(start + run.rank * share + j) % len(order)] for j in range(share)]
        ro = demonstrations([rows[i] for i in picks], run.tokenizer, run.env, column=w.column, end_id=end_id,
                            stop=r.stop, max_turns=r.max_turns, max_tokens=budget)
        n = len(ro)
        scored = ScoredRollouts(ro, torch.zeros(n), {}, torch.zeros(n, dtype=torch.bool))
        m = run.learner.imitate(as_batch(scored), optimizer)
        first = m["warmup/loss"] if first is None else first
        last = m
        if run.acc.is_main_process and (s + 1) % max(w.steps // 5, 1) == 0:
            run.logger.write(f"rlvr: warm-up step {s + 1}/{w.steps}: loss {m['warmup/loss']:.4f} per token")
    if last is not None:
        run.logger.log(0, {"warmup/loss_first": first, "warmup/loss": last["warmup/loss"],
                           "warmup/steps": float(w.steps), "warmup/rows": float(len(rows))})
