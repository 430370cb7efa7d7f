"""The run store: one SQLite file of runs and per-epoch metrics, checkpoints beside it.

Layout under ``root`` (``./runs`` by default, or env ``PRUNELENS_RUNS_DIR``)::

    runs.sqlite                       tables ``runs``, ``metrics``, ``checkpoints`` and
                                      ``lineage`` (WAL journal)
    checkpoints/<run_id>/<name>.safetensors

Every method opens its own short-lived connection (with a busy timeout), so one ``RunStore``
can be shared by the dashboard's threads and by several processes.

Checkpoints commit in three steps, so that a run killed at any instant leaves its metrics and
its checkpoint at the same epoch (never metrics one epoch ahead of the weights):

1. the weights go to a hidden temporary file beside the checkpoint, fsynced; its name carries the
   writer's host, pid and process start time;
2. one transaction records the epoch's metrics row *and* the checkpoint's epoch and temporary
   file name (table ``checkpoints``): this is the commit point;
3. the temporary file is renamed over the checkpoint.

Opening the store reconciles what a dead writer left: a temporary file that step 2 committed is
renamed into place (roll forward), any other one is deleted (roll back). A temporary file whose
writer is still alive is left alone (another process may be mid-checkpoint); one whose writer
cannot be checked (another host, or a name from an older PruneLens) goes after
``STALE_TMP_SECONDS``.

A run may have an ``owner``: an opaque string the caller chooses (the dashboard gives each
browser session, or each name a user types, its own). Only the owner may delete an owned run
through :meth:`RunStore.delete_run` when the caller says who it is (``owner=``); runs without
an owner (the CLI's, and every run of a store older than this column) are shared. Opening an
older store adds the column in place. The owner is a label, not a credential: whoever can
open the file can change it.

Lineage (:mod:`core.lineage`): every model a run trains descends from others (dense → pruned
→ fine-tuned → exported); table ``lineage`` keeps one node per step (its parent, operation,
parameters, accuracy and MACs), each chain written in one transaction, and a run's
checkpoints carry their chain in their metadata. Stores older than the table get it when
opened (``CREATE TABLE IF NOT EXISTS``: their runs are untouched).

A run records the pid, host and process start time of its writer. Opening the store (or
calling :meth:`RunStore.mark_interrupted`) marks ``running`` runs of this host whose process is
gone, or whose pid now belongs to another process, as ``interrupted``.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file
from torch import nn

from .train import Callback, EpochEvent, TrainResult

STATUSES = ("running", "finished", "cancelled", "failed", "interrupted")
FILTERS = ("model", "dataset", "pruner", "sparsity", "status", "name", "owner")
ENV_VAR = "PRUNELENS_RUNS_DIR"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id         TEXT PRIMARY KEY,
    created    TEXT NOT NULL,
    updated    TEXT NOT NULL,
    name       TEXT,
    model      TEXT NOT NULL,
    dataset    TEXT NOT NULL,
    pruner     TEXT,
    sparsity   REAL,
    config     TEXT NOT NULL,
    status     TEXT NOT NULL,
    pid        INTEGER,
    host       TEXT,
    proc_start TEXT,
    reason     TEXT,
    owner      TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS metrics (
    run_id  TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch   INTEGER NOT NULL,
    time    TEXT NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name   TEXT NOT NULL,
    epoch  INTEGER,
    file   TEXT NOT NULL,
    saved  TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS lineage (
    id        TEXT PRIMARY KEY,
    parent    TEXT,
    operation TEXT NOT NULL,
    params    TEXT NOT NULL,
    accuracy  REAL,
    macs      REAL,
    run_id    TEXT,
    created   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS lineage_run ON lineage (run_id);
"""
_RUN_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# .<name>.safetensors.<host>.<pid>.<start ticks>.<token>.tmp  (+ ".tmp" when save_model's own
# temporary file was left behind)
_TMP = re.compile(r"^\.(?P<name>[A-Za-z0-9_.-]+)\.safetensors\.(?P<host>[A-Za-z0-9-]+)\."
                  r"(?P<pid>[0-9]+)\.(?P<start>[0-9]+)\.(?P<token>[0-9a-f]+)\.tmp"
                  r"(?P<extra>(\.tmp)*)$")
