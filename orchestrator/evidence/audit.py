"""Tamper-evident, append-only audit trail: who did what to which job, signed and hash-chained.

Format: JSON Lines in the data directory. Every line is *exactly* the canonical JSON of one full record
(`canonical_json`: sorted keys, no spaces, UTF-8), so no byte of the file is insignificant: re-encoding,
adding whitespace or re-padding base64 is itself detected.

Record fields: ``seq`` (0, 1, 2, ...), ``time`` (RFC 3339 UTC, ms), ``actor`` ({"type": "webhook"|"api"|
"controller", ...}), ``action``, ``target``, ``outcome``, ``remote``, ``details``, ``prev``, ``sig`` and, on
record 0 only, ``chain`` (a random id naming this log).

Chain: ``prev`` of record n is the SHA-256 (hex) of line n-1 as stored, without its newline -- i.e. of the
canonical bytes of the *full* previous record, signature included -- so the chain covers every stored byte.
Record 0's ``prev`` is ``genesis_hash(chain)``. ``sig`` is Ed25519 (base64) over the canonical bytes of the
record without ``sig``. Together they detect alteration (signature), and removal, insertion, duplication and
reordering (``seq`` and ``prev``).

Batches: records written together (one `append`, one write) are signed once, on the last record; the others
carry ``"sig": null``. The last record's signature covers its ``prev``, which is the hash of the line before,
which covers that line's ``prev``, and so on back to the previous signed record: altering an unsigned record
breaks the chain at a record that is signed or is vouched for by one. So every record is covered by exactly one
signature, and a log must end in a signed record -- an unsigned last record means the end was cut or forged.
Under load the writer signs one record per batch instead of one per event (Ed25519 costs ~50 us per signature).

What a chain cannot show: that nothing was cut off the *end* -- dropping the last k lines leaves a valid,
shorter chain. `verify_file` therefore reports the last seq and head hash (SHA-256 of the last line); auditors
anchor that somewhere else (a ticket, another host, the syslog copy) and pass it back as ``expect_head`` /
``expect_seq``. Whoever holds the private key can rewrite everything; the forwarded copy and external anchors
are the defence against that. A contiguous slice (`audit_search.export`) verifies on its own given
``expect_prev``, the hash of the line before it; without that anchor a file must start at record 0.

Durability trade-off: each record is one ``os.write`` on an O_APPEND descriptor (no user-space buffer), so it is
in the kernel -- and survives a crash of the controller -- when `record` returns. It is on disk (survives power
loss) only after fsync: inside `record` once the previous fsync is older than ``sync_interval_s`` (default 1 s),
on `sync()` and on `close()`. An fsync per record would cost milliseconds each on real disks and stall the event
loop. `open` checks only the last record (cheap at start-up); `verify_file` checks the whole chain.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import secrets
import syslog
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.evidence.canonical import SHA256_HEX, canonical_json
from orchestrator.platform.files import fsync_dir

log = logging.getLogger(__name__)

AUDIT_FILE_NAME = "audit.jsonl"
PUBLIC_KEY_FILE_NAME = "audit.pub"
GENESIS_PREFIX = "runner-orchestrator audit chain v1 genesis "
ACTOR_TYPES = frozenset({"webhook", "api", "controller"})
REQUIRED_FIELDS = ("seq", "time", "actor", "action", "target", "outcome", "remote", "details", "prev", "sig")
MAX_RECORD_BYTES = 1 << 20  # a bound for reading the tail back; real records are a few hundred bytes
_RECORD_OVERHEAD = 1024  # bytes a record adds around its fields: keys, seq, time, prev, chain, sig

Record = dict[str, Any]
Forwarder = Callable[[Record], None]

_ACTION = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# A key holding one of these words is refused unless its last word says it only describes the secret.
_SECRET_WORDS = frozenset(
    {"token", "tokens", "jwt", "jwts", "secret", "secrets", "password", "passwords", "passwd", "passphrase"}
)
_DESCRIPTIVE_LAST_WORDS = frozenset(
    {"name", "names", "path", "paths", "count", "ttl", "type", "kind", "digest", "sha256", "expires", "expiry", "at"}
)
# Values shaped like a Vault token, a JWT or a Standard Webhooks secret, whatever key they sit under.
_SECRET_VALUE = re.compile(
    r"(?<![\w.-])(?:hv[sbr]\.[A-Za-z0-9_-]{20,}|s\.[A-Za-z0-9]{24}(?![\w.-])"
    r"|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|whsec_[A-Za-z0-9+/=]{16,})"
)


def looks_like_secret(value: str) -> bool:
    """True for text shaped like a Vault token, a JWT or a webhook secret."""
    return bool(_SECRET_VALUE.search(value))


class AuditError(Exception):
    """The trail cannot be continued or trusted as it stands (tampered or torn tail, locked, closed)."""


def genesis_hash(chain: str) -> str:
    """``prev`` of record 0: ties the first record to this log's random chain id."""
    return hashlib.sha256((GENESIS_PREFIX + chain).encode()).hexdigest()


