"""Read the rows of a prompt dataset from wherever it lives.

    data/train.jsonl | data/train.json | data/train.parquet   local files
    synthetic:mod_sum                                          generated in code (rlvr.data.synthetic)
    openai/gsm8k (with split="train"), or a local folder        anything `datasets.load_dataset` reads

The source name returned with the rows prefixes every prompt uid ("data/train.jsonl#17"), so it is
the path as written, not the resolved one: uids stay the same whatever the working directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rlvr.data import synthetic
from rlvr.data.errors import DataError

Row = dict[str, Any]


def load_rows(
    path: str,
    *,
    split: str | None = None,
    base_dir: str | Path | None = None,
    synthetic_args: dict[str, Any] | None = None,
) -> tuple[str, list[Row]]:
    """(source name, rows) of a local .json/.jsonl/.parquet file, a `synthetic:<task>` or a hub dataset.

    A relative file path resolves against the working directory, then `base_dir` (a recipe's
    folder). `split` selects a hub split or the synthetic split; a local file is one split and
    ignores it.

        >>> load_rows("data/train.jsonl")
        ('data/train.jsonl', [{'prompt': '1+2=', 'answer': '3'}, ...])
        >>> load_rows("synthetic:succ", split="test", synthetic_args={"num_rows": 100, "seed": 1})
        ('synthetic:succ:test', [{'prompt': '15>', 'answer': '6', 'a': 15}, ...])
    """
    if path.startswith("synthetic:"):
        return _load_synthetic(path.removeprefix("synthetic:"), split, dict(synthetic_args or {}))
    if synthetic_args:
        raise DataError(f"{path}: synthetic_args only apply to synthetic:<task> sources")
    file = _resolve(path, base_dir)
    reader = _READERS.get(Path(path).suffix.lower())
    if reader is not None:
        if file is None:
            raise DataError(f"{path}: file not found (looked in {_search_dirs(base_dir)})")
        return path, reader(file, path)
    if file is not None and file.is_file():
        raise DataError(f"{path}: unsupported file type (supported: {', '.join(_READERS)})")
    return _load_hub(path, split, location=str(file) if file is not None else path)


def _resolve(path: str, base_dir: str | Path | None) -> Path | None:
    """The existing local file or folder `path` names, trying cwd first, then `base_dir`."""
    candidates = [Path(path)]
    if base_dir is not None and not Path(path).is_absolute():
        candidates.append(Path(base_dir) / path)
    return next((p for p in candidates if p.exists()), None)


def _search_dirs(base_dir: str | Path | None) -> str:
    return os.getcwd() + (f" and {base_dir}" if base_dir is not None else "")


def _not_utf8(name: str, line: int, offset: int, e: UnicodeDecodeError) -> DataError:
    """Where the first byte that is not UTF-8 sits, and what to do about it."""
    bad = e.object[e.start:e.start + 1].hex()
    return DataError(f"{name} line {line}: not UTF-8 (byte 0x{bad} at byte offset {offset} of the file); "
                     "re-encode it as UTF-8 (for Latin-1 text: iconv -f latin1 -t utf-8)")


def _read_json(file: Path, name: str) -> list[Row]:
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is not an error
    except UnicodeDecodeError as e:
        raise _not_utf8(name, raw.count(b"\n", 0, e.start) + 1, e.start, e) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = "; one object per line belongs in a .jsonl file" if e.msg == "Extra data" else ""
        raise DataError(f"{name} line {e.lineno}: invalid JSON ({e.msg}{hint})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{name}: expected a list of objects or {{"data": [...]}}, got {type(data).__name__}')
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{name} row {i}: expected an object, got {type(row).__name__}")
    return data


def iter_jsonl(file: Path, name: str) -> Iterator[tuple[int, Row]]:
    """(line number, object) of every non-blank line of a JSON-lines file; a line that is not
    UTF-8, not JSON or not an object raises DataError naming `name` and the line.

    Example: lines '{"a": 1}', '', '{"a": 2}' -> (1, {"a": 1}), (3, {"a": 2}).
    """
    offset = 0  # of the current line's first byte, for the message on a line that is not UTF-8
    with file.open("rb") as f:
        for lineno, data in enumerate(f, start=1):
            try:
                line = data.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(name, lineno, offset + e.start, e) from None
            offset += len(data)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{name} line {lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{name} line {lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def _read_jsonl(file: Path, name: str) -> list[Row]:
    return [row for _, row in iter_jsonl(file, name)]


def _read_parquet(file: Path, name: str) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(file).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{name}: cannot read parquet ({e})") from None


_READERS: dict[str, Callable[[Path, str], list[Row]]] = {
    ".json": _read_json,
    ".jsonl": _read_jsonl,
    ".parquet": _read_parquet,
}


def _load_synthetic(task: str, split: str | None, args: dict[str, Any]) -> tuple[str, list[Row]]:
    """Rows of a synthetic task; `split` and `synthetic_args["split"]` must agree when both are set."""
    if split is not None and args.setdefault("split", split) != split:
        raise DataError(f"synthetic:{task}: split={split!r} but synthetic_args has split={args['split']!r}")
    problems = synthetic.arg_problems(task, args)
    if problems:
        if problems[0][0] == "":  # the task itself is unknown
            raise DataError(f"synthetic:{task}: {problems[0][1]}")
        said = "; ".join(f"{arg}: {msg}" for arg, msg in problems)
        raise DataError(f"synthetic:{task}: bad synthetic_args ({said})")
    rows = synthetic.generate(task, **synthetic.coerce_args(args))
    return f"synthetic:{task}:{args.get('split', 'train')}", rows


def _load_hub(path: str, split: str | None, location: str) -> tuple[str, list[Row]]:
    """Rows of one split of a hub dataset or local folder (`location`, the resolved `path`).

    The split is part of the source name, so train and test prompts of one dataset get different uids.
    """
    import datasets

    try:
        data = datasets.load_dataset(location, split=split)
    except Exception as e:
        raise DataError(
            f"{path}: not a local .json/.jsonl/.parquet file and datasets.load_dataset failed "
            f"({type(e).__name__}: {e})"
        ) from e
    if isinstance(data, datasets.DatasetDict):
        if len(data) != 1:
            raise DataError(f"{path}: choose a split (available: {', '.join(data)})")
        split, data = next(iter(data.items()))
    return f"{path}:{split}", data.to_list()
