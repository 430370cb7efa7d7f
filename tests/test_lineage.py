"""Lineage: the run store's tree of models (dense → pruned → fine-tuned), kept across reopening,
a kill -9 mid-write and the migration of an older store; and the chain in a file's metadata."""
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
from safetensors import safe_open

from core import lineage
from core.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]


def chain(run_id: str, criterion: str = "magnitude") -> list[dict]:
    return [lineage.dense("vit-tiny", "shapes", "checkpoint"),
            lineage.pruned(criterion, 0.5, 0, "global", 64),
            lineage.finetuned(run_id, epochs=2, lr=1e-3)]


def test_lineage_survives_reopening_and_shares_nodes(tmp_path):
    store = RunStore(tmp_path)
    r1 = store.create_run("vit-tiny", "shapes", "magnitude", 0.5)
    r2 = store.create_run("vit-tiny", "shapes", "magnitude", 0.5)
    a = store.add_lineage(chain(r1), r1, {0: {"macs": 100.0}, 1: {"macs": 60.0}})
    b = store.add_lineage(chain(r2), r2, {2: {"accuracy": 0.9}})
    assert a[:2] == b[:2] and a[2] != b[2]  # one dense, one pruned node; two runs
    nodes = RunStore(tmp_path).lineage()
    assert len(nodes) == 4
    by_id = nodes.set_index("id")
    assert by_id.loc[a[0], "macs"] == 100.0 and by_id.loc[a[1], "macs"] == 60.0
    assert by_id.loc[b[2], "accuracy"] == 0.9 and by_id.loc[b[2], "run_id"] == r2
    assert by_id.loc[a[1], "parent"] == a[0]
    assert by_id.loc[a[1], "params"] == {"criterion": "magnitude", "sparsity": 0.5, "seed": 0,
                                         "scope": "global", "calibration": 64}
    assert store.chain(a[2]) == lineage.check(chain(r1))
    assert store.run_node(r1) == a[2]
    order = [(d, r["id"]) for d, r in lineage.tree(nodes)]
    assert order[:2] == [(0, a[0]), (1, a[1])] and {o[1] for o in order[2:]} == {a[2], b[2]}
    assert all(d == 2 for d, _ in order[2:])
    assert lineage.label("pruned", by_id.loc[a[1], "params"]) == \
        "pruned by magnitude at 50% (seed 0)"
    with pytest.raises(ValueError, match="unknown lineage operation"):
        store.add_lineage([{"operation": "grafted", "params": {}}])


def test_an_older_store_gains_the_table_and_keeps_its_runs(tmp_path):
    con = sqlite3.connect(tmp_path / "runs.sqlite")  # a store made before owners and lineage
    con.executescript("""
        CREATE TABLE runs (id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL,
            name TEXT, model TEXT NOT NULL, dataset TEXT NOT NULL, pruner TEXT, sparsity REAL,
            config TEXT NOT NULL, status TEXT NOT NULL, pid INTEGER, host TEXT,
            proc_start TEXT, reason TEXT);
        CREATE TABLE metrics (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, time TEXT NOT NULL,
            metrics TEXT NOT NULL, PRIMARY KEY (run_id, epoch));
        INSERT INTO runs VALUES ('20240101-000000-abcdef', '2024-01-01T00:00:00+00:00',
            '2024-01-01T00:00:00+00:00', 'old', 'vit-tiny', 'shapes', NULL, NULL, '{}',
            'finished', 1, 'elsewhere', NULL, NULL);
        INSERT INTO metrics VALUES ('20240101-000000-abcdef', 0, '2024', '{"val_acc": 0.5}');
    """)
    con.commit()
    con.close()
    store = RunStore(tmp_path)
    runs = store.list_runs()
    assert list(runs["id"]) == ["20240101-000000-abcdef"] and runs["val_acc"].iloc[0] == 0.5
    assert store.lineage().empty
    ids = store.add_lineage(chain("20240101-000000-abcdef"), "20240101-000000-abcdef")
    assert list(RunStore(tmp_path).lineage()["id"]) == ids


