"""``python -m core sweep`` and ``python -m core grid``: criteria compared the way papers do,
from the command line (and under ``torchrun``).

    python -m core sweep --model vit-tiny --data shapes --criteria magnitude snip \\
        --sparsities 0 0.5 0.9 0.99 --seeds 1 --val 256 --out DIR

writes ``DIR/sweep.csv`` (columns of ``core.study.SWEEP_COLUMNS``), each chart as PNG, SVG
and the CSV of its numbers (``accuracy_vs_sparsity``, ``accuracy_vs_kept``,
``accuracy_vs_macs``, ``fidelity_vs_sparsity`` at the smallest ``--tome-r``;
``pareto_macs`` (and ``pareto_latency`` with ``--latency``): every criterion × sparsity × r
point, the Pareto frontier marked; ``grid`` for SNP's Fig. 3 on validation image
``--grid-image``; ``sensitivity`` with ``--sensitivity``) and ``report.html``, a
self-contained report. ``python -m core grid`` writes the Fig. 3 figure alone.

The model (``--model``) is a preset name, loaded from its shipped checkpoint trained on
``--data`` where one exists (the dashboard's default; otherwise, or with ``--untrained``, the
preset at its seeded initialisation), a model file saved by PruneLens, a Hugging Face or timm
model folder, or a Hugging Face hub id (``org/name``, at ``--revision``; downloaded into the
Hugging Face cache with a progress bar unless ``HF_HUB_OFFLINE=1``): see
``core.models.load_model``. ``--val N`` is ``core.study.val_subset``: N images of the
validation split of ``load_dataset(data, image_size=<the model's>, seed=0)``, each class its
share, drawn at random with seed 0 (the subset the dashboard's pages measure on). ``--seeds
K`` runs the calibration seeds 0 … K−1 (``--seed-list`` names them instead); a seed draws the
calibration batch and the random criteria. Sparsity 0 is the dense model. Unstructured
criteria use one global threshold unless ``--scope layer``.

``sweep.csv`` is written point by point (``core.cli_files.SweepFolder``: ``sweep.json``
holds the settings, each new CSV is renamed over the last), so a killed sweep leaves the
points it finished, and ``--resume`` computes only the others; figures and the report come at
the end, from the CSV. ``--out`` is checked before any work (not a file, not on a kernel
filesystem, writable; a folder holding files only with ``--resume``).

Under ``torchrun --nproc_per_node=N -m core sweep ...`` the (criterion, seed) points are
split across the ranks (gloo on CPU) and gathered on rank 0, which writes the files (its own
points as they finish, the others' at the end): the CSV is the one a single process writes.

Exit codes as ``python -m core``: 0 done, 2 bad arguments (one usage line, no traceback),
130 cancelled (Ctrl-C / SIGTERM stop before the next point; the points done are in
``sweep.csv``, no figures; ``--resume`` finishes).
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

EXIT_OK, EXIT_USAGE, EXIT_CANCELLED = 0, 2, 130
DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def _data_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1) (write 0.9 for 90%)")
    return v


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
    return v


def _positive(text: str) -> int:
    return _int_at_least(text, 1)


def _natural(text: str) -> int:
    return _int_at_least(text, 0)


def _pattern(text: str) -> str:
    from .pruning.nm import pattern_name

    try:
        return pattern_name(text) or "unstructured"
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vit-tiny",
                   help="preset name (its shipped checkpoint on --data where one exists), a "
                        "PruneLens model file, a Hugging Face / timm model folder, or a Hugging "
                        "Face hub id (org/name: downloaded into the Hugging Face cache)")
    p.add_argument("--revision", default=None,
                   help="branch, tag or commit of a hub id (default: its main branch)")
    p.add_argument("--data", default="shapes", help="dataset (core.data.list_datasets)")
    p.add_argument("--data-opt", action="append", type=_data_option, default=[],
                   metavar="KEY=VALUE", help="dataset option, repeatable (e.g. root=/images)")
    p.add_argument("--untrained", action="store_true",
                   help="the preset at its initialisation (seeded by --init-seed), even where "
                        "a checkpoint is shipped: pruning at init")
    p.add_argument("--init-seed", type=int, default=0, help="seed of the untrained weights")
    p.add_argument("--criteria", nargs="+", default=["magnitude", "snip"], metavar="NAME",
                   help="criteria to compare (core.pruning.list_pruners)")
    p.add_argument("--calib", type=_positive, default=64,
                   help="calibration images drawn from the training split")
    p.add_argument("--scope", choices=("global", "layer"), default="global",
                   help="one threshold over all layers, or the same sparsity per layer "
                        "(unstructured criteria)")
    p.add_argument("--out", required=True,
                   help="output folder (created; checked before any work)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    add_device_arguments(p)


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--device`` (models and data go there; checked before any model is loaded) and
    ``--precision`` (the evaluation's autocast; scoring stays float32)."""
    from .study.evaluation import DEVICE_ENV, EVAL_PRECISIONS

    p.add_argument("--device", default="auto",
                   help=f"auto (${DEVICE_ENV}, else CUDA, else MPS, else the CPU), cpu, cuda, "
                        "cuda:1, mps")
    p.add_argument("--precision", default="fp32", choices=EVAL_PRECISIONS,
                   help="evaluation precision: float32, or bf16 / fp16 autocast")


