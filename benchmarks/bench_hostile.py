"""Hostile inputs, one subprocess each: outcome, wall time and peak memory against the targets.

Target (the hardening issue): every hostile input answers within 5 s with a peak memory of at
most 2 x what its file implies + 200 MB. "Peak" is how far the child's resident set rose above
its level just before the case (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``), so the interpreter and torch (loaded before) do not count; the
child's whole ``ru_maxrss`` is printed too. "Implies" is the bytes the case hands over (the file's
size; the decoded size where decoding is the expected outcome), stated per case.

Each case is a :class:`Case`: ``prepare(workdir)`` builds its input (not timed) and returns the
implied bytes, ``run(workdir)`` is timed and returns the outcome text. Add a case by appending
to ``CASES`` (the callables must be module-level: the child looks them up by name).

Run from the repository root:  python benchmarks/bench_hostile.py [--only NAME ...]
[--timeout 60] (per case, preparation not counted). About two minutes, most of it building
the inputs (the huge PNGs, 2000 images).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


TARGET_SECONDS = 5.0
TARGET_FIXED_MB = 200


@dataclass(frozen=True)
class Case:
    """One hostile input: ``prepare(workdir) -> implied bytes``, ``run(workdir) -> outcome``."""

    name: str
    prepare: Callable[[Path], int]
    run: Callable[[Path], str]
    hostile: bool = True  # False: a cost figure, not held to the targets


# --------------------------------------------------------------------------- inputs

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG: a few hundred KB that decode to ``width * height * 3`` bytes."""
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body)
            + _chunk(b"IEND", b""))


def _small_images(folder: Path, count: int, side: int = 32, seed: int = 0) -> int:
    """``count`` smooth random images, half PNG and half JPEG, in two classes; bytes written."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = 0
    for i in range(count):
        walk = np.cumsum(rng.normal(0, 3, (side, side, 3)), axis=1) + 128
        arr = np.clip(walk, 0, 255).astype(np.uint8)
        path = folder / ("a" if i % 2 else "b") / (f"{i}.png" if i % 4 < 2 else f"{i}.jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, quality=90)
        written += path.stat().st_size
    return written


def _scan(root: str | Path, **options) -> str:
    from core.data import scan_folder

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples, classes = scan_folder(root, **options)
    note = f"; warning: {str(caught[0].message)[:90]}..." if caught else ""
    return f"{len(samples)} images, classes {classes}{note}"


def _nothing(workdir: Path) -> int:
    return 0


# --------------------------------------------------------------------------- cases

def prepare_roots(workdir: Path) -> int:
    (workdir / "data" / "plants").mkdir(parents=True)
    (workdir / "data" / "escape").symlink_to("/etc")
    return 0


def run_roots(workdir: Path) -> str:
    """The dashboard's policy on /etc, /root, /nonexistent, ../.., a symlink out: one answer."""
    from core.data.roots import DataPathError, resolve_under_roots

    answers = set()
    for text in ("/etc", "/root", "/nonexistent", "../..", "escape", "/proc/self", "/dev"):
        try:
            resolve_under_roots(text, roots=[workdir / "data"])
            answers.add("ACCEPTED " + text)
        except DataPathError as e:
            answers.add(str(e))
    return f"{len(answers)} distinct answer(s) for 7 paths: {sorted(answers)[0][:70]}..."


def run_etc(workdir: Path) -> str:
    return _scan("/etc")


def run_parent_parent(workdir: Path) -> str:
    os.chdir(workdir)
    return _scan("../..")


def run_dev(workdir: Path) -> str:
    return _scan("/dev")


def run_slash(workdir: Path) -> str:
    return _scan("/")


def run_proc_self(workdir: Path) -> str:
    return _scan("/proc/self")


def prepare_upload_13000(workdir: Path) -> int:
    data = huge_png(13000, 13000)
    (workdir / "upload.png").write_bytes(data)
    return len(data)


def _decode_upload(workdir: Path, name: str) -> str:
    """What the dashboard does with an uploaded picture's bytes."""
    from core.data.images import decode_image

    data = (workdir / name).read_bytes()
    try:
        image = decode_image(data, size=(224, 224))
    except ValueError as e:
        return f"{type(e).__name__}: {e} ({len(data) / 1e3:.0f} KB file)"
    return f"decoded {tuple(image.shape)}"


