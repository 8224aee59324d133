"""A commit's tree as an uncompressed tar archive, read from the mirror's objects, byte for byte.

Not `git archive`: it applies the tree's own `.gitattributes` (`export-ignore` drops files, `export-subst` rewrites
them). Not a checkout into a work tree either: that applies `eol`/`text` conversions and filters. Here every blob
is read as stored (`git cat-file --batch`) and written as a member: `./path`, regular files 0644 or 0755 as the
tree records the executable bit, symlinks with their target exactly as stored (whether a target may leave the
workspace is the extraction's decision), directories 0755, owner 0:0 without names, mtime the commit's time.
A gitlink (submodule) is an empty directory unless its commit's tree is written under it.

Paths git's fsck would refuse (empty, `.`, `..` or `.git` components) are refused here too: the fetch runs fsck,
this is the second guard, for objects that came into the mirror another way.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from orchestrator.checkout.errors import GitFailed, UnsafeTree
from orchestrator.checkout.git import GitEnv, git_process, run_git

MODE_TREE = 0o040000
MODE_LINK = 0o120000
MODE_GITLINK = 0o160000
MAX_LINK_TARGET = 4095
_FLUSH = 1024 * 1024
_RECORD = tarfile.RECORDSIZE
_COMMITTER = re.compile(rb"^committer .* (\d+) [+-]\d{4}$", re.MULTILINE)


@dataclass(frozen=True)
class TreeEntry:
    mode: int
    kind: str  # blob, tree, commit (a gitlink)
    oid: str
    size: int  # blobs only; 0 otherwise
    path: bytes  # relative to the tree's root

    @property
    def is_file(self) -> bool:
        return self.kind == "blob" and self.mode != MODE_LINK

    @property
    def is_link(self) -> bool:
        return self.kind == "blob" and self.mode == MODE_LINK


@dataclass(frozen=True)
class Member:
    """One archive member: an entry of the tree in `mirror`, at `path` in the archive (a submodule's entries are
    under the gitlink's path)."""

    mirror: Path
    entry: TreeEntry
    path: bytes


def _check_path(path: bytes, repository: str, sha: str) -> None:
    parts = path.split(b"/")
    for part in parts:
        if part in (b"", b".", b"..") or part.lower() == b".git":
            shown = path.decode("utf-8", "backslashreplace")
            raise UnsafeTree(
                f"{repository} at {sha}: the tree has the path {shown!r}, which no checkout may write (git fsck "
                "refuses it too); the commit cannot be delivered",
                repository=repository,
            )


async def list_tree(binary: str, mirror: Path, genv: GitEnv, commit: str, repository: str) -> list[TreeEntry]:
    """Every entry of the commit's tree, recursively, directories included, in git's (sorted) order."""
    result = await run_git(
        binary, [f"--git-dir={mirror}", "ls-tree", "-r", "-t", "-z", "-l", "--full-tree", commit], genv
    )
    if result.returncode != 0:
        raise GitFailed(
            f"{repository}: cannot list the tree of {commit} in the mirror {mirror}: {genv.scrub(result.text)[-300:]}",
            repository=repository,
        )
    entries = []
    for record in result.stdout.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        fields = meta.split()
        if len(fields) != 4 or not path:
            raise GitFailed(f"{repository}: unexpected ls-tree output {record[:120]!r}", repository=repository)
        mode, kind, oid, size = fields
        _check_path(path, repository, commit)
        entries.append(
            TreeEntry(
                mode=int(mode, 8),
                kind=kind.decode(),
                oid=oid.decode(),
                size=int(size) if size != b"-" else 0,
                path=path,
            )
        )
    return entries


async def commit_time(binary: str, mirror: Path, genv: GitEnv, commit: str) -> int:
    result = await run_git(binary, [f"--git-dir={mirror}", "cat-file", "commit", commit], genv)
    match = _COMMITTER.search(result.stdout)
    return int(match.group(1)) if result.returncode == 0 and match else 0


def _header(name: bytes, kind: bytes, mode: int, mtime: int, size: int = 0, linkname: bytes = b"") -> bytes:
    info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = mtime
    info.linkname = linkname.decode("utf-8", "surrogateescape")
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _Out:
    """Buffered writes to the archive file, the disk writes in a thread so the event loop never waits on them."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._buf = bytearray()
        self.size = 0

    async def write(self, data: bytes) -> None:
        self._buf += data
        self.size += len(data)
        if len(self._buf) >= _FLUSH:
            await self.flush()

    async def flush(self) -> None:
        if self._buf:
            chunk, self._buf = bytes(self._buf), bytearray()
            await asyncio.to_thread(self._file.write, chunk)


class _Blobs:
    """One `git cat-file --batch` per mirror, fed every blob id up front by a task, answers read in that order."""

    def __init__(self, proc: asyncio.subprocess.Process, oids: Sequence[str]) -> None:
        self._proc = proc
        self._feeder = asyncio.create_task(self._feed(oids))

    async def _feed(self, oids: Sequence[str]) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for start in range(0, len(oids), 512):
                stdin.write("".join(f"{oid}\n" for oid in oids[start : start + 512]).encode())
                await stdin.drain()
            stdin.close()

    async def header(self, oid: str) -> int:
        stdout = self._proc.stdout
        assert stdout is not None
        line = await stdout.readline()
        fields = line.split()
        if len(fields) != 3 or fields[0].decode() != oid or fields[1] != b"blob":
            raise GitFailed(f"the mirror cannot read blob {oid}: {line[:200]!r}")
        return int(fields[2])

    async def read(self, size: int) -> bytes:
        stdout = self._proc.stdout
        assert stdout is not None
        return await stdout.readexactly(size)

    async def close(self) -> None:
        self._feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, BrokenPipeError, ConnectionResetError):
            await self._feeder


async def write_tar(binary: str, genv: GitEnv, members: Sequence[Member], target: Path, mtime: int) -> int:
    """Writes `members` as an archive to `target` (created); returns its size in bytes."""
    by_mirror: dict[Path, list[str]] = {}
    for m in members:
        if m.entry.kind == "blob":
            by_mirror.setdefault(m.mirror, []).append(m.entry.oid)
    file = await asyncio.to_thread(target.open, "xb")
    try:
        async with contextlib.AsyncExitStack() as stack:
            blobs: dict[Path, _Blobs] = {}
            for mirror, oids in by_mirror.items():
                proc = await stack.enter_async_context(
                    git_process(binary, [f"--git-dir={mirror}", "cat-file", "--batch"], genv)
                )
                blobs[mirror] = _Blobs(proc, oids)
                stack.push_async_callback(blobs[mirror].close)
            out = _Out(file)
            for m in members:
                name = b"./" + m.path
                entry = m.entry
                if entry.kind in ("tree", "commit"):
                    await out.write(_header(name, tarfile.DIRTYPE, 0o755, mtime))
                    continue
                reader = blobs[m.mirror]
                size = await reader.header(entry.oid)
                if entry.is_link:
                    target_bytes = await reader.read(size)
                    await reader.read(1)
                    if size > MAX_LINK_TARGET or b"\0" in target_bytes:
                        raise UnsafeTree(f"the symlink {m.path!r} has an invalid target ({size} bytes)")
                    await out.write(_header(name, tarfile.SYMTYPE, 0o777, mtime, linkname=target_bytes))
                    continue
                mode = 0o755 if entry.mode & 0o111 else 0o644
                await out.write(_header(name, tarfile.REGTYPE, mode, mtime, size=size))
                left = size
                while left:
                    chunk = await reader.read(min(left, _FLUSH))
                    left -= len(chunk)
                    await out.write(chunk)
                await reader.read(1)
                if size % tarfile.BLOCKSIZE:
                    await out.write(tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))
            await out.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
            if out.size % _RECORD:
                await out.write(tarfile.NUL * (_RECORD - out.size % _RECORD))
            await out.flush()
            await asyncio.to_thread(file.flush)
            return out.size
    except asyncio.IncompleteReadError as exc:
        raise GitFailed(f"git cat-file ended early while writing the tree ({len(exc.partial)} bytes read)") from None
    finally:
        await asyncio.to_thread(file.close)
