"""Running a piece of a test as an unprivileged user, so checks of file modes run in CI too, which runs as root
(root reads and writes whatever the modes say).

`as_unprivileged` forks: the child drops to `nobody` for good (groups, gid, uid), runs the function and sends its
result or exception back over a pipe. Forking keeps the product's modules loaded: a fresh interpreter started as
`nobody` could not even start here (the virtualenv's Python lives under root's 0700 home). The function must not
import anything new for the same reason. Not as root, the child simply runs it as the current user.

The files it works on must be reachable by that user: pytest's `tmp_path` sits under root's 0700 directories, so
use `unprivileged_dir` and `hand_over`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import shutil
import signal
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

NOBODY = 65534  # uid and gid of nobody/nogroup on Debian and Ubuntu
T = TypeVar("T")


def as_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def unprivileged_dir() -> Iterator[Path]:
    """A fresh directory under the system's temp dir that the unprivileged user owns; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="orchestrator-unprivileged-"))
    try:
        hand_over(path)
        yield path
    finally:
        for sub in (path, *path.rglob("*")):  # a test may leave a directory read-only
            if sub.is_dir() and not sub.is_symlink():
                sub.chmod(0o700)
        shutil.rmtree(path)


def hand_over(*paths: Path) -> None:
    """Makes the unprivileged user the owner of `paths` (and what is in them); nothing to do when not root."""
    if not as_root():
        return
    for path in paths:
        for sub in (path, *(path.rglob("*") if path.is_dir() else ())):
            os.chown(sub, NOBODY, NOBODY, follow_symlinks=False)


def as_unprivileged(fn: Callable[..., T], *args: Any, timeout_s: float = 60) -> T:
    """`fn(*args)` run by the unprivileged user in a forked child: its return value, or its exception raised here."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        status = 0
        try:
            os.close(read_end)
            try:
                if as_root():
                    os.setgroups([])
                    os.setresgid(NOBODY, NOBODY, NOBODY)
                    os.setresuid(NOBODY, NOBODY, NOBODY)
                    assert os.geteuid() == NOBODY and os.getegid() == NOBODY
                outcome: tuple[bool, Any] = (True, fn(*args))
                told = repr(outcome[1])
            except BaseException as exc:
                told = "raised as the unprivileged user:\n" + "".join(traceback.format_exception(exc))
                exc.add_note(told)
                outcome = (False, exc)
            try:
                data = pickle.dumps(outcome)
            except Exception:  # e.g. pytest's own exceptions: what they said still comes back
                data = pickle.dumps((False, AssertionError(f"not picklable, so as text: {told}")))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(data)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        chunks = []
        with os.fdopen(read_end, "rb") as pipe:
            while True:
                ready, _, _ = select.select([pipe], [], [], timeout_s)
                if not ready:
                    os.kill(pid, signal.SIGKILL)
                    raise AssertionError(f"the unprivileged child did not finish within {timeout_s} s")
                chunk = os.read(pipe.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        _, status = os.waitpid(pid, 0)
    if not chunks:
        raise AssertionError(f"the unprivileged child sent nothing back (wait status {status})")
    ok, value = pickle.loads(b"".join(chunks))
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
