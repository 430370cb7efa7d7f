"""House rules that keep the core usable from notebooks and scripts."""
from __future__ import annotations

import ast
import os
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


def _listening_addresses(port: int) -> list[str]:
    """The local IPv4/IPv6 addresses a LISTEN socket on ``port`` is bound to (/proc/net)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


@pytest.mark.slow
def test_dashboard_listens_on_loopback_whatever_the_working_directory(tmp_path):
    """Started from another folder (and another HOME), the server still binds 127.0.0.1 only:
    its settings sit beside dashboard/app.py, which Streamlit reads whatever the cwd."""
    import socket
    import subprocess
    import sys
    import threading
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HOME": str(tmp_path), "PRUNELENS_RUNS_DIR": str(tmp_path / "runs")}
    env.pop("STREAMLIT_SERVER_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
         "--server.headless", "true", "--server.port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    hang_guard = threading.Timer(600, proc.kill)  # a hang fails the test, not the run
    hang_guard.start()
    try:
        for line in proc.stdout:  # Streamlit prints its URL once its socket is bound
            if "URL:" in line:
                break
        addresses = _listening_addresses(port)  # (none if the server died: stdout ended)
        assert addresses == ["0100007F"], (addresses, proc.poll())  # 127.0.0.1, nothing else
    finally:
        hang_guard.cancel()
        proc.terminate()
        proc.wait(10)


def test_dashboard_settings_are_read_from_beside_the_app(tmp_path):
    """Streamlit's own config loader, run from another folder: loopback, no usage statistics."""
    import subprocess
    import sys
    code = ("from streamlit import config; config._main_script_path = %r; "
            "config.get_config_options(force_reparse=True); "
            "print(config.get_option('server.address'), "
            "config.get_option('browser.gatherUsageStats'))"
            % str(ROOT / "dashboard" / "app.py"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "HOME": str(tmp_path)}, check=True)
    assert out.stdout.split() == ["127.0.0.1", "False"], out
    assert not (ROOT / ".streamlit").exists(), "one settings file, beside dashboard/app.py"
