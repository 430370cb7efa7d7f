"""Shared fixtures (keep small)."""
import os

import pytest

# Before anything imports torch: spinning OpenMP threads slow tiny forwards 100× on a busy
# shared machine (dashboard/app.py sets the same for the server).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An empty run store for the test (``PRUNELENS_RUNS_DIR``)."""
    root = tmp_path / "runs"
    monkeypatch.setenv("PRUNELENS_RUNS_DIR", str(root))
    return root
