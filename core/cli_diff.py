"""``python -m core diff A B``: two models on the same validation images, example by example.

    python -m core diff vit-tiny prune:snip:0.5 --data shapes --val 512 --out DIR
    python -m core diff vit-tiny finetuned.safetensors --data shapes --out DIR

``A`` and ``B`` are each a preset name (its shipped checkpoint trained on ``--data`` where one
exists, else its seeded initialisation; ``--untrained`` for the initialisation anyway) or the
path of a PruneLens model file (or a folder holding one), resolved as ``python -m core sweep``
resolves ``--model``. ``B`` may also be ``prune:<criterion>:<sparsity>``: A pruned by that
criterion (``core.pruning.list_pruners``) at that sparsity in [0, 1), calibrated on
``--calib`` training images drawn with ``--seed`` (``--scope`` for unstructured criteria); a
structured criterion gives the physically smaller model.

Writes to ``--out`` (checked before any work; created): ``diff.csv`` (one row per image, the
columns of ``core.diff.DIFF_COLUMNS`` then the per-layer and per-head change columns),
``summary.json``, ``layer_change.png``/``.svg``/``.csv`` and ``report.html`` (the Diff
section). Each file is written to a temporary name in ``--out`` and renamed over the old one,
so a failed or interrupted run never leaves a half-written file.

Exit codes as ``python -m core``: 0 done, 2 bad arguments (one usage line, no traceback: an
unknown model, models of different label counts or input sizes, an empty or unreadable
dataset, an unwritable ``--out``), 130 cancelled (Ctrl-C / SIGTERM stop before the next
batch; the rows done are written to ``diff.csv`` and ``summary.json``, no report).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
from pathlib import Path
from typing import Mapping

from .cli_compare import (EXIT_CANCELLED, EXIT_OK, EXIT_USAGE, _Bar, _data_option, _fraction,
                          _positive, _usage_errors, check_criteria, resolve, stop_on_signals)

PRUNE_PREFIX = "prune:"


def add_diff_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "diff", help="two models on the same images, example by example",
        description="Compare model A and model B on the first --val validation images: per "
                    "image the predictions, confidences, flip kind and attention change; "
                    "writes diff.csv, summary.json, the layer-change chart and report.html.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("a", metavar="A", help="preset name or model file")
    p.add_argument("b", metavar="B",
                   help="preset name, model file, or prune:<criterion>:<sparsity> (A pruned)")
    p.add_argument("--data", default="shapes", help="dataset (core.data.list_datasets)")
    p.add_argument("--data-opt", action="append", type=_data_option, default=[],
                   metavar="KEY=VALUE", help="dataset option, repeatable (e.g. root=/images)")
    p.add_argument("--val", type=_positive, default=512,
                   help="the first N images of the validation split")
    p.add_argument("--batch-size", type=_positive, default=32, help="images per forward")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (both models)")
    p.add_argument("--untrained", action="store_true",
                   help="presets at their initialisation (seeded by --init-seed)")
    p.add_argument("--init-seed", type=int, default=0, help="seed of untrained weights")
    p.add_argument("--calib", type=_positive, default=64,
                   help="calibration images for prune:... (training split)")
    p.add_argument("--seed", type=int, default=0, help="calibration seed for prune:...")
    p.add_argument("--scope", choices=("global", "layer"), default="global",
                   help="threshold scope of an unstructured prune:...")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.set_defaults(func=cmd_diff)


def check_output_dir(text: str) -> Path:
    """The folder ``--out`` names, or ValueError unless files can be written there (checked
    before any work, nothing created: a folder that exists is probed with a temporary file,
    one that does not needs a writable existing ancestor folder)."""
    path = Path(os.path.abspath(os.path.expanduser(text)))
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {text} is a file; give a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {text}: {parent} is a file, not a folder")
    if parent != path:
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"--out {text}: cannot create folders in {parent} (permission "
                             "denied)")
        return path
    try:
        fd, probe = tempfile.mkstemp(prefix=".prunelens-probe-", dir=path)
    except OSError as e:
        raise ValueError(f"--out {text}: cannot write in {path} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def write_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """Each file to a temporary name in ``folder``, then renamed over ``name`` (atomic; the
    permissions an ordinary new file gets)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
            os.replace(tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def parse_pruned(spec: str) -> tuple[str, float] | None:
    """``prune:<criterion>:<sparsity>`` → (criterion, sparsity); None for anything else."""
    if not spec.startswith(PRUNE_PREFIX):
        return None
    crit, sep, ratio = spec[len(PRUNE_PREFIX):].rpartition(":")
    if not sep or not crit:
        raise ValueError(f"B {spec!r}: write prune:<criterion>:<sparsity>, e.g. "
                         "prune:magnitude:0.5")
    try:
        return crit, _fraction(ratio)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"B {spec!r}: sparsity {e}") from None


