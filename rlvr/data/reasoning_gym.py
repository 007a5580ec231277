"""Procedural tasks from the reasoning-gym library, addressed as `reasoning-gym:<task>`.

reasoning-gym (pip install 'rlvr[tasks]') generates about a hundred verifiable task families
(arithmetic, algebra, logic, puzzles, graphs, ...) from a seed, each with its own scorer, so a
recipe gets real tasks without a hub download:

    data:
      train: {path: "reasoning-gym:chain_sum", split: train, args: {size: 2000, seed: 0, max_digits: 2}}
      eval:  {path: "reasoning-gym:chain_sum", split: test,  args: {size: 100, seed: 1, max_digits: 2}}

`args` holds `size` (rows), `seed`, `test_fraction` and any field of the task's own config
dataclass (its `seed` and `size` are set here); `composite` takes `datasets: [{name, weight,
config}]` as reasoning-gym's CompositeDataset does.

Held-out split. reasoning-gym item i of seed s is generated from `Random(s + i)`, so seeds s and
s + 1 give the same items shifted by one, and a small task config repeats questions under any
seeds. Each question therefore belongs to one split by a hash of its text: it is a test question
when the hash, read as a number in [0, 1), is below `test_fraction`. Train and test rows never
share a question text, whatever their seeds and sizes (keep `test_fraction` equal for both), and
neither split repeats a question. A split that runs out of distinct questions is an error, not a
silent repeat.

Each row is {"prompt": question, "answer": gold, "metadata": item metadata, "reasoning_gym":
{"task", "config", "entry"}}: the untouched item (`entry`) and the config that made it travel with
the row (plain picklable data), so the `reasoning_gym` reward scores it with the task's own
`score_answer` in any process.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from typing import Any

from rlvr.data.errors import DataError

PREFIX = "reasoning-gym:"
SPLITS = ("train", "test")
# arguments of the source itself; every other key of `args` configures the task
OWN_ARGS: dict[str, Any] = {"size": 500, "seed": 0, "test_fraction": 0.1}
_MAX_DRAWS_PER_ROW = 50  # items tried per requested row before a split counts as exhausted
_INSTALL = "pip install 'rlvr[tasks]' (or reasoning-gym>=0.1.25)"


def generate(task: str, *, split: str = "train", size: int = 500, seed: int = 0, test_fraction: float = 0.1,
             **task_config: Any) -> list[dict[str, Any]]:
    """`size` rows of one split of a reasoning-gym task, the same for the same arguments.

        >>> rows = generate("chain_sum", split="test", size=2, seed=0, max_terms=2, max_digits=1)
        >>> rows[0]["prompt"], rows[0]["answer"], rows[0]["reasoning_gym"]["task"]
        ('State the final answer to the following arithmetic problem: 3 - 5 =', '-2', 'chain_sum')
    """
    problems = arg_problems(task, {"size": size, "seed": seed, "test_fraction": test_fraction, **task_config},
                            split)
    if problems:
        raise DataError(_explain(task, problems))
    import reasoning_gym

    stream_seed = _stream_seed(task, split, seed)
    budget = _MAX_DRAWS_PER_ROW * size + 1000
    config = _task_config(task, task_config)
    dataset = reasoning_gym.create_dataset(task, **config, seed=stream_seed, size=budget)
    scorers = _scorer_configs(task, config, stream_seed, budget)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(budget):
        try:
            item = dataset[i]
        except Exception as e:  # a generator bug or a config its validate() let through
            raise DataError(f"{PREFIX}{task}: reasoning-gym failed on item {i} of seed {stream_seed} "
                            f"({type(e).__name__}: {e})") from e
        question = item["question"]
        if question in seen or split_of(question, test_fraction) != split:
            continue
        seen.add(question)
        sub_task = item["metadata"].get("source_dataset", task) if task == "composite" else task
        scorer = {"task": sub_task, "config": scorers[sub_task], "entry": item}
        rows.append({"prompt": question, "answer": item["answer"], "metadata": item["metadata"],
                     "reasoning_gym": scorer})
        if len(rows) == size:
            return rows
    raise DataError(f"{PREFIX}{task}: only {len(rows)} distinct questions fall in the {split} split after {budget} "
                    f"items (asked for size={size}); lower size, or widen the task's config so it has more "
                    "distinct questions")


def split_of(question: str, test_fraction: float) -> str:
    """"test" when the question's hash, as a number in [0, 1), is below test_fraction, else "train".

    Only the text counts, so a question lands in the same split from any task, seed or config.

        >>> split_of("What is 2 + 2?", 0.1), split_of("What is 3 + 5?", 0.1)   # hashes 0.915, 0.022
        ('train', 'test')
    """
    digest = hashlib.blake2b(question.encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") / 2**64 < test_fraction else "train"


def _stream_seed(task: str, split: str, seed: int) -> int:
    """The seed of reasoning-gym's item stream: hashed, so (train, 0) and (test, 1) do not give the
    same items shifted by one as seeds 0 and 1 would."""
    digest = hashlib.blake2b(f"{task}|{split}|{seed}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % 2**31


def _task_config(task: str, task_config: dict[str, Any]) -> dict[str, Any]:
    """The task's config as keyword arguments of `create_dataset` (composite: specs as reasoning-gym wants)."""
    if task != "composite":
        return dict(task_config)
    from reasoning_gym.composite import DatasetSpec

    specs = [DatasetSpec(s["name"], s.get("weight", 1.0), dict(s.get("config") or {}))
             for s in task_config["datasets"]]
    return {**task_config, "datasets": specs}


