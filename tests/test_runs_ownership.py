"""Run ownership (issue #21, item 4): a run belongs to the browser session or the name that
made it; others see it read-only or not at all (``PRUNELENS_RUNS_VISIBILITY``); only the owner
deletes, refused in ``core.runs`` itself; no page shows the server's run-store path.

Core first (owner recorded, deletion by another refused, an old store migrated in place), then
the Runs and Train pages with two AppTest sessions over a store the test fills directly (no
training: the pages read the store and the job registry).
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.runs import RunStore

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "navigation.py")

# the runs table as PruneLens made it before run owners
OLD_SCHEMA = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL, name TEXT,
    model TEXT NOT NULL, dataset TEXT NOT NULL, pruner TEXT, sparsity REAL,
    config TEXT NOT NULL, status TEXT NOT NULL, pid INTEGER, host TEXT, proc_start TEXT,
    reason TEXT);
CREATE INDEX runs_status ON runs (status);
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE, epoch INTEGER NOT NULL,
    time TEXT NOT NULL, metrics TEXT NOT NULL, PRIMARY KEY (run_id, epoch));
CREATE TABLE checkpoints (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE, name TEXT NOT NULL,
    epoch INTEGER, file TEXT NOT NULL, saved TEXT NOT NULL, PRIMARY KEY (run_id, name));
"""
OLD_RUN = "20240101-120000-abcdef"


def old_store(root: Path) -> Path:
    """A store file written with the pre-owner schema, holding one finished run."""
    root.mkdir(parents=True)
    with sqlite3.connect(root / "runs.sqlite") as con:
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(OLD_SCHEMA)
        con.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (OLD_RUN, "2024-01-01T12:00:00.000+00:00", "2024-01-01T12:05:00.000+00:00",
                     "old", "vit-tiny", "shapes", "snip", 0.5, "{}", "finished", 1, "h", None,
                     None))
        con.execute("INSERT INTO metrics VALUES (?,?,?,?)",
                    (OLD_RUN, 1, "2024-01-01T12:05:00.000+00:00", '{"val_acc": 0.75}'))
    con.close()
    return root


# ---------------------------------------------------------------------------- core

def test_owner_is_recorded_and_filters(tmp_path):
    store = RunStore(tmp_path / "store")
    a = store.create_run("vit-tiny", "shapes", owner="tab:a")
    b = store.create_run("vit-tiny", "shapes", owner="tab:b")
    shared = store.create_run("vit-tiny", "shapes")
    assert store.get_run(a)["owner"] == "tab:a" and store.get_run(shared)["owner"] is None
    runs = store.list_runs().set_index("id")
    assert runs.loc[a, "owner"] == "tab:a" and runs.loc[b, "owner"] == "tab:b"
    assert set(store.list_runs(owner="tab:a")["id"]) == {a}
    assert set(store.list_runs(owner=["tab:b", None])["id"]) == {b, shared}
    with pytest.raises(ValueError, match="owner"):
        store.create_run("vit-tiny", "shapes", owner="")


def test_only_the_owner_deletes(tmp_path):
    store = RunStore(tmp_path / "store")
    a = store.create_run("vit-tiny", "shapes", owner="tab:a")
    store.finish(a, "finished")
    path = store.save_checkpoint(a, {"w": torch.ones(2)})
    with pytest.raises(PermissionError, match="only its owner can delete it"):
        store.delete_run(a, owner="tab:b")
    with pytest.raises(PermissionError, match="only its owner"):
        store.delete_run(a, owner=None)
    assert store.get_run(a)["status"] == "finished" and path.exists()
    store.delete_run(a, owner="tab:a")
    assert store.list_runs().empty and not path.exists()

    shared = store.create_run("vit-tiny", "shapes")  # the CLI's: nobody's from a dashboard
    store.finish(shared, "finished")
    with pytest.raises(PermissionError, match="shared"):
        store.delete_run(shared, owner="tab:a")
    store.delete_run(shared)  # the operator (CLI, notebook) still can
    assert store.list_runs().empty


def test_reassign_moves_one_owners_runs_only(tmp_path):
    store = RunStore(tmp_path / "store")
    a1 = store.create_run("vit-tiny", "shapes", owner="tab:a")
    a2 = store.create_run("vit-tiny", "shapes", owner="tab:a")
    b = store.create_run("vit-tiny", "shapes", owner="tab:b")
    shared = store.create_run("vit-tiny", "shapes")
    assert sorted(store.reassign_runs("tab:a", "name:x")) == sorted([a1, a2])
    owners = {r: store.get_run(r)["owner"] for r in (a1, a2, b, shared)}
    assert owners == {a1: "name:x", a2: "name:x", b: "tab:b", shared: None}
    with pytest.raises(ValueError, match="shared"):
        store.reassign_runs(None, "name:x")


def test_an_old_store_gets_the_owner_column_and_keeps_its_runs(tmp_path):
    root = old_store(tmp_path / "old")
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            RunStore(root)
        except BaseException as e:  # noqa: BLE001  reported below
            errors.append(e)

    # several openers at once: the column is added once, nobody fails
    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    store = RunStore(root)  # and again: idempotent
    with sqlite3.connect(store.db_path) as con:
        columns = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    con.close()
    assert columns.count("owner") == 1
    run = store.get_run(OLD_RUN)
    assert (run["name"], run["status"], run["owner"]) == ("old", "finished", None)
    assert store.metrics(OLD_RUN)["val_acc"].tolist() == [0.75]
    assert store.list_runs(owner=None)["id"].tolist() == [OLD_RUN]
    with pytest.raises(PermissionError, match="shared"):
        store.delete_run(OLD_RUN, owner="tab:a")
    new = store.create_run("vit-tiny", "shapes", owner="tab:a")
    assert store.get_run(new)["owner"] == "tab:a"
