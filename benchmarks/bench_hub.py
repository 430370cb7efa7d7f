"""Hub ids: how fast a hub that cannot be reached is reported, and what a download costs
next to reading the same folder from disk (same run).

Cases, each ``load_model("org/name")`` with ``HF_ENDPOINT`` at a local address:

- ``refused``: a closed port (what a machine without network, or a wrong HF_ENDPOINT, gives);
- ``hang-up``: a server that accepts and closes the connection without answering;
- ``silent``: a server that accepts and never answers (a firewall that drops packets: the
  connection waits for ``core.models.hub.TIMEOUT_S``);
- ``download``: a DeiT-tiny-sized ViT (224×224, random weights) from the test suite's hub
  mirror (tests/hub_mirror.py) into an empty cache, then ``cached`` (the same call again), then
  the baseline: ``load_model`` on the folder the repository was made from.

Target (issue #23): no network fails within 10 s. Run from the repository root:
``python benchmarks/bench_hub.py`` (about 15 s; ``python -m benchmarks.bench_hub`` runs
the checkout's ``core`` where the installed package is another one).
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from core import boot

boot.configure()
ROOT = Path(__file__).resolve().parents[1]


def _mirror_module():
    """tests/hub_mirror.py (the test suite's hub), loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hub_mirror", ROOT / "tests" / "hub_mirror.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["hub_mirror"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def timed_failure(endpoint: str, cache: Path) -> tuple[float, str]:
    from core.models import CheckpointError, load_model

    os.environ["HF_ENDPOINT"] = endpoint
    os.environ["HF_HUB_CACHE"] = str(cache)
    t0 = time.perf_counter()
    try:
        load_model("org/unreachable")
    except CheckpointError as e:
        return time.perf_counter() - t0, str(e)
    raise AssertionError("loaded from nowhere")


def server(answer: bool) -> tuple[str, socket.socket]:
    """A listener that closes each connection (``answer`` False: keeps it open, silent)."""
    sock = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def loop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if answer:
                conn.close()
            else:
                held.append(conn)

    threading.Thread(target=loop, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}", sock


def main() -> None:
    import torch

    from core.models import build_model, load_model, save_model

    Mirror = _mirror_module().Mirror

    work = Path(tempfile.mkdtemp(prefix="bench_hub_"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    rows = [("refused", *timed_failure(closed, work / "c1"))]
    for name, answer in (("hang-up", True), ("silent", False)):
        url, sock = server(answer)
        rows.append((name, *timed_failure(url, work / f"c-{name}")))
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    print(f"{'case':10} {'seconds':>8}  message (target: within 10 s)")
    for name, seconds, message in rows:
        print(f"{name:10} {seconds:8.2f}  {message[:110]}")

    torch.manual_seed(0)
    model = build_model("deit-tiny", 1000)
    folder = save_model(model, work / "deit-tiny-hf", format="hf")
    mirror = Mirror()
    mirror.add("org/deit-tiny", folder)
    os.environ["HF_ENDPOINT"] = mirror.url
    os.environ["HF_HUB_CACHE"] = str(work / "cache")
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    times = {}
    for name, call in (("download", lambda: load_model("org/deit-tiny")),
                       ("cached", lambda: load_model("org/deit-tiny")),
                       ("folder", lambda: load_model(folder))):
        t0 = time.perf_counter()
        call()
        times[name] = time.perf_counter() - t0
    mirror.close()
    print(f"\ndeit-tiny ({size:.1f} MB) from the local mirror: download {times['download']:.2f} s,"
          f" again from the cache {times['cached']:.2f} s (one listing request + HEADs), "
          f"the same folder from disk {times['folder']:.2f} s")


if __name__ == "__main__":
    main()
