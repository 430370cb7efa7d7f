"""Where the command line writes: output paths checked before any work, and a sweep folder
written point by point, so that a kill loses at most the point in progress.

A sweep folder holds ``sweep.json``, the settings that decide its numbers (written first),
and ``sweep.csv``, every point measured so far. Each is replaced whole: written to a temporary
file in the same folder, flushed to disk (``fsync``), then renamed over the old one (atomic on
POSIX), so at any instant ``sweep.csv`` is absent or a complete CSV of the points done.
``--resume`` reads both, refuses other settings (naming them) and skips the points present.

Every check raises ``ValueError`` with one line that names the option; the commands print it
as a usage error.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from .data.fs import pseudo_filesystems

SETTINGS, CSV = "sweep.json", "sweep.csv"
TMP = ".tmp"  # suffix of the temporary files; any left by a kill are removed on --resume
# columns added to the sweep's CSV since its first version, with their value in an older CSV
# (no token merging, no latency measured): a sweep folder written before them still resumes
NEWER = {"r": 0, "latency_ms": float("nan")}


def _place(path: Path, text: str, option: str) -> None:
    """Refuse a ``path`` that cannot be created and written: its nearest existing ancestor
    must be a folder, off the kernel filesystems (``/proc``, ``/sys``, ...: writes there fail,
    or do something else, only after the work), and writable (probed with a temporary file
    where ``path`` itself or its folder exists, else by permissions)."""
    near = path
    while not os.path.lexists(near):
        near = near.parent
    if not near.is_dir():
        raise ValueError(f"{option} {text}: {near} is a file, not a folder")
    kernel = pseudo_filesystems().get(os.stat(near).st_dev)
    if kernel:
        raise ValueError(f"{option} {text}: {near} is on the {kernel} kernel filesystem, "
                         "not a place for files")
    if near not in (path, path.parent):
        if not os.access(near, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {text}: cannot create folders in {near} (permission "
                             "denied)")
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=".prunelens-probe-", dir=near)
    except OSError as e:
        raise ValueError(f"{option} {text}: cannot write in {near} ({e.strerror or e})"
                         ) from None
    os.close(fd)
    os.unlink(probe)


def check_out_file(text: str, suffix: str = ".safetensors") -> Path:
    """The file ``train --out`` will write, checked before training: not an existing file or
    folder (nothing is overwritten), named ``*.safetensors``, in a place :func:`_place`
    accepts. Missing folders in between are created when the model is saved."""
    path = Path(os.path.abspath(os.path.expanduser(text)))
    if path.is_dir():
        raise ValueError(f"--out {text} is a folder; give a file name such as "
                         f"{os.path.join(text, 'model' + suffix)}")
    if not path.name.endswith(suffix):
        raise ValueError(f"--out {text}: the model is saved as safetensors; give a file name "
                         f"ending in {suffix}")
    if os.path.lexists(path):
        raise ValueError(f"--out {text} already exists; give another file name (nothing is "
                         "overwritten)")
    _place(path, text, "--out")
    return path


def check_out_folder(text: str, resume: bool = False, fresh: bool = True) -> Path:
    """The folder a command writes into, checked before any work: not a file, in a place
    :func:`_place` accepts. ``fresh``: a folder that already holds files is refused unless
    ``resume`` (a sweep never overwrites one it did not start)."""
    path = Path(os.path.abspath(os.path.expanduser(text)))
    if os.path.lexists(path) and not path.is_dir():
        raise ValueError(f"--out {text} is a file; give a folder (it is created if missing)")
    _place(path, text, "--out")
    if fresh and not resume and path.is_dir() and any(path.iterdir()):
        raise ValueError(f"--out {text} already holds files: add --resume to finish the sweep "
                         "in it, or give another --out (nothing is overwritten)")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` whole: a temporary file in the same folder, fsynced, then
    renamed over it (and the folder fsynced, so the rename itself survives a crash)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:  # some filesystems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(folder)


def _shown(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


class SweepFolder:
    """A sweep's ``--out``: its settings and the rows measured so far, each change on disk
    before the next point starts (:func:`write_atomic`).

    ``settings``: JSON-able values that decide the numbers besides the points (model, data,
    calibration, validation images, scope, ...) and the grid of points itself; a resume
    must give the same ones."""

    def __init__(self, path: Path, settings: Mapping[str, object], columns: Sequence[str],
                 resume: bool = False) -> None:
        self.path, self.columns = path, list(columns)
        self.settings = json.loads(json.dumps(settings))
        self.rows: list[dict] = []
        saved, csv = path / SETTINGS, path / CSV
        if not resume or not path.is_dir():
            return
        if not saved.is_file():
            if any(p for p in path.iterdir() if not p.name.endswith(TMP)):
                raise ValueError(f"--resume: {path} holds no sweep ({SETTINGS} is missing); "
                                 "give another --out")
            return
        try:
            before = json.loads(saved.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--resume: cannot read {saved} ({e})") from None
        differ = [k for k in sorted(set(before) | set(self.settings))
                  if before.get(k) != self.settings.get(k)]
        if differ:
            told = "; ".join(f"{k} {_shown(self.settings.get(k))} now, "
                             f"{_shown(before.get(k))} there" for k in differ)
            raise ValueError(f"--resume: the sweep in {path} has other settings ({told}); "
                             "give the same ones, or another --out")
        if csv.is_file():
            try:  # round_trip: the numbers read back are the ones written, to the last bit
                df = pd.read_csv(csv, float_precision="round_trip")
            except (OSError, ValueError) as e:
                raise ValueError(f"--resume: cannot read {csv} ({e})") from None
            cols = list(df.columns)
            missing = self.columns[len(cols):]
            if cols != self.columns[:len(cols)] or not set(missing) <= set(NEWER):
                raise ValueError(f"--resume: {csv} has columns {cols}, not a sweep's")
            for col in missing:  # a CSV written before these columns existed
                df[col] = NEWER[col]
            self.rows = df.to_dict("records")

    def points(self) -> set[tuple[str, float, int, int]]:
        """``(criterion, sparsity, seed, r)`` of the rows present (r = 0 without merging)."""
        return {(str(r["criterion"]), round(float(r["sparsity"]), 6), int(r["seed"]),
                 int(r.get("r", 0))) for r in self.rows}

    def start(self) -> None:
        """Create the folder, drop temporary files a kill left, record the settings."""
        self.path.mkdir(parents=True, exist_ok=True)
        for p in self.path.glob(f".*{TMP}"):
            p.unlink(missing_ok=True)
        if not (self.path / SETTINGS).is_file():
            write_atomic(self.path / SETTINGS,
                         (json.dumps(self.settings, indent=1) + "\n").encode())

    def add(self, rows: list[dict]) -> None:
        """Keep ``rows`` and write the CSV of every row so far."""
        self.rows.extend(rows)
        self.write()

    def write(self) -> None:
        df = pd.DataFrame(self.rows, columns=self.columns)
        write_atomic(self.path / CSV, df.to_csv(index=False).encode())

    def frame(self) -> pd.DataFrame:
        """The CSV as written (figures and the report are drawn from it)."""
        return pd.read_csv(self.path / CSV, float_precision="round_trip")
