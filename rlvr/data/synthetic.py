"""Verifiable tasks generated in code, addressed as `synthetic:<task>`.

Why they exist: a tiny model trained from random weights learns them by RL alone within a minute
on a laptop CPU, so tests and recipes can assert learning with nothing to download. The answers
of mod_sum and succ are one character, so a correct sample is likely enough (about 1 in 10) for
groups to have reward variance from the first step; sum's are not (a task for tools).

    mod_sum  "12+34="  -> "6"   (a + b) mod 10, a and b in [0, max_operand]
    succ     "12>"     -> "3"   (a + 1) mod 10, a in [0, max_operand]
    sum      "12+34="  -> "46"  a + b, a multi-token answer (the calculator environment's task);
                                its rows also hold `demonstration`, a worked calculator episode
                                (the tool call, then the answer) for `warmup`
    product  "12*34="  -> "408" a * b, up to four answer tokens; `demonstration` as for sum

Answers depend on the prompt and are uniform over the ten digits (exactly, in each split, when
max_operand + 1 is a multiple of 10), so no constant answer scores above 0.1.

Train and test are disjoint and each has every answer equally often: within each answer class,
operand tuples are ranked by a hash of (task, operands, `split_seed`) and the first
round(test_fraction * class size) go to test. Membership therefore does not depend on `num_rows`
or `seed`, so train and test rows drawn with different seeds never share a prompt (keep
`max_operand`, `test_fraction` and `split_seed` equal for both). Balancing matters for small tasks:
succ with max_operand 99 has 100 prompts, and a plain per-tuple coin flip gave a 19-prompt test
split on which always answering "2" scored 0.21; ranked per class it has 2 prompts per digit.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import itertools
import json
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

from rlvr.data.errors import DataError


class Task(NamedTuple):
    arity: int  # operands per row
    make_row: Callable[..., dict[str, Any]]  # operands -> {"prompt", "answer", operands...}


def _mod_sum_row(a: int, b: int, width: int = 0) -> dict[str, Any]:
    return {"prompt": f"{a:0{width}d}+{b:0{width}d}=", "answer": str((a + b) % 10), "a": a, "b": b}


def _succ_row(a: int, width: int = 0) -> dict[str, Any]:
    return {"prompt": f"{a:0{width}d}>", "answer": str((a + 1) % 10), "a": a}


def _worked_row(a: int, b: int, op: str, value: int, width: int) -> dict[str, Any]:
    expression = f"{a:0{width}d}{op}{b:0{width}d}"
    # a worked episode for `warmup` (a cold start): call the calculator, then answer with its result
    call = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
    return {"prompt": f"{expression}=", "answer": str(value), "a": a, "b": b,
            "demonstration": [f"<tool_call>\n{call}\n</tool_call>", str(value)]}


def _sum_row(a: int, b: int, width: int = 0) -> dict[str, Any]:
    return _worked_row(a, b, "+", a + b, width)


def _product_row(a: int, b: int, width: int = 0) -> dict[str, Any]:
    return _worked_row(a, b, "*", a * b, width)


TASKS: dict[str, Task] = {"mod_sum": Task(2, _mod_sum_row), "succ": Task(1, _succ_row), "sum": Task(2, _sum_row),
                          "product": Task(2, _product_row)}


def generate(
    task: str,
    *,
    split: str = "train",
    num_rows: int = 1000,
    seed: int = 0,
    max_operand: int = 99,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    pad_width: int = 0,
) -> list[dict[str, Any]]:
    """`num_rows` rows of `task` from one split, the same for the same arguments.

    `seed` picks the rows; `split_seed` (keep it equal for train and test) picks the partition.
    `pad_width` zero-pads operands ("07+85=" with 2): every digit then sits at a fixed position,
    which a tiny model from random weights finds much faster than variable-width numbers.
    Rows are distinct while the split has enough operand tuples. When it has fewer (succ with
    max_operand 99 has 20 test tuples), rows are drawn with replacement from that split
    only, evenly: every tuple appears floor(n/k) or ceil(n/k) times, so an evaluation over them
    weighs each tuple alike.

        >>> generate("succ", split="test", num_rows=3, seed=1)
        [{'prompt': '71>', 'answer': '2', 'a': 71}, {'prompt': '68>', 'answer': '9', 'a': 68}, ...]
    """
    spec = _check_args(task, split, num_rows, max_operand, test_fraction)
    pool = split_pool(
        task, split, max_operand=max_operand, test_fraction=test_fraction, split_seed=split_seed
    )
    if not pool:
        raise DataError(
            f"synthetic:{task}: the {split} split is empty "
            f"(max_operand={max_operand}, test_fraction={test_fraction})"
        )
    return [spec.make_row(*ops, width=pad_width) for ops in _draw(pool, num_rows, random.Random(seed))]


def split_pool(
    task: str, split: str, *, max_operand: int = 99, test_fraction: float = 0.2, split_seed: int = 0
) -> list[tuple[int, ...]]:
    """Every operand tuple of one split, in a fixed order (see the module docstring for the rule).

    >>> len(split_pool("succ", "test")), len(split_pool("mod_sum", "train"))
    (20, 8000)
    """
    spec = TASKS[task]
    by_answer: dict[str, list[tuple[int, ...]]] = defaultdict(list)
    for ops in itertools.product(range(max_operand + 1), repeat=spec.arity):
        by_answer[spec.make_row(*ops)["answer"]].append(ops)
    pool = []
    for answer in sorted(by_answer):
        ranked = sorted(by_answer[answer], key=lambda ops: _stable_hash(task, ops, split_seed))
        n_test = round(test_fraction * len(ranked))
        pool += ranked[:n_test] if split == "test" else ranked[n_test:]
    return pool


def _stable_hash(task: str, operands: tuple[int, ...], split_seed: int) -> bytes:
    """Python's `hash` changes per process; this does not."""
    return hashlib.blake2b(f"{task}|{split_seed}|{operands}".encode(), digest_size=8).digest()


