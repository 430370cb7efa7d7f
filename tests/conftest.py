"""Shared fixtures (keep small)."""
import os

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


@pytest.fixture(autouse=True)
def _no_internet_hub(monkeypatch):
    """No test reaches the real Hugging Face hub: unless a test names an endpoint (its own
    mirror on 127.0.0.1, see hub_mirror.py), hub ids go to a closed local port."""
    if not os.environ.get("HF_ENDPOINT"):
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
