"""Touching the server's disk safely: only regular files and folders are ever opened.

Opening a character device (``/dev/console``, ``/dev/pts/ptmx``), a FIFO or a socket can block
for good or change the terminal; files of kernel filesystems (``/proc``, ``/sys``, ...) can be
endless or block on read. So:

- :func:`pseudo_filesystems` lists the mounted kernel filesystems by device number (Linux's
  ``/proc/self/mountinfo``; an empty map elsewhere), so a walk can skip a whole folder from one
  ``stat``.
- :func:`open_regular` opens without blocking (``O_NONBLOCK | O_NOCTTY``), then checks with
  ``fstat`` on the open descriptor that it really is a regular file on a normal filesystem: a file
  swapped for a FIFO between the walk and the read is refused, never waited on.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

PSEUDO_FILESYSTEM_TYPES = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
    "securityfs", "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "binfmt_misc",
    "autofs", "efivarfs", "rpc_pipefs", "nsfs", "selinuxfs", "usbfs",
})
"""Kernel filesystems whose files are not data: never listed, never opened."""

_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


class NotARegularFileError(OSError):
    """A path that is a device, FIFO, socket or kernel file: not opened for reading."""


def pseudo_filesystems(mountinfo: str = "/proc/self/mountinfo") -> dict[int, str]:
    """``{st_dev: fstype}`` of the kernel filesystems mounted now (empty off Linux).

    A ``/proc/self/mountinfo`` line reads ``ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ... - FSTYPE
    SOURCE OPTIONS``; ``os.makedev(MAJOR, MINOR)`` is the ``st_dev`` of every file on it.
    """
    found: dict[int, str] = {}
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if "-" not in fields or len(fields) < 3:
            continue
        fstype = fields[fields.index("-") + 1] if fields.index("-") + 1 < len(fields) else ""
        major, _, minor = fields[2].partition(":")
        if fstype in PSEUDO_FILESYSTEM_TYPES and major.isdigit() and minor.isdigit():
            found[os.makedev(int(major), int(minor))] = fstype
    return found


def file_kind(mode: int) -> str:
    """``"file"``, ``"folder"``, ``"FIFO"``, ``"socket"``, ``"device"`` or ``"special file"``."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def open_regular(path: str | os.PathLike[str],
                 pseudo: dict[int, str] | None = None) -> BinaryIO:
    """Open ``path`` for binary reading only if it is a regular file on a normal filesystem.

    Symlinks are followed (the caller decides beforehand whether their target is acceptable).

    Args:
        pseudo: ``{st_dev: fstype}`` from :func:`pseudo_filesystems`; None reads it now.

    Raises:
        NotARegularFileError: a FIFO, socket, device, folder, or a file of a kernel filesystem.
        OSError: the usual reasons (missing, permission denied, ...).
    """
    pseudo = pseudo_filesystems() if pseudo is None else pseudo
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError(f"{os.fspath(path)} is a {file_kind(st.st_mode)}, "
                                       "not a regular file")
        if st.st_dev in pseudo:
            raise NotARegularFileError(f"{os.fspath(path)} is a {pseudo[st.st_dev]} kernel file, "
                                       "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
