"""Command line: ``python -m core <command> ...`` (also under ``torchrun ... -m core``).

Commands are argparse sub-parsers: each ``add_<command>_parser(subparsers)`` below registers
one and sets ``func``; a function returns the process exit code.

    python -m core train --model vit-tiny --data shapes --epochs 10 --out model.safetensors

Exit codes: 0 finished, 1 failed (e.g. NaN loss), 2 bad arguments (unknown model or dataset,
bad option, a ``--runs-dir`` or ``--out`` that cannot be written, an ``--out`` that exists
already or lies on a kernel filesystem such as ``/proc``: all checked before training starts,
each reported as a usage line ``prunelens train: error: ...``, never a traceback), 130
cancelled (Ctrl-C or SIGTERM: a folder scan stops at once; a run stops before the next step and
is recorded as cancelled).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, fields

from . import boot

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad input from the command line: printed without a traceback, exit code 2."""


def check_output_file(text: str) -> None:
    """Raise :class:`UsageError` unless ``--out`` names a ``.safetensors`` file that can be
    written and does not exist yet (:func:`core.cli_files.check_out_file`), before any work."""
    from .cli_files import check_out_file

    try:
        check_out_file(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_runs_dir(runs_dir: str | None) -> None:
    """Refuse a ``--runs-dir`` that cannot be a folder, before any work and without creating it
    (the store itself is opened, and created, only once the data and model are ready)."""
    from .runs import default_root

    path = os.path.abspath(runs_dir if runs_dir is not None else default_root())
    where = runs_dir if runs_dir is not None else f"(default {path})"
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError(f"--runs-dir {where}: the run store folder is a file")
    parent = path
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"--runs-dir {where}: {parent} is a file, not a folder")


def _open_store(runs_dir: str | None):
    """The run store of ``--runs-dir``; its problems as :class:`UsageError`."""
    from .runs import RunStore, RunStoreError

    try:
        return RunStore(runs_dir)
    except (OSError, RunStoreError) as e:
        where = runs_dir if runs_dir is not None else "(default)"
        text = str(e) if e.strerror is None else f"{e.strerror}: {e.filename}"
        raise UsageError(f"--runs-dir {where}: {text}") from None


