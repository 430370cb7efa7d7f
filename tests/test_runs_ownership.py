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


# ---------------------------------------------------------------------------- dashboard

TOKEN_A, TOKEN_B = "a" * 32, "b" * 32
OWNER_A = "tab:" + TOKEN_A


def make_app(token: str, **session) -> AppTest:
    """A browser session whose random owner token is ``token`` (normally drawn at first use)."""
    at = AppTest.from_file(APP, default_timeout=240)
    for key, value in {"prune_val": 64, "prune_calib": 32, "runs_owner_token": token,
                       **session}.items():
        at.session_state[key] = value
    return at


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def page(at: AppTest, name: str, run: str | None = None) -> AppTest:
    if run is not None:
        at.query_params["run"] = run
    return ok(at.switch_page(f"pages/{name}.py").run())


def rendered(at: AppTest) -> str:
    """Every element's proto as text: what the browser gets (sidebar included)."""
    return "\n".join(str(node.proto) for node in at._tree if getattr(node, "proto", None))


def widget_keys(at: AppTest) -> set[str]:
    return {w.key for kind in ("button", "multiselect", "download_button", "selectbox")
            for w in at.get(kind) if getattr(w, "key", None)}


def finished_run(store: RunStore, owner: str | None, checkpoint: bool = True) -> str:
    """A finished run of ``owner`` with two epochs and (``checkpoint``) a loadable model."""
    from core.models import build_model

    run_id = store.create_run("vit-tiny", "shapes", "magnitude", 0.5, {}, owner=owner)
    for epoch in (1, 2):
        store.log_epoch(run_id, epoch, {"val_acc": 0.25 * epoch, "val_loss": 1.0 / epoch,
                                        "train_loss": 1.0})
    if checkpoint:
        torch.manual_seed(0)
        store.save_checkpoint(run_id, build_model("vit-tiny", num_classes=6), epoch=2)
    store.finish(run_id, "finished")
    return run_id


@pytest.fixture
def live_job():
    """Starts a ``running`` fine-tuning job of ``owner`` for ``run_id`` that waits until the
    test ends (the pages only read it); ended and forgotten afterwards, the registry being
    process-wide."""
    import threading

    from dashboard.state import job, jobs

    release, added = threading.Event(), []

    def add(run_id: str, owner: str):
        started = jobs._launch(None, run_id, "vit-tiny · magnitude 50% · 1 epoch(s)", owner,
                               lambda j: release.wait(600), epochs=1, total_steps=10)
        added.append(started)
        return started

    yield add
    release.set()
    for started in added:
        assert started.join(60)
        job.forget(started)


def test_another_sessions_run_is_read_only_on_the_runs_page(runs_dir):
    store = RunStore(runs_dir)
    run_a = finished_run(store, OWNER_A)

    b = page(make_app(TOKEN_B), "runs")
    assert not {"runs_delete_select", "runs_delete", "runs_delete_confirm"} & widget_keys(b)
    labels = {d.label for d in b.get("download_button")}
    assert "PruneLens (.safetensors)" not in labels  # nor its checkpoint;
    assert "Metrics (.csv)" in labels  # its metrics are downloadable,
    assert b.dataframe[0].value["id"].tolist() == [run_a]  # it is listed,
    assert b.dataframe[0].value["access"].tolist() == ["another user"]
    assert b.get("plotly_chart")  # and its curves drawn
    # and a delete slipped into the session's state is not confirmed either
    b.session_state["runs_delete_pending"] = (run_a,)
    b.run()
    ok(b)
    assert "runs_delete_confirm" not in widget_keys(b)
    assert store.get_run(run_a)["status"] == "finished"

    a = page(make_app(TOKEN_A), "runs")  # the owner downloads and deletes
    assert a.dataframe[0].value["access"].tolist() == ["yours"]
    assert {"PruneLens (.safetensors)", "Metrics (.csv)"} <= {
        d.label for d in a.get("download_button")}
    a.multiselect(key="runs_delete_select").set_value([run_a]).run()
    a.button(key="runs_delete").click().run()
    ok(a).button(key="runs_delete_confirm").click().run()
    ok(a)
    assert store.list_runs().empty


def test_shared_runs_are_downloadable_by_all_and_deletable_by_none(runs_dir):
    store = RunStore(runs_dir)
    shared = finished_run(store, None)  # the CLI's
    b = page(make_app(TOKEN_B), "runs")
    assert "runs_delete_select" not in widget_keys(b)
    assert {"PruneLens (.safetensors)", "Metrics (.csv)"} <= {
        d.label for d in b.get("download_button")}
    assert b.dataframe[0].value["access"].tolist() == ["shared"]
    b = page(make_app(TOKEN_B), "train", run=shared)
    assert any("Read-only: a shared run" in c.value for c in b.caption)


