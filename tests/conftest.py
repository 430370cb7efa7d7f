"""Shared fixtures (keep small)."""
import pytest

from core import boot

boot.configure(malloc=False)  # before anything imports torch (see core/boot.py)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An empty run store for the test (``PRUNELENS_RUNS_DIR``)."""
    root = tmp_path / "runs"
    monkeypatch.setenv("PRUNELENS_RUNS_DIR", str(root))
    return root