def _data_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, booleans, lists
    except json.JSONDecodeError:
        return key, value  # plain strings, e.g. a folder path


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    from .train import PRECISIONS, TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    p = subparsers.add_parser(
        "train", help="train a model on a dataset and record the run",
        description="Train a model preset (or a model file, folder or hub id: further) on a "
                    "dataset; the run, its per-epoch metrics and its last good checkpoint go "
                    "to the run store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="vit-tiny",
                   help="model preset (core.models.list_models), a PruneLens model file, a "
                        "Hugging Face / timm model folder, or a Hugging Face hub id (org/name: "
                        "downloaded into the Hugging Face cache); a model that is not a preset "
                        "is fine-tuned as it is (its classes must match the data's)")
    p.add_argument("--revision", default=None,
                   help="branch, tag or commit of a hub id (default: its main branch)")
    p.add_argument("--data", default="shapes", help="dataset (core.data.list_datasets)")
    p.add_argument("--data-opt", action="append", type=_data_option, default=[],
                   metavar="KEY=VALUE",
                   help="dataset option, repeatable (e.g. root=/images, num_train=600)")
    p.add_argument("--image-size", type=int, default=None,
                   help="image side; default: the model preset's input size")
    p.add_argument("--pretrained", action="store_true",
                   help="start from the shipped checkpoint of the preset on --data")
    p.add_argument("--epochs", type=int, default=defaults["epochs"], help="passes over the data")
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"],
                   help="global batch size (split over torchrun processes)")
    p.add_argument("--lr", type=float, default=defaults["lr"], help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=defaults["weight_decay"],
                   help="AdamW decay of weight matrices (not biases, norms)")
    p.add_argument("--warmup-frac", type=float, default=defaults["warmup_frac"],
                   help="share of the steps in linear warmup, then cosine decay")
    p.add_argument("--label-smoothing", type=float, default=defaults["label_smoothing"],
                   help="cross-entropy label smoothing")
    p.add_argument("--grad-clip", type=float, default=defaults["grad_clip"],
                   help="clip the global gradient norm to this")
    p.add_argument("--max-steps", type=int, default=defaults["max_steps"],
                   help="stop after this many optimizer steps")
    p.add_argument("--seed", type=int, default=defaults["seed"],
                   help="seeds the data, the initial weights and the data order")
    p.add_argument("--device", default=defaults["device"], help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--num-workers", type=int, default=defaults["num_workers"],
                   help="DataLoader worker processes")
    p.add_argument("--precision", default=defaults["precision"], choices=PRECISIONS,
                   help="bf16 autocast for forward/loss; auto: where the hardware has it")
    p.add_argument("--runs-dir", default=None,
                   help="run store folder; default $PRUNELENS_RUNS_DIR or ./runs")
    p.add_argument("--name", default=None, help="a label for the run in the store")
    p.add_argument("--out", default=None,
                   help="also save the trained model here: a new .safetensors file (checked "
                        "before training; nothing is overwritten)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from .data import ScanCancelled
    from .models import list_models, save_model
    from .runs import RunStoreCallback
    from .train import (TqdmProgress, TrainConfig, init_distributed, resolve_device,
                        seed_everything, train)

    try:
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, warmup_frac=args.warmup_frac,
            label_smoothing=args.label_smoothing, grad_clip=args.grad_clip, seed=args.seed,
            device=args.device, num_workers=args.num_workers, max_steps=args.max_steps,
            precision=args.precision)
        device = resolve_device(config.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    data_options = dict(args.data_opt)
    if args.out:
        check_output_file(args.out)
    _, rank, _ = init_distributed(device)
    main = rank == 0
    if main:
        _check_runs_dir(args.runs_dir)
    cancel = threading.Event()
    from .cli_compare import catch_stop_signals, restore_signals

    previous = catch_stop_signals(cancel, what="step")
    if args.data == "folder":  # Ctrl-C stops a long folder scan at once
        data_options.setdefault("cancel", cancel)
    try:
        seed_everything(config.seed)
        if args.model in list_models():
            model, train_set, val_set, image_size = _preset(args, config.seed, data_options)
        else:
            model, train_set, val_set, image_size = _loaded(args, config.seed, data_options)
    except ScanCancelled as e:
        restore_signals(previous)
        print(f"cancelled: {e}", file=sys.stderr)
        return EXIT_CANCELLED
    except (ValueError, TypeError, OSError) as e:
        restore_signals(previous)
        raise UsageError(str(e)) from None
    data_options.pop("cancel", None)
    if cancel.is_set():  # Ctrl-C while the data or the model was being prepared
        restore_signals(previous)
        print("cancelled before training started", file=sys.stderr)
        return EXIT_CANCELLED

    callbacks: list = []
    store = run_id = None
    if main:
        try:
            store = _open_store(args.runs_dir)
        except UsageError:
            restore_signals(previous)
            raise
        run_id = store.create_run(
            model=args.model, dataset=args.data, pruner=None, sparsity=None, name=args.name,
            config={**asdict(config), "image_size": image_size, "data_options": data_options,
                    "pretrained": args.pretrained, "num_classes": len(train_set.classes)})
        callbacks.append(RunStoreCallback(store, run_id, model))
        if not args.no_progress:
            callbacks.append(TqdmProgress())
        print(f"run {run_id}: {args.model} on {args.data} ({len(train_set)} train / "
              f"{len(val_set)} val images, {len(train_set.classes)} classes, image "
              f"{image_size}), store {store.root}", flush=True)

    try:
        result = train(model, train_set, val_set, config, callbacks=callbacks, cancel=cancel)
    finally:
        restore_signals(previous)
        if dist.is_initialized():
            dist.destroy_process_group()

    if main:
        line = f"{result.status} after {result.steps} steps in {result.seconds:.1f} s"
        if result.reason:
            line += f": {result.reason}"
        print(line)
        if result.final is not None:
            f = result.final
            print(f"epoch {f['epoch']}: val_acc {f['val_acc']:.4f}  val_f1 {f['val_f1']:.4f}  "
                  f"val_loss {f['val_loss']:.4f}  train_acc {f['train_acc']:.4f}  "
                  f"train_loss {f['train_loss']:.4f}")
            ckpt = store.checkpoint_path(run_id)
            if ckpt.exists():
                print(f"checkpoint (last good epoch): {ckpt}")
        if args.out and result.status == "failed":
            print("--out not written: the run failed (the last good epoch, if any, is in the "
                  "store)", file=sys.stderr)
        elif args.out:
            print(f"model saved to {save_model(model, args.out)}")
    return {"finished": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(result.status, EXIT_FAILED)


def _preset(args: argparse.Namespace, seed: int, data_options: dict) -> tuple:
    """(model, train set, val set, image size) for ``--model`` a preset."""
    from .data import load_dataset
    from .models import build_model
    from .train import seed_everything

    if args.revision is not None:
        raise ValueError(f"--revision is for hub ids; {args.model} is a preset")
    overrides = {}
    if args.image_size is not None:
        image_size = args.image_size
        overrides["img_size"] = image_size
    else:  # the preset's input size; a 2-class probe is cheap next to training
        image_size = tuple(build_model(args.model, num_classes=2).input_shape[1:])
    train_set, val_set = load_dataset(args.data, image_size, seed=seed, **data_options)
    seed_everything(seed)
    model = build_model(args.model, num_classes=len(train_set.classes),
                        pretrained=args.pretrained, dataset=args.data, **overrides)
    return model, train_set, val_set, image_size


def _loaded(args: argparse.Namespace, seed: int, data_options: dict) -> tuple:
    """(model, train set, val set, image size) for ``--model`` a file, folder or hub id: the
    data at the model's input size and with its number of classes."""
    from .cli_compare import load_spec_model
    from .data import load_dataset
    from .pruning import restore_masks

    for flag, given in (("--pretrained", args.pretrained),
                        ("--image-size", args.image_size is not None)):
        if given:
            raise ValueError(f"{flag} is for presets; {args.model} is loaded as it is")
    model = restore_masks(load_spec_model(args.model, args.revision, args.no_progress))
    image_size = tuple(model.input_shape[1:])  # (a pruned file's zeros stay pruned in training)
    train_set, val_set = load_dataset(args.data, image_size, seed=seed, **data_options)
    if model.num_classes != len(train_set.classes):
        raise ValueError(f"{args.model} has {model.num_classes} outputs but {args.data} has "
                         f"{len(train_set.classes)} classes")
    return model, train_set, val_set, image_size


def _prog() -> str:
    """``prunelens`` under the console script, ``python -m core`` otherwise."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "prunelens" if name.startswith("prunelens") else "python -m core"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(),
                                     description="PruneLens: prune and inspect vision transformers")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(sub)
    from .cli_compare import add_grid_parser, add_sweep_parser
    add_sweep_parser(sub), add_grid_parser(sub)
    from .cli_diff import add_diff_parser
    add_diff_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Argument errors argparse finds itself exit through ``SystemExit(2)`` as usual; the ones
    found later (unknown model, unreadable folder, unwritable ``--out`` ...) print the same
    usage line and ``<prog> <command>: error: <message>`` and return 2.
    """
    boot.configure()  # before the commands import torch
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        sub = _subparser(parser, args.command)
        sub.print_usage(sys.stderr)
        print(f"{sub.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the handlers were installed
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._subparsers._group_actions:  # noqa: SLF001 (argparse has no getter)
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


if __name__ == "__main__":
    sys.exit(main())
