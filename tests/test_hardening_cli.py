"""CLI usage errors: a usage line and exit code 2, never a traceback, found before training.

The probe got tracebacks for ``--runs-dir`` pointing at a file and for an unwritable ``--out``
(the latter only after the whole training had run).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--max-steps", "1", "--batch-size", "8", "--device", "cpu",
        "--no-progress", "--data-opt", "num_train=16", "--data-opt", "num_val=8"]


def _usage_error(capsys, argv: list[str]) -> str:
    """Run ``main(argv)``, check it is a usage error, return its message line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith("usage: ") and "train" in lines[0]
    assert lines[-1].startswith("python -m core train: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not captured.out.startswith("run ")  # no run was started
    return lines[-1]


def test_runs_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    line = _usage_error(capsys, ["train", *FAST, "--runs-dir", str(tmp_path / "runs")])
    assert "--runs-dir" in line and "is a file" in line
    line = _usage_error(capsys, ["train", *FAST, "--runs-dir", str(tmp_path / "runs" / "sub")])
    assert "--runs-dir" in line and "is a file, not a folder" in line


def test_runs_dir_holding_a_broken_database(tmp_path, capsys):
    (tmp_path / "runs.sqlite").write_bytes(b"garbage" * 1000)
    line = _usage_error(capsys, ["train", *FAST, "--runs-dir", str(tmp_path)])
    assert "cannot open the run store" in line


@pytest.mark.parametrize("out, message", [
    ("afile/model.safetensors", "is a file, not a folder"),
    ("afile/deeper/model.safetensors", "is a file, not a folder"),
    ("adir", "is a folder"),
    ("model.pt", "ending in .safetensors"),
])
def test_unwritable_out_is_refused_before_training(tmp_path, capsys, out, message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    runs = tmp_path / "runs"
    line = _usage_error(capsys, ["train", *FAST, "--runs-dir", str(runs),
                                 "--out", str(tmp_path / out)])
    assert "--out" in line and message in line
    assert not (runs / "runs.sqlite").exists()  # refused before anything was recorded


@pytest.mark.parametrize("options, message", [
    (["--data", "folder"], "root="),
    (["--data", "folder", "--data-opt", "root=/no/such/folder"], "does not exist"),
    (["--data", "folder", "--data-opt", "root=/dev"], "kernel filesystem"),
    (["--data", "folder", "--data-opt", "root=/etc/hostname"], "not a directory"),
    (["--data", "folder", "--data-opt", "root=.", "--data-opt", "max_files=0"], "max_files"),
    (["--data", "folder", "--data-opt", "root=.", "--data-opt", "cancel=1"], "cancel"),
    (["--data-opt", "num_train=-5"], "num_train"),
    (["--data-opt", "colour=red"], "colour"),
])
def test_bad_data_options_are_usage_errors(tmp_path, capsys, options, message):
    line = _usage_error(capsys, ["train", *FAST[:-4], *options, "--runs-dir", str(tmp_path)])
    assert message in line


def test_data_opt_without_equals_is_argparse_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data-opt", "oops"])
    assert exit_.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_console_script_name_in_the_usage_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/prunelens"])
    (tmp_path / "runs").write_text("x")
    assert main(["train", *FAST, "--runs-dir", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("prunelens train: error:")


@pytest.mark.slow  # a fresh interpreter
def test_real_process_prints_no_traceback(tmp_path):
    (tmp_path / "runs").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "core", "train", *FAST, "--runs-dir",
                           str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error: --runs-dir" in proc.stderr


@pytest.mark.slow
def test_training_on_a_folder_with_a_truncated_jpeg_finishes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for j in range(6):
            arr = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "data" / name / f"{j}.jpg", quality=90)
    good = (tmp_path / "data" / "a" / "0.jpg").read_bytes()
    (tmp_path / "data" / "a" / "cut.jpg").write_bytes(good[: len(good) * 2 // 3])
    out = tmp_path / "model.safetensors"
    with pytest.warns(UserWarning, match="cut.jpg"):
        code = main(["train", "--model", "vit-tiny", "--data", "folder", "--data-opt",
                     f"root={tmp_path / 'data'}", "--image-size", "16", "--epochs", "2",
                     "--batch-size", "4", "--device", "cpu", "--no-progress", "--runs-dir",
                     str(tmp_path / "runs"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "finished" in printed and out.exists()
