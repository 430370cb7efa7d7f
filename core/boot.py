"""Process-level speed settings, in one place: the dashboard server and the CLI call
:func:`configure` first thing, before torch is imported. Each setting with the measurement
that justifies it:

- ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that spin while waiting made a one-image vit-tiny
  forward 100× slower (1.3 s, not 6 ms) on a busy 2-core machine; passive waiting costs nothing
  when idle and keeps 2 threads faster than 1 for batches. Only takes effect before torch's
  OpenMP runtime starts, hence "before torch is imported".
- :func:`keep_freed_tensors_in_heap`: glibc returns large freed blocks (≥ 128 KiB, a threshold
  it raises dynamically) to the OS and faults fresh pages in for the next allocation. A forward
  that keeps its attention maps (``capture_attention``) allocates a new block per layer instead
  of reusing the freed one, and those page faults made it 1.11–1.20× a plain forward on
  vit-tiny at batch 8; with a fixed 64 MiB mmap threshold and a 256 MiB trim threshold it is
  1.02× (``benchmarks/bench_attention.py``). Costs resident memory the process already used.
- ``PRUNELENS_TORCH_THREADS``: an explicit torch thread count (e.g. 1 on a crowded machine).
- :func:`frozen_imports`: importing torch creates millions of long-lived objects; collecting
  them again and again while they are created cost a third of the dashboard's import (1.44 s →
  1.06 s with the collector off); freezing them afterwards keeps them out of later collections.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from contextlib import contextmanager
from typing import Iterator

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_configured: set[str] = set()


def keep_freed_tensors_in_heap(mmap_threshold: int = 64 << 20,
                               trim_threshold: int = 256 << 20) -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse. True if applied (glibc only)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def configure(malloc: bool = True) -> None:
    """Apply the process settings; call before importing torch. ``malloc``: also tune glibc's
    malloc (long-lived processes that keep attention maps: the dashboard, the CLI)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if malloc and "malloc" not in _configured:  # find_library runs ldconfig: once a process
        keep_freed_tensors_in_heap()
        _configured.add("malloc")


def apply_torch_threads() -> None:
    """``torch.set_num_threads($PRUNELENS_TORCH_THREADS)`` when the variable is set."""
    threads = os.environ.get("PRUNELENS_TORCH_THREADS")
    if threads:
        import torch
        torch.set_num_threads(int(threads))


# A forward of about this many multiply-accumulates or fewer runs faster on one intra-op thread
# than on two here: the second thread's wake-up and join cost more than its share of the work
# (vit-tiny, one 32×32 image: 2.7× faster on one thread; SynFlow's 100 one-image rounds 2.2×).
# deit-tiny's one 224×224 image (1.25 GMACs) is even; a 128-image vit-tiny batch is faster on two.
SMALL_WORK_MACS = 5e8


@contextmanager
def threads_for(macs: float) -> Iterator[None]:
    """During the block, one intra-op thread for the calling thread when one forward of the
    work is at most :data:`SMALL_WORK_MACS`; otherwise nothing changes. PyTorch's thread count
    is OpenMP's: in a worker thread (the dashboard's work) it is that thread's alone; in the
    process's first thread (the CLI) it is also the default of threads started meanwhile.
    MKL's own count is process-wide: other threads' matrix multiplies may run on one thread
    meanwhile, nothing worse."""
    if macs > SMALL_WORK_MACS:
        yield
        return
    with one_thread():
        yield


@contextmanager
def one_thread() -> Iterator[None]:
    """During the block, one intra-op thread for the calling thread (OpenMP's count, restored
    after; see :func:`threads_for`)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def frozen_imports() -> Iterator[None]:
    """Garbage collector off during the block (heavy imports), then the objects created so far
    frozen out of later collections and the collector back on."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
