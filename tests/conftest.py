"""Fixtures shared by the test packages."""

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tokenizer cache shared by every ``lowcomm train`` run of the session (each BPE is trained once)."""
    return str(tmp_path_factory.mktemp("cache"))
