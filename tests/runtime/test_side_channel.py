"""The side channel's framing (runtime/side_channel.py), pure: header lines, tar boundaries of GNU and busybox
style archives, empty and cut sections, the spool cap, and output that only looks like a header."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from orchestrator.runtime.side_channel import SideChannel, iter_file, members_end, open_section, sections

from tarballs import tar_bytes

NONCE = "0123456789abcdef0123456789abcdef"


def tar_of(files: dict[str, bytes], *, record_padding: bool = True) -> bytes:
    raw = tar_bytes(files, format=tarfile.USTAR_FORMAT)
    if not record_padding:  # busybox tar: two zero blocks, no padding to a 10240-byte record
        raw = raw[: members_end(io.BytesIO(raw), 0, len(raw)) + 1024]
    return raw


def header(kind: str) -> bytes:
    return f"ORCH1 {NONCE} {kind}\n".encode()


def channel(tmp_path: Path, max_bytes: int = 10**7) -> tuple[SideChannel, list[bytes]]:
    logged: list[bytes] = []
    return SideChannel(NONCE, tmp_path / "spool", max_bytes, logged.append), logged


def test_sections_of_both_tar_styles_and_an_empty_one(tmp_path: Path) -> None:
    gnu = tar_of({"a.txt": b"A" * 700, "b/c.txt": b"C"})
    busybox = tar_of({"cache/x": b"X" * 5}, record_padding=False)
    side, logged = channel(tmp_path)
    stream = b"sh: oops\n" + header("artifacts") + gnu + header("cache") + busybox + header("empty")
    for i in range(0, len(stream), 333):  # any chunking
        side.feed(stream[i : i + 333])
    side.close()
    assert b"".join(logged) == b"sh: oops\n"
    with (tmp_path / "spool").open("rb") as data:
        found = sections(data, NONCE)
        assert [(s.kind, s.complete) for s in found] == [("artifacts", True), ("cache", True), ("empty", True)]
        assert found[2].start == found[2].end
        with open_section(data, found[0]) as tar:
            assert {m.name: tar.extractfile(m).read() for m in tar if m.isreg()} == {  # type: ignore[union-attr]
                "a.txt": b"A" * 700,
                "b/c.txt": b"C",
            }
        with open_section(data, found[1]) as tar:
            assert [m.name for m in tar] == ["cache/x"]


def test_a_cut_stream_and_the_spool_cap(tmp_path: Path) -> None:
    data = tar_of({"big": b"B" * 5000})
    side, _ = channel(tmp_path, max_bytes=3000)
    side.feed(header("artifacts") + data)
    side.close()
    assert side.overflowed
    with (tmp_path / "spool").open("rb") as spool:
        (found,) = sections(spool, NONCE)
    assert found.kind == "artifacts" and not found.complete


def test_a_header_needs_the_nonce_and_a_line_start(tmp_path: Path) -> None:
    side, logged = channel(tmp_path)
    side.feed(b"ORCH1 not-the-nonce artifacts\nsay ORCH1 " + NONCE.encode() + b" artifacts\n")
    side.close()
    assert side.spool is None
    assert b"".join(logged).count(b"ORCH1") == 2


def test_garbage_after_a_header_is_no_section(tmp_path: Path) -> None:
    side, _ = channel(tmp_path)
    side.feed(header("artifacts") + b"this is not tar" * 100)
    side.close()
    with (tmp_path / "spool").open("rb") as spool:
        (found,) = sections(spool, NONCE)
    assert not found.complete


def test_two_archives_read_as_one_when_the_first_loses_its_end(tmp_path: Path) -> None:
    first, second = tar_of({"src/main.c": b"int main;"}), tar_of({"deps/lib": b"L"})
    path = tmp_path / "first.tar"
    path.write_bytes(first)
    end = members_end(io.BytesIO(first), 0, len(first))
    joined = b"".join(iter_file(path, 0, end, chunk=100)) + second
    with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
        assert [m.name for m in tar] == ["src/main.c", "deps/lib"]
