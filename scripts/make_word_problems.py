#!/usr/bin/env python
"""Generate one-step arithmetic word problems for RL on small instruct models.

SmolLM2-135M-Instruct answers roughly a third of these correctly with greedy decoding, which
leaves room for RL to show a gain in minutes on CPU. The problems are made in code, so the data
set needs no download and can be regenerated bit for bit from a seed.

Usage::

    python scripts/make_word_problems.py [--out data/word_problems] [--seed 0]
    python scripts/make_word_problems.py --measure models/smollm2-135m-instruct [--limit 64]
        [--system TEXT] [--suffix TEXT] [--max-new-tokens N]

Each row is ``{"question", "answer", "op", "a", "b"}``: ``answer`` is the integer result as a
string and ``a``/``b`` are the operands in the order they appear in the question, so a test can
recompute the answer. The instruction ("Give only the final number.") is left to the recipe's
prompt template. Train and test are disjoint in operand pairs (unordered for the commutative
add and mul), not only in question text, so a test score cannot come from memorised numbers.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOW, HIGH = 2, 19  # operands in [LOW, HIGH]: below 20, and never 1 so plurals always read right
OPS = ("add", "sub", "mul")
PROMPT_SUFFIX = " Give only the final number."
DEFAULT_OUT = Path("data/word_problems")

NAMES: list[tuple[str, str]] = [  # (name, subject pronoun)
    ("Mia", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoe", "she"),
    ("Omar", "he"), ("Priya", "she"), ("Lucas", "he"), ("Hana", "she"), ("Mateo", "he"),
    ("Sara", "she"), ("Kofi", "he"), ("Elena", "she"), ("Ben", "he"), ("Aisha", "she"),
    ("Jonas", "he"),
]
OBJECTS = [
    "apples", "oranges", "pencils", "marbles", "stickers", "cookies", "books", "cards",
    "shells", "candies", "buttons", "crayons", "stamps", "balloons", "coins", "cupcakes",
]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars")]

# Each template takes a, b and a dict of random fillers; a always appears before b in the text.
Template = Callable[[int, int, dict[str, str]], str]

ADD: list[Template] = [
    lambda a, b, f: f"{f['name']} has {a} {f['obj']} and buys {b} more. "
                    f"How many {f['obj']} does {f['pron']} have now?",
    lambda a, b, f: f"There are {a} {f['obj']} in a {f['box']}. {f['name']} puts {b} more in it. "
                    f"How many {f['obj']} are in the {f['box']} now?",
    lambda a, b, f: f"{f['name']} collected {a} {f['obj']} on Monday and {b} {f['obj']} on Tuesday. "
                    f"How many {f['obj']} did {f['pron']} collect in total?",
    lambda a, b, f: f"{f['name']} has {a} {f['obj']}. {f['friend']} gives {f['name']} {b} more. "
                    f"How many {f['obj']} does {f['name']} have now?",
    lambda a, b, f: f"A shop has {a} small {f['obj']} and {b} large {f['obj']}. "
                    f"How many {f['obj']} does the shop have altogether?",
]
SUB: list[Template] = [
    lambda a, b, f: f"{f['name']} has {a} {f['obj']} and gives {b} to {f['friend']}. "
                    f"How many {f['obj']} does {f['name']} have left?",
    lambda a, b, f: f"There were {a} {f['obj']} on the table. {f['name']} took {b} of them. "
                    f"How many {f['obj']} are left on the table?",
    lambda a, b, f: f"{f['name']} had {a} {f['obj']}. {f['Pron']} lost {b} of them. "
                    f"How many {f['obj']} does {f['pron']} have now?",
    lambda a, b, f: f"A shop had {a} {f['obj']}. It sold {b} of them. "
                    f"How many {f['obj']} does the shop have left?",
    lambda a, b, f: f"{f['name']} has {a} {f['obj']} and {f['friend']} has {b} {f['obj']}. "
                    f"How many more {f['obj']} does {f['name']} have than {f['friend']}?",
]
MUL: list[Template] = [
    lambda a, b, f: f"{f['name']} has {a} {f['boxes']} with {b} {f['obj']} in each {f['box']}. "
                    f"How many {f['obj']} does {f['pron']} have in total?",
    lambda a, b, f: f"There are {a} {f['boxes']}, and each {f['box']} holds {b} {f['obj']}. "
                    f"How many {f['obj']} are there altogether?",
    lambda a, b, f: f"{f['name']} buys {a} packs of {f['obj']}. Each pack has {b} {f['obj']}. "
                    f"How many {f['obj']} did {f['pron']} buy?",
    lambda a, b, f: f"For {a} days, {f['name']} reads {b} pages each day. "
                    f"How many pages does {f['pron']} read in all?",
    lambda a, b, f: f"A garden has {a} rows of tulips with {b} tulips in each row. "
                    f"How many tulips are in the garden?",
]
TEMPLATES: dict[str, list[Template]] = {"add": ADD, "sub": SUB, "mul": MUL}


def compute(op: str, a: int, b: int) -> int:
    """The gold answer; the single place that defines what each op means."""
    return {"add": a + b, "sub": a - b, "mul": a * b}[op]


def operand_keys(op: str) -> list[tuple[int, int]]:
    """All operand pairs an op may use, one key per pair the split has to keep on one side.

    For add and mul the key is unordered (a <= b), so "3 + 5" in train cannot leak "5 + 3" into
    test; for sub the key is (minuend, subtrahend) with a non-negative result.
    """
    r = range(LOW, HIGH + 1)
    if op == "sub":
        return [(a, b) for a in r for b in r if b <= a]
    return [(a, b) for a in r for b in r if a <= b]


def _fillers(rng: random.Random) -> dict[str, str]:
    """Random names and objects for one question."""
    (name, pron), (friend, _) = rng.sample(NAMES, 2)
    box, boxes = rng.choice(CONTAINERS)
    return {"name": name, "pron": pron, "Pron": pron.capitalize(), "friend": friend,
            "obj": rng.choice(OBJECTS), "box": box, "boxes": boxes}


def _row(op: str, key: tuple[int, int], rng: random.Random) -> dict[str, Any]:
    """One row from an operand key; commutative ops show the pair in a random order."""
    a, b = key
    if op != "sub" and rng.random() < 0.5:
        a, b = b, a
    question = rng.choice(TEMPLATES[op])(a, b, _fillers(rng))
    return {"question": question, "answer": str(compute(op, a, b)), "op": op, "a": a, "b": b}


def _split_counts(n: int) -> dict[str, int]:
    """Spread n rows over the ops as evenly as possible (earlier ops get the remainder)."""
    return {op: n // len(OPS) + (i < n % len(OPS)) for i, op in enumerate(OPS)}


def generate(seed: int = 0, n_train: int = 2000, n_test: int = 300) -> tuple[list[dict], list[dict]]:
    """Build (train, test) deterministically from ``seed``.

    Per op, the operand keys are shuffled and the first ones go to test (one row each); train
    cycles over the remaining keys with fresh wording, so a key may appear in several train rows
    but never in test. Question texts are unique within and across the splits.
    """
    rng = random.Random(seed)
    train: list[dict] = []
    test: list[dict] = []
    seen: set[str] = set()
    tr_counts, te_counts = _split_counts(n_train), _split_counts(n_test)
    for op in OPS:
        keys = operand_keys(op)
        rng.shuffle(keys)
        test_keys, train_keys = keys[:te_counts[op]], keys[te_counts[op]:]
        if len(test_keys) < te_counts[op] or not train_keys:
            raise ValueError(f"not enough operand pairs for {op}: {len(keys)}")
        for key in test_keys:
            row = _row(op, key, rng)
            while row["question"] in seen:
                row = _row(op, key, rng)
            seen.add(row["question"])
            test.append(row)
        made, attempts = 0, 0
        while made < tr_counts[op]:
            attempts += 1
            if attempts > 50 * tr_counts[op]:
                raise ValueError(f"could not make {tr_counts[op]} distinct {op} questions")
            row = _row(op, train_keys[made % len(train_keys)], rng)
            if row["question"] in seen:
                continue
            seen.add(row["question"])
            train.append(row)
            made += 1
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One compact JSON object per line, keys in a fixed order, so regenerating gives no diff."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file, skipping blank lines."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def last_int(text: str) -> int | None:
    """The last integer in a completion: the reward rule the RL recipe uses for these problems."""
    found = re.findall(r"-?\d+", text.replace(",", ""))
    return int(found[-1]) if found else None


def measure(model_dir: str, data: Path, limit: int, batch_size: int, *,
            suffix: str = PROMPT_SUFFIX, system_prompt: str | None = None,
            max_new_tokens: int = 48, show: int = 6) -> float:
    """Greedy accuracy of a local model on the first ``limit`` test rows (last-integer match).

    The prompt is ``question + suffix`` as the user turn, after ``system_prompt`` when one is
    given (otherwise the chat template's default system message), the same rendering the RL
    recipe uses for ``prompt_template: "{question}<suffix>"`` and ``system_prompt``.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from prepare_smollm2 import greedy_generate

    rows = read_jsonl(data / "test.jsonl")[:limit]
    t0 = time.perf_counter()
    outs, lengths, ended = greedy_generate(model_dir, [r["question"] + suffix for r in rows],
                                           max_new_tokens=max_new_tokens, batch_size=batch_size,
                                           system_prompt=system_prompt)
    elapsed = time.perf_counter() - t0
    hits = [last_int(o) == int(r["answer"]) for o, r in zip(outs, rows)]
    per_op = Counter(r["op"] for r, h in zip(rows, hits) if h)
    tot_op = Counter(r["op"] for r in rows)
    for r, o, h in list(zip(rows, outs, hits))[:show]:
        print(f"[{'ok' if h else 'xx'}] {r['question']} (gold {r['answer']}) -> {o!r}")
    acc = sum(hits) / len(hits)
    n = len(rows)
    cut = n - sum(ended)  # no EOS within the budget: the completion was truncated
    hits_ended = sum(h for h, e in zip(hits, ended) if e)
    print(f"system {system_prompt!r}, suffix {suffix!r}, max_new_tokens {max_new_tokens}")
    print("per op: " + ", ".join(f"{op} {per_op[op]}/{tot_op[op]}" for op in OPS))
    print(f"no integer in {sum(last_int(o) is None for o in outs)}, truncated (no EOS) in "
          f"{cut}/{n} ({cut / n:.2f}), mean completion tokens {sum(lengths) / n:.1f}, "
          f"correct and ended {hits_ended}")
    print(f"greedy accuracy {acc:.3f} ({sum(hits)}/{n}) in {elapsed:.1f} s")
    return acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--measure", metavar="MODEL_DIR",
                        help="instead of generating, report greedy accuracy on --out/test.jsonl")
    parser.add_argument("--limit", type=int, default=64, help="test rows for --measure")
    parser.add_argument("--batch-size", type=int, default=8, help="generation batch for --measure")
    parser.add_argument("--suffix", default=PROMPT_SUFFIX,
                        help="text appended to each question for --measure (include a leading space)")
    parser.add_argument("--system", default=None,
                        help="system prompt for --measure (default: the chat template's own)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="token budget for --measure")
    parser.add_argument("--show", type=int, default=6, help="completions to print for --measure")
    args = parser.parse_args(argv)

    if args.measure:
        measure(args.measure, args.out, args.limit, args.batch_size, suffix=args.suffix,
                system_prompt=args.system, max_new_tokens=args.max_new_tokens, show=args.show)
        return 0
    train, test = generate(args.seed, args.n_train, args.n_test)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "test.jsonl", test)
    for name, rows in (("train", train), ("test", test)):
        counts = Counter(r["op"] for r in rows)
        print(f"{name}: {len(rows)} rows (" + ", ".join(f"{op} {counts[op]}" for op in OPS) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