def _draw(pool: list[tuple[int, ...]], n: int, rng: random.Random) -> list[tuple[int, ...]]:
    """n items of `pool`: distinct when it is large enough, else every item equally often (±1)."""
    if n <= len(pool):
        return rng.sample(pool, n)
    items = pool * (n // len(pool)) + rng.sample(pool, n % len(pool))
    rng.shuffle(items)
    return items


def _check_args(task: str, split: str, num_rows: int, max_operand: int, test_fraction: float) -> Task:
    problems = _value_problems(split, num_rows, max_operand, test_fraction)
    if task not in TASKS:
        raise DataError(f"synthetic:{task}: unknown task (known: {', '.join(sorted(TASKS))})")
    if problems:
        raise DataError(f"synthetic:{task}: " + "; ".join(f"{arg} {msg}" for arg, msg in problems))
    return TASKS[task]


def _value_problems(split: Any, num_rows: Any, max_operand: Any, test_fraction: Any) -> list[tuple[str, str]]:
    """(argument, what is wrong) for values `generate` cannot use."""
    problems = []
    if split not in ("train", "test"):
        problems.append(("split", f"must be 'train' or 'test', got {split!r}"))
    if num_rows < 1:
        problems.append(("num_rows", f"must be at least 1, got {num_rows}"))
    if max_operand < 0:
        problems.append(("max_operand", f"must be at least 0, got {max_operand}"))
    if not 0.0 < test_fraction < 1.0:
        problems.append(("test_fraction", f"must be in (0, 1), got {test_fraction}"))
    return problems


def arg_problems(task: str, args: dict[str, Any]) -> list[tuple[str, str]]:
    """Why `generate(task, **args)` would fail, as (argument or "", message) pairs; [] when it runs.

    Cheap (no rows are generated), so a recipe is checked before anything loads:

        >>> arg_problems("mod_sum", {"nm_rows": 5, "test_fraction": 2})
        [('nm_rows', "unknown argument (did you mean 'num_rows'?); accepted: split, num_rows, ..."),
         ('test_fraction', 'must be in (0, 1), got 2.0')]
    """
    if task not in TASKS:
        hint = difflib.get_close_matches(task, list(TASKS), n=1)
        return [("", f"unknown task (known: {', '.join(sorted(TASKS))}"
                 + (f"; did you mean {hint[0]!r}?)" if hint else ")"))]
    accepted = [n for n in inspect.signature(generate).parameters if n != "task"]
    problems, values = [], {}
    for name, value in args.items():
        if name not in accepted:
            hint = difflib.get_close_matches(name, accepted, n=1)
            problems.append((name, "unknown argument" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                             + f"; accepted: {', '.join(accepted)}"))
            continue
        try:
            values[name] = coerce_args({name: value})[name]
        except ValueError:
            problems.append((name, f"expected {_KINDS[_ANNOTATIONS[name]]}, got {value!r}"))
    v = {**_DEFAULTS, **values}
    return problems + _value_problems(v["split"], v["num_rows"], v["max_operand"], v["test_fraction"])


def coerce_args(args: dict[str, Any]) -> dict[str, Any]:
    """`args` converted to `generate`'s parameter types (an override `test_fraction=1e-1` reads as
    the string "1e-1" in YAML 1.1); raises pydantic's ValidationError (a ValueError) on a bad value."""
    from pydantic import TypeAdapter

    return {k: TypeAdapter(_ANNOTATIONS[k]).validate_python(v) if k in _ANNOTATIONS else v
            for k, v in args.items()}


_ANNOTATIONS: dict[str, Any] = {"split": str, "num_rows": int, "seed": int, "max_operand": int,
                                "test_fraction": float, "split_seed": int, "pad_width": int}
_KINDS = {str: "a string", int: "an integer", float: "a number"}
_DEFAULTS: dict[str, Any] = {
    n: p.default for n, p in inspect.signature(generate).parameters.items() if n != "task"
}
