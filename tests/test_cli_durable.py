"""Issue #21, items 6–8: a sweep that survives ``kill -9`` and resumes to the same numbers,
output paths checked before any work, every command's ``--model`` read as ``load_model``
reads it (Hugging Face and timm folders), the dashboard's reproduce command naming the model
actually used, and one validation subset for the Prune page, Compare and the CLI.

The killed sweeps run in a subprocess whose ``os.replace`` announces each rename of
``sweep.csv`` on stdout (and can stop right before or after one, waiting on stdin): the test
reads those lines, so it waits on events, never on time; a timer kills a stuck process.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Subset

from core import study
from core.__main__ import main
from core.data import load_dataset
from core.models import build_model, load_model, save_model
from core.study import evaluate

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
DATA = ["--data", "shapes", "--data-opt", "num_train=60", "--data-opt", "num_val=30"]
POINTS = 3 * 4 * 2  # criteria × sparsities × seeds of sweep_args()

# os.replace of sweep.csv announced ("wrote k"); stops before rename k (argv[1]) or after
# rename k (argv[2]) until a line arrives on stdin (the test kills it meanwhile)
WRAPPER = r"""
import os, sys
before, after = int(sys.argv[1]), int(sys.argv[2])
real, count = os.replace, [0]

def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) != "sweep.csv":
        return real(src, dst, *args, **kwargs)
    count[0] += 1
    if count[0] == before:
        print("before", count[0], flush=True)
        sys.stdin.readline()
    real(src, dst, *args, **kwargs)
    print("wrote", count[0], flush=True)
    if count[0] == after:
        sys.stdin.readline()

os.replace = replace
from core.__main__ import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """vit-tiny shrunk to 8×8 images, 2 blocks of 2 heads, 6 classes (shapes), at its init."""
    torch.manual_seed(0)
    model = build_model("vit-tiny", 6, img_size=8, patch_size=4, embed_dim=16, depth=2,
                        num_heads=2)
    return save_model(model, tmp_path_factory.mktemp("m") / "tiny.safetensors")


def sweep_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", "--model", str(model), *DATA, "--criteria", "magnitude", "snip", "random",
            "--sparsities", "0", "0.3", "0.6", "0.9", "--seeds", "2", "--val", "20",
            "--calib", "12", "--grid-image", "-1", "--no-progress", "--out", str(out), *extra]


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def kill_at(args: list[str], before: int = 0, after: int = 0) -> list[str]:
    """Run the sweep ``args`` under :data:`WRAPPER`, SIGKILL it where it stops; its lines."""
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(before), str(after), *args],
                            cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(600, proc.kill)  # a stuck process ends the read below
    guard.start()
    want = f"before {before}" if before else f"wrote {after}"
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if lines[-1] == want:
                break
        proc.kill()  # SIGKILL: no handler, no flush, no cleanup
        err = proc.communicate()[1]
    finally:
        guard.cancel()
    assert want in lines, f"the sweep ended before {want!r}: {lines}\n{err[-3000:]}"
    return lines


