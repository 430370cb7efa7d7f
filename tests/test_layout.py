"""House rules that keep the core usable from notebooks and scripts."""
from __future__ import annotations

import ast
import platform
from pathlib import Path

import pytest

from core.perf import keep_freed_tensors_in_heap

CORE = Path(__file__).resolve().parents[1] / "core"


def test_core_never_imports_streamlit():
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "streamlit"]
    assert not offenders, offenders


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_tuning_applies_on_glibc():
    assert keep_freed_tensors_in_heap() is True
