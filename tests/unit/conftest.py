import pytest

from tests.unit.builders import build_repo, model_files


@pytest.fixture
def cache_pair(tmp_path):
    """A complete local cache and a copy for a host, both real on disk."""
    local = build_repo(tmp_path / "local", model_files())
    host = build_repo(tmp_path / "host", model_files())
    return local, host