@pytest.fixture(scope="module")
def reference(model_file, tmp_path_factory) -> pd.DataFrame:
    """The uninterrupted sweep (a subprocess too, so that its threads match)."""
    out = tmp_path_factory.mktemp("whole")
    proc = run_cli(sweep_args(model_file, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out / "sweep.csv")
    assert len(df) == POINTS
    return df


def by_point(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["criterion", "sparsity", "seed"]).reset_index(drop=True)


# ---------------------------------------------------------------------------- item 6

@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_kill_after_three_points_leaves_them_and_resume_finishes_the_same_sweep(
        model_file, reference, tmp_path):
    out = tmp_path / "out"
    kill_at(sweep_args(model_file, out), after=3)
    df = pd.read_csv(out / "sweep.csv")
    assert list(df.columns) == study.SWEEP_COLUMNS and len(df) == 3
    assert not df.drop(columns="latency_ms").isna().any().any()  # latency: only with --latency
    assert not (out / "report.html").exists()  # figures and report come at the end

    proc = run_cli(sweep_args(model_file, out, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 points already in" in proc.stdout + proc.stderr  # skipped, not recomputed
    done = pd.read_csv(out / "sweep.csv")
    pd.testing.assert_frame_equal(by_point(done), by_point(reference), check_exact=True)
    assert (out / "report.html").exists() and (out / "accuracy_vs_sparsity.csv").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("before, rows", [(1, None),
                                          pytest.param(5, 4, marks=pytest.mark.slow)])
@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_kill_while_a_point_is_written_keeps_the_previous_csv_whole(
        model_file, reference, tmp_path, before, rows):
    """Killed with the next CSV written to its temporary file but not yet renamed: the first
    time there is no sweep.csv at all (never a 0-byte one), later the previous one whole."""
    out = tmp_path / "out"
    kill_at(sweep_args(model_file, out), before=before)
    if rows is None:
        assert not (out / "sweep.csv").exists()
    else:
        assert len(pd.read_csv(out / "sweep.csv")) == rows
    assert any(p.name.endswith(".tmp") for p in out.iterdir())  # the unrenamed next one
    proc = run_cli(sweep_args(model_file, out, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    pd.testing.assert_frame_equal(by_point(pd.read_csv(out / "sweep.csv")),
                                  by_point(reference), check_exact=True)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as reading data or a model."""
    import core.data
    import core.models

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    for module, name in ((core.models, "build_model"), (core.models, "load_model"),
                         (core.data, "load_dataset")):
        monkeypatch.setattr(module, name, refuse)


def one_line_error(capsys, argv: list[str], command: str = "sweep") -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.strip().splitlines()
             if not line.startswith("usage:") and not line.startswith("   ")]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"python -m core {command}: error: ")
    return lines[0]


@pytest.mark.parametrize("out, message", [
    ("afile", "is a file"),
    ("afile/sub", "is a file, not a folder"),
    ("/proc/prunelens-no-such/sweep", "kernel filesystem"),
    ("/sys/prunelens-no-such", "kernel filesystem"),
    ("full", "--resume"),
])
def test_sweep_out_is_checked_before_any_work(model_file, tmp_path, capsys, no_work, out,
                                              message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    line = one_line_error(capsys, sweep_args(model_file, tmp_path / out))
    assert "--out" in line and message in line
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a read-only folder")
def test_sweep_out_in_a_read_only_folder(model_file, tmp_path, capsys, no_work):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = one_line_error(capsys, sweep_args(model_file, locked / "out"))
    assert "--out" in line


@pytest.mark.parametrize("out, message", [
    ("model.safetensors", "already exists"),
    ("/proc/prunelens-no-such/deeper/model.safetensors", "kernel filesystem"),
])
def test_train_out_is_checked_before_any_work(tmp_path, capsys, no_work, out, message):
    (tmp_path / "model.safetensors").write_bytes(b"mine")
    line = one_line_error(capsys, ["train", "--epochs", "1", "--no-progress", "--runs-dir",
                                   str(tmp_path / "runs"), "--out", str(tmp_path / out)],
                          "train")
    assert "--out" in line and message in line
    assert (tmp_path / "model.safetensors").read_bytes() == b"mine"
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_resume_refuses_other_settings_and_names_them(model_file, tmp_path, capsys,
                                                      monkeypatch):
    out = tmp_path / "out"
    small = ["sweep", "--model", str(model_file), *DATA, "--criteria", "magnitude",
             "--sparsities", "0", "0.5", "--val", "12", "--calib", "8", "--grid-image", "-1",
             "--no-progress", "--out", str(out)]
    assert main(small) == 0
    first = (out / "sweep.csv").read_bytes()
    capsys.readouterr()
    import core.data
    import core.models

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the settings were compared")

    with monkeypatch.context() as m:
        for module, name in ((core.models, "build_model"), (core.models, "load_model"),
                             (core.data, "load_dataset")):
            m.setattr(module, name, refuse)
        changed = [a if a != "12" else "16" for a in small]  # --val 16
        changed[changed.index("0.5")] = "0.6"
        line = one_line_error(capsys, [*changed, "--resume"])
        assert "--resume" in line and "val" in line and "sparsities" in line
        assert "calib" not in line  # only the settings that differ
    calls = []
    monkeypatch.setattr(study, "sweep", lambda *a, **k: calls.append(1))
    assert main([*small, "--resume"]) == 0  # every point present: none computed
    assert not calls and (out / "sweep.csv").read_bytes() == first


# ---------------------------------------------------------------------------- item 7

def _hf_folder(path: Path) -> Path:
    pytest.importorskip("transformers")
    from test_hf import hf_model

    hf_model("ViTForImageClassification", num_labels=6).save_pretrained(path)
    return path


def _timm_folder(path: Path) -> Path:
    from test_hf import random_timm_sd, timm_folder

    return timm_folder(path, random_timm_sd(classes=6), "vit_test_patch4_16", 6, 16,
                       num_heads=4)


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
@pytest.mark.parametrize("kind", ["hf", "timm"])
def test_every_command_reads_a_model_folder_as_load_model_does(tmp_path, kind):
    folder = (_hf_folder if kind == "hf" else _timm_folder)(tmp_path / kind)
    out = tmp_path / "sweep"
    assert main(["sweep", "--model", str(folder), *DATA, "--criteria", "magnitude",
                 "--sparsities", "0", "0.5", "--val", "20", "--calib", "8", "--grid-image",
                 "-1", "--no-progress", "--out", str(out)]) == 0
    dense = pd.read_csv(out / "sweep.csv").query("sparsity == 0").iloc[0]
    _, val_set = load_dataset("shapes", 16, seed=0, num_train=60, num_val=30)
    want = evaluate(load_model(folder), study.val_subset(val_set, 20))
    assert dense["accuracy"] == pytest.approx(want["accuracy"])
    assert dense["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert main(["grid", "--model", str(folder), *DATA, "--criteria", "magnitude",
                 "--ratios", "0", "0.5", "--calib", "8", "--out", str(tmp_path / "grid")]) == 0
    assert main(["train", "--model", str(folder), *DATA, "--epochs", "1", "--max-steps", "1",
                 "--batch-size", "8", "--device", "cpu", "--no-progress", "--runs-dir",
                 str(tmp_path / "runs"), "--out", str(tmp_path / "trained.safetensors")]) == 0
    assert load_model(tmp_path / "trained.safetensors").num_classes == 6


def test_train_refuses_options_a_loaded_model_cannot_take(tmp_path, capsys):
    folder = _timm_folder(tmp_path / "timm")
    for extra, message in ((["--pretrained"], "--pretrained"),
                           (["--image-size", "32"], "--image-size")):
        line = one_line_error(capsys, ["train", "--model", str(folder), *DATA, "--no-progress",
                                       "--runs-dir", str(tmp_path / "runs"), *extra], "train")
        assert message in line


def _command_argv(command: str) -> list[str]:
    lines = [line for line in command.splitlines() if not line.startswith("#")]
    return shlex.split(" ".join(lines))


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_reproduce_command_names_the_model_actually_used(runs_dir, tmp_path, monkeypatch):
    from dashboard import state
    from dashboard.state import compare

    spec = compare.Spec(("magnitude",), (0.0, 0.5), 1, 24, 8, "global")
    preset = state.setup(state.Experiment(pruners=("magnitude",), calib=8))
    argv = _command_argv(compare.command(preset, spec))
    assert argv[argv.index("--model") + 1] == "vit-tiny"

    # a model folder on the server: the command names that folder, and computes its numbers
    monkeypatch.setenv("PRUNELENS_DATA_ROOTS", str(tmp_path))
    folder = _hf_folder(tmp_path / "models" / "hf")
    s = state.setup(state.Experiment(source="folder", model_folder=str(folder),
                                     pruners=("magnitude",), calib=8))
    command = compare.command(s, spec)
    argv = _command_argv(command)
    assert argv[argv.index("--model") + 1] == str(folder.resolve())
    assert "--untrained" not in argv
    out = tmp_path / "cli"
    argv[argv.index("--out") + 1] = str(out)
    assert main([*argv[3:], "--grid-image", "-1", "--no-progress"]) == 0
    dense = pd.read_csv(out / "sweep.csv").query("sparsity == 0").iloc[0]
    want = evaluate(load_model(folder), study.val_subset(s.val_set, 24))
    assert dense["loss"] == pytest.approx(want["loss"], rel=1e-6)

    # an upload lives in the session's private folder: the command says to save it first
    torch.manual_seed(1)
    up = save_model(build_model("vit-tiny", 6), tmp_path / "uploads" / "ab12" / "mine.safetensors")
    uploaded = replace(preset, exp=replace(preset.exp, source="upload", upload="ab12"),
                       model_key=replace(preset.model_key, source="upload", upload=str(up)))
    command = compare.command(uploaded, spec)
    assert command.startswith("# ") and "uploaded" in command.splitlines()[0]
    assert str(up) not in command and str(up.parent) not in command
    argv = _command_argv(command)
    assert argv[argv.index("--model") + 1] == "mine.safetensors"
    weights = tmp_path / "uploads" / "cd34" / "weights.pt"
    weights.parent.mkdir(parents=True)
    torch.save(build_model("vit-tiny", 6).state_dict(), weights)
    bare = replace(uploaded, model_key=replace(uploaded.model_key, upload=str(weights)))
    command = compare.command(bare, spec)
    assert "save it" in command.splitlines()[0] and "PruneLens" in command.splitlines()[0]
    assert str(weights) not in command


# ---------------------------------------------------------------------------- item 8

def test_the_validation_subset_is_stratified_seeded_and_fixed():
    _, val_set = load_dataset("shapes", 8, seed=0, num_train=12, num_val=300)
    targets = np.asarray(val_set.targets)
    sub = study.val_subset(val_set, 100)
    idx = np.asarray(sub.indices)
    assert len(idx) == 100 and list(idx) == sorted(set(idx))
    assert list(idx) == list(study.val_subset(val_set, 100).indices)  # fixed
    share = np.bincount(targets, minlength=6) * 100 / len(targets)
    got = np.bincount(targets[idx], minlength=6)
    assert np.all(np.floor(share) <= got) and np.all(got <= np.ceil(share))
    assert list(idx) != list(range(100))  # not the first 100
    assert list(study.val_subset(val_set, 10**6).indices) == list(range(300))
    assert study.val_subset_label(100, 300) == ("100 of the 300 validation images: a "
                                                "class-stratified random subset (seed 0)")
    assert study.val_subset_label(500, 300) == "all 300 validation images"


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_prune_and_compare_measure_the_same_validation_images(runs_dir):
    from dashboard import state
    from dashboard.state import compare
    from test_dashboard import make_app, metrics, ok

    n = 128
    at = ok(make_app(prune_pruners=["magnitude"], prune_val=n, prune_calib=16).run())
    caption = next(c.value for c in at.caption if "validation images" in c.value)
    assert "class-stratified random subset (seed 0)" in caption
    page_card = metrics(at)["Accuracy"][0]  # the dense model's card

    s = state.setup(state.Experiment(pruners=("magnitude",), calib=16, val_samples=n))
    prune_dense = state.pruning.evaluation(s.key("magnitude", 0.0), n)
    spec = compare.Spec(("magnitude",), (0.0,), 1, n, 16, "global")
    from dashboard.state import job as jobs

    j = jobs.start("compare", lambda j: compare._work(j, s, spec, ""), session="test-cli")
    assert j.join(600) and j.status == "done", j.reason
    compare_dense = j.results["df"].query("sparsity == 0").iloc[0]
    assert "class-stratified random subset (seed 0)" in compare.job_label(s, spec)

    # independently: the preset's checkpoint on the same images, by their indices
    model = build_model("vit-tiny", 6, pretrained=True, dataset="shapes")
    _, val_set = load_dataset("shapes", (32, 32), seed=0, num_train=1024)
    want = evaluate(model, Subset(val_set, study.val_subset(val_set, n).indices))
    assert prune_dense["accuracy"] == want["accuracy"] == compare_dense["accuracy"]
    assert prune_dense["loss"] == pytest.approx(want["loss"], rel=1e-9)
    assert compare_dense["loss"] == pytest.approx(want["loss"], rel=1e-9)
    assert page_card == f"{want['accuracy']:.1%}"
