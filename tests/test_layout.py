"""House rules that keep the core usable from notebooks and scripts."""
from __future__ import annotations

import ast
import platform
from pathlib import Path

import pytest

from core.boot import keep_freed_tensors_in_heap

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


ROOT = CORE.parent
FAMILY_CLASSES = {"VisionTransformer", "LinformerViT", "Attention", "LinformerSelfAttention",
                  "ViTConfig", "LinformerViTConfig"}


def _python_files(*folders: str) -> list[Path]:
    return [p for f in folders for p in (ROOT / f).rglob("*.py")]


def test_model_families_are_known_only_in_core_models():
    """isinstance checks against model classes live in core/models (the adapters)."""
    offenders = []
    for path in _python_files("core", "dashboard"):
        if CORE / "models" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance"
                    and len(node.args) == 2):
                names = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", "")
                         for n in ast.walk(node.args[1])}
                if names & FAMILY_CLASSES:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def _core_imports() -> dict[str, set[str]]:
    """core module → core modules it imports (function-level imports included)."""
    graph: dict[str, set[str]] = {}
    for path in CORE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = ".".join(parts[:-1])
        deps = graph.setdefault(mod, set())
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level:
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "core":
                    continue
                for alias in node.names:  # `from . import snp` names a module
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if (ROOT / Path(*sub.split("."))).with_suffix(".py").exists()
                             else target)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "core"}
        deps.discard(mod)
    return graph


def test_no_import_circle_in_core():
    graph = _core_imports()
    # a package's __init__ re-exporting its modules is not a circle through the package
    edges = {m: {d for d in deps if d in graph and not m.startswith(d + ".")}
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycle.extend(path[path.index(d):] + [m, d] if d in path else [m, d])
                return True
            if d not in state and visit(d, path + [m]):
                return True
        state[m] = 2
        return False

    for m in sorted(edges):
        if m not in state and visit(m, []):
            break
    assert not cycle, " → ".join(cycle)


def test_nothing_edits_sys_path():
    offenders = [f"{p.relative_to(ROOT)}" for p in _python_files("core", "dashboard", "tests",
                                                                 "benchmarks", "assets")
                 if "sys.path.insert" in p.read_text() or "sys.path[:0]" in p.read_text()
                 or "sys.path.append" in p.read_text()]
    assert offenders == ["tests/test_layout.py"] or not offenders, offenders


def test_dashboard_listens_on_this_machine_only_by_default():
    """`streamlit run dashboard/app.py` reads .streamlit/config.toml: no other machine can
    reach the server unless the user passes --server.address."""
    import tomllib
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