def writer(root: str) -> None:
    """Records chains 0, 1, 2, …, each printed once committed; inside chain 3, between its
    first and second node (within the transaction), waits to be killed."""
    import core.lineage as lin

    store = RunStore(root)
    original, calls = lin.node_id, [0]

    def held(parent, s):
        calls[0] += 1
        if calls[0] == 3 * 3 + 2:  # chain 3, step 2: its first node is written
            print("inside", flush=True)
            sys.stdin.read()
        return original(parent, s)

    lin.node_id = held
    for i in range(1000):
        store.add_lineage([lin.dense(f"model-{i}", "shapes"), lin.pruned("snip", 0.5, i),
                           lin.finetuned(f"run-{i}")])
        print(f"chain {i}", flush=True)


@pytest.mark.slow  # a fresh interpreter, killed
def test_a_writer_killed_mid_chain_leaves_whole_chains(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's core, not an installed one
    proc = subprocess.Popen([sys.executable, __file__, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    timer = threading.Timer(120, proc.kill)
    timer.start()
    done = []
    try:
        for line in proc.stdout:
            if line.startswith("chain "):
                done.append(int(line.split()[1]))
            if line.strip() == "inside":
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        timer.cancel()
        proc.kill()
        proc.wait(timeout=30)
    assert done == [0, 1, 2] and proc.returncode == -signal.SIGKILL, proc.stderr.read()
    nodes = RunStore(tmp_path).lineage()
    assert len(nodes) == 9  # chains 0–2 whole, nothing of chain 3
    assert not any(p.get("model") == "model-3" for p in nodes["params"])
    assert set(nodes["parent"].dropna()) <= set(nodes["id"])


def test_file_metadata_round_trips_the_lineage(tmp_path):
    from core.models import build_model, load_model, save_model

    model = build_model("vit-tiny", 3)
    steps = chain("20240101-000000-abcdef") + [lineage.exported("prunelens", "m.safetensors")]
    path = save_model(model, tmp_path / "m.safetensors", lineage=steps)
    assert lineage.read_lineage(path) == lineage.check(steps)
    back = load_model(path)
    assert torch.equal(back.state_dict()["head.weight"], model.state_dict()["head.weight"])
    assert lineage.read_lineage(save_model(model, tmp_path / "plain.safetensors")) == []

    # a run's checkpoints carry the run's chain
    store = RunStore(tmp_path / "runs")
    run_id = store.create_run("vit-tiny", "shapes", "magnitude", 0.5)
    store.add_lineage(chain(run_id), run_id)
    ckpt = store.commit_epoch(run_id, 0, {"val_acc": 0.5}, model)
    assert lineage.read_lineage(ckpt) == lineage.check(chain(run_id))
    with safe_open(str(ckpt), framework="pt") as f:
        assert f.metadata()["run_id"] == run_id


if __name__ == "__main__":
    writer(sys.argv[1])


def test_a_downloaded_pruned_model_records_where_it_comes_from(tmp_path):
    """The Prune page's PruneLens download carries dense → pruned → exported in its metadata."""
    from core.lineage import read_lineage
    from core.models import build_model, load_model
    from core.pruning import prune
    from dashboard.state.exports import export_bytes, pruned_lineage
    from dashboard.state.keys import DataKey, ModelKey, PruneKey

    key = PruneKey(ModelKey("vit-tiny", "checkpoint", "shapes", 6), DataKey("shapes", "", (32, 32)),
                   "magnitude", 0.5, "global", 16, 0)
    torch.manual_seed(0)
    model = prune(build_model("vit-tiny", 6), "magnitude", 0.5).model
    path = tmp_path / "m.safetensors"
    path.write_bytes(export_bytes(model, "prunelens", pruned_lineage(key)))
    chain = read_lineage(path)
    assert [s["operation"] for s in chain] == ["dense", "pruned", "exported"]
    assert chain[0]["params"] == {"model": "vit-tiny_shapes", "dataset": "shapes",
                                  "source": "checkpoint"}
    assert chain[1]["params"]["criterion"] == "magnitude" and chain[1]["params"]["sparsity"] == 0.5
    assert chain[2]["params"] == {"format": "prunelens", "file": "model.safetensors"}
    assert load_model(path) is not None  # the metadata does not get in the way of loading
