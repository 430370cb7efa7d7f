"""Shared fixtures (keep small)."""
import pytest

from core import boot

boot.configure(malloc=False)  # before anything imports torch (see core/boot.py)

# Kinds of test that are slow whatever they check: marking one of them marks it slow, so
# `pytest -m "not slow"` (the fast loop) cannot pick one up by a forgotten second marker.
IMPLY_SLOW = ("browser", "torchrun")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.get_closest_marker(name) for name in IMPLY_SLOW) \
                and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An empty run store for the test (``PRUNELENS_RUNS_DIR``)."""
    root = tmp_path / "runs"
    monkeypatch.setenv("PRUNELENS_RUNS_DIR", str(root))
    return root
