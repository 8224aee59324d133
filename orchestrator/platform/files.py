"""Atomic file replacement: readers see the old file or the new one, never half of one, and the new file never
exists with looser permissions than asked for; and the directory fsync that makes a rename durable."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

T = TypeVar("T")


def write_atomic(path: Path, data: bytes, *, mode: int, tmp_suffix: str = ".tmp") -> None:
    """Temp file created with `mode`, fsync, rename over `path`, fsync the directory."""
    write_atomic_with(path, lambda stream: stream.write(data), mode=mode, tmp_suffix=tmp_suffix)


def write_atomic_with(path: Path, fill: Callable[[BinaryIO], T], *, mode: int, tmp_suffix: str = ".tmp") -> T:
    """`write_atomic` for content written as a stream (`fill` writes it, e.g. a copy too big for memory): the
    same temp file, fsync, rename and directory fsync. Returns what `fill` returns."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}{tmp_suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), mode)  # the umask may have narrowed or the caller may want wider (e.g. 0644)
            result = fill(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return result


def fsync_dir(directory: Path) -> None:
    """A created, renamed or removed entry reaches the disk only when its directory is fsynced: without it a
    power loss can undo the rename (or lose a new file whole) even though the file itself was synced."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
