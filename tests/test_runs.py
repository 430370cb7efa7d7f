"""core.runs: the SQLite run store, its checkpoints, crash recovery and the train() adapter."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, safe_open

from _tiny import tiny_data, tiny_model  # noqa: E402

from core.runs import RunStore, RunStoreCallback  # noqa: E402
from core.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "store")


def test_run_lifecycle_round_trip(store):
    config = {"lr": 1e-3, "epochs": 2, "image_size": (32, 32)}
    run_id = store.create_run("vit-tiny", "shapes", "snip", 0.5, config, name="first")
    run = store.get_run(run_id)
    assert run["status"] == "running" and run["pid"] == os.getpid()
    assert run["config"] == {"lr": 1e-3, "epochs": 2, "image_size": [32, 32]}
    assert (run["model"], run["dataset"], run["pruner"], run["sparsity"], run["name"]) == (
        "vit-tiny", "shapes", "snip", 0.5, "first")

    store.log_epoch(run_id, 1, {"val_acc": 0.5, "train_loss": torch.tensor(1.25)})
    store.log_epoch(run_id, 2, {"val_acc": 0.75, "train_loss": 0.5})
    store.log_epoch(run_id, 2, {"val_acc": 0.8, "train_loss": 0.4})  # same epoch: replaced
    store.finish(run_id, "finished")

    df = store.metrics(run_id)
    assert list(df["epoch"]) == [1, 2]
    assert list(df["val_acc"]) == [0.5, 0.8] and list(df["train_loss"]) == [1.25, 0.4]
    run = store.get_run(run_id)
    assert run["status"] == "finished" and run["reason"] is None
    assert run["updated"] >= run["created"]

    runs = store.list_runs()
    assert list(runs["id"]) == [run_id]
    assert runs.iloc[0]["epochs"] == 2 and runs.iloc[0]["val_acc"] == 0.8

    path = store.save_checkpoint(run_id, {"w": torch.ones(2)})
    store.delete_run(run_id)
    assert store.list_runs().empty and not path.exists() and not path.parent.exists()
    with pytest.raises(KeyError):
        store.get_run(run_id)


def test_list_runs_filters(store):
    a = store.create_run("vit-tiny", "shapes", None, None, {})
    b = store.create_run("vit-tiny", "shapes", "snip", 0.9, {})
    c = store.create_run("deit-tiny", "digits", "snip", 0.5, {})
    store.finish(c, "failed", "boom")

    def ids(**f):
        return set(store.list_runs(**f)["id"])

    assert ids() == {a, b, c}
    assert ids(model="vit-tiny") == {a, b}
    assert ids(pruner=None) == {a}
    assert ids(pruner="snip", sparsity=0.9) == {b}
    assert ids(sparsity=[0.5, 0.9]) == {b, c}
    assert ids(status="failed") == {c} and ids(status="running") == {a, b}
    assert ids(dataset="digits", status="running") == set()
    assert store.list_runs(status="failed").iloc[0]["reason"] == "boom"
    with pytest.raises(ValueError, match="unknown filter"):
        store.list_runs(colour="red")


def test_bad_input_is_refused_clearly(store):
    run_id = store.create_run("vit-tiny", "shapes", None, None, {})
    with pytest.raises(ValueError, match="final status"):
        store.finish(run_id, "done")
    with pytest.raises(KeyError, match="no run"):
        store.log_epoch("20240101-000000-abcdef", 1, {})
    with pytest.raises(ValueError, match="not a run id"):
        store.checkpoint_path("../../etc")
    with pytest.raises(ValueError, match="sparsity"):
        store.create_run("vit-tiny", "shapes", "snip", 1.5, {})
    with pytest.raises(ValueError, match="still running"):
        store.delete_run(run_id)
    store.delete_run(run_id, force=True)


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELENS_RUNS_DIR", str(tmp_path / "elsewhere"))
    store = RunStore()
    assert store.root == tmp_path / "elsewhere" and (tmp_path / "elsewhere/runs.sqlite").exists()
    with sqlite3.connect(store.db_path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_checkpoints_are_atomic_safetensors(store):
    run_id = store.create_run("tiny", "blobs", None, None, {})
    model = tiny_model()
    path = store.save_checkpoint(run_id, model, metadata={"epoch": 3})
    assert path == store.checkpoint_path(run_id)
    assert path == store.root / "checkpoints" / run_id / "last.safetensors"
    loaded = load_file(path)
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["run_id"] == run_id and f.metadata()["epoch"] == "3"
    # overwrite: the new weights replace the old, no temporary file is left behind
    with torch.no_grad():
        model.fc1.weight.add_(1.0)
    store.save_checkpoint(run_id, model.state_dict())
    assert torch.equal(load_file(path)["fc1.weight"], model.fc1.weight)
    assert [p.name for p in path.parent.iterdir()] == ["last.safetensors"]


def test_prunelens_model_checkpoint_loads_back_with_its_architecture(store):
    from core.models import build_model, load_model

    torch.manual_seed(0)
    model = build_model("vit-tiny", num_classes=3, depth=1)
    run_id = store.create_run("vit-tiny", "shapes", None, None, {})
    path = store.save_checkpoint(run_id, model, name="best")
    assert path.name == "best.safetensors"
    loaded = load_model(path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_concurrent_writers_from_threads(store):
    run_ids = [store.create_run("tiny", "blobs", None, None, {"i": i}) for i in range(4)]
    errors = []

    def work(run_id):
        try:
            for epoch in range(1, 16):
                store.log_epoch(run_id, epoch, {"val_acc": epoch / 15})
            store.finish(run_id, "finished")
        except Exception as e:  # collected: an assert in a thread would go unnoticed
            errors.append(e)

    threads = [threading.Thread(target=work, args=(r,)) for r in run_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(len(store.metrics(r)) == 15 for r in run_ids)
    assert set(store.list_runs()["status"]) == {"finished"}


def test_running_runs_of_dead_or_reused_pids_become_interrupted(store):
    alive = store.create_run("tiny", "blobs", None, None, {})  # this very process
    reused = store.create_run("tiny", "blobs", None, None, {})
    elsewhere = store.create_run("tiny", "blobs", None, None, {})
    with sqlite3.connect(store.db_path) as con:  # pid alive but a different process start
        con.execute("UPDATE runs SET proc_start='other-boot:1' WHERE id=?", (reused,))
        con.execute("UPDATE runs SET host='another-machine', pid=1 WHERE id=?", (elsewhere,))
    again = RunStore(store.root)
    assert again.get_run(alive)["status"] == "running"
    assert again.get_run(reused)["status"] == "interrupted"
    assert again.get_run(elsewhere)["status"] == "running"  # cannot be checked from here


@pytest.mark.slow  # a fresh interpreter, killed
def test_killed_training_process_is_marked_interrupted(tmp_path):
    root = tmp_path / "store"
    store = RunStore(root)
    done = store.create_run("tiny", "blobs", None, None, {"note": "earlier"})
    store.log_epoch(done, 1, {"val_acc": 0.9})
    store.save_checkpoint(done, tiny_model())
    store.finish(done, "finished")

    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_runs_worker.py"), str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # stdin: held in epoch 3
    try:
        run_id = None
        timer = threading.Timer(120, proc.kill)  # never hang the suite
        timer.start()
        for line in proc.stdout:
            if line.startswith("run "):
                run_id = line.split()[1]
            if line.strip() == "epoch 2":
                break
        timer.cancel()
        assert run_id is not None, proc.stderr.read()
        assert RunStore(root).get_run(run_id)["status"] == "running"  # alive: left alone
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    after = RunStore(root)
    killed = after.get_run(run_id)
    assert killed["status"] == "interrupted" and "process" in killed["reason"]
    assert list(after.metrics(run_id)["epoch"]) == [1, 2]  # killed inside epoch 3
    ckpt = load_file(after.checkpoint_path(run_id))
    assert ckpt.keys() == tiny_model().state_dict().keys()
    assert all(torch.isfinite(v).all() for v in ckpt.values())
    earlier = after.get_run(done)
    assert earlier["status"] == "finished" and earlier["config"] == {"note": "earlier"}
    assert after.metrics(done)["val_acc"].tolist() == [0.9]
    assert load_file(after.checkpoint_path(done)).keys() == tiny_model().state_dict().keys()
    assert not list(after.checkpoint_path(run_id).parent.glob("*.tmp"))


class NaNInEpoch2(torch.nn.Module):
    """Training forward number 8 (epoch 2 at 6 steps per epoch) returns NaN logits."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.calls = tiny_model(), 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == 8:
                out = out * float("nan")
        return out


