"""Finding records in the audit trail, and exporting a part of it that an auditor can still verify.

Both only read the file, a line at a time: trails grow to gigabytes, and the controller keeps appending while
they run (a batch is one write, so a reader can at most see a torn last line, which both leave out).

`search` reads; it proves nothing. A line that is not a readable record is skipped, and the shortcuts below
trust the file's canonical form and its increasing seq. Proof is `verify_file` on the whole trail, or `export`
and then `verify_file(..., expect_prev=...)` on the slice: a *filtered* set of records cannot be verified (the
chain runs through every record), so an export is always a contiguous run of stored lines, copied byte for byte,
ending in a signed record.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

from orchestrator.evidence.audit import line_hash
from orchestrator.evidence.canonical import canonical_json

MAX_LIMIT = 1000
# Records are written in time order, but the wall clock can step back (NTP): a search bounded by `until` stops
# only once records are this far past it, so records stamped after such a step are not missed.
CLOCK_SLACK_S = 300.0
# A search with `after` bisects the file on seq down to this many bytes, then reads on line by line.
_BISECT_WINDOW = 64 * 1024
# Unsigned records are held back until the signed record vouching for them is read (an export must end in one);
# a batch is at most 512 records of a few hundred bytes, so more than this is not a trail this controller wrote.
_MAX_UNSIGNED_BYTES = 64 * 1024 * 1024

_TIME_FORMS = "RFC 3339 (2026-12-07T10:00:00Z, 2026-12-07T10:00:00.250+01:00) or a date (2026-12-07, UTC midnight)"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
_SEQ_KEY = b',"seq":'


def parse_time(text: str) -> float:
    """POSIX seconds from RFC 3339 (an offset is required: a bare local time is ambiguous) or a UTC date."""
    try:
        if _DATE.fullmatch(text):
            return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
        match = _RFC3339.fullmatch(text)
        if match:
            day, clock, fraction, offset = match.groups()
            micros = (fraction or "").ljust(6, "0")[:6]  # datetime holds microseconds: finer digits are dropped
            offset = "+00:00" if offset in ("Z", "z") else offset
            return datetime.fromisoformat(f"{day}T{clock}.{micros}{offset}").timestamp()
    except ValueError:
        pass  # a well-formed but impossible date or time (month 13, 25:00)
    raise ValueError(f"bad time {text!r}: use {_TIME_FORMS}")


@functools.lru_cache(maxsize=4096)
def _epoch_second(prefix: str) -> int:
    return int(datetime.fromisoformat(prefix).replace(tzinfo=UTC).timestamp())


def _record_time(value: object) -> float | None:
    """A record's ``time`` in POSIX seconds; the writer's own form is parsed once per second (records come in
    bursts). Equal to `parse_time` of the same text: both round the same exact value once."""
    if not isinstance(value, str):
        return None
    if len(value) == 24 and value[19] == "." and value[23] == "Z" and value[20:23].isdigit():
        try:
            return (_epoch_second(value[:19]) * 1000 + int(value[20:23])) / 1000
        except ValueError:
            return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        return None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int) or isinstance(record["seq"], bool):
        return None
    return record


def _tail(line: bytes) -> dict[str, Any] | None:
    """seq, sig, target and time without parsing the whole record: in canonical form (sorted keys) they are the
    last keys, after every nested object, and ``,"seq":`` cannot occur unescaped inside a string. None when the
    line does not look like that (the caller then parses it whole)."""
    at = line.rfind(_SEQ_KEY)
    if at < 0:
        return None
    tail = _parse(b"{" + line[at + 1 :])
    if tail is None or "sig" not in tail or "time" not in tail:
        return None
    return tail


def _fields(line: bytes) -> dict[str, Any] | None:
    """The tail when it can be read cheaply, else the whole record; None for a line that is no record."""
    return _tail(line) or _parse(line)


@dataclass(frozen=True)
class AuditQuery:
    """What to look for; every given field must match (None: any). ``actor`` is an API token's or principal's
    name, a webhook source, or "controller"; ``action`` ending in ``.*`` is a prefix (``api.*``); ``since`` is
    inclusive and ``until`` exclusive, in POSIX seconds."""

    actor: str | None = None
    target: str | None = None
    action: str | None = None
    since: float | None = None
    until: float | None = None
    outcome: str | None = None

    def _needles(self) -> list[bytes]:
        """Bytes a matching canonical line must contain: most lines are dismissed without being parsed."""
        needles: list[bytes] = []
        if self.action is not None:
            if self.action.endswith(".*"):
                needles.append(b'"action":' + canonical_json(self.action[:-1])[:-1])  # without the closing quote
            else:
                needles.append(b'"action":' + canonical_json(self.action))
        if self.outcome is not None:
            needles.append(b'"outcome":' + canonical_json(self.outcome))
        if self.target is not None:
            needles.append(b'"target":' + canonical_json(self.target))
        if self.actor is not None:
            needles.append(canonical_json(self.actor))  # a value somewhere in the actor object
        return needles

    def matches(self, record: dict[str, Any]) -> bool:
        """The full check, on a parsed record."""
        if self.action is not None:
            action = record.get("action")
            if not isinstance(action, str):
                return False
            if self.action.endswith(".*"):
                if not action.startswith(self.action[:-1]):
                    return False
            elif action != self.action:
                return False
        if self.outcome is not None and record.get("outcome") != self.outcome:
            return False
        if self.target is not None and record.get("target") != self.target:
            return False
        if self.actor is not None and not _actor_is(record.get("actor"), self.actor):
            return False
        if self.since is not None or self.until is not None:
            at = _record_time(record.get("time"))
            if at is None:
                return False
            if (self.since is not None and at < self.since) or (self.until is not None and at >= self.until):
                return False
        return True


def _actor_is(actor: object, name: str) -> bool:
    """Exact match on who acted. API actors carry ``token_name`` (as `Auditor.api` writes them) or ``name``."""
    if not isinstance(actor, dict):
        return False
    if actor.get("type") == "controller" and name == "controller":
        return True
    if actor.get("type") == "webhook" and actor.get("source") == name:
        return True
    return actor.get("name") == name or (actor.get("type") == "api" and actor.get("token_name") == name)


@dataclass(frozen=True)
class AuditHit:
    """One matching record as stored, and the hash of its line: the head `verify_file` reports when the trail
    ends there, and the next record's ``prev`` -- what an auditor anchors on."""

    record: dict[str, Any]
    hash: str
    seq: int