def run_upload_13000(workdir: Path) -> str:
    return _decode_upload(workdir, "upload.png")


def prepare_folder_144mp(workdir: Path) -> int:
    _small_images(workdir / "f", 8)
    data = huge_png(12000, 12000)
    (workdir / "f" / "a" / "huge.png").write_bytes(data)
    return sum(p.stat().st_size for p in (workdir / "f").rglob("*") if p.is_file())


def run_folder(workdir: Path) -> str:
    return _scan(workdir / "f")


def prepare_truncated_jpeg(workdir: Path) -> int:
    _small_images(workdir / "f", 8)
    good = next((workdir / "f" / "b").glob("*.jpg")).read_bytes()
    (workdir / "f" / "b" / "cut.jpg").write_bytes(good[: len(good) * 2 // 3])
    return sum(p.stat().st_size for p in (workdir / "f").rglob("*") if p.is_file())


def run_truncated_jpeg(workdir: Path) -> str:
    """Scan, then decode every sample as training would."""
    from core.data import load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, val = load_dataset("folder", 32, root=workdir / "f")
    for ds in (train, val):
        for i in range(len(ds)):
            ds[i]
    return (f"{len(train) + len(val)} images, all decode; warning: "
            f"{str(caught[0].message).split(': ', 1)[1][:80]}...")


def prepare_png16(workdir: Path) -> int:
    import numpy as np
    from PIL import Image

    grey = np.full((64, 64), 30000, dtype=np.uint16)
    Image.fromarray(grey).save(workdir / "grey16.png")
    return (workdir / "grey16.png").stat().st_size


def run_png16(workdir: Path) -> str:
    from core.data.images import decode_image

    image = decode_image((workdir / "grey16.png").read_bytes())
    return (f"mean {image.mean().item():.4f} (30000/65535 = {30000 / 65535:.4f}; "
            "clipped to 8 bits it was 1.0)")


def prepare_specials(workdir: Path) -> int:
    written = _small_images(workdir / "f", 8)
    os.mkfifo(workdir / "f" / "a" / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(workdir / "f" / "b" / "sock.png"))  # the file stays after the socket closes
    sock.close()
    (workdir / "f" / "a" / "console.png").symlink_to("/dev/console")
    (workdir / "f" / "b" / "loop").symlink_to(workdir / "f")
    return written


def run_not_an_image(workdir: Path) -> str:
    from core.data.images import decode_image

    try:
        decode_image(b"%PDF-1.4\n" + bytes(5000))
    except ValueError as e:
        return f"{type(e).__name__}: {e}"
    return "decoded?!"


def prepare_2000(workdir: Path) -> int:
    return _small_images(workdir / "f", 2000, side=256)


def run_2000(workdir: Path) -> str:
    """The scan's cost on 2000 images of 256x256, against the old verify()-only check."""
    from PIL import Image

    paths = sorted(str(p) for p in (workdir / "f").rglob("*") if p.is_file())
    start = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            im.verify()
    verify_only = time.perf_counter() - start
    start = time.perf_counter()
    outcome = _scan(workdir / "f")
    scan = time.perf_counter() - start
    return f"{outcome}; scan {scan:.2f} s, verify() alone {verify_only:.2f} s"


# --------------------------------------------------------------------------- dashboard cases
# What the dashboard adds around the core: per-session uploads under a cap, scans run in a
# worker thread that the page cancels, model sources (folders, hub ids) under the same roots.
# The dashboard's modules are imported while preparing, so their import is not counted.

def prepare_upload_cap(workdir: Path) -> int:
    from dashboard.state import uploads  # noqa: F401

    return 5 * 2**20


def run_upload_cap(workdir: Path) -> str:
    """Eleven sessions upload 5 MB of junk each into a 50 MB cap."""
    from dashboard.state.uploads import SessionUploads, UploadsFullError

    store = SessionUploads(workdir / "uploads", cap_bytes=50 * 2**20)
    junk = os.urandom(5 * 2**20)
    for i in range(11):
        try:
            store.save(f"session{i}", "model", "junk.safetensors", junk[:-1] + bytes([i]))
        except UploadsFullError as e:
            kept = store.total_bytes() / 2**20
            return f"upload {i + 1} refused: {str(e)[:80]}...; {kept:.0f} MB kept"
    return f"all 11 kept?! {store.total_bytes() / 2**20:.0f} MB"


def prepare_scan_cancel(workdir: Path) -> int:
    from dashboard.state import folders  # noqa: F401

    written = _small_images(workdir / "data" / "big", 200, side=16)
    for c in ("a", "b"):  # 6000 more files: copies, the scan checks each
        one = next((workdir / "data" / "big" / c).glob("*.png")).read_bytes()
        for i in range(3000):
            (workdir / "data" / "big" / c / f"copy{i}.png").write_bytes(one)
    os.environ["PRUNELENS_DATA_ROOTS"] = str(workdir / "data")
    return written + 6000 * len(one)


def run_scan_cancel(workdir: Path) -> str:
    """The page's Cancel button during a scan of 6200 images: how long until the scan stops."""
    from dashboard.state import folders
    from dashboard.state.keys import DataKey

    scan = folders.Scan(DataKey("folder", str(workdir / "data" / "big"), (32, 32)), "session")
    worker = threading.Thread(target=folders._run, args=(scan,))
    worker.start()
    time.sleep(1.0)
    start = time.perf_counter()
    scan.cancel.set()
    scan.done.wait()
    return f"stopped {time.perf_counter() - start:.3f} s after cancel: {scan.error}"


def prepare_model_sources(workdir: Path) -> int:
    from dashboard.state import folders  # noqa: F401

    (workdir / "data").mkdir()
    (workdir / "data" / "link").symlink_to("/usr")
    os.environ["PRUNELENS_DATA_ROOTS"] = str(workdir / "data")
    os.environ["HF_HUB_CACHE"] = str(workdir / "hub")
    return 0


def run_model_sources(workdir: Path) -> str:
    """Model sources a browser user may type: outside the roots, a link out, a hub id the
    cache does not hold."""
    from core.data import DataPathError
    from dashboard.state.folders import resolve_model

    answers = set()
    for text in ("/etc", "link", "../..", "hub:google/vit-base-patch16-224", "hub:../../etc"):
        try:
            resolve_model(text)
            answers.add("ACCEPTED " + text)
        except DataPathError as e:
            answers.add(str(e))
    return f"{len(answers)} distinct answer(s) for 5 sources: {sorted(answers)[0][:70]}..."


def prepare_pt_broadcast(workdir: Path) -> int:
    import torch

    from dashboard.state import data  # noqa: F401  (imported before the timed part)

    torch.save({"head.weight": torch.zeros(1).expand(60000, 60000)}, workdir / "s.pt")
    return (workdir / "s.pt").stat().st_size


def _accept_upload(workdir: Path, name: str) -> str:
    from dashboard.state.data import accept_model_upload

    data = (workdir / name).read_bytes()
    try:
        accept_model_upload(name, data)
    except ValueError as e:
        return f"{type(e).__name__}: {str(e)[:110]} ({len(data) / 1e3:.0f} KB file)"
    return "ACCEPTED"


def run_pt_broadcast(workdir: Path) -> str:
    return _accept_upload(workdir, "s.pt")


def prepare_pt_zip_bomb(workdir: Path) -> int:
    """A torch zip whose tensor record is DEFLATE-compressed: 1 MB that unpacks to 1 GB."""
    import io
    import zipfile

    import torch

    from dashboard.state import data  # noqa: F401  (imported before the timed part)

    plain = io.BytesIO()
    torch.save({"head.weight": torch.zeros(4)}, plain)
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(workdir / "bomb.pt", "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith("data/0"):
                zi = zipfile.ZipInfo(info.filename)
                zi.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(zi, "w", force_zip64=True) as w:
                    for _ in range(64):
                        w.write(b"\0" * (16 * 2**20))
            else:
                zout.writestr(info, zin.read(info.filename))
    return (workdir / "bomb.pt").stat().st_size


def run_pt_zip_bomb(workdir: Path) -> str:
    return _accept_upload(workdir, "bomb.pt")


def prepare_jpeg_scans(workdir: Path) -> int:
    """A 36 MP progressive JPEG whose smallest scan is repeated 20,000 times (~0.6 MB): libjpeg
    decodes every scan over the whole image."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    starts = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xff\xda"]
    ends = starts[1:] + [data.rindex(b"\xff\xd9")]
    smallest = min((data[a:b] for a, b in zip(starts, ends)), key=len)
    bomb = data[:-2] + smallest * 20_000 + b"\xff\xd9"
    (workdir / "scans.jpg").write_bytes(bomb)
    return len(bomb)


def run_jpeg_scans(workdir: Path) -> str:
    return _decode_upload(workdir, "scans.jpg")


def prepare_ico_bomb(workdir: Path) -> int:
    """An ICO whose directory says 16x16 but whose entry is a 13000x13000 PNG."""
    png = huge_png(13000, 13000)
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 6 + 16)
    data = struct.pack("<HHH", 0, 1, 1) + entry + png
    (workdir / "icon.png").write_bytes(data)
    return len(data)


def run_ico_bomb(workdir: Path) -> str:
    return _decode_upload(workdir, "icon.png")


def prepare_hf_layers(workdir: Path) -> int:
    folder = workdir / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "vit", "architectures": ["ViTForImageClassification"],
        "hidden_size": 192, "num_hidden_layers": 10**8, "num_attention_heads": 3,
        "intermediate_size": 768, "image_size": 224, "patch_size": 16, "num_channels": 3}))
    return (folder / "config.json").stat().st_size


def run_hf_layers(workdir: Path) -> str:
    from core.models import CheckpointError, load_model

    try:
        load_model(workdir / "hf")
    except CheckpointError as e:
        return f"CheckpointError: {str(e)[:120]}"
    return "ACCEPTED"


def prepare_declared_2048(workdir: Path) -> int:
    """The PruneLens file of issue #21: 420 KB whose tensors fit its metadata, which declares
    2048x2048 inputs in 64-pixel patches, width 8 (the dashboard grew past 7.7 GB generating
    its dataset at that size; the sweep asked for 70 GiB)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from core.models import build_model, save_model
    from dashboard.state import data  # noqa: F401  (imported before the timed part)

    small = save_model(build_model("vit-tiny", 6, img_size=128, patch_size=4, embed_dim=8,
                                   num_heads=2, depth=1), workdir / "small.safetensors")
    sd = load_file(str(small))
    with safe_open(str(small), "pt") as f:
        meta = f.metadata()
    sd["patch_embed.proj.weight"] = torch.zeros(8, 3, 64, 64)
    config = json.loads(meta["prunelens_config"])
    config.update(img_size=[2048, 2048], patch_size=64)
    save_file(sd, str(workdir / "declared.safetensors"),
              metadata={**meta, "prunelens_config": json.dumps(config)})
    return (workdir / "declared.safetensors").stat().st_size


def run_declared_2048_upload(workdir: Path) -> str:
    return _accept_upload(workdir, "declared.safetensors")


def run_declared_2048_sweep(workdir: Path) -> str:
    """What ``python -m core sweep --model`` does first: the model, then its dataset."""
    from core.cli_compare import resolve
    from core.models import CheckpointError

    try:
        resolve(str(workdir / "declared.safetensors"), "shapes", {})
    except (CheckpointError, ValueError) as e:
        return f"{type(e).__name__}: {str(e)[:120]}"
    return "ACCEPTED"


def run_shapes_2048(workdir: Path) -> str:
    """The dataset the sweep made for that file before: shapes at 2048x2048 (70 GiB)."""
    from core.data import load_dataset

    try:
        load_dataset("shapes", 2048)
    except ValueError as e:
        return f"{type(e).__name__}: {str(e)[:120]}"
    return "ACCEPTED"


CASES: list[Case] = [
    Case("dashboard paths /etc /root ../.. link-out", prepare_roots, run_roots),
    Case("folder root /etc (API)", _nothing, run_etc),
    Case("folder root ../.. (API, from a tmp dir)", _nothing, run_parent_parent),
    Case("folder root /dev", _nothing, run_dev),
    Case("folder root /", _nothing, run_slash),
    Case("folder root /proc/self", _nothing, run_proc_self),
    Case("upload 13000x13000 PNG", prepare_upload_13000, run_upload_13000),
    Case("folder with a 144 MP PNG", prepare_folder_144mp, run_folder),
    Case("folder with a truncated JPEG", prepare_truncated_jpeg, run_truncated_jpeg),
    Case("16-bit PNG upload", prepare_png16, run_png16),
    Case("folder with FIFO, socket, /dev/console link, loop", prepare_specials, run_folder),
    Case("upload that is not an image", _nothing, run_not_an_image),
    Case("scan 2000 images 256x256 (cost, no target)", prepare_2000, run_2000, hostile=False),
    Case("dashboard: 11 uploads of 5 MB junk, 50 MB cap", prepare_upload_cap, run_upload_cap),
    Case("dashboard: scan of 6200 images cancelled", prepare_scan_cancel, run_scan_cancel),
    Case("dashboard: model sources outside the roots, hub", prepare_model_sources,
         run_model_sources),
    Case("upload 1 kB .pt of a 60000x60000 broadcast view", prepare_pt_broadcast,
         run_pt_broadcast),
    Case("upload .pt zip bomb (1 MB -> 1 GB)", prepare_pt_zip_bomb, run_pt_zip_bomb),
    Case("upload 36 MP JPEG of 20,000 scans", prepare_jpeg_scans, run_jpeg_scans),
    Case("upload ICO holding a 13000x13000 PNG", prepare_ico_bomb, run_ico_bomb),
    Case("HF config.json with 10^8 layers", prepare_hf_layers, run_hf_layers),
    Case("upload 420 KB PruneLens file declaring 2048x2048", prepare_declared_2048,
         run_declared_2048_upload),
    Case("sweep --model on that file (model, then dataset)", prepare_declared_2048,
         run_declared_2048_sweep),
    Case("shapes dataset at 2048x2048 (7200 images, 70 GiB)", _nothing, run_shapes_2048),
]


# --------------------------------------------------------------------------- harness

def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def child(name: str, workdir: Path) -> None:
    """Run case ``name`` in this (fresh) process and print one JSON line."""
    import torch  # noqa: F401  (loaded before the baseline, as in the dashboard and the CLI)

    import core.data  # noqa: F401

    case = next(c for c in CASES if c.name == name)
    implied = case.prepare(workdir)
    print("prepared", flush=True)  # the parent's timeout starts now
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        baseline = _status_bytes("VmRSS:")
    except OSError:
        baseline = None
    start = time.perf_counter()
    try:
        outcome = case.run(workdir)
    except Exception as e:  # the outcome of a hostile input may well be an error: report it
        outcome = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM:")
    grew = None if baseline is None or peak is None else peak - baseline
    print(json.dumps({"outcome": outcome, "seconds": seconds, "grew": grew, "implied": implied,
                      "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def _run_child(name: str, workdir: str, timeout: float) -> dict:
    """Run case ``name`` in a fresh interpreter; its timeout starts once the input is ready."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", name, workdir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()  # "prepared" (or nothing, if preparing failed)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait()
    finally:
        timer.cancel()
    if proc.returncode == -9:
        return {"outcome": f"HANG: no answer within {timeout:g} s", "seconds": timeout,
                "grew": None, "implied": 0, "maxrss": 0}
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"outcome": "CRASH: " + err.strip()[-300:], "seconds": 0, "grew": None,
                "implied": 0, "maxrss": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="case names (substrings) to run")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return

    cases = [c for c in CASES if not args.only or any(o in c.name for o in args.only)]
    print(f"target: <= {TARGET_SECONDS:g} s and peak <= 2 x implied + {TARGET_FIXED_MB} MB\n")
    header = f"{'case':<50} {'time s':>7} {'peak MB':>8} {'limit MB':>9} {'rss MB':>7}  ok"
    print(header)
    print("-" * len(header))
    outcomes = []
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            result = _run_child(case.name, tmp, args.timeout)
        limit = 2 * result["implied"] + TARGET_FIXED_MB * 2**20
        grew = result["grew"]
        ok = result["seconds"] <= TARGET_SECONDS and grew is not None and grew <= limit \
            and not result["outcome"].startswith(("HANG", "CRASH"))
        verdict = ("yes" if ok else "NO") if case.hostile else "-"
        grew_text = "?" if grew is None else f"{grew / 2**20:.1f}"
        print(f"{case.name:<50} {result['seconds']:>7.2f} {grew_text:>8} "
              f"{limit / 2**20:>9.0f} {result['maxrss'] / 2**20:>7.0f}  {verdict}",
              flush=True)
        outcomes.append((case.name, result["outcome"]))
    print("\noutcomes:")
    for name, outcome in outcomes:
        print(f"- {name}: {outcome}")


if __name__ == "__main__":
    main()