def line_hash(line: bytes) -> str:
    """SHA-256 hex of one stored line (without newline): the next record's ``prev``, and the head."""
    return hashlib.sha256(line).hexdigest()


def accessor_digest(accessor: str) -> str:
    """Correlates issue/revoke of one credential without storing a value that can look it up or revoke it."""
    return hashlib.sha256(accessor.encode()).hexdigest()


def _secret_key(key: str) -> bool:
    words = [word.lower() for word in _WORD.findall(key)]
    return bool(words) and any(w in _SECRET_WORDS for w in words) and words[-1] not in _DESCRIPTIVE_LAST_WORDS


# Text that every match of `_SECRET_VALUE`, or every key `_secret_key` refuses, must contain. None of these
# characters is ever escaped in JSON, so a canonical encoding without any of them holds no secret: the common
# case then costs two substring scans instead of a walk with a regex per key and value.
def _may_hold_secret(encoded: bytes) -> bool:
    if b"s." in encoded or b"hvb." in encoded or b"hvr." in encoded or b"eyJ" in encoded or b"whsec_" in encoded:
        return True
    lowered = encoded.lower()
    return b"token" in lowered or b"jwt" in lowered or b"secret" in lowered or b"pass" in lowered


def _refuse_secrets(value: object, where: str) -> None:
    """Guard against accidentally logging a credential: refuses secret-named keys and secret-shaped values."""
    if isinstance(value, dict):
        for key, item in value.items():
            if _secret_key(key):
                raise ValueError(
                    f"audit {where}.{key} looks like it holds a secret; never log one -- record a name, "
                    "a path or accessor_digest() instead"
                )
            _refuse_secrets(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_secrets(item, f"{where}[{index}]")
    elif isinstance(value, str) and _SECRET_VALUE.search(value):
        raise ValueError(f"audit {where} looks like a token, JWT or webhook secret; never log one")


@dataclass(frozen=True)
class Entry:
    """One event, checked and normalised by `prepare`, ready for `AuditLog.append`."""

    actor: dict[str, Any]
    action: str
    target: str | None
    outcome: str
    remote: str | None
    details: dict[str, Any]
    at: float | None = None  # when it happened (unix seconds); None: when it is written


def prepare(
    actor: dict[str, Any],
    action: str,
    target: str | None,
    outcome: str,
    *,
    remote: str | None = None,
    details: dict[str, Any] | None = None,
    at: float | None = None,
) -> Entry:
    """Checks one event and takes a JSON-normalised copy; refuses secrets and malformed input with ValueError.
    Needs no lock or file, so callers can do it before taking the writer's lock."""
    if not isinstance(actor, dict) or actor.get("type") not in ACTOR_TYPES:
        raise ValueError(f"audit actor must be an object with type one of {sorted(ACTOR_TYPES)}")
    if not isinstance(action, str) or not _ACTION.fullmatch(action):
        raise ValueError(f"audit action must look like 'area.event', got {action!r}")
    if not isinstance(outcome, str) or not outcome:
        raise ValueError("audit outcome must be a non-empty string")
    if not isinstance(target, str | None) or not isinstance(remote, str | None):
        raise ValueError("audit target and remote must be strings or None")
    if details is not None and not isinstance(details, dict):
        raise ValueError("audit details must be an object")
    try:
        # One encode checks that everything is JSON (no NaN, no lone surrogate); decoding it back normalises the
        # values (tuples, non-str keys) to exactly what `verify_file` will read, so that copy is checked and signed.
        encoded = canonical_json([actor, details or {}, target, remote, action, outcome])
        actor_copy, details_copy, _, _, _, _ = json.loads(encoded)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit actor, details, target and remote must be JSON-serialisable text: {exc}") from None
    if len(encoded) + _RECORD_OVERHEAD > MAX_RECORD_BYTES:
        raise ValueError(f"audit record would exceed {MAX_RECORD_BYTES} bytes ({len(encoded)} bytes of fields)")
    if _may_hold_secret(encoded):
        _refuse_secrets(actor_copy, "actor")
        _refuse_secrets(details_copy, "details")
        _refuse_secrets([target, remote], "target/remote")
    if at is not None and not (isinstance(at, int | float) and math.isfinite(at)):
        raise ValueError("audit time must be finite unix seconds")
    return Entry(actor_copy, action, target, outcome, remote, details_copy, at)


class _BadRecord(Exception):
    """One line fails the per-record checks; ``what`` completes a sentence naming the record."""

    def __init__(self, seq: int | None, what: str) -> None:
        super().__init__(what)
        self.seq = seq
        self.what = what


def _missing_or_malformed(record: Record) -> list[str]:
    seq = record.get("seq")
    checks: dict[str, bool] = {
        "seq": isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0,
        "time": isinstance(record.get("time"), str),
        "actor": isinstance(record.get("actor"), dict) and isinstance(record["actor"].get("type"), str),
        "action": isinstance(record.get("action"), str),
        "target": "target" in record and isinstance(record["target"], str | None),
        "outcome": isinstance(record.get("outcome"), str),
        "remote": "remote" in record and isinstance(record["remote"], str | None),
        "details": isinstance(record.get("details"), dict),
        "prev": isinstance(record.get("prev"), str) and SHA256_HEX.fullmatch(record["prev"]) is not None,
        "sig": "sig" in record and isinstance(record["sig"], str | None),
    }
    if seq == 0:
        checks["chain"] = isinstance(record.get("chain"), str)
    return [name for name, ok in checks.items() if not ok]


def _inspect(line: bytes, public_key: Ed25519PublicKey) -> Record:
    """Checks one line on its own: parses, has every field, is canonical, and its signature verifies."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _BadRecord(None, "is not a valid JSON object (unparseable)") from None
    if not isinstance(record, dict):
        raise _BadRecord(None, "is not a valid JSON object")
    seq = record.get("seq") if isinstance(record.get("seq"), int) else None
    bad_fields = _missing_or_malformed(record)
    if bad_fields:
        raise _BadRecord(seq, f"has missing or malformed field(s): {', '.join(bad_fields)}")
    try:
        canonical = canonical_json(record)
    except ValueError:
        canonical = b""
    if canonical != line:
        raise _BadRecord(seq, "was altered: it is not byte-for-byte in canonical form")
    unsigned = dict(record)
    sig_text = unsigned.pop("sig")
    if sig_text is None:
        return record  # vouched for by the next signed record, through the chain (checked by the caller)
    try:
        sig = base64.b64decode(sig_text, validate=True)
        if base64.b64encode(sig).decode() != sig_text:  # unused padding bits would otherwise be malleable
            raise ValueError("non-canonical base64")
        public_key.verify(sig, canonical_json(unsigned))
    except (binascii.Error, ValueError, InvalidSignature):
        raise _BadRecord(seq, "was altered: its signature does not verify (edited, forged or another key)") from None
    return record


def _read_last_line(fd: int, size: int, path: Path) -> bytes | None:
    """The last complete line (without newline), read backwards; a torn final write is an error, not data."""
    if size == 0:
        return None
    if os.pread(fd, 1, size - 1) != b"\n":
        raise AuditError(
            f"{path} ends in an incomplete record (torn write or tampering); run `verify` on it, "
            "then move it aside to start a new log"
        )
    end = size - 1
    start = end
    buffer = b""
    while start > 0:
        step = min(65536, start)
        start -= step
        buffer = os.pread(fd, step, start) + buffer
        newline = buffer.rfind(b"\n")
        if newline >= 0:
            return buffer[newline + 1 :]
        if len(buffer) > MAX_RECORD_BYTES:
            raise AuditError(f"the last line of {path} is longer than {MAX_RECORD_BYTES} bytes: not an audit record")
    return buffer


class AuditLog:
    """The single writer of one audit file: continues its chain on `open`, appends signed records."""

    def __init__(
        self,
        path: Path,
        key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
        forward: Forwarder | None = None,
        sync_interval_s: float | None = 1.0,
    ) -> None:
        """``sync_interval_s``: fsync inside `record` when the last fsync is older (0 = every record,
        None = only on `sync`/`close`). ``forward`` gets a copy of each record, e.g. `syslog_forwarder()`."""
        self.path = path
        self._key = key
        self._public = key.public_key()
        self._clock = clock
        self._forward = forward
        self._sync_interval_s = sync_interval_s
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._seq = 0
        self._prev = ""
        self._chain: str | None = None
        self._head: str | None = None
        self._last_sync = 0.0
        self._broken: str | None = None
        self._stamp_second = -1
        self._stamp_prefix = ""

    @property
    def next_seq(self) -> int:
        with self._lock:
            return self._seq

    @property
    def head(self) -> str | None:
        """Hash of the last stored line (what auditors anchor); None for an empty log."""
        with self._lock:
            return self._head

    def open(self) -> Self:
        """Opens (creating 0600) and locks the file, then continues the chain from its verified last record."""
        with self._lock:
            if self._fd is not None:
                raise AuditError(f"{self.path} is already open")
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a second writer would fork the chain
                except BlockingIOError:
                    raise AuditError(f"{self.path} is already being written by another AuditLog or process") from None
                stat = os.fstat(fd)
                if stat.st_mode & 0o077:
                    os.fchmod(fd, 0o600)
                last = _read_last_line(fd, stat.st_size, self.path)
                if last is None:
                    self._seq, self._chain = 0, secrets.token_hex(16)
                    self._prev, self._head = genesis_hash(self._chain), None
                    fsync_dir(self.path.parent)  # a new file's entry must reach the disk too
                else:
                    try:
                        record = _inspect(last, self._public)
                    except _BadRecord as bad:
                        seq = "unknown" if bad.seq is None else bad.seq
                        raise AuditError(
                            f"the last record (seq {seq}) of {self.path} {bad.what}; the file was tampered with "
                            "or the signing key changed -- run `verify` on it before writing more"
                        ) from None
                    if record["sig"] is None:
                        raise AuditError(
                            f"the last record (seq {record['seq']}) of {self.path} is not signed: a batch was cut "
                            "short (crash mid-write) or the end was removed or forged -- run `verify` on it, then "
                            "move it aside to start a new log"
                        )
                    self._seq, self._chain = record["seq"] + 1, None
                    self._prev = self._head = line_hash(last)
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._broken, self._last_sync = fd, None, time.monotonic()
        return self

    def record(
        self,
        actor: dict[str, Any],
        action: str,
        target: str | None,
        outcome: str,
        *,
        remote: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> Record:
        """Appends one signed record and returns it; refuses secrets and malformed input with ValueError."""
        return self.append([prepare(actor, action, target, outcome, remote=remote, details=details)])[0]

    def append(self, entries: Sequence[Entry]) -> list[Record]:
        """Appends `prepare`d entries in one write, signing only the last (see Batches); returns the records."""
        if not entries:
            return []
        with self._lock:
            fd = self._writable_fd()
            seq, prev = self._seq, self._prev
            now = self._timestamp(self._clock()) if any(e.at is None for e in entries) else ""
            records: list[Record] = []
            lines: list[bytes] = []
            last = len(entries) - 1
            for index, entry in enumerate(entries):
                record: Record = {
                    "seq": seq,
                    "time": now if entry.at is None else self._timestamp(entry.at),
                    "actor": entry.actor,
                    "action": entry.action,
                    "target": entry.target,
                    "outcome": entry.outcome,
                    "remote": entry.remote,
                    "details": entry.details,
                    "prev": prev,
                }
                if seq == 0:
                    record["chain"] = self._chain
                if index == last:
                    record["sig"] = base64.b64encode(self._key.sign(canonical_json(record))).decode("ascii")
                else:
                    record["sig"] = None
                line = canonical_json(record)
                records.append(record)
                lines.append(line)
                seq, prev = seq + 1, line_hash(line)
            lines.append(b"")
            self._append(fd, b"\n".join(lines))
            self._seq, self._prev = seq, prev
            self._head = prev
            if self._sync_interval_s is not None and time.monotonic() - self._last_sync >= self._sync_interval_s:
                self._fsync(fd)
            if self._forward is not None:
                for record, line in zip(records, lines, strict=False):
                    try:  # inside the lock so copies arrive in seq order; a failing copy must not stop the original
                        self._forward(json.loads(line))
                    except Exception:
                        log.warning("audit forwarder failed", exc_info=True, extra={"seq": record["seq"]})
        return records  # built from fresh copies: equal to what `verify_file` reads back, and the caller's own

    def _timestamp(self, now: float) -> str:
        """RFC 3339 with ms; the date-time part is formatted once per second (records come in bursts)."""
        millis = round(now * 1000)
        seconds, ms = divmod(millis, 1000)
        if seconds != self._stamp_second:
            self._stamp_second = seconds
            self._stamp_prefix = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._stamp_prefix}.{ms:03d}Z"

    def _writable_fd(self) -> int:
        if self._fd is None:
            raise AuditError(f"{self.path} is not open")
        if self._broken is not None:
            raise AuditError(self._broken)
        return self._fd

    def _append(self, fd: int, data: bytes) -> None:
        """One write on O_APPEND lands whole at the end; the loop only runs after a short write (disk full)."""
        written = 0
        try:
            written = os.write(fd, data)
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as exc:
            if written:
                self._broken = f"{self.path} holds a partial record after a failed write ({exc}); refusing to go on"
            raise AuditError(f"could not append to {self.path}: {exc}") from exc

    def _fsync(self, fd: int) -> None:
        os.fsync(fd)
        self._last_sync = time.monotonic()

    def sync(self) -> None:
        """Forces every record written so far to disk (call before reporting a head to an auditor)."""
        with self._lock:
            if self._fd is not None:
                self._fsync(self._fd)

    def close(self) -> None:
        """Fsyncs, unlocks and closes; idempotent."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)  # also releases the flock

    def __enter__(self) -> Self:
        return self if self._fd is not None else self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def syslog_forwarder(ident: str = "runner-orchestrator") -> Forwarder:
    """A second, independently verifiable copy via syslog (journald picks it up) -- also a truncation anchor.

    Uses facility AUTHPRIV (security messages, restricted readers). `openlog` is process-wide."""
    syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_AUTHPRIV)

    def forward(record: Record) -> None:
        priority = syslog.LOG_INFO if record.get("outcome") == "ok" else syslog.LOG_NOTICE
        syslog.syslog(syslog.LOG_AUTHPRIV | priority, "AUDIT " + canonical_json(record).decode())

    return forward


