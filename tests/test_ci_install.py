"""`.ci/install` (run by `.ci/run`) calls pip only when the pins, the interpreter or the
checkout's folder changed since the last install; it always checks torch was not replaced."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../calls.log"
case "$1" in
  -V) echo "Python 3.11.7" ;;
  -c) exit "${FAKE_TORCH_EXIT:-0}" ;;
esac
"""


def _checkout(tmp: Path) -> Path:
    repo = tmp / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "install", repo / ".ci" / "install")
    for name in ("requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    python = repo / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return repo


def _pip_calls(repo: Path) -> int:
    return sum("-m pip install" in line
               for line in (repo / ".venv" / "calls.log").read_text().splitlines())


def test_pip_runs_again_only_when_the_pins_change(tmp_path):
    repo = _checkout(tmp_path)
    run = lambda: subprocess.run(["bash", ".ci/install"], cwd=repo, check=True,  # noqa: E731
                                 capture_output=True, text=True)
    run()
    assert _pip_calls(repo) == 1
    assert "pip install skipped" in run().stdout
    assert _pip_calls(repo) == 1
    with open(repo / "requirements.txt", "a") as f:
        f.write("six==1.16.0\n")
    run()
    assert _pip_calls(repo) == 2


def test_a_replaced_torch_fails_the_install(tmp_path):
    repo = _checkout(tmp_path)
    out = subprocess.run(["bash", ".ci/install"], cwd=repo, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "FAKE_TORCH_EXIT": "1"})
    assert out.returncode != 0