@dataclass(frozen=True)
class AuditPage:
    """``next_cursor``: pass it as ``after`` for the next page; None when no further record matches.
    ``scanned``: lines read, for the caller's metrics and limits."""

    hits: list[AuditHit]
    next_cursor: int | None
    scanned: int


def _lines(file: IO[bytes]) -> Iterator[bytes]:
    """Complete lines without their newline; a torn last line (a crash or a write in progress) is left out."""
    for raw in file:
        if not raw.endswith(b"\n"):
            return
        yield raw[:-1]


def _line_seq_at(file: BinaryIO, offset: int) -> tuple[int, int | None]:
    """The first line starting at or after ``offset``: where it starts and its seq (None: unreadable or EOF)."""
    if offset > 0:
        file.seek(offset - 1)
        file.readline()  # the rest of the line holding byte offset-1 (just its newline, if it ends there)
    start = file.tell()
    raw = file.readline()
    fields = _fields(raw[:-1]) if raw.endswith(b"\n") else None
    return start, None if fields is None else fields["seq"]


def _seek_after(file: BinaryIO, after: int) -> None:
    """Moves to a line start at or before the first record with seq > ``after``, by bisection on seq (it only
    increases in a trail), so paging deep into a large trail does not re-read it from the start."""
    lo = 0  # a line start; every line before it has seq <= after
    hi = file.seek(0, 2)
    while hi - lo > _BISECT_WINDOW:
        mid = (lo + hi) // 2
        start, seq = _line_seq_at(file, mid)
        if seq is None:
            break  # unreadable or at the end: read on from lo
        if seq <= after:
            lo = start
        else:
            hi = mid
    file.seek(lo)