def _scorer_configs(task: str, config: dict[str, Any], stream_seed: int, size: int) -> dict[str, dict[str, Any]]:
    """{task: the config that rebuilds the dataset whose score_answer judges its items}, one dict
    shared by all rows of that task.

    A composite's item names its sub-task in metadata["source_dataset"], and CompositeDataset's
    score_answer delegates to that sub-dataset, built with the spec's config and seed + i + 1.
    """
    if task != "composite":
        return {task: {**config, "seed": stream_seed, "size": size}}
    return {spec.name: {"seed": stream_seed + i + 1, "size": size, **spec.config}
            for i, spec in enumerate(config["datasets"])}


# ---- checks -----------------------------------------------------------------------------------


def task_names() -> list[str]:
    """The registered task names (reasoning-gym must be installed)."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def arg_problems(task: str, args: dict[str, Any], split: str | None = "train") -> list[tuple[str, str]]:
    """Why `generate(task, split=split, **args)` would fail, as (key, message) pairs; [] when it runs.

    The key is relative to the dataset entry of a recipe: "path" (reasoning-gym missing, an unknown
    task), "split", or "args.<argument>". The task's config is built and checked with reasoning-gym's
    own `validate()`, but no item is generated:

        >>> arg_problems("chain_sum", {"max_term": 3})
        [('args.max_term', "not an option of chain_sum (did you mean 'max_terms'?); options: size, ...")]
        >>> arg_problems("chain_sum", {"min_terms": 4, "max_terms": 3})
        [('args.max_terms', 'max_terms must be >= min_terms')]
    """
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:
        return [("path", f"needs the reasoning-gym package: {_INSTALL}")]
    if task not in DATASETS:
        hint = difflib.get_close_matches(task, list(DATASETS), n=1)
        return [("path", "unknown task" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                 + f"; known: {', '.join(sorted(DATASETS))}")]
    problems = []
    if (split or "train") not in SPLITS:
        problems.append(("split", f"split must be one of {', '.join(SPLITS)}, got {split!r}"))
    own, task_config = _own_values(args, problems)
    config_cls = DATASETS[task][1]
    options = list(OWN_ARGS) + [f.name for f in dataclasses.fields(config_cls) if f.name not in OWN_ARGS]
    for name in [k for k in task_config if k not in options]:
        hint = difflib.get_close_matches(name, options, n=1)
        problems.append((f"args.{name}", f"not an option of {task}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; options: {', '.join(options)}"))
        del task_config[name]
    if task == "composite":
        found = _composite_problems(task_config, DATASETS)
        if found:  # the specs cannot be built: nothing more to check
            return problems + found
    return problems + _config_problems(task, config_cls, task_config, own)


def _own_values(args: dict[str, Any], problems: list[tuple[str, str]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(size, seed, test_fraction: the valid ones, defaults for the rest; the task's own keys).
    Bad values go to `problems`."""
    from pydantic import TypeAdapter, ValidationError

    own = dict(OWN_ARGS)
    rules = {"size": (int, lambda v: v >= 1, "must be at least 1"),
             "seed": (int, lambda v: True, ""),
             "test_fraction": (float, lambda v: 0.0 < v < 1.0, "must be in (0, 1)")}
    for name, (kind, ok, rule) in rules.items():
        if name not in args:
            continue
        try:
            value = TypeAdapter(kind).validate_python(args[name])
        except ValidationError:
            problems.append((f"args.{name}", f"expected {'an integer' if kind is int else 'a number'}, got {args[name]!r}"))
            continue
        if ok(value):
            own[name] = value
        else:
            problems.append((f"args.{name}", f"{rule}, got {value}"))
    return own, {k: v for k, v in args.items() if k not in OWN_ARGS}