def device_of(args: argparse.Namespace):
    """The ``torch.device`` of ``--device`` (:func:`core.study.resolve_device`: one-line
    ValueError when it is not there)."""
    from .study.evaluation import resolve_device

    return resolve_device(args.device)


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help="accuracy, cost and attention fidelity over criteria × sparsities",
        description="One-shot sweep of criteria × sparsities × calibration seeds; writes "
                    "sweep.csv, the charts (PNG, SVG, CSV) and report.html to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(p)
    p.add_argument("--sparsities", nargs="+", type=_fraction, default=None,
                   metavar="S", help="fractions removed, in [0, 1); 0 is the dense model "
                                     f"(default: {' '.join(f'{s:g}' for s in DEFAULT_SPARSITIES)}"
                                     "; with --pattern N:M: 0 and 1 − N/M)")
    p.add_argument("--pattern", type=_pattern, default="unstructured", metavar="N:M",
                   help="N:M sparsity for the unstructured criteria (e.g. 2:4: every group of "
                        "4 consecutive inputs of a row keeps its 2 highest scores)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_positive, default=1, metavar="K",
                       help="calibration seeds 0 … K-1 (mean ± std bands over them)")
    seeds.add_argument("--seed-list", type=int, nargs="+", default=None, metavar="SEED",
                       help="these calibration seeds instead of 0 … K-1")
    p.add_argument("--val", type=_positive, default=256,
                   help="validation images: a fixed class-stratified random subset of the "
                        "split (seed 0), the one the dashboard's pages use")
    p.add_argument("--resume", action="store_true",
                   help="finish the sweep in --out: the points already in its sweep.csv are "
                        "kept, the others computed (the settings must be the same)")
    p.add_argument("--batch-size", type=_positive, default=256, help="evaluation batch size")
    p.add_argument("--no-attention", action="store_true",
                   help="skip the attention fidelity (cls_cosine, rollout_cosine left empty)")
    p.add_argument("--tome-r", type=_natural, nargs="+", default=[0], metavar="R",
                   help="the joint axis: also measure every pruned model with ToMe token "
                        "merging of R tokens per block (0: no merging), one row per R; adds "
                        "the Pareto charts of accuracy vs MACs (and vs latency)")
    p.add_argument("--latency", action="store_true",
                   help="also time a batch-1 forward of every point (median of 5 "
                        "after a warm-up, column latency_ms): wall time on this machine, noisy")
    p.add_argument("--grid-image", type=int, default=0,
                   help="validation image of the Fig. 3 grid in the report (-1: no grid)")
    p.add_argument("--sensitivity", type=_fraction, nargs="*", default=None, metavar="R",
                   help="also prune one layer at a time at these ratios (none given: 0.3 0.6 "
                        "0.9) and add the heat map")
    p.set_defaults(func=cmd_sweep)


