"""A tar stream from a job's container (runtime/side_channel.py) into a directory, trusting nothing in it: only
regular files and directories are taken; symbolic and hard links, devices and FIFOs are refused and named;
absolute names and `..` never leave the directory; the total size is capped while reading, so an oversized stream
stops at the cap instead of filling the disk. Each file's sha256 is computed on the way.

Used for artifacts (artifacts/store.py) and saved caches (caches/store.py)."""

from __future__ import annotations

import hashlib
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

_CHUNK = 1024 * 1024


class UnpackError(Exception):
    """The stream cannot be taken: the message says why, for the job's reason."""


@dataclass(frozen=True)
class UnpackedFile:
    name: str  # relative to the workspace, '/'-separated
    size: int
    sha256: str


@dataclass
class Unpacked:
    files: list[UnpackedFile] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "<name>: <why>", for the job's log
    total: int = 0


def member_name(raw: str) -> str | None:
    """The member's name relative to the workspace, or None if it would leave it."""
    if raw.startswith("/") or "\0" in raw:
        return None
    name = posixpath.normpath(raw)
    if name == ".." or name.startswith("../"):
        return None
    return "" if name == "." else name


def unpack(archive: tarfile.TarFile, dest: Path, *, max_bytes: int, what: str) -> Unpacked:
    """Writes the archive's files under `dest` (created; must not exist). Raises UnpackError when the files exceed
    `max_bytes` or the stream is not a tar; OSError (e.g. ENOSPC) as it comes."""
    dest.mkdir(mode=0o700, parents=True)
    done = Unpacked()
    seen: set[str] = set()
    try:
        for member in archive:
            name = member_name(member.name)
            if name is None:
                done.refused.append(f"{member.name}: leaves the workspace")
                continue
            if member.isdir():
                if name:
                    _mkdirs(dest, name)
                continue
            if not member.isreg():
                kind = "a symbolic link" if member.issym() else "a hard link" if member.islnk() else "not a file"
                done.refused.append(f"{name}: {kind}")
                continue
            if done.total + member.size > max_bytes:
                raise UnpackError(
                    f"{what} exceed {max_bytes} bytes (at {name}, {done.total + member.size} bytes so far)"
                )
            if name in seen:
                done.refused.append(f"{name}: named twice in the archive")
                continue
            seen.add(name)
            source = archive.extractfile(member)
            if source is None:
                continue
            parent = posixpath.dirname(name)
            if parent:
                _mkdirs(dest, parent)
            digest = hashlib.sha256()
            path = dest / name
            mode = 0o755 if member.mode & 0o111 else 0o644
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())  # on disk before a manifest may list it
            done.files.append(UnpackedFile(name, member.size, digest.hexdigest()))
            done.total += member.size
    except tarfile.TarError as exc:
        raise UnpackError(f"{what}: the container sent no valid tar stream ({exc})") from None
    return done


def _mkdirs(dest: Path, name: str) -> None:
    """Creates dest/name's directories one by one, never through a link (the archive makes none, but be sure)."""
    current = dest
    for part in name.split("/"):
        current = current / part
        if current.is_symlink():
            raise UnpackError(f"{name}: a path component is a link")
        current.mkdir(mode=0o755, exist_ok=True)