# what PruneLens wrote before the commit protocol: .<name>.safetensors.<pid>.<token>.tmp
_LEGACY_TMP = re.compile(r"^\.(?P<name>[A-Za-z0-9_.-]+)\.safetensors\.(?P<pid>[0-9]+)\."
                         r"(?P<token>[0-9a-f]+)\.tmp(\.tmp)*$")
STALE_TMP_SECONDS = 6 * 3600
"""Age after which a temporary checkpoint file whose writer cannot be checked is deleted."""
OWNER_MAX = 200  # characters of an owner label


class _Anyone:
    def __repr__(self) -> str:
        return "ANYONE"


ANYONE = _Anyone()
"""``delete_run``'s default ``owner``: the caller acts for whoever runs the store (the CLI, a
notebook), so ownership is not checked."""


def default_root() -> Path:
    """``$PRUNELENS_RUNS_DIR`` if set, else ``./runs``."""
    return Path(os.environ.get(ENV_VAR) or "runs")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), None if unknown.

    With the boot id it identifies a process across pid reuse and reboots.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    rest = stat[stat.rindex(")") + 2:].split()
    return f"{boot}:{rest[19]}"  # field 22 overall


def _process_state(pid: int) -> str | None:
    """``/proc`` state letter of ``pid`` (``Z`` for a zombie), None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def _host_tag() -> str:
    """This host's name as it goes into temporary file names (letters, digits, dashes)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"


def _start_ticks(pid: int) -> str:
    """The clock-tick part of :func:`_process_start`, ``"0"`` if unknown."""
    start = _process_start(pid)
    return start.rpartition(":")[2] if start else "0"


def _alive(pid: int, start: str | None) -> bool:
    """Is the process that wrote ``(pid, start)`` still running on this host?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if _process_state(pid) == "Z":  # killed, not yet reaped: gone for our purpose
        return False
    now = _process_start(pid)
    return start is None or now is None or now == start


def _json_default(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    if isinstance(x, (tuple, set, frozenset)):
        return list(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot store {type(x).__name__} as JSON: {x!r}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=True)


class RunStoreError(OSError):
    """The run store's database cannot be opened or is not a PruneLens run store."""