def _composite_problems(task_config: dict[str, Any], known: dict[str, Any]) -> list[tuple[str, str]]:
    """The `datasets` list of a composite: entries {name, weight, config} naming known tasks."""
    specs = task_config.get("datasets")
    if not isinstance(specs, list) or not specs:
        return [("args.datasets", "expected a non-empty list of {name, weight, config}")]
    problems = []
    for i, spec in enumerate(specs):
        key = f"args.datasets[{i}]"
        if not isinstance(spec, dict) or set(spec) - {"name", "weight", "config"} or "name" not in spec:
            problems.append((key, f"expected {{name, weight, config}}, got {spec!r}"))
            continue
        if spec["name"] not in known or spec["name"] == "composite":
            hint = difflib.get_close_matches(str(spec["name"]), list(known), n=1)
            problems.append((f"{key}.name", f"unknown task {spec['name']!r}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else "")))
            continue
        config = spec.get("config") or {}
        if not isinstance(config, dict):
            problems.append((f"{key}.config", f"expected a mapping of {spec['name']}'s options, got {config!r}"))
            continue
        sub = arg_problems(spec["name"], {k: v for k, v in config.items() if k not in OWN_ARGS})
        problems += [(f"{key}.config.{arg.removeprefix('args.')}", msg) for arg, msg in sub]
    return problems


def _config_problems(task: str, config_cls: type, task_config: dict[str, Any],
                     own: dict[str, Any]) -> list[tuple[str, str]]:
    """Build the task's config dataclass with pydantic (types, per key) and run its `validate()`."""
    from pydantic import TypeAdapter, ValidationError

    values = _task_config(task, task_config)
    try:
        config = TypeAdapter(config_cls).validate_python({**values, "seed": own["seed"], "size": own["size"]})
    except ValidationError as e:
        return [("args." + ".".join(str(p) for p in err["loc"]), f"{err['msg']}, got {err['input']!r}")
                for err in e.errors()]
    message = _validate(config)
    if message is None:
        return []
    return [("args." + _culprit(message, config_cls, values, own), message)]


def _validate(config: Any) -> str | None:
    """The message of the config's own `validate()` (reasoning-gym asserts), or None when it passes."""
    try:
        if hasattr(config, "validate"):
            config.validate()
    except (AssertionError, ValueError, TypeError) as e:
        return str(e) or type(e).__name__
    return None


def _culprit(message: str, config_cls: type, values: dict[str, Any], own: dict[str, Any]) -> str:
    """The recipe key to blame for a failed `validate()`: the one the message names, else the one
    whose default passes ("unsupported operator: %" blames operators), else all of them."""
    words = message.replace(",", " ").replace(":", " ").split()
    named = sorted((k for k in values if k in words), key=words.index)
    if named:
        return named[0]
    for k in values:
        rest = {n: v for n, v in values.items() if n != k}
        if _validate(config_cls(**rest, seed=own["seed"], size=own["size"])) is None:
            return k
    return "{" + ", ".join(values) + "}"


def _explain(task: str, problems: list[tuple[str, str]]) -> str:
    said = "; ".join(f"{key}: {msg}" for key, msg in problems)
    return f"{PREFIX}{task}: {said}"