def test_another_sessions_job_cannot_be_followed_or_cancelled(runs_dir, live_job):
    store = RunStore(runs_dir)
    run_a = store.create_run("vit-tiny", "shapes", "magnitude", 0.5, {}, owner=OWNER_A)
    live_job(run_a, OWNER_A)

    a = page(make_app(TOKEN_A), "train")
    assert f"train_follow_{run_a}" in widget_keys(a)
    b = page(make_app(TOKEN_B), "train")
    assert f"train_follow_{run_a}" not in widget_keys(b)
    assert not any("training on this server" in e.label for e in b.expander)

    # its address shows it read-only: progress, no cancel
    b = page(make_app(TOKEN_B), "train", run=run_a)
    assert b.get("progress") and "train_cancel" not in widget_keys(b)
    assert any("Read-only" in c.value for c in b.caption)
    a = page(make_app(TOKEN_A), "train", run=run_a)
    assert "train_cancel" in widget_keys(a)


def test_private_runs_are_not_listed_nor_reachable(runs_dir, live_job, monkeypatch):
    monkeypatch.setenv("PRUNELENS_RUNS_VISIBILITY", "private")
    store = RunStore(runs_dir)
    run_a = finished_run(store, OWNER_A, checkpoint=False)
    shared = finished_run(store, None, checkpoint=False)  # the CLI's: who made it is unknown
    live = store.create_run("vit-tiny", "shapes", "magnitude", 0.5, {}, owner=OWNER_A)
    live_job(live, OWNER_A)

    b = page(make_app(TOKEN_B), "runs")
    assert not b.dataframe and any("No runs yet" in i.value for i in b.info)
    for run_id in (run_a, live, shared, "20240101-000000-abcdef"):  # hidden reads as unknown
        b = page(make_app(TOKEN_B), "train", run=run_id)
        assert [i.value for i in b.info] == [
            "The run in this page's address is not one you can see: it was deleted, or it "
            "belongs to another session."]
        assert not b.get("plotly_chart") and not b.get("progress")
        assert "train_cancel" not in widget_keys(b) and run_id not in rendered(b)

    a = page(make_app(TOKEN_A), "runs")
    assert set(a.dataframe[0].value["id"]) == {run_a, live}
    a = page(make_app(TOKEN_A), "train", run=run_a)
    assert not a.info and a.get("plotly_chart")


def test_unknown_visibility_setting_reads_as_private(runs_dir, monkeypatch):
    from dashboard.state import owners

    monkeypatch.setenv("PRUNELENS_RUNS_VISIBILITY", "privat")
    assert owners.visibility() == "private"
    monkeypatch.setenv("PRUNELENS_RUNS_VISIBILITY", "")
    assert owners.visibility() == "readonly"


def test_a_name_keeps_the_runs_across_reloads_and_is_never_markdown(runs_dir):
    from dashboard.state.owners import name_owner

    store = RunStore(runs_dir)
    before = finished_run(store, OWNER_A, checkpoint=False)  # started before the name was given
    name = "Ada **Lovelace** <b>x</b>"
    a = page(make_app(TOKEN_A), "runs")
    a.text_input(key="runs_owner_name").set_value(name).run()
    ok(a)
    assert store.get_run(before)["owner"] == name_owner(name)  # the tab's run moved to the name
    assert any(name in t.value for t in a.sidebar.text)  # shown as plain text,
    assert not any("Lovelace" in m.value for m in [*a.sidebar.markdown, *a.sidebar.caption])
    assert "Lovelace" not in str(store.get_run(before))  # stored as a hash only

    # a reload is a new session with a new token: the same name (any case, spacing) finds it
    again = make_app(TOKEN_B)
    again.session_state["runs_owner_name"] = "  ada   **LOVELACE**  <b>x</b>"
    again = page(again, "runs")
    assert again.dataframe[0].value["access"].tolist() == ["yours"]
    assert "runs_delete_select" in widget_keys(again)
    assert "runs_delete_select" not in widget_keys(page(make_app(TOKEN_B), "runs"))


def test_no_page_shows_the_run_store_path(runs_dir, tmp_path, live_job):
    store = RunStore(runs_dir)
    mine = finished_run(store, OWNER_A)
    live = store.create_run("vit-tiny", "shapes", "magnitude", 0.5, {}, owner=OWNER_A)
    live_job(live, OWNER_A)
    paths = {str(runs_dir), str(runs_dir.resolve()), str(tmp_path)}
    for session in (make_app(TOKEN_A), make_app(TOKEN_B)):
        for name, run in (("runs", None), ("train", mine), ("train", live)):
            text = rendered(page(session, name, run=run))
            assert not [p for p in paths if p in text], (name, run)


def test_error_messages_name_no_run_store_path(runs_dir):
    from dashboard.state.ui import public

    store = RunStore(runs_dir)
    msg = public(f"cannot open the run store {str(store.db_path.resolve())!r}: disk I/O error")
    assert msg == "cannot open the run store '[run store]/runs.sqlite': disk I/O error"
