"""Conformance against reference vectors computed with the authors' code.

Reads every file from $RLVR_VECTORS_DIR (default ../shared/vectors, else the snapshot in
tests/vectors). Tests must iterate over every case a file holds, so another directory of files
with the same schemas and different numbers is checked the same way.
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


def load_vectors(name: str) -> dict:
    path = VECTORS_DIR / name
    if not path.is_file():
        pytest.skip(f"no {name} in {VECTORS_DIR}")
    return _parse(json.loads(path.read_text()))


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
