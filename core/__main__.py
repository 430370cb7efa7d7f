"""Command line: ``python -m core <command> ...`` (also under ``torchrun ... -m core``).

Commands are argparse sub-parsers: each ``add_<command>_parser(subparsers)`` below registers
one and sets ``func``; a function returns the process exit code.

    python -m core train --model vit-tiny --data shapes --epochs 10 --out model.safetensors

Exit codes: 0 finished, 1 failed (e.g. NaN loss), 2 bad arguments (unknown model or dataset,
bad option), 130 cancelled (Ctrl-C or SIGTERM: the run stops before the next step and is
recorded as cancelled).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, fields

from . import boot

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad input from the command line: printed without a traceback, exit code 2."""


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
        description="Train a model preset on a dataset; the run, its per-epoch metrics and its "
                    "last good checkpoint go to the run store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="vit-tiny", help="model preset (core.models.list_models)")
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
    p.add_argument("--out", default=None, help="also save the trained model here (.safetensors)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from .data import load_dataset
    from .models import build_model, save_model
    from .runs import RunStore, RunStoreCallback
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
    _, rank, _ = init_distributed(device)
    main = rank == 0
    try:
        seed_everything(config.seed)
        overrides = {}
        if args.image_size is not None:
            image_size = args.image_size
            overrides["img_size"] = image_size
        else:  # the preset's input size; a 2-class probe is cheap next to training
            image_size = tuple(build_model(args.model, num_classes=2).input_shape[1:])
        train_set, val_set = load_dataset(args.data, image_size, seed=config.seed,
                                          **data_options)
        seed_everything(config.seed)
        model = build_model(args.model, num_classes=len(train_set.classes),
                            pretrained=args.pretrained, dataset=args.data, **overrides)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None

    callbacks: list = []
    store = run_id = None
    if main:
        store = RunStore(args.runs_dir)
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

    cancel = threading.Event()
    previous = _cancel_on_signals(cancel)
    try:
        result = train(model, train_set, val_set, config, callbacks=callbacks, cancel=cancel)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
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


def _cancel_on_signals(cancel: threading.Event) -> dict:
    """First Ctrl-C / SIGTERM sets ``cancel`` (clean stop, run recorded); a second Ctrl-C raises."""
    previous = {}

    def handler(signum: int, frame: object) -> None:
        cancel.set()
        print(f"\n{signal.Signals(signum).name}: stopping before the next step "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    return previous


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core",
                                     description="PruneLens: prune and inspect vision transformers")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(sub)
    from .cli_compare import add_grid_parser, add_sweep_parser
    add_sweep_parser(sub), add_grid_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    boot.configure()  # before the commands import torch
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