def search(
    path: Path,
    query: AuditQuery,
    *,
    after: int | None = None,
    limit: int = 100,
    visible: Callable[[dict[str, Any]], bool] | None = None,
) -> AuditPage:
    """Matching records with seq > ``after``, oldest first, at most ``limit`` (1..1000) per page.

    ``visible`` is the caller's scope (the API's permissions): a record it refuses is neither returned nor
    counted, and does not reveal itself through ``next_cursor``. A missing file is an empty trail."""
    if isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit!r}")
    needles = query._needles()
    hits: list[AuditHit] = []
    scanned = 0
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return AuditPage([], None, 0)
    with file:
        if after is not None:
            _seek_after(file, after)
        for line in _lines(file):
            scanned += 1
            tail = _tail(line)
            if tail is not None:
                if after is not None and tail["seq"] <= after:
                    continue
                at = _record_time(tail["time"])
                if query.until is not None and at is not None and at >= query.until + CLOCK_SLACK_S:
                    break  # in time order: nothing later can match
            if not all(needle in line for needle in needles):
                continue
            record = _parse(line)
            if record is None or (after is not None and record["seq"] <= after) or not query.matches(record):
                continue
            if visible is not None and not visible(record):
                continue
            if len(hits) == limit:  # one more match exists: there is a next page
                return AuditPage(hits, hits[-1].seq, scanned)
            hits.append(AuditHit(record, line_hash(line), record["seq"]))
    return AuditPage(hits, None, scanned)


@dataclass(frozen=True)
class ExportSummary:
    """What an exported slice holds. ``first_prev`` is its anchor: the hash of the line before it (the genesis
    hash when it starts at record 0), what ``verify_file(..., expect_prev=...)`` needs. ``head``: the hash of its
    last line, a signed record."""

    first_seq: int
    last_seq: int
    first_prev: str
    head: str
    records: int


def export(
    path: Path,
    out: BinaryIO,
    *,
    first_seq: int | None = None,
    last_seq: int | None = None,
    since: float | None = None,
    until: float | None = None,
) -> ExportSummary:
    """Copies the contiguous run of lines from the first record with seq >= ``first_seq`` and time >= ``since``
    up to the last with seq <= ``last_seq`` and time < ``until``, byte for byte, extended to the next signed
    record so the slice ends in one. An unsigned tail at the end of the file (a batch whose signed record is not
    there) is left out. ValueError when no signed record falls within the bounds."""
    if first_seq is not None and first_seq < 0:
        raise ValueError(f"first_seq must be >= 0, got {first_seq}")
    if first_seq is not None and last_seq is not None and last_seq < first_seq:
        raise ValueError(f"last_seq {last_seq} is before first_seq {first_seq}")
    if since is not None and until is not None and until <= since:
        raise ValueError("until must be after since")
    pending: list[bytes] = []  # read but not yet vouched for by a signed record
    pending_bytes = 0
    ending = False
    first: dict[str, Any] | None = None  # the first record exported
    count = 0
    last: tuple[int, bytes] | None = None
    seq = -1
    with path.open("rb") as file:
        if first_seq:
            _seek_after(file, first_seq - 1)  # skips most of a large trail
        for line in _lines(file):
            fields = _fields(line)
            if fields is None:
                if first is None:
                    continue  # before the slice: not what is exported
                raise ValueError(f"{path}: the line after record {seq} is no audit record; run `audit verify` on it")
            seq, at = fields["seq"], _record_time(fields.get("time"))
            if first is None:
                if (first_seq is not None and seq < first_seq) or (since is not None and (at is None or at < since)):
                    continue
                first = _parse(line)
                if first is None or not isinstance(first.get("prev"), str):
                    raise ValueError(f"{path}: record {seq} is malformed; run `orchestrator audit verify` on it")
            if (last_seq is not None and seq > last_seq) or (until is not None and at is not None and at >= until):
                ending = True
            if ending and not pending:
                break  # the line before was signed
            pending.append(line)
            pending_bytes += len(line) + 1
            if fields.get("sig") is not None:
                out.write(b"\n".join(pending) + b"\n")
                count += len(pending)
                last = (seq, line)
                pending, pending_bytes = [], 0
                if ending:
                    break
            elif pending_bytes > _MAX_UNSIGNED_BYTES:
                raise ValueError(f"{path}: over {_MAX_UNSIGNED_BYTES} bytes of unsigned records up to record {seq}")
    if last is None or first is None:  # nothing in bounds, or only an unsigned tail
        raise ValueError(f"{path} holds no signed record within those bounds: nothing to export")
    return ExportSummary(first["seq"], last[0], first["prev"], line_hash(last[1]), count)


__all__ = ["MAX_LIMIT", "AuditHit", "AuditPage", "AuditQuery", "ExportSummary", "export", "parse_time", "search"]
