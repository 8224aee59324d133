"""Job caches: workspace paths saved as a tar after a job's success and unpacked into the next job's workspace
before its commands. Kept under the data dir as `caches/<repository digest>/<ref digest>/<key>.tar`, so:

* never shared across repositories (the repository is part of the path);
* a job reads its own ref's entry, else the first of `fallback_refs` (the default branch) that has one, and
  writes only its own ref's: an untrusted branch cannot poison the cache the default branch or another branch
  reads;
* least recently used entries are evicted once all caches together exceed `max_total_bytes`.

A saved stream is checked before it is kept (names stay in the workspace; only files, directories and symbolic
links; within the size cap). It is only ever unpacked inside a job's container, never on the controller."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.artifacts.unpack import member_name
from orchestrator.platform.files import fsync_dir, write_atomic

_CHUNK = 1024 * 1024


class CacheError(Exception):
    """A cache could not be saved; the job's log says so (a cache is an optimisation: the job still succeeds)."""


@dataclass(frozen=True)
class CacheHit:
    path: Path
    ref: str  # the ref whose entry it is (the job's own, or a fallback)
    size: int


def cache_key(key: str, key_files: Iterable[tuple[str, bytes | None]]) -> str:
    """`key`, plus a digest of the named files of the checkout (name and content; a missing file counts as
    missing), so a changed lockfile means a new entry. Pure."""
    files = list(key_files)
    if not files:
        return key
    digest = hashlib.sha256()
    for name, content in files:
        digest.update(name.encode() + b"\0")
        digest.update(b"-" if content is None else hashlib.sha256(content).digest())
    return f"{key}-{digest.hexdigest()[:16]}"


def read_order(ref: str, fallback_refs: Sequence[str]) -> list[str]:
    """The refs whose entries a job of `ref` may read, in order: its own first. Pure."""
    return [ref, *(r for r in fallback_refs if r != ref)]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class CacheStore:
    def __init__(self, directory: Path, *, max_total_bytes: int, fallback_refs: Sequence[str]) -> None:
        self.directory = directory
        self.max_total_bytes = max_total_bytes
        self.fallback_refs = list(fallback_refs)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _entry(self, repository: str, ref: str, key: str) -> Path:
        return self.directory / _digest(repository) / _digest(ref) / f"{key}.tar"

    def lookup(self, repository: str, ref: str, key: str) -> CacheHit | None:
        """The entry a job of `ref` restores, marked as used now (LRU)."""
        for candidate in read_order(ref, self.fallback_refs):
            path = self._entry(repository, candidate, key)
            try:
                size = path.stat().st_size
                os.utime(path)
            except FileNotFoundError:
                continue
            return CacheHit(path, candidate, size)
        return None

    def save(self, repository: str, ref: str, key: str, chunks: Iterable[bytes], *, max_bytes: int) -> int:
        """Keeps a tar stream as the entry of (repository, ref, key), replacing the previous one; checks it first.
        Returns its size. Blocking: run it on a thread. Raises CacheError."""
        final = self._entry(repository, ref, key)
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            size = 0
            with tmp.open("xb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes + 10240:  # the tar framing on top of the files
                        raise CacheError(f"the cache {key!r} is larger than {max_bytes} bytes; not saved")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            self._check(tmp, max_bytes, key)
            os.replace(tmp, final)
            write_atomic(
                final.with_suffix(".json"),
                json.dumps({"repository": repository, "ref": ref, "key": key, "size": size}).encode(),
                mode=0o600,
            )
            fsync_dir(final.parent)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(f"the cache {key!r} was not saved: the disk of {self.directory} is full") from None
            raise CacheError(f"the cache {key!r} was not saved: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.evict()
        return size

    @staticmethod
    def _check(path: Path, max_bytes: int, key: str) -> None:
        total = 0
        try:
            with tarfile.open(path, mode="r:") as archive:
                for member in archive:
                    if member_name(member.name) is None:
                        raise CacheError(f"the cache {key!r} names {member.name!r}, outside the workspace; not saved")
                    if not (member.isreg() or member.isdir() or member.issym()):
                        raise CacheError(f"the cache {key!r} holds {member.name!r}, not a file; not saved")
                    total += member.size
                    if total > max_bytes:
                        raise CacheError(f"the cache {key!r} is larger than {max_bytes} bytes; not saved")
        except tarfile.TarError as exc:
            raise CacheError(f"the cache {key!r} is no valid tar stream ({exc}); not saved") from None

    def evict(self) -> int:
        """Removes least recently used entries until all fit in max_total_bytes; returns how many went."""
        entries = []
        for path in self.directory.glob("*/*/*.tar"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries):
            if total <= self.max_total_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                path.with_suffix(".json").unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*/*/*.tar"))
