"""Tests for the signed, hash-chained audit trail (orchestrator/audit.py), on real files in tmp_path."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import stat
import syslog
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.access.grants import Grant, Principal
from orchestrator.cli import main
from orchestrator.evidence import audit, keys
from orchestrator.evidence.audit import (
    AUDIT_FILE_NAME,
    AuditError,
    AuditLog,
    accessor_digest,
    genesis_hash,
    prepare,
    verify_file,
)
from orchestrator.evidence.canonical import canonical_json as canonical_bytes
from orchestrator.evidence.keys import export_public_key

from fake_clock import FakeClock

WEBHOOK = {"type": "webhook", "source": "gitea", "delivery": "d-1"}
API = {"type": "api", "token_name": "ops", "role": "operator"}
OPS_ADMIN = Principal("ops", (Grant("admin"),))
CONTROLLER = {"type": "controller"}
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return keys.load_or_create(tmp_path / "keys" / "audit.key")


def write_records(path: Path, key: Ed25519PrivateKey, count: int, *, start: int = 0) -> list[dict[str, Any]]:
    with AuditLog(path, key, clock=FakeClock(T0, tick=0.25)) as log:
        return [
            log.record(
                (WEBHOOK, API, CONTROLLER)[i % 3],
                ("webhook.accepted", "api.cancel", "job.state")[i % 3],
                f"job-{start + i}",
                "ok" if i % 4 else "denied",
                remote="192.0.2.7" if i % 2 else None,
                details={"n": start + i, "state": "running", "note": "ünïcödé ✓"},
            )
            for i in range(count)
        ]


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def sign_line(record: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    unsigned = {k: v for k, v in record.items() if k != "sig"}
    signed = dict(unsigned, sig=base64.b64encode(key.sign(canonical_bytes(unsigned))).decode())
    return canonical_bytes(signed) + b"\n"


def verify(path: Path, key: Ed25519PrivateKey, **kwargs: Any) -> audit.VerifyResult:
    return verify_file(path, key.public_key(), **kwargs)


# -- writing and chaining -----------------------------------------------------------------------------------------


def test_records_are_signed_chained_and_verify(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    records = write_records(path, key, 6)
    lines = read_lines(path)
    assert [r["seq"] for r in records] == list(range(6))
    assert [json.loads(line) for line in lines] == records
    assert records[0]["time"] == "2023-11-14T22:13:20.250Z"
    assert records[1]["time"] == "2023-11-14T22:13:20.500Z"
    assert re.fullmatch(r"[0-9a-f]{32}", records[0]["chain"])
    assert all("chain" not in r for r in records[1:])
    assert records[0]["prev"] == genesis_hash(records[0]["chain"])
    for n in range(1, 6):
        assert records[n]["prev"] == hashlib.sha256(lines[n - 1].rstrip(b"\n")).hexdigest()
    for line, record in zip(lines, records, strict=True):
        assert line == canonical_bytes(record) + b"\n"
        unsigned = {k: v for k, v in record.items() if k != "sig"}
        key.public_key().verify(base64.b64decode(record["sig"]), canonical_bytes(unsigned))
    assert records[1] == {
        "seq": 1,
        "time": "2023-11-14T22:13:20.500Z",
        "actor": API,
        "action": "api.cancel",
        "target": "job-1",
        "outcome": "ok",
        "remote": "192.0.2.7",
        "details": {"n": 1, "state": "running", "note": "ünïcödé ✓"},
        "prev": records[1]["prev"],
        "sig": records[1]["sig"],
    }
    result = verify(path, key)
    head = hashlib.sha256(lines[-1].rstrip(b"\n")).hexdigest()
    assert result == audit.VerifyResult(True, 6, head, None, None)
    assert result.last_seq == 5


def test_time_is_rfc3339_utc_with_rounded_milliseconds(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog(tmp_path / "a.jsonl", key, clock=lambda: 1_700_000_000.9996) as log:
        assert log.record(CONTROLLER, "config.loaded", None, "ok")["time"] == "2023-11-14T22:13:21.000Z"


def test_empty_file_verifies_with_zero_records(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    AuditLog(path, key).open().close()
    assert path.read_bytes() == b""
    assert verify(path, key) == audit.VerifyResult(True, 0, None, None, None)


def test_reopening_continues_the_chain(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    first = write_records(path, key, 3)
    with AuditLog(path, key) as log:
        assert log.next_seq == 3
        assert log.head == hashlib.sha256(read_lines(path)[-1].rstrip(b"\n")).hexdigest()
        fourth = log.record(CONTROLLER, "reconcile.container_removed", "job-x", "ok")
    assert fourth["seq"] == 3
    assert "chain" not in fourth
    second = write_records(path, key, 2, start=4)
    assert [r["seq"] for r in second] == [4, 5]
    assert verify(path, key).records == 6
    assert json.loads(read_lines(path)[0])["chain"] == first[0]["chain"]


def test_file_is_created_0600_and_looser_modes_are_tightened(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "data" / AUDIT_FILE_NAME
    write_records(path, key, 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    write_records(path, key, 1, start=1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_second_writer_on_the_same_file_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    with AuditLog(path, key), pytest.raises(AuditError, match="already being written"):
        AuditLog(path, key).open()
    AuditLog(path, key).open().close()  # the lock goes with close()


def test_record_before_open_and_after_close_is_an_error(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = AuditLog(tmp_path / AUDIT_FILE_NAME, key)
    with pytest.raises(AuditError, match="not open"):
        log.record(CONTROLLER, "config.loaded", None, "ok")
    log.open()
    log.close()
    log.close()
    with pytest.raises(AuditError, match="not open"):
        log.record(CONTROLLER, "config.loaded", None, "ok")


def test_sync_interval_controls_fsync(tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    with AuditLog(tmp_path / "every.jsonl", key, sync_interval_s=0) as log:
        calls.clear()
        for _ in range(3):
            log.record(CONTROLLER, "config.loaded", None, "ok")
        assert len(calls) == 3
    with AuditLog(tmp_path / "never.jsonl", key, sync_interval_s=None) as log:
        calls.clear()
        for _ in range(3):
            log.record(CONTROLLER, "config.loaded", None, "ok")
        assert calls == []
        log.sync()
        assert len(calls) == 1
    assert len(calls) == 2  # close() fsyncs


# -- open() notices a bad tail ------------------------------------------------------------------------------------


def test_open_detects_a_tampered_last_record(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_records(path, key, 4)
    lines = read_lines(path)
    lines[-1] = lines[-1].replace(b'"outcome":"ok"', b'"outcome":"denied"')
    write_lines(path, lines)
    with pytest.raises(AuditError, match=r"last record \(seq 3\).*was altered.*signature"):
        AuditLog(path, key).open()
    assert read_lines(path) == lines  # nothing appended


def test_open_detects_a_last_record_signed_with_another_key(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_records(path, key, 2)
    with pytest.raises(AuditError, match="signing key changed"):
        AuditLog(path, Ed25519PrivateKey.generate()).open()


@pytest.mark.parametrize(
    ("tail", "message"),
    [(b'{"seq":4,"act', "incomplete record"), (b"garbage\n", "not a valid JSON object")],
)
def test_open_detects_a_torn_or_garbled_tail(tmp_path: Path, key: Ed25519PrivateKey, tail: bytes, message: str) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_records(path, key, 4)
    with path.open("ab") as file:
        file.write(tail)
    with pytest.raises(AuditError, match=message):
        AuditLog(path, key).open()


def test_open_reads_a_long_tail_backwards(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    with AuditLog(path, key) as log:
        log.record(CONTROLLER, "config.loaded", None, "ok", details={"blob": "x" * 200_000})
        log.record(CONTROLLER, "config.loaded", None, "ok", details={"blob": "y" * 150_000})
    with AuditLog(path, key) as log:
        assert log.next_seq == 2
        log.record(CONTROLLER, "config.loaded", None, "ok")
    assert verify(path, key).ok


# -- tampering is detected at the right record ------------------------------------------------------------------

Tamper = Callable[[list[bytes], Ed25519PrivateKey, Path], list[bytes]]


def alter_outcome(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    lines[3] = lines[3].replace(b'"outcome":"ok"', b'"outcome":"error"')
    return lines


def alter_signature(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    record = json.loads(lines[3])
    record["sig"] = json.loads(lines[2])["sig"]
    lines[3] = canonical_bytes(record) + b"\n"
    return lines


def flip_signature_padding_bits(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    record = json.loads(lines[-1])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(record["sig"][-3])  # 86th char carries 2 data bits + 4 ignored bits
    record["sig"] = record["sig"][:-3] + alphabet[last ^ 0b1111] + "=="
    assert base64.b64decode(record["sig"]) == base64.b64decode(json.loads(lines[-1])["sig"])
    lines[-1] = canonical_bytes(record) + b"\n"
    return lines


def reformat_whitespace(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    lines[3] = json.dumps(json.loads(lines[3]), sort_keys=True, ensure_ascii=False).encode() + b"\n"
    return lines


def delete_middle(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    del lines[3]
    return lines


def delete_two_middle(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    del lines[2:4]
    return lines


def delete_first(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    del lines[0]
    return lines


def insert_forged_other_key(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    forged = json.loads(lines[3])
    forged.update(outcome="ok", details={"forged": True})
    lines.insert(3, sign_line(forged, Ed25519PrivateKey.generate()))
    return lines


def duplicate_record(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    lines.insert(5, lines[2])
    return lines


def append_duplicate_of_last(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    return [*lines, lines[-1]]


def swap_two(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    lines[2], lines[3] = lines[3], lines[2]
    return lines


def _other_log_same_key(key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    other = tmp / "other.jsonl"
    write_records(other, key, 8)
    return read_lines(other)


def replace_with_record_from_other_log(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    lines[3] = _other_log_same_key(key, tmp)[3]
    return lines


def insert_record_from_other_log(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    lines.insert(3, _other_log_same_key(key, tmp)[3])
    return lines


def replace_first_with_other_logs_first(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    lines[0] = _other_log_same_key(key, tmp)[0]  # a valid start on its own: noticed by the record after it
    return lines


def garble_line(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    lines[3] = b"not json at all\n"
    return lines


def insert_blank_line(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    lines.insert(3, b"\n")
    return lines


def drop_field(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    record = json.loads(lines[3])
    del record["remote"]
    lines[3] = canonical_bytes(record) + b"\n"
    return lines


def drop_chain_id(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    record = json.loads(lines[0])
    del record["chain"]
    lines[0] = sign_line(record, key)
    return lines


def torn_tail(lines: list[bytes], key: Ed25519PrivateKey, tmp: Path) -> list[bytes]:
    return [*lines, b'{"seq":6,"ti']


@pytest.mark.parametrize(
    ("tamper", "first_bad_seq", "line", "records", "message"),
    [
        (alter_outcome, 3, 4, 3, "record 3 (line 4) was altered: its signature does not verify"),
        (alter_signature, 3, 4, 3, "record 3 (line 4) was altered: its signature does not verify"),
        (flip_signature_padding_bits, 5, 6, 5, "record 5 (line 6) was altered: its signature does not verify"),
        (reformat_whitespace, 3, 4, 3, "record 3 (line 4) was altered: it is not byte-for-byte in canonical form"),
        (delete_middle, 4, 4, 3, "record 4 (line 4) follows record 2: record(s) 3 are missing"),
        (delete_two_middle, 4, 3, 2, "record 4 (line 3) follows record 1: record(s) 2..3 are missing"),
        (delete_first, 1, 1, 0, "record 1 (line 1) is the first record, not record 0: the start was removed"),
        (insert_forged_other_key, 3, 4, 3, "record 3 (line 4) was altered: its signature does not verify"),
        (duplicate_record, 2, 6, 5, "record 2 (line 6) follows record 4: seq repeats or goes backwards"),
        (append_duplicate_of_last, 5, 7, 6, "record 5 (line 7) follows record 5: seq repeats"),
        (swap_two, 3, 3, 2, "record 3 (line 3) follows record 1: record(s) 2 are missing (removed or reordered)"),
        (replace_with_record_from_other_log, 3, 4, 3, "record 3 (line 4) does not follow record 2: a record was"),
        (insert_record_from_other_log, 3, 4, 3, "record 3 (line 4) does not follow record 2: a record was removed"),
        (replace_first_with_other_logs_first, 1, 2, 1, "record 1 (line 2) does not follow record 0"),
        (garble_line, 3, 4, 3, "line 4 is not a valid JSON object"),
        (insert_blank_line, 3, 4, 3, "line 4 is not a valid JSON object"),
        (drop_field, 3, 4, 3, "record 3 (line 4) has missing or malformed field(s): remote"),
        (drop_chain_id, 0, 1, 0, "record 0 (line 1) has missing or malformed field(s): chain"),
        (torn_tail, 6, 7, 6, "line 7 is an incomplete record"),
    ],
)
def test_tampering_is_detected_at_the_right_record(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    tamper: Tamper,
    first_bad_seq: int,
    line: int,
    records: int,
    message: str,
) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_records(path, key, 6)
    tampered = tamper(read_lines(path), key, tmp_path)
    write_lines(path, tampered)
    result = verify(path, key)
    assert not result.ok
    assert result.problem is not None and message in result.problem
    assert (result.first_bad_seq, result.line, result.records) == (first_bad_seq, line, records)
    intact_head = hashlib.sha256(tampered[records - 1].rstrip(b"\n")).hexdigest() if records else None
    assert result.head == intact_head


def test_verify_with_the_wrong_public_key_fails_at_record_0(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_records(path, key, 2)
    result = verify_file(path, Ed25519PrivateKey.generate().public_key())
    assert (result.ok, result.first_bad_seq, result.records) == (False, 0, 0)


# -- truncation and anchors ---------------------------------------------------------------------------------------


def test_truncated_tail_is_only_detected_with_an_anchor(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_records(path, key, 8)
    anchor = verify(path, key)
    assert anchor.ok and anchor.head is not None and anchor.last_seq == 7
    write_lines(path, read_lines(path)[:5])

    assert verify(path, key).ok  # a shorter chain is still a valid chain: documented limitation
    by_head = verify(path, key, expect_head=anchor.head)
    assert not by_head.ok and by_head.problem is not None
    assert "no record has the anchored head" in by_head.problem and "ends at record 4" in by_head.problem
    by_seq = verify(path, key, expect_seq=7)
    assert not by_seq.ok and by_seq.problem is not None and "tail was truncated" in by_seq.problem
    assert not verify(path, key, expect_head=anchor.head.upper(), expect_seq=7).ok

    write_records(path, key, 5, start=5)  # growing it back past the anchor does not hide the cut
    assert verify(path, key).records == 10
    regrown = verify(path, key, expect_head=anchor.head, expect_seq=7)
    assert not regrown.ok and regrown.problem is not None
    assert "record 7 (line 8) is not the anchored record" in regrown.problem
    assert not verify(path, key, expect_head=anchor.head).ok


def test_an_anchor_still_verifies_after_the_log_grew(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_records(path, key, 3)
    anchor = verify(path, key)
    assert anchor.head is not None
    write_records(path, key, 3, start=3)
    assert verify(path, key, expect_head=anchor.head).ok
    assert verify(path, key, expect_head=anchor.head, expect_seq=2).ok
    assert not verify(path, key, expect_head=anchor.head, expect_seq=1).ok
    assert not verify(path, key, expect_head="0" * 64).ok
    with pytest.raises(ValueError, match="64-digit"):
        verify(path, key, expect_head="abc")


def test_an_anchor_on_an_emptied_log_fails(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_records(path, key, 2)
    head = verify(path, key).head
    assert head is not None
    path.write_bytes(b"")
    result = verify(path, key, expect_head=head)
    assert not result.ok and result.problem is not None and "the log is empty" in result.problem


# -- never log a secret -------------------------------------------------------------------------------------------


def test_accessor_digest_is_sha256_hex() -> None:
    assert accessor_digest("hmac-accessor-123") == hashlib.sha256(b"hmac-accessor-123").hexdigest()


@pytest.mark.parametrize(
    "details",
    [
        {"token": "x"},
        {"Token": "x"},
        {"client_token": "x"},
        {"clientToken": "x"},
        {"VAULT_TOKEN": "x"},
        {"jwt": "x"},
        {"id_jwt": "x"},
        {"secret": "x"},
        {"client_secret": "x"},
        {"secret_id": "x"},
        {"password": "x"},
        {"DB_PASSWORD": "x"},
        {"token_accessor": "x"},
        {"auth": {"client_token": "x"}},
        {"items": [{"ok": 1}, {"jwt": "x"}]},
        {"note": "hvs.CAESIJlWh3p8Ztl5n1Ecf9zZV0bqcm9vdA"},
        {"header": "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJl"},
        {"value": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
    ],
)
def test_secret_looking_details_are_refused(tmp_path: Path, key: Ed25519PrivateKey, details: dict[str, Any]) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    with AuditLog(path, key) as log, pytest.raises(ValueError, match="never log"):
        log.record(CONTROLLER, "credentials.issued", "job-1", "ok", details=details)
    assert path.read_bytes() == b""


def test_secret_looking_actor_fields_are_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog(tmp_path / AUDIT_FILE_NAME, key) as log, pytest.raises(ValueError, match="never log"):
        log.record({"type": "api", "token": "abc"}, "auth.failed", None, "denied")


def test_descriptive_keys_about_secrets_are_allowed(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    details = {
        "token_name": "ops",
        "secret_path": "kv/data/ci/npm",
        "secret_names": ["npm", "pypi"],
        "token_ttl": 900,
        "accessor_digest": accessor_digest("acc"),
        "token_sha256": "0" * 64,
        "tokenizer": "bpe",
        "process": "s.ABCDEFGHIJKLMNOPQRSTUVWXYZ",  # not a bare legacy Vault token
    }
    path = tmp_path / AUDIT_FILE_NAME
    with AuditLog(path, key) as log:
        assert log.record(API, "secret.read", "job-1", "ok", details=details)["details"] == details
    assert verify(path, key).ok


_SECRET_NAMES = ["token", "Token", "apiToken", "jwt", "ID_JWT", "client_secret", "secret_name", "passwd", "PassPhrase"]
_SECRET_VALUES = [
    "s.ABCDEFGHIJKLMNOPQRSTUVWX",
    "hvs.CAESIJlWh3p8Ztl5n1Ecf9zZV0bq",
    "hvb.AAAAAQJ_abcdefghijklmnopqrst",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2ln",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZ",
    "x\nhvr.abcdefghijklmnopqrstu",
]
_SECRETISH = st.sampled_from([*_SECRET_NAMES, *_SECRET_VALUES, "ok"])
_TEXT = st.one_of(_SECRETISH, st.text(max_size=12), st.builds("".join, st.lists(_SECRETISH | st.text(max_size=3))))
_JSON = st.recursive(
    st.none() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(value=_JSON)
def test_the_secret_prefilter_never_misses_what_the_full_check_refuses(value: Any) -> None:
    """`record` skips the per-key/per-value walk when the encoded record has none of the markers; that shortcut
    is only sound if every value the walk refuses does contain one."""
    try:
        encoded = canonical_bytes(value)
    except ValueError:
        return  # not storable at all (e.g. a lone surrogate): refused before the secret check
    try:
        audit._refuse_secrets(json.loads(encoded), "details")
    except ValueError:
        assert audit._may_hold_secret(encoded)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"actor": {"type": "robot"}}, "actor must be"),
        ({"actor": {"source": "x"}}, "actor must be"),
        ({"action": "Webhook Accepted"}, "action must look like"),
        ({"action": "webhook"}, "action must look like"),
        ({"outcome": ""}, "outcome"),
        ({"details": {"x": float("nan")}}, "JSON-serialisable"),
        ({"details": {"x": object()}}, "JSON-serialisable"),
        ({"details": {"x": "\ud800"}}, "JSON-serialisable"),
    ],
)
def test_malformed_records_are_refused(
    tmp_path: Path, key: Ed25519PrivateKey, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"actor": CONTROLLER, "action": "job.state", "target": "j", "outcome": "ok"} | kwargs
    path = tmp_path / AUDIT_FILE_NAME
    with AuditLog(path, key) as log:
        with pytest.raises(ValueError, match=message):
            log.record(args.pop("actor"), args.pop("action"), args.pop("target"), args.pop("outcome"), **args)
        assert log.next_seq == 0
        log.record(CONTROLLER, "job.state", "j", "ok")
    assert verify(path, key).records == 1


def test_caller_mutations_after_record_do_not_reach_the_log(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    details: dict[str, Any] = {"labels": ["a"], "n": (1, 2)}
    with AuditLog(path, key) as log:
        returned = log.record(CONTROLLER, "job.state", "j", "ok", details=details)
    details["labels"].append("b")
    assert returned["details"] == {"labels": ["a"], "n": [1, 2]} == json.loads(path.read_bytes())["details"]


# -- batches: one signature per write ------------------------------------------------------------------------------


def write_batches(path: Path, key: Ed25519PrivateKey, sizes: list[int]) -> list[dict[str, Any]]:
    written: list[dict[str, Any]] = []
    with AuditLog(path, key, clock=FakeClock(T0, tick=0.25)) as log:
        for size in sizes:
            start = len(written)
            entries = [
                prepare(CONTROLLER, "job.state", f"job-{start + i}", "ok", details={"n": i}) for i in range(size)
            ]
            written += log.append(entries)
    return written


def test_a_batch_is_one_write_signed_once_on_its_last_record(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    records = write_batches(path, key, [3, 1, 4])
    assert [r["sig"] is not None for r in records] == [False, False, True, True, False, False, False, True]
    assert records == [json.loads(line) for line in read_lines(path)]
    result = verify(path, key)
    assert result.ok and result.records == 8 and result.head == audit.line_hash(read_lines(path)[-1][:-1])
    with AuditLog(path, key) as log:  # reopening continues after a signed batch end
        assert log.record(CONTROLLER, "config.loaded", None, "ok")["seq"] == 8
    assert verify(path, key).ok


def test_an_empty_batch_writes_nothing(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    with AuditLog(path, key) as log:
        assert log.append([]) == []
        assert log.next_seq == 0
    assert path.read_bytes() == b""


def test_a_batch_cut_after_an_unsigned_record_is_detected(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_batches(path, key, [2, 4])
    write_lines(path, read_lines(path)[:4])  # records 0..3: batch 1, then half of batch 2
    result = verify(path, key)
    assert not result.ok and result.first_bad_seq == 2
    assert "records 2..3 are not signed and no signed record follows" in (result.problem or "")
    with pytest.raises(AuditError, match=r"last record \(seq 3\).*is not signed"):
        AuditLog(path, key).open()


def test_an_altered_unsigned_record_fails_at_the_next_record(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_batches(path, key, [5])
    lines = read_lines(path)
    altered = json.loads(lines[1])
    altered["outcome"] = "denied"
    lines[1] = canonical_bytes(altered) + b"\n"  # still canonical, and unsigned records carry no signature to break
    write_lines(path, lines)
    result = verify(path, key)
    assert not result.ok and result.first_bad_seq == 2
    assert "record 1 (unsigned, vouched for by the chain) was altered" in (result.problem or "")


@pytest.mark.parametrize(("index", "bad_seq"), [(1, 2), (2, 2)])  # middle: the chain breaks; end: nothing vouches
def test_stripping_a_signature_is_detected(tmp_path: Path, key: Ed25519PrivateKey, index: int, bad_seq: int) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_batches(path, key, [1, 1, 1])
    lines = read_lines(path)
    stripped = json.loads(lines[index])
    stripped["sig"] = None
    lines[index] = canonical_bytes(stripped) + b"\n"
    write_lines(path, lines)
    result = verify(path, key)
    assert not result.ok and result.first_bad_seq == bad_seq, result.problem


def test_auditor_writes_what_queued_while_it_was_busy_as_one_batch(tmp_path: Path) -> None:
    from orchestrator.evidence.auditor import Auditor

    key = keys.load_or_create(tmp_path / "k")
    log = AuditLog(tmp_path / AUDIT_FILE_NAME, key).open()
    auditor = Auditor(log, linger_s=0)  # no linger: the batches are then exactly what queued while it was busy
    with log._lock:  # the writer takes the first event, then blocks on the file while four more queue up
        auditor.api(OPS_ADMIN, "api.cancel", "job-0", None, "ok")
        deadline = time.monotonic() + 10
        while not auditor._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.001)
        for i in range(1, 5):
            auditor.api(OPS_ADMIN, "api.cancel", f"job-{i}", None, "ok")
    auditor.close()
    records = [json.loads(line) for line in read_lines(tmp_path / AUDIT_FILE_NAME)]
    assert [r["target"] for r in records] == [f"job-{i}" for i in range(5)]
    assert [r["sig"] is not None for r in records] == [True, False, False, False, True]
    assert verify(tmp_path / AUDIT_FILE_NAME, key).ok


def test_auditor_lingers_so_a_burst_shares_one_signature(tmp_path: Path) -> None:
    from orchestrator.evidence.auditor import Auditor

    key = keys.load_or_create(tmp_path / "k")
    auditor = Auditor(AuditLog(tmp_path / AUDIT_FILE_NAME, key).open(), linger_s=0.05)
    for i in range(20):  # far quicker than the linger: the writer wakes on the first and finds the rest queued
        auditor.api(OPS_ADMIN, "api.cancel", f"job-{i}", None, "ok")
    auditor.close()
    records = [json.loads(line) for line in read_lines(tmp_path / AUDIT_FILE_NAME)]
    assert [r["target"] for r in records] == [f"job-{i}" for i in range(20)]
    assert sum(r["sig"] is not None for r in records) < 5 and records[-1]["sig"] is not None
    assert verify(tmp_path / AUDIT_FILE_NAME, key).ok


def test_auditor_records_when_the_event_happened_not_when_it_was_written(tmp_path: Path) -> None:
    from orchestrator.evidence.auditor import Auditor

    key = keys.load_or_create(tmp_path / "k")
    auditor = Auditor(AuditLog(tmp_path / AUDIT_FILE_NAME, key).open(), linger_s=0.5)
    before = time.time()
    auditor.api(OPS_ADMIN, "api.cancel", "job-1", None, "ok")
    auditor.close()  # written after the linger, half a second later
    (record,) = [json.loads(line) for line in read_lines(tmp_path / AUDIT_FILE_NAME)]
    at = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert before - 0.002 <= at < before + 0.25


@pytest.mark.parametrize("at", [float("nan"), float("inf"), "now"])
def test_an_event_time_must_be_finite_unix_seconds(at: Any) -> None:
    with pytest.raises(ValueError, match="finite unix seconds"):
        prepare(CONTROLLER, "job.state", "j", "ok", at=at)


# -- concurrency and forwarding -----------------------------------------------------------------------------------


def test_concurrent_records_from_threads_keep_the_chain_valid(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    threads, per_thread = 8, 200
    barrier = threading.Barrier(threads)
    with AuditLog(path, key) as log:

        def work(worker: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                log.record(CONTROLLER, "job.state", f"job-{worker}-{i}", "ok", details={"worker": worker})

        pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    result = verify(path, key)
    assert result.ok and result.records == threads * per_thread
    targets = {json.loads(line)["target"] for line in read_lines(path)}
    assert len(targets) == threads * per_thread


def test_forwarder_receives_every_record_in_order(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    forwarded: list[dict[str, Any]] = []
    path = tmp_path / AUDIT_FILE_NAME
    with AuditLog(path, key, forward=forwarded.append) as log:
        returned = [log.record(WEBHOOK, "webhook.accepted", f"job-{i}", "ok", details={"i": i}) for i in range(5)]
    assert forwarded == returned == [json.loads(line) for line in read_lines(path)]
    forwarded[0]["outcome"] = "mutated"  # the forwarder gets its own copy
    assert returned[0]["outcome"] == "ok"


def test_a_failing_forwarder_does_not_stop_auditing(
    tmp_path: Path, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(record: dict[str, Any]) -> None:
        raise OSError("syslog down")

    path = tmp_path / AUDIT_FILE_NAME
    with (
        caplog.at_level(logging.WARNING, logger="orchestrator.evidence.audit"),
        AuditLog(path, key, forward=broken) as log,
    ):
        log.record(CONTROLLER, "config.loaded", None, "ok")
        log.record(CONTROLLER, "config.loaded", None, "ok")
    assert verify(path, key).records == 2
    assert [r.getMessage() for r in caplog.records] == ["audit forwarder failed"] * 2


def test_syslog_forwarder_sends_a_verifiable_copy(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[Any, ...]] = []
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(syslog, "openlog", lambda *args: opened.append(args))
    monkeypatch.setattr(syslog, "syslog", lambda priority, message: sent.append((priority, message)))
    path = tmp_path / AUDIT_FILE_NAME
    with AuditLog(path, key, forward=audit.syslog_forwarder("ro-test")) as log:
        log.record(API, "api.cancel", "job-1", "ok")
        log.record(API, "auth.failed", None, "denied", remote="198.51.100.4")
    assert opened == [("ro-test", syslog.LOG_PID, syslog.LOG_AUTHPRIV)]
    assert [priority for priority, _ in sent] == [
        syslog.LOG_AUTHPRIV | syslog.LOG_INFO,
        syslog.LOG_AUTHPRIV | syslog.LOG_NOTICE,
    ]
    assert [message.removeprefix("AUDIT ").encode() + b"\n" for _, message in sent] == read_lines(path)


# -- public key and CLI -------------------------------------------------------------------------------------------


def test_export_public_key(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    export_public_key(tmp_path / "audit.pub", key)
    assert keys.load_public((tmp_path / "audit.pub").read_bytes()) == key.public_key()
    assert (tmp_path / "audit.pub").stat().st_mode & 0o777 == 0o644
    export_public_key(tmp_path / "elsewhere.pem", key.public_key())
    assert (tmp_path / "elsewhere.pem").read_bytes() == keys.public_pem(key)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def cli_verify(file: Path, pubkey: Path | None, expect_head: str | None, expect_seq: int | None = None) -> int:
    """`orchestrator audit verify` as a user runs it."""
    argv = ["audit", "verify", str(file)]
    argv += ["--pubkey", str(pubkey)] if pubkey is not None else []
    argv += ["--expect-head", expect_head] if expect_head is not None else []
    argv += ["--expect-seq", str(expect_seq)] if expect_seq is not None else []
    return main(argv)


def test_cli_verify_ok_uses_audit_pub_next_to_the_file(
    tmp_path: Path, key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_records(path, key, 4)
    export_public_key(tmp_path / "audit.pub", key)
    head = verify(path, key).head
    assert cli_verify(path, None, None) == 0
    assert capsys.readouterr().out == f"OK: 4 records, head {head}\n"
    assert cli_verify(path, tmp_path / "audit.pub", head) == 0
    assert capsys.readouterr().out == f"OK: 4 records, head {head}\n"


def test_cli_verify_reports_tampering_with_exit_1(
    tmp_path: Path, key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_records(path, key, 6)
    export_public_key(tmp_path / "audit.pub", key)
    head = verify(path, key).head
    write_lines(path, alter_outcome(read_lines(path), key, tmp_path))
    assert cli_verify(path, None, None) == 1
    assert capsys.readouterr().out.startswith("TAMPERED: record 3 (line 4) was altered")

    write_records(tmp_path / "b.jsonl", key, 6)
    write_lines(tmp_path / "b.jsonl", read_lines(tmp_path / "b.jsonl")[:4])
    assert cli_verify(tmp_path / "b.jsonl", None, head) == 1
    assert "no record has the anchored head" in capsys.readouterr().out
    assert cli_verify(tmp_path / "b.jsonl", None, None, expect_seq=5) == 1
    assert "tail was truncated" in capsys.readouterr().out


def test_cli_verify_usage_errors_exit_2(
    tmp_path: Path, key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_records(path, key, 1)
    assert cli_verify(path, None, None) == 2  # no audit.pub next to it
    assert "cannot load the audit public key" in capsys.readouterr().err
    (tmp_path / "junk.pub").write_text("not a key")
    assert cli_verify(path, tmp_path / "junk.pub", None) == 2
    export_public_key(tmp_path / "audit.pub", key)
    assert cli_verify(path, None, "not-hex") == 2
    assert "--expect-head" in capsys.readouterr().err
    assert cli_verify(path, None, None, expect_seq=-1) == 2
    assert cli_verify(tmp_path / "missing.jsonl", tmp_path / "audit.pub", None) == 2
    assert "cannot read" in capsys.readouterr().err
    assert capsys.readouterr().out == ""


# -- property: any single-byte change is caught -------------------------------------------------------------------

PROPERTY_KEY = Ed25519PrivateKey.generate()
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "c", "state"]), inner),
    max_leaves=6,
)
_record_args = st.tuples(
    st.sampled_from([WEBHOOK, API, CONTROLLER]),
    st.sampled_from(["webhook.accepted", "job.state", "api.logs_read", "credentials.revoked"]),
    st.none() | _text,
    st.sampled_from(["ok", "denied", "error"]),
    st.none() | st.sampled_from(["192.0.2.1", "::1"]),
    st.dictionaries(st.sampled_from(["n", "state", "why", "labels"]), _json_value, max_size=3),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(_record_args, min_size=1, max_size=6), data=st.data())
def test_any_single_byte_change_fails_verification(records: list[tuple[Any, ...]], data: st.DataObject) -> None:
    """Also over batches: a byte changed in an unsigned record must be caught through the chain."""
    cuts = sorted(data.draw(st.sets(st.integers(1, len(records) - 1)), label="batch ends")) if len(records) > 1 else []
    batches = [records[a:b] for a, b in zip([0, *cuts], [*cuts, len(records)], strict=True)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / AUDIT_FILE_NAME
        with AuditLog(path, PROPERTY_KEY, sync_interval_s=None) as log:
            originals = [
                record
                for batch in batches
                for record in log.append([prepare(a, b, c, d, remote=e, details=f) for a, b, c, d, e, f in batch])
            ]
        content = bytearray(path.read_bytes())
        assert verify_file(path, PROPERTY_KEY.public_key()).records == len(originals)
        index = data.draw(st.integers(0, len(content) - 1), label="index")
        content[index] = data.draw(st.integers(0, 255).filter(lambda b: b != content[index]), label="byte")
        path.write_bytes(bytes(content))
        result = verify_file(path, PROPERTY_KEY.public_key())
        if result.ok:  # only acceptable if the change were JSON-insignificant -- canonical lines rule even that out
            parsed = [json.loads(line) for line in bytes(content).splitlines()]
            assert parsed == originals
        assert not result.ok, f"byte {index} changed yet the log verifies"


def test_auditor_withholds_credential_shaped_text_instead_of_dropping_the_event(tmp_path: Path) -> None:
    from orchestrator.evidence.auditor import Auditor

    key = keys.load_or_create(tmp_path / "k")
    auditor = Auditor(AuditLog(tmp_path / "audit.jsonl", key).open())
    auditor.webhook("src", "whsec_" + "A" * 32, "127.0.0.1", "rejected", reason="bad_signature", status=401)
    auditor.close()
    (record,) = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert record["action"] == "webhook.rejected"
    assert record["actor"]["delivery"].startswith("[withheld: looks like a credential")
    assert "whsec_" not in json.dumps(record)