def add_grid_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "grid", help="SNP's Fig. 3: CLS attention of one image across criteria × ratios",
        description="The Fig. 3 grid (criteria × pruning ratios over one validation image, "
                    "each map's cosine similarity to the dense map, a colour bar) as grid.png, "
                    "grid.svg and grid.csv (the similarities) in --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(p)
    p.add_argument("--ratios", nargs="+", type=_fraction,
                   default=[round(0.1 * i, 1) for i in range(10)], metavar="R",
                   help="pruning ratios (columns); 0 is the dense model")
    p.add_argument("--image", type=int, default=0, help="validation image index")
    p.add_argument("--seed", type=int, default=0, help="calibration seed")
    p.add_argument("--mode", choices=("cls", "rollout"), default="cls",
                   help="the last block's CLS row (mean of heads) or the rollout's")
    p.set_defaults(func=cmd_grid)


# ---------------------------------------------------------------------------- shared steps

def _usage_errors():
    from .models import CheckpointError

    return (ValueError, TypeError, FileNotFoundError, NotADirectoryError, CheckpointError,
            KeyError)


def resolve(model_spec: str, data: str, data_options: dict, untrained: bool = False,
            init_seed: int = 0, revision: str | None = None, quiet: bool = False):
    """``(model, train_set, val_set, label)``: the model (shipped checkpoint of a preset on
    ``data`` where one exists, else its seeded initialisation; or what
    :func:`load_spec_model` reads) and the dataset at the model's image size, split with
    seed 0."""
    import torch

    from .data import load_dataset
    from .models import build_model, list_models, pretrained_path

    path = Path(model_spec).expanduser()
    if model_spec in list_models():
        if revision is not None:
            raise ValueError(f"--revision is for hub ids; {model_spec} is a preset")
        shape = build_model(model_spec, num_classes=2).input_shape
        train_set, val_set = load_dataset(data, tuple(shape[1:]), seed=0, **data_options)
        n = len(train_set.classes)
        if not untrained and pretrained_path(model_spec, data).exists():
            return (build_model(model_spec, n, pretrained=True, dataset=data).eval(), train_set,
                    val_set, f"{model_spec} trained on {data} (shipped checkpoint)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = build_model(model_spec, n).eval()
        label = f"{model_spec} (untrained, seed {init_seed})"
        if not untrained:
            print(f"note: no shipped checkpoint for {model_spec} on {data}: {label}",
                  file=sys.stderr)
        return model, train_set, val_set, label
    if untrained:
        raise ValueError(f"--untrained is a preset's initialisation; --model {model_spec} "
                         "brings its own weights")
    model = load_spec_model(model_spec, revision, quiet)
    # an image folder is read the model's way: class folders matched onto its labels (WordNet
    # ids or names; a subset is fine), its own resize, crop and interpolation
    extra = {"model": model} if data == "folder" and getattr(model, "labels", None) else {}
    train_set, val_set = load_dataset(data, tuple(model.input_shape[1:]), seed=0,
                                      **data_options, **extra)
    name = path.name if path.exists() else model_spec
    if model.num_classes != len(train_set.classes):
        raise ValueError(f"{name} has {model.num_classes} outputs but {data} has "
                         f"{len(train_set.classes)} classes")
    return model, train_set, val_set, f"{name} ({model.preset or 'saved model'})"


def load_spec_model(model_spec: str, revision: str | None = None, quiet: bool = False):
    """The model ``--model`` names when it is not a preset: a PruneLens file, a folder (a
    Hugging Face / timm model folder, or one holding a single PruneLens ``.safetensors``) or
    a hub id (downloaded, with huggingface_hub's progress bars unless ``quiet``, where
    ``HF_HUB_OFFLINE`` is not set)."""
    from .models import list_models, load_model
    from .models.hf import is_hub_id

    path = Path(model_spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: expected a model folder (config.json) or one "
                                    f".safetensors model file in it, found {len(found)}")
        path = found[0]
    if not path.exists() and not is_hub_id(model_spec):
        raise ValueError(f"unknown model {model_spec!r}: not a preset ({', '.join(list_models())})"
                         ", an existing model file or folder, or a hub id (org/name)")
    if revision is not None and path.exists():
        raise ValueError(f"--revision is for hub ids; {model_spec} is a local path")
    progress = (lambda done, total: None) if quiet else None
    return load_model(model_spec if not path.exists() else path, revision,
                      progress=progress).eval()


def check_criteria(names: Sequence[str]) -> None:
    from .pruning import list_pruners
    from .study import criterion_info

    known = list_pruners()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown criteria {unknown}; known: {', '.join(known)}")
    trained = [n for n in names if criterion_info(n).needs_training]
    if trained:
        raise ValueError(f"{trained} learn their masks during training: no one-shot sweep")
    if len(set(names)) != len(names):
        raise ValueError(f"criteria repeated: {list(names)}")


def catch_stop_signals(cancel: threading.Event, what: str = "point") -> dict:
    """First Ctrl-C / SIGTERM sets ``cancel`` (stop before the next ``what``); a second
    Ctrl-C raises KeyboardInterrupt. Returns the previous handlers for
    :func:`restore_signals` (none outside the main thread)."""
    previous = {}

    def handler(signum: int, _frame: object) -> None:
        cancel.set()
        print(f"\n{signal.Signals(signum).name}: stopping before the next {what} "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    return previous


def restore_signals(previous: dict) -> None:
    for sig, h in previous.items():
        signal.signal(sig, h)


@contextmanager
def stop_on_signals(cancel: threading.Event) -> Iterator[None]:
    """:func:`catch_stop_signals` for the block; handlers restored on exit."""
    previous = catch_stop_signals(cancel)
    try:
        yield
    finally:
        restore_signals(previous)


class _Bar:
    """tqdm fed by ``core.study``'s ``progress(fraction, text)`` callbacks."""

    def __init__(self, total: int, desc: str, enabled: bool, unit: str = "pt"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled,
                        dynamic_ncols=True)
        self.total = total

    def __call__(self, fraction: float, text: str) -> None:
        n = round(fraction * self.total)
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------- commands

def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        return _sweep(args)
    except _usage_errors() as e:
        print(f"python -m core sweep: error: {e}", file=sys.stderr)
        return EXIT_USAGE


# the options that do not change sweep.csv's numbers (the figures, the report, the display);
# every other one, a flag added later included, is a setting a --resume must repeat
NOT_SETTINGS = {"command", "func", "out", "resume", "no_progress", "grid_image", "sensitivity",
                "seeds", "seed_list", "data_opt", "device"}  # (a sweep may resume elsewhere)


def sweep_settings(args: argparse.Namespace, seeds: list[int],
                   sparsities: list[float]) -> dict:
    """What decides the numbers of ``sweep.csv``: the options, the grid of points and the
    definition of the validation subset (recorded in ``sweep.json``)."""
    from .study import VAL_DEFINITION

    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    # at their defaults these two change nothing a sweep from before them wrote: left out,
    # so such a folder still resumes
    if list(settings.get("tome_r", [0])) == [0]:
        settings.pop("tome_r", None)
    if not settings.get("latency"):
        settings.pop("latency", None)
    settings.update(seeds=seeds, sparsities=sparsities, data_options=dict(args.data_opt),
                    val_subset=VAL_DEFINITION)
    return settings


def _sweep(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from . import report, study
    from .cli_files import SweepFolder, check_out_folder
    from .train import init_distributed

    device = device_of(args)  # a device that is not there: before any other work
    seeds = list(args.seed_list) if args.seed_list else list(range(args.seeds))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeated: {seeds}")
    check_criteria(args.criteria)
    pattern = None if args.pattern == "unstructured" else args.pattern
    sparsities, criteria = _with_pattern(args, pattern)
    rs = study.check_rs(args.tome_r)
    data_options = dict(args.data_opt)
    # every rank checks before the rendezvous, so none has written anything yet
    folder = SweepFolder(check_out_folder(args.out, args.resume),
                         sweep_settings(args, seeds, sparsities), study.SWEEP_COLUMNS,
                         args.resume)
    device, rank, world = init_distributed(device)
    main = rank == 0
    try:
        model, train_set, val_set, label = resolve(args.model, args.data, data_options,
                                                   args.untrained, args.init_seed, args.revision,
                                                   args.no_progress)
        model.to(device)
        n_val = min(args.val, len(val_set))
        skip = folder.points()
        mine = [(c, s, seed)
                for seed, c, _ in study.sweep_points(criteria, seeds)[rank::world]
                for s in sparsities
                if any((c, round(s, 6), seed, r) not in skip for r in rs)]
        if main:
            folder.start()
            if skip:
                print(f"resuming: {len(skip)} points already in {folder.path / 'sweep.csv'}",
                      file=sys.stderr)
        bar = _Bar(len(mine), "sweep" if world == 1 else f"sweep rank {rank}",
                   not args.no_progress)
        cancel = threading.Event()
        with stop_on_signals(cancel):
            df = study.sweep(model, train_set, val_set, criteria, sparsities,
                             calib=args.calib, seeds=seeds, val_samples=n_val,
                             scope=args.scope, attention=not args.no_attention,
                             batch_size=args.batch_size, precision=args.precision,
                             progress=bar, cancel=cancel,
                             shard=(rank, world), skip=skip,
                             on_rows=folder.add if main else None, rs=rs,
                             latency=args.latency) if mine else None
        bar.close()
        cancelled = bool(df is not None and df.attrs.get("cancelled"))
        if world > 1:  # rank 0 wrote its own points as they came; the others' now
            parts = [None] * world if main else None
            dist.gather_object((df, cancelled), parts, dst=0)
            if main:
                for other, _ in parts[1:]:
                    if other is not None and len(other):
                        folder.add(other.to_dict("records"))
                cancelled = any(p[1] for p in parts)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if not main:
        return EXIT_CANCELLED if cancelled else EXIT_OK
    out, csv = folder.path, folder.path / "sweep.csv"
    if cancelled:
        print(f"cancelled: {len(folder.rows)} points in {csv} (no figures); the same command "
              "with --resume finishes the sweep", file=sys.stderr)
        return EXIT_CANCELLED
    order = {k: i for i, k in enumerate(
        (c, round(s, 6), seed, r) for seed in seeds for c in args.criteria for s in sparsities
        for r in rs)}
    folder.rows.sort(key=lambda r: order.get(
        (r["criterion"], round(float(r["sparsity"]), 6), int(r["seed"]), int(r["r"])),
        len(order)))
    folder.write()  # in the sweep's order: seed, criterion, sparsity, r
    df = folder.frame()
    kinds = {c: study.criterion_info(c).kind for c in args.criteria}
    grid = sens = None
    if args.grid_image >= 0 and pattern:
        print(f"note: no Fig. 3 grid in the report: the grid has no {pattern} pattern yet",
              file=sys.stderr)
    elif args.grid_image >= 0:
        fig, sim, errors = report.grid_outputs(model, train_set, val_set, args.criteria,
                                               sparsities, args.grid_image, args.calib,
                                               args.scope, seeds[0])
        grid = (fig, sim, args.grid_image)
        for crit, msg in errors.items():
            print(f"grid: {crit}: {msg}", file=sys.stderr)
    if args.sensitivity is not None:
        bar = _Bar(100, "sensitivity", not args.no_progress, "%")
        cancel = threading.Event()
        with stop_on_signals(cancel):
            sens = study.layer_sensitivity(model, train_set, val_set, args.criteria,
                                           args.sensitivity or [0.3, 0.6, 0.9],
                                           calib=args.calib, seed=seeds[0], val_samples=n_val,
                                           batch_size=args.batch_size, progress=bar,
                                           cancel=cancel)
        bar.close()
        if sens.attrs.get("cancelled"):
            print("sensitivity cancelled: no figures written", file=sys.stderr)
            return EXIT_CANCELLED
    command = report.sweep_command(args.model, args.data, args.criteria, sparsities, seeds,
                                   n_val, args.calib, args.scope, str(out), data_options,
                                   args.untrained, args.init_seed, args.revision, rs,
                                   args.latency)
    setup = {"model": label, "dataset": f"{args.data} ({len(train_set)} train / "
                                        f"{len(val_set)} validation images)",
             "validation images": study.val_subset_label(n_val, len(val_set)),
             "criteria": ", ".join(args.criteria),
             "sparsities": ", ".join(f"{s:g}" for s in sparsities),
             "calibration": f"{args.calib} images, seeds {seeds}", "scope": args.scope}
    if args.precision != "fp32":
        command += " " + shlex.join(["--precision", args.precision])
        setup["precision"] = f"{args.precision} autocast for the measurements (scoring float32)"
    if rs != [0]:
        setup["token merging (ToMe r)"] = ", ".join(map(str, rs))
    if args.latency:
        setup["latency"] = (f"median of {study.LATENCY_REPEATS} batch-1 forwards on this "
                            "machine, in the sweeping process: noisy, not comparable "
                            "across machines")
    if pattern:
        from .pruning import prunable_parameters
        from .pruning.nm import holds_pattern, parse_pattern

        m = parse_pattern(pattern)[1]
        shapes = [p.param.shape for p in prunable_parameters(model)]
        fit = sum(holds_pattern(sh, m) for sh in shapes)
        command += " " + shlex.join(["--pattern", pattern])
        setup["pattern"] = (f"{pattern} for the unstructured criteria, in the {fit} of "
                            f"{len(shapes)} prunable layers whose input size is a multiple of "
                            f"{m} (the others stay dense)")
        print(f"{pattern}: {fit} of {len(shapes)} prunable layers can hold it", file=sys.stderr)
    for name, data in report.comparison_files(df, kinds, setup, command, grid, sens).items():
        if name != "sweep.csv":  # written above, point by point
            (out / name).write_bytes(data)
    print(f"{len(df)} points → {csv}; figures and report.html in {out}")
    return EXIT_OK


def _with_pattern(args: argparse.Namespace, pattern: str | None
                  ) -> tuple[list[float], list[str] | dict[str, dict]]:
    """The sweep's sparsities and criteria (a mapping name → options with a pattern: the
    unstructured criteria get it, structured ones run at its sparsity without one)."""
    from .pruning.nm import pattern_sparsity
    from .study import criterion_info

    if not pattern:
        return list(dict.fromkeys(args.sparsities or DEFAULT_SPARSITIES)), list(args.criteria)
    fixed = round(pattern_sparsity(pattern), 6)
    given = list(dict.fromkeys(args.sparsities or (0.0, fixed)))
    wrong = [s for s in given if s != 0 and abs(s - fixed) > 1e-6]
    if wrong:
        raise ValueError(f"--pattern {pattern} fixes the sparsity at {fixed:g}; "
                         f"--sparsities may only be 0 and {fixed:g}, got "
                         f"{' '.join(f'{s:g}' for s in wrong)}")
    if args.sensitivity is not None:
        raise ValueError("--sensitivity prunes one layer at a time at its own ratios: "
                         "not with --pattern")
    structured = [c for c in args.criteria if criterion_info(c).kind != "unstructured"]
    if structured:
        print(f"note: {pattern} applies to unstructured criteria; {', '.join(structured)} "
              f"pruned at {fixed:g} without it", file=sys.stderr)
    return ([0.0 if s == 0 else fixed for s in given],
            {c: ({} if c in structured else {"pattern": pattern}) for c in args.criteria})


def cmd_grid(args: argparse.Namespace) -> int:
    from . import figures, report

    from .cli_files import check_out_folder

    from .study.evaluation import autocast

    try:
        device = device_of(args)
        check_criteria(args.criteria)
        out = check_out_folder(args.out, fresh=False)  # grid.* are replaced; checked first
        model, train_set, val_set, _ = resolve(args.model, args.data, dict(args.data_opt),
                                               args.untrained, args.init_seed, args.revision,
                                               args.no_progress)
        model.to(device)
        ratios = list(dict.fromkeys(args.ratios))
        with autocast(args.precision, device):  # (the grid's scoring runs under it too)
            fig, sim, errors = report.grid_outputs(model, train_set, val_set, args.criteria,
                                                   ratios, args.image, args.calib, args.scope,
                                                   args.seed, args.mode)
    except _usage_errors() as e:
        print(f"python -m core grid: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    out.mkdir(parents=True, exist_ok=True)
    figures.save(fig, out / "grid")
    sim.to_csv(out / "grid.csv", index=False)
    for crit, msg in errors.items():
        print(f"{crit}: {msg}", file=sys.stderr)
    print(f"grid.png, grid.svg and grid.csv in {out}")
    return EXIT_OK
