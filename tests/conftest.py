import pytest


@pytest.fixture
def vectors():
    """Reference vectors by file name (see tests/conformance/conftest.py for where they are read)."""
    from tests.conformance.conftest import load_vectors

    return load_vectors
