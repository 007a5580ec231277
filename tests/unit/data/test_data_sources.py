"""load_rows: every file format gives the same rows; errors name the file (and line)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlvr.data import DataError, load_rows

ROWS = [
    {"prompt": "1+2=", "answer": "3", "n": 1},
    {"prompt": "What is 2+2?", "answer": "4", "n": 2},
    {"prompt": "caf\u00e9 \u2192 ok", "answer": "5", "n": 3},
]


def _write_all(folder: Path) -> dict[str, Path]:
    paths = {ext: folder / f"train.{ext}" for ext in ("json", "jsonl", "parquet")}
    paths["json"].write_text(json.dumps(ROWS), encoding="utf-8")
    paths["jsonl"].write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(ROWS), paths["parquet"])
    return paths


def test_json_jsonl_parquet_give_the_same_rows(tmp_path):
    for ext, path in _write_all(tmp_path).items():
        source, rows = load_rows(str(path))
        assert source == str(path), ext
        assert rows == ROWS, ext


def test_json_accepts_a_data_wrapper(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": ROWS, "version": 1}))
    assert load_rows(str(path))[1] == ROWS


def test_relative_path_resolves_against_cwd_then_base_dir_and_keeps_its_name(tmp_path, monkeypatch):
    (tmp_path / "recipe" / "data").mkdir(parents=True)
    (tmp_path / "recipe" / "data" / "t.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    monkeypatch.chdir(tmp_path)
    source, rows = load_rows("data/t.jsonl", base_dir=tmp_path / "recipe")
    assert (source, rows) == ("data/t.jsonl", ROWS[:1])
    # the working directory wins over base_dir
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    assert load_rows("data/t.jsonl", base_dir=tmp_path / "recipe")[1] == ROWS[1:2]


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n{'prompt': 1}\n")
    with pytest.raises(DataError, match=r"bad\.jsonl line 4: invalid JSON"):
        load_rows(str(path))


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"list\.jsonl line 2: expected a JSON object, got list"):
        load_rows(str(path))


def test_bad_json_and_wrong_shapes(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"prompt": "a"},\n  {"prompt": }\n]')
    with pytest.raises(DataError, match=r"broken\.json line 3: invalid JSON"):
        load_rows(str(broken))
    lines = tmp_path / "lines.json"
    lines.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(DataError, match=r"lines\.json line 2: invalid JSON \(Extra data; .* \.jsonl file\)"):
        load_rows(str(lines))
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3")
    with pytest.raises(DataError, match=r"scalar\.json: expected a list of objects"):
        load_rows(str(scalar))
    strings = tmp_path / "strings.json"
    strings.write_text('[{"prompt": "a"}, "b"]')
    with pytest.raises(DataError, match=r"strings\.json row 1: expected an object, got str"):
        load_rows(str(strings))


def test_missing_file_and_unsupported_type(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found \(looked in .* and /elsewhere\)"):
        load_rows("nope.jsonl", base_dir="/elsewhere")
    (tmp_path / "rows.csv").write_text("prompt,answer\n")
    with pytest.raises(DataError, match=r"rows\.csv: unsupported file type"):
        load_rows("rows.csv")
    (tmp_path / "garbage.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"garbage\.parquet: cannot read parquet"):
        load_rows("garbage.parquet")


def test_local_folder_goes_through_datasets(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS[:2]))
    (folder / "test.jsonl").write_text(json.dumps(ROWS[2]))
    assert load_rows(str(folder), split="test") == (f"{folder}:test", [ROWS[2]])
    with pytest.raises(DataError, match=r"choose a split \(available: train, test\)"):
        load_rows(str(folder))


def test_hub_failure_names_the_dataset(monkeypatch):
    import datasets

    def unreachable(path, split=None):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match=r"^org/name: not a local .* \(ConnectionError: Couldn't reach"):
        load_rows("org/name", split="train")


def test_synthetic_source_name_carries_the_split():
    source, rows = load_rows("synthetic:succ", split="test", synthetic_args={"num_rows": 5, "seed": 3})
    assert source == "synthetic:succ:test" and len(rows) == 5
    assert load_rows("synthetic:succ", synthetic_args={"num_rows": 5, "seed": 3, "split": "test"}) == (
        source,
        rows,
    )
    assert load_rows("synthetic:succ")[0] == "synthetic:succ:train"


def test_synthetic_argument_errors():
    with pytest.raises(DataError, match=r"split='test' but synthetic_args has split='train'"):
        load_rows("synthetic:succ", split="test", synthetic_args={"split": "train"})
    with pytest.raises(DataError, match=r"synthetic:succ: bad synthetic_args .*num_row"):
        load_rows("synthetic:succ", synthetic_args={"num_row": 5})
    with pytest.raises(DataError, match=r"synthetic:nope: unknown task \(known: mod_sum, product, succ, sum\)"):
        load_rows("synthetic:nope")
    with pytest.raises(DataError, match=r"data\.jsonl: synthetic_args only apply"):
        load_rows("data.jsonl", synthetic_args={"seed": 1})