class RunStore:
    """Runs, their per-epoch metrics and checkpoints, in ``root``.

    Args:
        root: folder of the store (created if missing); None → :func:`default_root`.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.db_path = self.root / "runs.sqlite"
        self.checkpoint_root = self.root / "checkpoints"
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"the run store folder {str(self.root)!r} is a file")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
            self._add_owner_column()
        except sqlite3.DatabaseError as e:
            raise RunStoreError(f"cannot open the run store {str(self.db_path)!r}: {e}") from None
        self.mark_interrupted()
        self.reconcile_checkpoints()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection; commits on success, rolls back on error, always closes."""
        with closing(sqlite3.connect(self.db_path, timeout=30.0)) as con:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA foreign_keys=ON")
            with con:
                yield con

    def _add_owner_column(self) -> None:
        """Give a store made before run owners its ``owner`` column (NULL: shared runs).

        Checked under the write lock, so processes opening an old store at once add it once;
        ``ALTER TABLE`` is transactional, so a kill leaves the old schema or the new one.
        """
        with self._connect() as con:
            if "owner" in _columns(con):
                return
            con.execute("BEGIN IMMEDIATE")
            if "owner" not in _columns(con):
                con.execute("ALTER TABLE runs ADD COLUMN owner TEXT")

    # ------------------------------------------------------------------ runs

    def create_run(self, model: str, dataset: str, pruner: str | None = None,
                   sparsity: float | None = None, config: Mapping[str, Any] | None = None,
                   name: str | None = None, owner: str | None = None) -> str:
        """Record a new ``running`` run of this process; returns its id (``YYYYmmdd-HHMMSS-hex``).

        ``config`` is any JSON-able mapping (e.g. ``dataclasses.asdict(TrainConfig())`` plus the
        data options); ``sparsity`` is the pruned fraction in ``[0, 1]``; ``owner`` a label of
        who made the run (None: a shared run, see the module docstring).
        """
        if sparsity is not None and not 0.0 <= float(sparsity) <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
        _check_owner(owner)
        run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        now = _now()
        pid = os.getpid()
        with self._connect() as con:
            con.execute(
                "INSERT INTO runs (id, created, updated, name, model, dataset, pruner, sparsity,"
                " config, status, pid, host, proc_start, owner)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, now, now, name, model, dataset, pruner,
                 None if sparsity is None else float(sparsity), _dumps(dict(config or {})),
                 "running", pid, socket.gethostname(), _process_start(pid), owner))
        return run_id

    def log_epoch(self, run_id: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Store (or replace) the metrics of ``epoch`` of ``run_id``."""
        now = _now()
        with self._connect() as con:
            self._require(con, run_id)
            con.execute("INSERT OR REPLACE INTO metrics (run_id, epoch, time, metrics) "
                        "VALUES (?,?,?,?)", (run_id, int(epoch), now, _dumps(dict(metrics))))
            con.execute("UPDATE runs SET updated=? WHERE id=?", (now, run_id))

    def finish(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Set the final ``status`` (finished, cancelled, failed, interrupted) and ``reason``."""
        if status not in STATUSES or status == "running":
            raise ValueError(f"final status must be one of {STATUSES[1:]}, got {status!r}")
        with self._connect() as con:
            self._require(con, run_id)
            con.execute("UPDATE runs SET status=?, reason=?, updated=? WHERE id=?",
                        (status, reason, _now(), run_id))

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run's row as a dict (``config`` parsed); KeyError if unknown."""
        with self._connect() as con:
            row = self._require(con, run_id)
        run = dict(row)
        run["config"] = json.loads(run["config"])
        return run

    def list_runs(self, **filters: Any) -> pd.DataFrame:
        """Runs, newest first, with the last epoch's metrics as extra columns.

        Filters (any of ``model, dataset, pruner, sparsity, status, name, owner``) keep rows
        equal to the value; None matches missing values (``pruner=None``: unpruned runs,
        ``owner=None``: shared runs), a list or tuple matches any of its items. Sparsity
        compares to within 1e-9.
        """
        unknown = sorted(set(filters) - set(FILTERS))
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}; filter by {list(FILTERS)}")
        where, args = [], []
        for key, value in filters.items():
            values = list(value) if isinstance(value, (list, tuple, set)) else [value]
            terms = []
            for v in values:
                if v is None:
                    terms.append(f"r.{key} IS NULL")
                elif key == "sparsity":
                    terms.append("abs(r.sparsity - ?) < 1e-9")
                    args.append(float(v))
                else:
                    terms.append(f"r.{key} = ?")
                    args.append(v)
            where.append("(" + (" OR ".join(terms) or "0") + ")")
        sql = ("SELECT r.*, (SELECT count(*) FROM metrics m WHERE m.run_id = r.id) AS epochs,"
               " (SELECT m.metrics FROM metrics m WHERE m.run_id = r.id"
               "  ORDER BY m.epoch DESC LIMIT 1) AS last_metrics FROM runs r"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY r.created DESC, r.id DESC")
        with self._connect() as con:
            rows = [dict(r) for r in con.execute(sql, args)]
        columns = ["id", "created", "updated", "name", "model", "dataset", "pruner", "sparsity",
                   "status", "reason", "epochs", "config", "pid", "host", "owner"]
        records, extra = [], []
        for r in rows:
            last = json.loads(r.pop("last_metrics") or "{}")
            last.pop("epoch", None)
            extra += [k for k in last if k not in extra and k not in columns]
            r["config"] = json.loads(r["config"])
            records.append({**{c: r[c] for c in columns}, **last})
        df = pd.DataFrame.from_records(records, columns=columns + extra)
        for col in ("created", "updated"):
            df[col] = pd.to_datetime(df[col], utc=True, format="ISO8601")
        return df

    def metrics(self, run_id: str) -> pd.DataFrame:
        """One row per logged epoch: ``epoch`` and the metric columns, by epoch."""
        with self._connect() as con:
            self._require(con, run_id)
            rows = con.execute("SELECT epoch, metrics FROM metrics WHERE run_id=? ORDER BY epoch",
                               (run_id,)).fetchall()
        records = [{**json.loads(r["metrics"]), "epoch": r["epoch"]} for r in rows]
        df = pd.DataFrame.from_records(records)
        if df.empty:
            return pd.DataFrame({"epoch": pd.Series(dtype="int64")})
        return df[["epoch"] + [c for c in df.columns if c != "epoch"]]

    def delete_run(self, run_id: str, force: bool = False,
                   owner: str | None | _Anyone = ANYONE) -> None:
        """Remove the run, its metrics and its checkpoints.

        ``owner``: who asks. Given (a label, or None for "the shared runs' keeper"), a run
        whose owner differs is refused with PermissionError; left out (:data:`ANYONE`), the
        caller acts for whoever runs the store and any run may go. A run still ``running``
        (its process alive) is refused unless ``force``: deleting it under a live training
        would make its next write fail.
        """
        self.mark_interrupted()
        with self._connect() as con:
            row = self._require(con, run_id)
            if owner is not ANYONE and row["owner"] != owner:
                whose = ("is shared (no owner: made by the command line or an older PruneLens)"
                         if row["owner"] is None else "belongs to someone else")
                raise PermissionError(f"run {run_id} {whose}: only its owner can delete it")
            if row["status"] == "running" and not force:
                raise ValueError(f"run {run_id} is still running (pid {row['pid']} on "
                                 f"{row['host']}); pass force=True to delete it anyway")
            con.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            con.execute("DELETE FROM checkpoints WHERE run_id=?", (run_id,))
            con.execute("DELETE FROM runs WHERE id=?", (run_id,))
        shutil.rmtree(self._run_dir(run_id), ignore_errors=True)

    def reassign_runs(self, owner: str, new_owner: str) -> list[str]:
        """Give every run of ``owner`` to ``new_owner`` (both labels, not None); returns their
        ids. The dashboard uses it when a browser session that made runs takes a name."""
        for o in (owner, new_owner):
            if o is None:
                raise ValueError("reassign_runs moves owned runs only; shared runs stay shared")
            _check_owner(o)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")  # no run of ``owner`` appears between the two
            ids = [r["id"] for r in con.execute("SELECT id FROM runs WHERE owner=?", (owner,))]
            con.execute("UPDATE runs SET owner=? WHERE owner=?", (new_owner, owner))
        return ids

    # ------------------------------------------------------------------ lineage

    def add_lineage(self, chain, run_id: str | None = None,
                    measures: Mapping[int, Mapping[str, float]] | None = None) -> list[str]:
        """Record a chain of steps (:mod:`core.lineage`: dense first) as nodes, each the
        parent of the next, in one transaction (a kill leaves all of them or none); returns
        their ids. Nodes already there (the same steps from the same parent) are kept, so two
        runs of one pruned model share its nodes. ``run_id`` goes on the last node;
        ``measures``: step index → ``{"accuracy", "macs"}`` (known values fill empty ones)."""
        from . import lineage

        steps = lineage.check(chain)
        if run_id is not None:
            self.get_run(run_id)
        ids, parent, now = [], None, _now()
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            for i, s in enumerate(steps):
                node = lineage.node_id(parent, s)
                m = (measures or {}).get(i, {})
                con.execute("INSERT OR IGNORE INTO lineage (id, parent, operation, params,"
                            " created) VALUES (?,?,?,?,?)",
                            (node, parent, s["operation"], _dumps(s["params"]), now))
                con.execute("UPDATE lineage SET accuracy=coalesce(?, accuracy), macs="
                            "coalesce(?, macs) WHERE id=?",
                            (m.get("accuracy"), m.get("macs"), node))
                ids.append(node)
                parent = node
            if run_id is not None and ids:
                con.execute("UPDATE lineage SET run_id=? WHERE id=?", (run_id, ids[-1]))
        return ids

    def set_measures(self, node: str, accuracy: float | None = None,
                     macs: float | None = None) -> None:
        """Fill a node's accuracy and MACs (None leaves a value as it is)."""
        with self._connect() as con:
            con.execute("UPDATE lineage SET accuracy=coalesce(?, accuracy), macs="
                        "coalesce(?, macs) WHERE id=?", (accuracy, macs, node))

    def lineage(self) -> pd.DataFrame:
        """Every node: ``id, parent, operation, params`` (a dict), ``accuracy, macs, run_id,
        created``, oldest first."""
        with self._connect() as con:
            rows = [dict(r) for r in con.execute("SELECT * FROM lineage ORDER BY created, id")]
        for r in rows:
            r["params"] = json.loads(r["params"])
        return pd.DataFrame.from_records(rows, columns=[
            "id", "parent", "operation", "params", "accuracy", "macs", "run_id", "created"])

    def chain(self, node: str) -> list[dict[str, Any]]:
        """The steps from the root down to ``node`` (KeyError if unknown)."""
        out, seen = [], set()
        with self._connect() as con:
            while node is not None and node not in seen:
                seen.add(node)
                row = con.execute("SELECT parent, operation, params FROM lineage WHERE id=?",
                                  (node,)).fetchone()
                if row is None:
                    if not out:
                        raise KeyError(f"no lineage node {node!r}")
                    break
                out.append({"operation": row["operation"], "params": json.loads(row["params"])})
                node = row["parent"]
        return out[::-1]

    def run_node(self, run_id: str) -> str | None:
        """The lineage node of ``run_id``'s model, None if it recorded none."""
        with self._connect() as con:
            row = con.execute("SELECT id FROM lineage WHERE run_id=? ORDER BY created DESC "
                              "LIMIT 1", (run_id,)).fetchone()
        return None if row is None else row["id"]

    def mark_interrupted(self) -> list[str]:
        """Mark ``running`` runs of this host whose writer process is gone as ``interrupted``.

        A pid that is alive but started at another time (pid reuse) counts as gone. Runs of
        other hosts are left alone: their processes cannot be checked from here.
        Returns the ids marked.
        """
        host = socket.gethostname()
        with self._connect() as con:
            rows = con.execute("SELECT id, pid, proc_start FROM runs WHERE status='running' "
                               "AND host=?", (host,)).fetchall()
            gone = [r["id"] for r in rows if not _alive(int(r["pid"] or 0), r["proc_start"])]
            now = _now()
            for run_id in gone:
                con.execute("UPDATE runs SET status='interrupted', updated=?, reason=? "
                            "WHERE id=? AND status='running'",
                            (now, "the process recording this run ended without finishing it",
                             run_id))
        return gone

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_path(self, run_id: str, name: str = "last") -> Path:
        """``root/checkpoints/<run_id>/<name>.safetensors`` (the file may not exist)."""
        if not _NAME.match(name):
            raise ValueError(f"checkpoint name must match {_NAME.pattern}, got {name!r}")
        return self._run_dir(run_id) / f"{name}.safetensors"

    def save_checkpoint(self, run_id: str, model: nn.Module | Mapping[str, torch.Tensor],
                        name: str = "last", metadata: Mapping[str, str] | None = None,
                        epoch: int | None = None) -> Path:
        """Write ``model`` (a module or a state dict) as checkpoint ``name``; returns the path.

        A PruneLens model is saved with :func:`core.models.save_model` (architecture in the
        metadata, pruning masks baked in, so ``load_model`` rebuilds it); other modules and
        state dicts as plain tensors. ``metadata`` (str → str) is added, with ``run_id`` (and
        ``epoch`` if given). Committed as described in the module docstring: a kill at any
        instant leaves the previous checkpoint or this one, never half a file.
        """
        return self._commit(run_id, epoch, None, model, name, metadata)

    def commit_epoch(self, run_id: str, epoch: int, metrics: Mapping[str, Any],
                     model: nn.Module | Mapping[str, torch.Tensor] | None = None,
                     name: str = "last", metadata: Mapping[str, str] | None = None
                     ) -> Path | None:
        """Record ``epoch``'s metrics and, if ``model`` is given, its checkpoint, as one commit.

        After a kill at any instant (and the next opening of the store) the run's last metrics
        row and checkpoint ``name`` hold the same epoch. Returns the checkpoint path (None
        without ``model``).
        """
        if model is None:
            self.log_epoch(run_id, epoch, metrics)
            return None
        return self._commit(run_id, int(epoch), metrics, model, name, metadata)

    def checkpoint_epoch(self, run_id: str, name: str = "last") -> int | None:
        """The epoch recorded with checkpoint ``name`` (None: no checkpoint, or saved without
        an epoch)."""
        with self._connect() as con:
            self._require(con, run_id)
            row = con.execute("SELECT epoch FROM checkpoints WHERE run_id=? AND name=?",
                              (run_id, name)).fetchone()
        return None if row is None else row["epoch"]

    def reconcile_checkpoints(self) -> dict[str, list[Path]]:
        """Finish or undo the checkpoint commits of writers that died (see module docstring).

        Called when the store opens. Returns ``{"rolled_forward": [...], "removed": [...]}``
        (the checkpoint paths completed, the temporary files deleted).
        """
        done: dict[str, list[Path]] = {"rolled_forward": [], "removed": []}
        try:
            run_dirs = [e.path for e in os.scandir(self.checkpoint_root)
                        if _RUN_ID.match(e.name) and e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return done
        host, now = _host_tag(), time.time()
        for run_dir in run_dirs:
            try:
                leftovers = [e for e in os.scandir(run_dir)
                             if e.name.startswith(".") and e.name.endswith(".tmp")
                             and e.is_file(follow_symlinks=False)]
            except FileNotFoundError:  # the run was deleted meanwhile
                continue
            for entry in leftovers:
                path = Path(entry.path)
                try:
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:  # its writer renamed it meanwhile
                    continue
                state = _writer_state(entry.name, host)
                if state == "alive" or (state == "unknown" and age < STALE_TMP_SECONDS):
                    continue
                m = _TMP.match(entry.name)
                final = path.with_name(f"{m['name']}.safetensors") if m else None
                run_id = path.parent.name
                # under the write lock: a live writer cannot commit between our read and rename
                with self._connect() as con:
                    con.execute("BEGIN IMMEDIATE")
                    row = None
                    if m is not None and not m["extra"]:
                        row = con.execute("SELECT file FROM checkpoints WHERE run_id=? AND name=?",
                                          (run_id, m["name"])).fetchone()
                    try:
                        if row is not None and row["file"] == entry.name:
                            os.replace(path, final)
                            done["rolled_forward"].append(final)
                        else:
                            path.unlink()
                            done["removed"].append(path)
                    except FileNotFoundError:  # another process reconciled it first
                        pass
        return done

    def _commit(self, run_id: str, epoch: int | None, metrics: Mapping[str, Any] | None,
                model: nn.Module | Mapping[str, torch.Tensor], name: str,
                metadata: Mapping[str, str] | None) -> Path:
        """The three-step checkpoint commit of the module docstring."""
        path = self.checkpoint_path(run_id, name)
        self.get_run(run_id)  # KeyError for an unknown run
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"run_id": run_id, "saved": _now(), **{k: str(v) for k, v in
                                                      (metadata or {}).items()}}
        if epoch is not None:
            meta["epoch"] = str(int(epoch))
        pid = os.getpid()
        tmp = path.with_name(f".{path.name}.{_host_tag()}.{pid}.{_start_ticks(pid)}."
                             f"{secrets.token_hex(4)}.tmp")
        committed = False
        try:
            if isinstance(model, nn.Module) and _is_prunelens_model(model):
                from .models import save_model
                node = self.run_node(run_id)
                save_model(model, tmp, extra=meta,
                           lineage=self.chain(node) if node is not None else None)
            else:
                state = model.state_dict() if isinstance(model, nn.Module) else model
                tensors = {k: v.detach().to("cpu", copy=True).contiguous()
                           for k, v in state.items()}
                save_file(tensors, str(tmp), metadata=meta)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            now = _now()
            with self._connect() as con:
                self._require(con, run_id)
                if metrics is not None:
                    con.execute("INSERT OR REPLACE INTO metrics (run_id, epoch, time, metrics) "
                                "VALUES (?,?,?,?)", (run_id, epoch, now, _dumps(dict(metrics))))
                con.execute("INSERT OR REPLACE INTO checkpoints (run_id, name, epoch, file, saved)"
                            " VALUES (?,?,?,?,?)", (run_id, name, epoch, tmp.name, now))
                con.execute("UPDATE runs SET updated=? WHERE id=?", (now, run_id))
            committed = True
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            if not committed:
                tmp.unlink(missing_ok=True)
        return path

    # ------------------------------------------------------------------ helpers

    def _run_dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise ValueError(f"not a run id: {run_id!r}")
        return self.checkpoint_root / run_id

    @staticmethod
    def _require(con: sqlite3.Connection, run_id: str) -> sqlite3.Row:
        row = con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id!r} in the store")
        return row


