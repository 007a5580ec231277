"""Conformance against reference vectors computed with the authors' code.

Reads every file from $RLVR_VECTORS_DIR (default ../shared/vectors, else the snapshot in
tests/vectors). Tests must iterate over every case a file holds, so another directory of files
with the same schemas and different numbers is checked the same way.

A vector file that is missing, unreadable or not valid JSON is a test failure naming the file and
the folder, never a skip: pointing $RLVR_VECTORS_DIR at an incomplete folder must not pass.
"""

import json
import math
import os
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_SHARED = _HERE.parents[1] / ".." / "shared" / "vectors"
VECTORS_DIR = Path(os.environ.get("RLVR_VECTORS_DIR") or (_SHARED if _SHARED.is_dir() else _HERE.parent / "vectors"))


def _parse(x):
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, list):
        return [_parse(v) for v in x]
    if isinstance(x, dict):
        return {k: _parse(v) for k, v in x.items()}
    return x


# every file the conformance tests read; a vectors folder must hold all of them
VECTOR_FILES = ("bnpo.json", "delta_l_norm.json", "grpo.json", "gvm.json", "spo.json", "stratified_grpo.json",
                "vade.json", "vas.json")


class MissingVectors(Exception):
    """A vector file could not be read: raised at collection time, turned into a test failure."""


def vectors_source() -> str:
    """Where VECTORS_DIR came from, for failure messages."""
    return "$RLVR_VECTORS_DIR" if os.environ.get("RLVR_VECTORS_DIR") else "the default"


def read_vectors(name: str) -> dict:
    """The parsed vector file `name`, or MissingVectors naming the file and the folder."""
    path = VECTORS_DIR / name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        if not VECTORS_DIR.is_dir():
            why = "missing: the folder does not exist"
        else:
            why = "missing" if not path.exists() else f"unreadable ({e.strerror or e})"
        raise MissingVectors(f"vector file {name} is {why} in {VECTORS_DIR} ({vectors_source()}); "
                             "every file of tests/vectors/ must be there") from None
    try:
        return _parse(json.loads(text))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MissingVectors(f"vector file {path} is not valid JSON: {e}") from None


def load_vectors(name: str) -> dict:
    """read_vectors for use inside a test: a missing or broken file fails the test (not a skip)."""
    try:
        return read_vectors(name)
    except MissingVectors as e:
        problem = str(e)
    pytest.fail(problem, pytrace=False)  # outside the except: no chained "during handling" noise


def assert_close(got, exp, path: str = "") -> None:
    """|got - exp| <= 1e-5 |exp| + 1e-6 element-wise; NaN matches NaN; inf matches itself."""
    if isinstance(exp, dict):
        for k in exp:
            assert_close(got[k], exp[k], f"{path}.{k}")
        return
    if isinstance(exp, (list, tuple)):
        got = got.tolist() if hasattr(got, "tolist") else list(got)
        assert len(got) == len(exp), f"{path}: length {len(got)} != {len(exp)}"
        for i, (g, e) in enumerate(zip(got, exp)):
            assert_close(g, e, f"{path}[{i}]")
        return
    g, e = float(got), float(exp)
    if math.isnan(e):
        assert math.isnan(g), f"{path}: expected nan, got {g}"
    elif math.isinf(e):
        assert g == e, f"{path}: expected {e}, got {g}"
    else:
        assert abs(g - e) <= 1e-5 * abs(e) + 1e-6, f"{path}: expected {e}, got {g}"