def test_callback_records_a_finished_run(store):
    train_set, val_set = tiny_data()
    model = tiny_model()
    run_id = store.create_run("tiny", "blobs", None, None, {})
    result = train(model, train_set, val_set, TrainConfig(epochs=2, batch_size=16, device="cpu"),
                   callbacks=(RunStoreCallback(store, run_id, model),))
    run = store.get_run(run_id)
    assert run["status"] == result.status == "finished"
    df = store.metrics(run_id)
    assert df["val_acc"].tolist() == [h["val_acc"] for h in result.history]
    ckpt = load_file(store.checkpoint_path(run_id))
    assert all(torch.equal(ckpt[k], v) for k, v in model.state_dict().items())


def test_callback_nan_run_is_failed_and_keeps_last_good_checkpoint(store):
    train_set, val_set = tiny_data()
    model = NaNInEpoch2()
    run_id = store.create_run("tiny", "blobs", None, None, {})
    result = train(model, train_set, val_set, TrainConfig(epochs=3, batch_size=16, device="cpu"),
                   callbacks=(RunStoreCallback(store, run_id, model),))
    run = store.get_run(run_id)
    assert result.status == run["status"] == "failed"
    assert "NaN" in run["reason"] and "step 8" in run["reason"]
    assert store.metrics(run_id)["epoch"].tolist() == [1]
    ckpt = load_file(store.checkpoint_path(run_id))  # epoch 1's weights = the restored model
    assert all(torch.equal(ckpt[k], v) for k, v in model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in ckpt.values())
