"""Built-in rewards: math (math-verify), gsm8k (final number), exact (string match), format (regex),
env (the reward an environment gave its own episode).

Each is a per-sample function `fn(prompt, completion, row, **kwargs) -> float`; the gold answer is
`row["answer"]` (the data stage puts it under that key). A missing gold answer raises: that is a data
problem, and the runner counts it as a failure instead of scoring the model 0 for it in silence.
"""

from __future__ import annotations

import functools
import logging
import re
from decimal import Decimal
from typing import Any, Literal

from math_verify import parse, verify

from rlvr.registry import REWARD

# Rewards that run in worker processes unless a spec says otherwise: math-verify can spend seconds in
# sympy on an adversarial completion, and the pool can kill a worker stuck in C code; reasoning-gym's
# ~100 scorers are third-party code (some call sympy too).
ISOLATE = frozenset({"math", "reasoning_gym"})


class _DropMathVerifyTimeoutNotice(logging.Filter):
    """math-verify warns once per process when its own SIGALRM timeouts are off; the runner's are on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropMathVerifyTimeoutNotice())


def _gold(row: dict[str, Any]) -> str:
    """The gold answer as text; floats are written out in full, since math-verify reads `1e-07` as e - 7."""
    answer = row.get("answer")
    if answer is None:
        raise ValueError("row has no 'answer'")
    if isinstance(answer, float):
        return format(Decimal(repr(answer)), "f")
    return str(answer)


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed `\\boxed{...}` (nested braces allowed), or None.

    >>> last_boxed(r"first \\boxed{1}, then \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    """
    end = len(text)
    while (start := text.rfind("\\boxed", 0, end)) != -1:
        i = start + len("\\boxed")
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j]
        end = start  # unclosed (e.g. cut off by max_new_tokens): try the one before
    return None


# math-verify turns off its own signal.alarm timeouts here (parsing_timeout=None, timeout_seconds=None):
# they would cancel the runner's per-sample timer, and they raise off the main thread.
@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple[Any, ...]:
    """Parse a gold answer as LaTeX: a bare `12\\pi` is otherwise read as the plain number 12.

    Cached because the G samples of a prompt share their gold answer.
    """
    text = gold if "\\boxed" in gold or "$" in gold else f"${gold}$"
    return tuple(parse(text, parsing_timeout=None))


@REWARD.register("math")
def math_equal(prompt: str, completion: str, row: dict[str, Any]) -> float:
    """1.0 when math-verify finds the completion's answer equal to the gold answer, else 0.0.

    The answer is the last `\\boxed{}` when there is one (models often box a draft before the final
    answer), otherwise whatever math-verify extracts from the whole completion.
    """
    gold = _parse_gold(_gold(row))
    if not gold:
        raise ValueError(f"math-verify cannot read the gold answer {row['answer']!r}")
    boxed = last_boxed(completion)
    answer = parse(completion if boxed is None else f"\\boxed{{{boxed}}}", parsing_timeout=None)
    return float(bool(answer) and verify(list(gold), answer, timeout_seconds=None))


_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\$?\.\d+")


def _to_float(text: str) -> float:
    return float(text.replace(",", "").replace("$", ""))


def final_number(text: str) -> float | None:
    """The answer number of a GSM8K-style text: first number after the last `####`, else the last
    number in the last `\\boxed{}`, else the last number anywhere. Thousands commas and `$` are dropped.

    >>> final_number("so 40 + 2 = 42 apples.\\n#### 1,234")
    1234.0
    """
    _, hashes, tail = text.rpartition("####")
    if hashes and (m := _NUMBER.search(tail)):
        return _to_float(m.group())
    boxed = last_boxed(text)
    for source in ([boxed] if boxed is not None else []) + [text]:
        numbers = _NUMBER.findall(source)
        if numbers:
            return _to_float(numbers[-1])
    return None


@REWARD.register("gsm8k")
def gsm8k_number(prompt: str, completion: str, row: dict[str, Any]) -> float:
    """1.0 when the completion's final number equals the gold's (within 1e-6), else 0.0."""
    gold = final_number(_gold(row))
    if gold is None:
        raise ValueError(f"gold answer {row['answer']!r} holds no number")
    answer = final_number(completion)
    return float(answer is not None and abs(answer - gold) <= 1e-6)


@REWARD.register("exact")
def exact_match(prompt: str, completion: str, row: dict[str, Any], *, ignore_case: bool = False,
                strip: bool = True) -> float:
    """1.0 when the completion equals the gold answer as text."""
    gold = _gold(row)
    if strip:
        completion, gold = completion.strip(), gold.strip()
    if ignore_case:
        completion, gold = completion.casefold(), gold.casefold()
    return float(completion == gold)


@REWARD.register("format")
def format_match(prompt: str, completion: str, row: dict[str, Any], *, pattern: str,
                 mode: Literal["search", "fullmatch"] = "fullmatch") -> float:
    """1.0 when the completion matches `pattern` (re.DOTALL, so `.` spans lines), else 0.0.

    mode="fullmatch" checks the whole completion's layout (e.g. `<think>.*</think>\\s*<answer>.*</answer>`);
    "search" only asks that the pattern occurs somewhere.
    """
    if mode not in ("search", "fullmatch"):
        raise ValueError(f"mode must be 'search' or 'fullmatch', got {mode!r}")
    regex = re.compile(pattern, re.DOTALL)  # re caches compiled patterns
    found = regex.search(completion) if mode == "search" else regex.fullmatch(completion)
    return float(found is not None)



@REWARD.register("env")
def env_reward(prompt: str, completion: str, row: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The reward the environment gave its own episode (its `finish` record, e.g. a verifiers
    rubric's weighted sum), with the record's numeric "metrics" (e.g. each rubric function's score).

    Example: row["episode"] = {"reward": 0.75, "metrics": {"correct": 1.0, "turns": 3}, ...}
    -> (0.75, {"correct": 1.0, "turns": 3.0}).
    """
    episode = row.get("episode")
    if not isinstance(episode, dict):
        raise ValueError("reward env reads the episode's own reward; it needs an `env:` section (multi-turn episodes)")
    value = episode.get("reward")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"reward env: the environment gave this episode no reward (got {value!r}); its finish() "
                         "must return {'reward': <number>} for every episode")
    metrics = {k: float(v) for k, v in (episode.get("metrics") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return float(value), metrics
