"""The way files come out of a job's container: its stderr, which the job script keeps as fd 9 for itself
(commands never get that descriptor) and writes sections to after the commands -- a line `ORCH1 <nonce> <kind>`
followed by a tar stream (artifacts, the cache to save). Docker's archive API cannot read tmpfs mounts, and
/workspace is one, so the container hands the files over itself.

`SideChannel` runs on the output pump's thread: bytes before the first section header are ordinary output (the
bootstrap's own errors, before the script took over stderr) and go back to the log; from the header on, bytes
are spooled to a file, at most `max_bytes`. `sections` then splits the spool by walking the tar headers: a tar
stream ends with two zero blocks, possibly padded to a record, and the next header line follows.

What the container sends is the job's own doing and untrusted: the readers (artifacts/, caches/) check every
member; this module only frames."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from orchestrator.runtime.container_spec import SIDE_MAGIC

BLOCK = 512
_LINE_MAX = 64 * 1024  # a header line is short; longer "lines" before it are output, flushed to the log
_KIND = re.compile(rb"^[a-z]{1,32}$")


class SideChannel:
    """Demultiplexes the side channel while the job runs (one thread feeds it)."""

    def __init__(self, nonce: str, spool: Path, max_bytes: int, to_log: Callable[[bytes], None]) -> None:
        self._header = f"{SIDE_MAGIC} {nonce} ".encode()
        self._spool_path = spool
        self._max = max_bytes
        self._to_log = to_log
        self._pending = bytearray()
        self._file: BinaryIO | None = None
        self.spooled = 0
        self.overflowed = False

    def feed(self, data: bytes) -> None:
        if self._file is not None:
            self._write(data)
            return
        self._pending += data
        while self._file is None:
            start = self._pending.find(self._header)
            if start == -1:
                keep = len(self._header) - 1  # a header may begin in this chunk and end in the next
                cut = max(self._pending.rfind(b"\n") + 1, len(self._pending) - keep, 0)
                if len(self._pending) > _LINE_MAX or cut > 0:
                    self._log(bytes(self._pending[:cut]))
                    del self._pending[:cut]
                return
            if start > 0 and self._pending[start - 1 : start] != b"\n":
                # not at a line start: ordinary output that happens to contain the magic
                self._log(bytes(self._pending[: start + 1]))
                del self._pending[: start + 1]
                continue
            self._log(bytes(self._pending[:start]))
            rest = bytes(self._pending[start:])
            self._pending.clear()
            self._spool_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._spool_path.open("wb")
            self._write(rest)

    def close(self) -> None:
        """Ends the stream: what was held back as a possible header's beginning is output after all."""
        if self._pending:
            self._log(bytes(self._pending))
            self._pending.clear()
        if self._file is not None:
            self._file.close()

    @property
    def spool(self) -> Path | None:
        return self._spool_path if self._file is not None else None

    def _log(self, data: bytes) -> None:
        if data:
            self._to_log(data)

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        room = self._max - self.spooled
        if len(data) > room:
            self.overflowed = True
            data = data[: max(room, 0)]
        if data:
            self._file.write(data)
            self.spooled += len(data)


@dataclass(frozen=True)
class Section:
    kind: str
    start: int  # offset of its tar stream in the spool
    end: int  # offset just past it (its end-of-archive blocks included); start == end: nothing was archived
    complete: bool  # False: the stream was cut (the container died, or the spool cap was reached)


def sections(data: BinaryIO, nonce: str) -> list[Section]:
    """The sections of a spool, in order. Anything that is not a header line where one must be ends the walk (the
    remainder is not trusted as a section)."""
    header = f"{SIDE_MAGIC} {nonce} ".encode()
    found: list[Section] = []
    data.seek(0, io.SEEK_END)
    size = data.tell()
    pos = 0
    while pos < size:
        data.seek(pos)
        line = data.readline(len(header) + 40)
        if not line.startswith(header) or not line.endswith(b"\n"):
            break
        kind = line[len(header) : -1]
        if not _KIND.match(kind):
            break
        start = pos + len(line)
        end, complete = _tar_end(data, start, size, header)
        found.append(Section(kind.decode(), start, end, complete))
        if not complete:
            break
        pos = _skip_zeros(data, end, size)
    return found


def members_end(data: BinaryIO, start: int, end: int) -> int:
    """Offset where a complete tar stream's members end (its end-of-archive blocks begin): two archives become
    one by sending the first up to there and the second whole."""
    pos = start
    while pos + BLOCK <= end:
        data.seek(pos)
        block = data.read(BLOCK)
        if block == bytes(BLOCK):
            return pos
        pos += BLOCK + _padded(_member_size(block))
    return end


def open_section(data: BinaryIO, section: Section) -> tarfile.TarFile:
    """The section's tar stream, read sequentially (`tarfile` stream mode), bounded to the section."""
    return tarfile.open(fileobj=_Slice(data, section.start, section.end), mode="r|")


def _tar_end(data: BinaryIO, pos: int, size: int, header: bytes) -> tuple[int, bool]:
    data.seek(pos)
    if pos == size or data.read(len(header)) == header:
        return pos, True  # an empty section: no paths matched, no tar was written
    zeros = 0
    while True:
        if pos + BLOCK > size:
            return size, False
        data.seek(pos)
        block = data.read(BLOCK)
        pos += BLOCK
        if block == bytes(BLOCK):
            zeros += 1
            if zeros == 2:
                return pos, True
            continue
        if zeros:  # a single zero block inside an archive: not tar
            return size, False
        try:
            pos += _padded(_member_size(block))
        except ValueError:
            return size, False


def _skip_zeros(data: BinaryIO, pos: int, size: int) -> int:
    """Past the zero padding some tars add up to a full record after their end-of-archive blocks."""
    data.seek(pos)
    while pos < size:
        chunk = data.read(BLOCK)
        stripped = chunk.lstrip(b"\0")
        if stripped:
            return pos + len(chunk) - len(stripped)
        pos += len(chunk)
    return pos


def _member_size(block: bytes) -> int:
    """The data size a tar header announces (octal, or GNU base-256 for large files)."""
    field = block[124:136]
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    if not re.fullmatch(rb"[0-7]+", text):
        raise ValueError("not a tar header")
    return int(text, 8)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


class _Slice(io.RawIOBase):
    """A read-only window [start, end) of a file."""

    def __init__(self, data: BinaryIO, start: int, end: int) -> None:
        self._data = data
        self._pos = start
        self._end = end

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._end - self._pos)
        if n <= 0:
            return 0
        self._data.seek(self._pos)
        chunk = self._data.read(n)
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def iter_file(path: Path, start: int, end: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """The bytes [start, end) of a file, in chunks (sending an archive over stdin without holding it whole)."""
    with path.open("rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            data = f.read(min(chunk, left))
            if not data:
                return
            left -= len(data)
            yield data