def diff_command(args: argparse.Namespace) -> str:
    """The ``python -m core diff ...`` line that reproduces this run."""
    line = ["python", "-m", "core", "diff", args.a, args.b, "--data", args.data]
    for k, v in args.data_opt:
        line += ["--data-opt", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    if args.untrained:
        line += ["--untrained", "--init-seed", str(args.init_seed)]
    if args.b.startswith(PRUNE_PREFIX):
        line += ["--calib", str(args.calib), "--seed", str(args.seed), "--scope", args.scope]
    return shlex.join(line + ["--val", str(args.val), "--out", args.out])


def cmd_diff(args: argparse.Namespace) -> int:
    try:
        return _diff(args)
    except _usage_errors() as e:
        print(f"python -m core diff: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _diff(args: argparse.Namespace) -> int:
    import torch

    from . import report, study
    from .diff import compare_models, summarize

    out = check_output_dir(args.out)
    device = study.resolve_device(args.device)
    pruned = parse_pruned(args.b)
    if pruned:
        check_criteria([pruned[0]])
    opts = dict(args.data_opt)
    model_a, train_set, val_set, label_a = resolve(args.a, args.data, opts, args.untrained,
                                                   args.init_seed)
    if pruned:
        crit, sparsity = pruned
        images, labels = study.calibration(train_set, args.calib, args.seed)
        point = study.prune_at(model_a, crit, sparsity, images, labels, args.scope, args.seed)
        model_b = point.model(model_a).eval()
        label_b = f"A pruned by {crit} at sparsity {sparsity:g}"
    else:
        model_b, _, _, label_b = resolve(args.b, args.data, opts, args.untrained,
                                         args.init_seed)
    n_val = min(args.val, len(val_set))
    val = torch.utils.data.Subset(val_set, list(range(n_val)))
    bar = _Bar(n_val, "diff", not args.no_progress, "img")
    cancel = threading.Event()
    with stop_on_signals(cancel):
        df = compare_models(model_a.to(device), model_b.to(device), val,
                            batch_size=args.batch_size, labels_a=list(train_set.classes),
                            progress=bar, cancel=cancel)
    bar.close()
    summary = summarize(df)
    setup = {"model A": label_a, "model B": label_b,
             "dataset": f"{args.data}: the first {n_val} of {len(val_set)} validation images",
             "device": str(device)}
    files = report.diff_files(df, summary, setup, diff_command(args))
    if df.attrs.get("cancelled"):
        write_files(out, {k: files[k] for k in ("diff.csv", "summary.json")})
        print(f"cancelled: {len(df)} of {n_val} images written to {out / 'diff.csv'} (no "
              "report)", file=sys.stderr)
        return EXIT_CANCELLED
    write_files(out, files)
    n = summary.numbers
    print(f"{len(df)} images: agreement {n['agreement']:.3f}, accuracy A {n['accuracy_a']:.3f} "
          f"→ B {n['accuracy_b']:.3f}, mean rollout change {n['rollout_change_mean']:.4f}; "
          f"diff.csv, summary.json and report.html in {out}")
    return EXIT_OK
