import json
import os
from pathlib import Path

import pytest

_SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "vectors"
# $RLVR_VECTORS_DIR, else the team's shared copy, else the snapshot kept in tests/vectors
VECTORS = Path(os.environ.get("RLVR_VECTORS_DIR") or (_SHARED if _SHARED.is_dir() else Path(__file__).parent / "vectors"))


def _finite(x):
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, list):
        return [_finite(v) for v in x]
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    return x


@pytest.fixture
def vectors():
    """Reference vectors by file name; a directory without that file skips the test."""

    def load(name: str) -> dict:
        path = VECTORS / name
        if not path.is_file():
            pytest.skip(f"reference vectors not found at {path}")
        return _finite(json.loads(path.read_text()))

    return load