def _columns(con: sqlite3.Connection) -> set[str]:
    return {r["name"] for r in con.execute("PRAGMA table_info(runs)")}


def _check_owner(owner: str | None) -> None:
    if owner is not None and (not isinstance(owner, str) or not 0 < len(owner) <= OWNER_MAX):
        raise ValueError(f"owner must be None or a string of 1 to {OWNER_MAX} characters, "
                         f"got {owner!r}")


def _writer_state(tmp_name: str, host: str) -> str:
    """Is the process that wrote temporary file ``tmp_name`` ``"alive"``, ``"dead"`` or
    ``"unknown"`` (another host, an unparsable or older name whose pid is alive)?"""
    m = _TMP.match(tmp_name)
    if m is not None:
        if m["host"] != host:
            return "unknown"
        pid, start = int(m["pid"]), m["start"]
        if not _alive(pid, None):
            return "dead"
        return "alive" if start == "0" or _start_ticks(pid) in (start, "0") else "dead"
    legacy = _LEGACY_TMP.match(tmp_name)
    if legacy is not None and not _alive(int(legacy["pid"]), None):
        return "dead"
    return "unknown"


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def _is_prunelens_model(model: nn.Module) -> bool:
    from .models import model_family
    try:
        model_family(model)
    except TypeError:
        return False
    return True


class RunStoreCallback(Callback):
    """Connects :func:`core.train.train` to a :class:`RunStore` run.

    After each good epoch: commits its metrics and ``model`` as checkpoint ``"last"`` together
    (:meth:`RunStore.commit_epoch`). At the end: sets the run's status and reason (a NaN run
    ends ``failed`` and keeps the last good checkpoint, since train() never reports a bad epoch).
    """

    def __init__(self, store: RunStore, run_id: str, model: nn.Module,
                 checkpoint: str | None = "last") -> None:
        self.store, self.run_id, self.model, self.checkpoint = store, run_id, model, checkpoint

    def on_epoch_end(self, event: EpochEvent) -> None:
        model = self.model if self.checkpoint is not None else None
        self.store.commit_epoch(self.run_id, event.epoch, event.metrics, model,
                                self.checkpoint or "last")

    def on_end(self, result: TrainResult) -> None:
        self.store.finish(self.run_id, result.status, result.reason)
        node = self.store.run_node(self.run_id)
        last = self.store.metrics(self.run_id)
        if node is not None and "val_acc" in last and len(last):
            self.store.set_measures(node, accuracy=float(last["val_acc"].iloc[-1]))