@dataclass(frozen=True)
class VerifyResult:
    """``records``/``head``: the intact prefix (everything, when ok). ``first_bad_seq`` is the seq stored in the
    offending line (the expected seq when it cannot be read); ``line`` its 1-based line number. For a slice
    (``expect_prev``): ``first_seq`` is where it starts and ``anchored_on`` the hash its first ``prev`` matched, so
    a report says "verified from seq N anchored on H", not "verified" -- it proves nothing about records before N."""

    ok: bool
    records: int
    head: str | None
    first_bad_seq: int | None
    problem: str | None
    line: int | None = None
    first_seq: int = 0
    anchored_on: str | None = None

    @property
    def last_seq(self) -> int | None:
        return self.first_seq + self.records - 1 if self.records else None


def _sha256_hex_or_none(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    value = value.lower()
    if not SHA256_HEX.fullmatch(value):
        raise ValueError(f"{name} must be a 64-digit hex SHA-256")
    return value


def verify_file(
    path: Path,
    public_key: Ed25519PublicKey,
    *,
    expect_head: str | None = None,
    expect_seq: int | None = None,
    expect_prev: str | None = None,
) -> VerifyResult:
    """Checks every record (signature, seq, chain) from the start; an anchor also detects a truncated tail.

    ``expect_head`` is a head reported earlier: the log must still contain a line with that hash (it may have
    grown since). ``expect_seq``: the log must still reach that seq (and, with ``expect_head``, that record must
    be the anchored one).

    ``expect_prev`` verifies a slice (a contiguous export, see `audit_search.export`): the file may then start at
    any seq N, and its first record's ``prev`` must be this hash -- the line hash of record N-1, or the genesis
    hash when N = 0 -- which the caller must have from elsewhere (an earlier head, the export summary it trusts).
    Without it the file must start at record 0, so a start cut off stays detectable."""
    expect_head = _sha256_hex_or_none(expect_head, "expect_head")
    expect_prev = _sha256_hex_or_none(expect_prev, "expect_prev")
    count = 0
    first_seq = 0
    expected = 0  # the seq the next record must carry
    head: str | None = None
    anchor_seen = False
    unsigned_from: int | None = None  # first record not yet vouched for by a signed one

    def bad(seq: int | None, lineno: int | None, problem: str) -> VerifyResult:
        return VerifyResult(False, count, head, seq, problem, lineno, first_seq, expect_prev)

    with path.open("rb") as file:
        for lineno, raw in enumerate(file, start=1):  # binary iteration splits on b"\n" only
            if not raw.endswith(b"\n"):
                return bad(expected, lineno, f"line {lineno} is an incomplete record (no newline): torn or appended")
            line = raw[:-1]
            try:
                record = _inspect(line, public_key)
            except _BadRecord as exc:
                name = f"line {lineno}" if exc.seq is None else f"record {exc.seq} (line {lineno})"
                return bad(expected if exc.seq is None else exc.seq, lineno, f"{name} {exc.what}")
            seq: int = record["seq"]
            name = f"record {seq} (line {lineno})"
            if count == 0 and expect_prev is not None:
                first_seq = expected = seq
                if record["prev"] != expect_prev:
                    return bad(
                        seq,
                        lineno,
                        f"{name} is the first record of the slice but its prev {record['prev']} is not the anchor "
                        f"{expect_prev}: the slice does not follow the anchored record (start cut, or another anchor)",
                    )
            if seq != expected:
                if count == 0:
                    return bad(seq, lineno, f"{name} is the first record, not record 0: the start was removed")
                if seq > expected:
                    missing = str(expected) if seq == expected + 1 else f"{expected}..{seq - 1}"
                    why = f"record(s) {missing} are missing (removed or reordered)"
                else:
                    why = "seq repeats or goes backwards (a record was duplicated, inserted or reordered)"
                return bad(seq, lineno, f"{name} follows record {expected - 1}: {why}")
            expected_prev = genesis_hash(record["chain"]) if seq == 0 else head if count else expect_prev
            if record["prev"] != expected_prev:
                if seq == 0:
                    return bad(seq, lineno, f"{name} does not start a chain: prev is not the genesis hash")
                if unsigned_from is not None:  # the unsigned record before is covered by the chain only
                    return bad(
                        seq,
                        lineno,
                        f"{name} does not follow record {seq - 1}: record {seq - 1} (unsigned, vouched for by the "
                        "chain) was altered, or a record was removed, inserted or reordered before it",
                    )
                return bad(
                    seq,
                    lineno,
                    f"{name} does not follow record {seq - 1}: a record was removed, inserted or reordered before it",
                )
            if record["sig"] is not None:
                unsigned_from = None  # this signature vouches for every unsigned record before it
            elif unsigned_from is None:
                unsigned_from = seq
            head = line_hash(line)
            count += 1
            expected += 1
            if expect_head is not None and head == expect_head and expect_seq in (None, seq):
                anchor_seen = True
            if expect_head is not None and expect_seq == seq and head != expect_head:
                return bad(seq, lineno, f"{name} is not the anchored record {expect_head}: the log was rewritten")
    end = "the log is empty" if head is None else f"the log ends at record {expected - 1} (head {head})"
    if expect_prev is not None and head is None:
        return bad(None, None, f"{end}: no record follows the anchor {expect_prev}, so the slice proves nothing")
    if unsigned_from is not None:
        last = expected - 1
        which = f"record {unsigned_from} is" if unsigned_from == last else f"records {unsigned_from}..{last} are"
        return bad(
            unsigned_from,
            None,
            f"{end}, but {which} not signed and no signed record follows: the end of a batch was cut off "
            "(crash mid-write or truncation) or the records were forged",
        )
    if expect_seq is not None and expected <= expect_seq:
        return bad(expected, None, f"{end} but record {expect_seq} was anchored: the tail was truncated")
    if expect_head is not None and not anchor_seen:
        return bad(
            expected, None, f"{end} and no record has the anchored head {expect_head}: tail truncated or log rewritten"
        )
    return VerifyResult(True, count, head, None, None, first_seq=first_seq, anchored_on=expect_prev)


__all__ = [
    "ACTOR_TYPES",
    "AUDIT_FILE_NAME",
    "PUBLIC_KEY_FILE_NAME",
    "AuditError",
    "AuditLog",
    "Entry",
    "VerifyResult",
    "accessor_digest",
    "genesis_hash",
    "line_hash",
    "prepare",
    "syslog_forwarder",
    "verify_file",
]
