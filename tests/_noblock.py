"""A guard for the tests of code that must never open a FIFO, socket or device blocking.

Such an open can wait forever (a FIFO without a writer, a terminal), so a test of it cannot
simply call the code and see: inside :func:`no_blocking_special_opens`, every blocking open of
something that is not a regular file or a folder (``builtins.open``, ``io.open``, ``os.open``
without ``O_NONBLOCK``) fails at once with an ``OSError`` instead of waiting, and is recorded;
leaving the block (also by an
exception) asserts that nothing was. The code under test stays free to open such a file
non-blocking and look at what it is (``core.models.checkpoint.read_json`` does).
"""
from __future__ import annotations

import builtins
import io
import os
import stat
from contextlib import contextmanager
from typing import Iterator


def _special(path: object) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return False  # a file descriptor or a file object: opened already
    try:
        mode = os.stat(path).st_mode  # through symlinks: what an open would reach
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextmanager
def no_blocking_special_opens() -> Iterator[list[str]]:
    """Yields the list of refused opens (empty when the block is left without an error)."""
    refused: list[str] = []
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def refuse(path: object) -> OSError:
        refused.append(os.fsdecode(path))
        return OSError(f"test guard: blocking open of the special file {path!s} refused")

    def guarded_open(file, *args, **kwargs):
        if _special(file):
            raise refuse(file)
        return real_open(file, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if not flags & getattr(os, "O_NONBLOCK", 0) and _special(path):
            raise refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    try:
        yield refused
    finally:
        builtins.open, io.open, os.open = real_open, real_io_open, real_os_open
        # also when the block raised: the code may have turned the refusal into its own error
        assert not refused, f"opened blocking (would wait forever on a FIFO): {refused}"
