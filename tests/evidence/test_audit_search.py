"""Tests for audit-trail search and verifiable export (orchestrator/evidence/audit_search.py), on real signed
trails in tmp_path, through the Python API and `orchestrator audit search|export|verify`."""

from __future__ import annotations

import io
import itertools
import json
import shlex
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.cli import main
from orchestrator.evidence import keys
from orchestrator.evidence.audit import AUDIT_FILE_NAME, AuditLog, genesis_hash, line_hash, prepare, verify_file
from orchestrator.evidence.audit_search import (
    AuditQuery,
    ExportSummary,
    export,
    parse_time,
    search,
)
from orchestrator.evidence.keys import export_public_key

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
OPS = {"type": "api", "token_name": "ops", "role": "operator"}
ALICE = {"type": "api", "name": "alice", "role": "viewer"}
GITEA = {"type": "webhook", "source": "gitea", "delivery": "d-1"}
GITHUB = {"type": "webhook", "source": "github", "delivery": "d-2"}
CONTROLLER = {"type": "controller"}

# (actor, action, target, outcome) of the standard trail; record i is stamped T0 + 60 * i.
EVENTS: list[tuple[dict[str, Any], str, str | None, str]] = [
    (CONTROLLER, "config.loaded", "ctl-1", "ok"),  # 0
    (GITEA, "webhook.accepted", "job-1", "accepted"),  # 1
    (CONTROLLER, "job.state", "job-1", "running"),  # 2
    (OPS, "api.logs_read", "job-1", "ok"),  # 3
    (GITHUB, "webhook.rejected", None, "bad_signature"),  # 4
    (ALICE, "api.cancel", "job-10", "refused"),  # 5
    (OPS, "api.cancel", "job-1", "ok"),  # 6
    (OPS, "apix.other", "job-1", "ok"),  # 7: "api.*" must not match it
    (CONTROLLER, "job.state", "job-1", "cancelled"),  # 8
    (CONTROLLER, "credentials.revoked", "job-1", "ok"),  # 9
]


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return keys.load_or_create(tmp_path / "keys" / "audit.key")


def write_trail(path: Path, key: Ed25519PrivateKey, batches: list[int], *, step_s: float = 60.0) -> None:
    """Writes records in batches of the given sizes (one signature each, on the batch's last record), cycling
    through EVENTS, record i stamped T0 + step_s * i."""
    seq = 0
    with AuditLog(path, key, sync_interval_s=None) as log:
        for size in batches:
            entries = []
            for _ in range(size):
                actor, action, target, outcome = EVENTS[seq % len(EVENTS)]
                entries.append(prepare(actor, action, target, outcome, details={"n": seq}, at=T0 + step_s * seq))
                seq += 1
            log.append(entries)


@pytest.fixture
def trail(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / AUDIT_FILE_NAME
    write_trail(path, key, [2, 3, 1, 4])  # signed: 1, 4, 5, 9
    return path


def seqs(path: Path, query: AuditQuery, **kwargs: Any) -> list[int]:
    page = search(path, query, **kwargs)
    assert page.next_cursor is None
    return [hit.seq for hit in page.hits]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


# -- search: filters --------------------------------------------------------------------------------------------


def test_no_filter_returns_every_record_oldest_first(trail: Path) -> None:
    page = search(trail, AuditQuery())
    assert [hit.seq for hit in page.hits] == list(range(10))
    assert [hit.record for hit in page.hits] == [json.loads(line) for line in lines(trail)]
    assert page.next_cursor is None
    assert page.scanned == 10


@pytest.mark.parametrize(
    ("actor", "expected"),
    [
        ("ops", [3, 6, 7]),  # an API token, as Auditor.api writes it (token_name)
        ("alice", [5]),  # a principal carrying "name"
        ("gitea", [1]),  # a webhook source
        ("github", [4]),
        ("controller", [0, 2, 8, 9]),  # the controller itself
        ("op", []),  # exact, not a substring
        ("operator", []),  # a role is not a name
        ("d-1", []),  # nor is a delivery id
    ],
)
def test_actor_filter(trail: Path, actor: str, expected: list[int]) -> None:
    assert seqs(trail, AuditQuery(actor=actor)) == expected


def test_target_filter_is_exact(trail: Path) -> None:
    assert seqs(trail, AuditQuery(target="job-1")) == [1, 2, 3, 6, 7, 8, 9]
    assert seqs(trail, AuditQuery(target="job-10")) == [5]
    assert seqs(trail, AuditQuery(target="job")) == []


def test_action_filter_exact_and_prefix(trail: Path) -> None:
    assert seqs(trail, AuditQuery(action="api.cancel")) == [5, 6]
    assert seqs(trail, AuditQuery(action="api.*")) == [3, 5, 6]  # not apix.other
    assert seqs(trail, AuditQuery(action="webhook.*")) == [1, 4]
    assert seqs(trail, AuditQuery(action="api")) == []
    assert seqs(trail, AuditQuery(action="job.state", target="job-1", outcome="cancelled")) == [8]


def test_outcome_filter(trail: Path) -> None:
    assert seqs(trail, AuditQuery(outcome="ok")) == [0, 3, 6, 7, 9]
    assert seqs(trail, AuditQuery(outcome="refused")) == [5]


def test_since_is_inclusive_and_until_exclusive(trail: Path) -> None:
    assert seqs(trail, AuditQuery(since=T0 + 180)) == [3, 4, 5, 6, 7, 8, 9]
    assert seqs(trail, AuditQuery(since=T0 + 180.001)) == [4, 5, 6, 7, 8, 9]
    assert seqs(trail, AuditQuery(until=T0 + 180)) == [0, 1, 2]
    assert seqs(trail, AuditQuery(since=T0 + 120, until=T0 + 300, actor="ops")) == [3]
    # bounds as a user writes them, against the stored RFC 3339 text
    stamp = json.loads(lines(trail)[4])["time"]
    assert stamp == "2027-01-15T08:04:00.000Z"
    assert seqs(trail, AuditQuery(since=parse_time(stamp), until=parse_time("2027-01-15T09:05:00+01:00"))) == [4]


def test_until_stops_reading_once_records_are_well_past_it(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_trail(path, key, [1] * 30, step_s=3600.0)  # an hour apart
    page = search(path, AuditQuery(until=T0 + 2 * 3600))
    assert [hit.seq for hit in page.hits] == [0, 1]
    assert page.scanned == 4  # record 2 is at until, 3 an hour past it: no need to read the other 26
    assert page.next_cursor is None


def test_records_just_past_until_are_still_read_in_case_the_clock_stepped_back(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    with AuditLog(path, key) as log:
        log.append([prepare(CONTROLLER, "job.state", "job-1", "ok", at=T0 + t) for t in (0, 100, 10, 5000, 20)])
    assert seqs(path, AuditQuery(until=T0 + 50)) == [0, 2]  # 2 came after a step back; 4 is past the slack


# -- search: paging, scope, robustness ---------------------------------------------------------------------------


def test_paging_with_after_and_next_cursor(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_trail(path, key, [7] * 36, step_s=1.0)  # 252 records
    query = AuditQuery(actor="controller")  # 4 of every 10
    expected = [seq for seq in range(252) if seq % 10 in (0, 2, 8, 9)]
    assert len(expected) == 101
    got: list[int] = []
    cursors: list[int | None] = []
    after: int | None = None
    while True:
        page = search(path, query, after=after, limit=40)
        got += [hit.seq for hit in page.hits]
        cursors.append(page.next_cursor)
        if page.next_cursor is None:
            break
        after = page.next_cursor
    assert got == expected
    assert cursors == [expected[39], expected[79], None]
    # a page that ends exactly at the last match says so: no empty page after it
    page = search(path, query, after=expected[79], limit=21)
    assert len(page.hits) == 21 and page.next_cursor is None
    assert search(path, query, after=expected[-1]).hits == []


def test_after_skips_ahead_without_reading_the_whole_trail(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_trail(path, key, [50] * 40, step_s=1.0)  # 2000 records, several hundred KB
    assert path.stat().st_size > 8 * 64 * 1024
    page = search(path, AuditQuery(), after=1989, limit=5)
    assert [hit.seq for hit in page.hits] == [1990, 1991, 1992, 1993, 1994]
    assert page.next_cursor == 1994
    assert page.scanned < 400  # bisected to within a window, not 1990 lines
    assert [h.seq for h in search(path, AuditQuery(), after=1994, limit=10).hits] == list(range(1995, 2000))
    assert [h.seq for h in search(path, AuditQuery(action="api.cancel"), after=1000, limit=3).hits] == [
        1005,
        1006,
        1015,
    ]


def test_visible_hides_records_from_hits_and_from_the_cursor(trail: Path) -> None:
    seen: list[int] = []

    def only_job_1_and_not_alice(record: dict[str, Any]) -> bool:
        seen.append(record["seq"])
        return record["target"] == "job-1" and record["actor"].get("name") != "alice"

    page = search(trail, AuditQuery(action="api.*"), visible=only_job_1_and_not_alice)
    assert [hit.seq for hit in page.hits] == [3, 6]
    assert seen == [3, 5, 6]  # called only for records that match the query
    page = search(trail, AuditQuery(action="api.*"), limit=1, visible=only_job_1_and_not_alice)
    assert ([hit.seq for hit in page.hits], page.next_cursor) == ([3], 3)
    page = search(trail, AuditQuery(action="api.*"), after=3, limit=1, visible=only_job_1_and_not_alice)
    assert ([hit.seq for hit in page.hits], page.next_cursor) == ([6], None)  # 5 is hidden, not "more"


def test_a_torn_last_line_is_skipped(trail: Path) -> None:
    whole = trail.read_bytes()
    with trail.open("ab") as file:
        file.write(whole.splitlines(keepends=True)[3][:57])  # a crash mid-write
    page = search(trail, AuditQuery())
    assert [hit.seq for hit in page.hits] == list(range(10))
    assert page.next_cursor is None


def test_a_garbled_line_is_skipped_not_fatal(trail: Path) -> None:
    content = lines(trail)
    content[2] = b"{not json"
    trail.write_bytes(b"\n".join(content) + b"\n")
    assert seqs(trail, AuditQuery(target="job-1")) == [1, 3, 6, 7, 8, 9]


def test_a_missing_file_is_an_empty_page(tmp_path: Path) -> None:
    page = search(tmp_path / "nothing.jsonl", AuditQuery(actor="ops"))
    assert (page.hits, page.next_cursor, page.scanned) == ([], None, 0)


@pytest.mark.parametrize("limit", [0, -1, 1001, True])
def test_limit_must_be_1_to_1000(trail: Path, limit: int) -> None:
    with pytest.raises(ValueError, match=r"limit must be 1\.\.1000"):
        search(trail, AuditQuery(), limit=limit)


def test_a_hits_hash_is_the_next_records_prev_and_the_verified_head(trail: Path, key: Ed25519PrivateKey) -> None:
    hits = search(trail, AuditQuery()).hits
    stored = lines(trail)
    for hit, following in itertools.pairwise(hits):
        assert hit.hash == following.record["prev"] == line_hash(stored[hit.seq])
    assert hits[-1].hash == verify_file(trail, key.public_key()).head
    assert hits[0].record["prev"] == genesis_hash(hits[0].record["chain"])


# -- export --------------------------------------------------------------------------------------------------------


def do_export(trail: Path, out: Path, **bounds: Any) -> ExportSummary:
    with out.open("wb") as stream:
        return export(trail, stream, **bounds)


def test_a_middle_slice_is_copied_byte_for_byte_and_verifies_on_its_anchor(
    trail: Path, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    out = tmp_path / "slice.jsonl"
    summary = do_export(trail, out, first_seq=2, last_seq=4)
    stored = lines(trail)
    assert summary == ExportSummary(2, 4, json.loads(stored[2])["prev"], line_hash(stored[4]), 3)
    assert summary.first_prev == line_hash(stored[1])
    assert out.read_bytes() == b"".join(line + b"\n" for line in stored[2:5])

    result = verify_file(out, key.public_key(), expect_prev=summary.first_prev)
    assert result.ok, result.problem
    assert (result.records, result.first_seq, result.last_seq, result.head) == (3, 2, 4, summary.head)
    assert result.anchored_on == summary.first_prev

    refused = verify_file(out, key.public_key())  # a cut-off start must stay detectable
    assert not refused.ok
    assert refused.problem == "record 2 (line 1) is the first record, not record 0: the start was removed"
    wrong = verify_file(out, key.public_key(), expect_prev=line_hash(stored[0]))
    assert not wrong.ok and wrong.first_bad_seq == 2
    assert "is not the anchor" in (wrong.problem or "")
    with pytest.raises(ValueError, match="expect_prev must be a 64-digit hex"):
        verify_file(out, key.public_key(), expect_prev="abc")


def test_a_slice_ending_in_an_unsigned_record_is_extended_to_the_next_signed_one(
    trail: Path, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    out = tmp_path / "slice.jsonl"
    summary = do_export(trail, out, first_seq=3, last_seq=6)  # 6 is in the batch 6..9, signed on 9
    assert (summary.first_seq, summary.last_seq, summary.records) == (3, 9, 7)
    assert json.loads(lines(out)[-1])["sig"] is not None
    assert json.loads(lines(out)[0])["sig"] is None  # starting inside a batch is fine: 4 vouches for 3
    assert verify_file(out, key.public_key(), expect_prev=summary.first_prev).ok


def test_export_by_time_and_from_the_start(trail: Path, tmp_path: Path, key: Ed25519PrivateKey) -> None:
    out = tmp_path / "slice.jsonl"
    summary = do_export(trail, out, since=T0 + 120, until=T0 + 240)  # records 2, 3 -> extended to 4
    assert (summary.first_seq, summary.last_seq) == (2, 4)
    assert verify_file(out, key.public_key(), expect_prev=summary.first_prev).ok
    summary = do_export(trail, out, until=T0 + 60)  # record 0, extended to 1
    assert (summary.first_seq, summary.last_seq) == (0, 1)
    assert summary.first_prev == genesis_hash(json.loads(lines(trail)[0])["chain"])
    assert verify_file(out, key.public_key(), expect_prev=summary.first_prev).ok
    assert verify_file(out, key.public_key()).ok  # from record 0 it also verifies as a (truncated) whole log
    summary = do_export(trail, out)
    assert out.read_bytes() == trail.read_bytes() and summary.records == 10


def test_an_unsigned_tail_is_left_out_of_an_export(trail: Path, tmp_path: Path, key: Ed25519PrivateKey) -> None:
    trail.write_bytes(b"".join(line + b"\n" for line in lines(trail)[:8]))  # the batch 6..9 cut after 7
    out = tmp_path / "slice.jsonl"
    summary = do_export(trail, out, first_seq=3)
    assert (summary.first_seq, summary.last_seq) == (3, 5)
    assert verify_file(out, key.public_key(), expect_prev=summary.first_prev).ok
    with pytest.raises(ValueError, match="no signed record within those bounds"):
        do_export(trail, out, first_seq=6)


def test_export_refuses_empty_or_inverted_bounds(trail: Path, tmp_path: Path) -> None:
    out = tmp_path / "slice.jsonl"
    with pytest.raises(ValueError, match="nothing to export"):
        do_export(trail, out, first_seq=10)
    with pytest.raises(ValueError, match="nothing to export"):
        do_export(trail, out, since=T0 + 61, until=T0 + 62)
    with pytest.raises(ValueError, match="before first_seq"):
        do_export(trail, out, first_seq=5, last_seq=4)
    with pytest.raises(ValueError, match="until must be after since"):
        do_export(trail, out, since=T0, until=T0)


def test_an_altered_byte_in_an_export_fails_verification(trail: Path, tmp_path: Path, key: Ed25519PrivateKey) -> None:
    out = tmp_path / "slice.jsonl"
    summary = do_export(trail, out, first_seq=2, last_seq=5)
    original = out.read_bytes()
    for index in (10, len(original) // 2, len(original) - 5):
        altered = bytearray(original)
        altered[index] ^= 0x01
        out.write_bytes(bytes(altered))
        result = verify_file(out, key.public_key(), expect_prev=summary.first_prev)
        assert not result.ok, f"byte {index} changed yet the slice verifies"
    out.write_bytes(b"".join(original.splitlines(keepends=True)[1:]))  # its first record dropped
    assert not verify_file(out, key.public_key(), expect_prev=summary.first_prev).ok


def test_an_empty_file_does_not_verify_as_a_slice(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    result = verify_file(tmp_path / "empty.jsonl", key.public_key(), expect_prev="a" * 64)
    assert not result.ok and "no record follows the anchor" in (result.problem or "")


def test_export_of_a_large_trail_from_a_late_seq(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    write_trail(path, key, [50] * 40, step_s=1.0)
    out = tmp_path / "slice.jsonl"
    summary = do_export(path, out, first_seq=1960, last_seq=1960)
    assert (summary.first_seq, summary.last_seq, summary.records) == (1960, 1999, 40)
    assert verify_file(out, key.public_key(), expect_prev=summary.first_prev).ok


# -- parse_time -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-07T10:00:00Z", datetime(2026, 12, 7, 10, tzinfo=UTC).timestamp()),
        ("2026-12-07t10:00:00z", datetime(2026, 12, 7, 10, tzinfo=UTC).timestamp()),
        ("2026-12-07T10:00:00.250Z", datetime(2026, 12, 7, 10, tzinfo=UTC).timestamp() + 0.25),
        ("2026-12-07T11:00:00+01:00", datetime(2026, 12, 7, 10, tzinfo=UTC).timestamp()),
        ("2026-12-07T05:30:00.5-04:30", datetime(2026, 12, 7, 10, tzinfo=UTC).timestamp() + 0.5),
        ("2026-12-07T10:00:00.123456789Z", datetime(2026, 12, 7, 10, tzinfo=UTC).timestamp() + 0.123456),
        ("2026-12-07 10:00:00Z", datetime(2026, 12, 7, 10, tzinfo=UTC).timestamp()),
        ("2026-12-07", datetime(2026, 12, 7, tzinfo=UTC).timestamp()),
    ],
)
def test_parse_time_forms(text: str, expected: float) -> None:
    assert parse_time(text) == pytest.approx(expected, abs=1e-6)


def test_parse_time_of_a_stored_stamp_is_exact() -> None:
    assert parse_time("2027-01-15T08:00:00.001Z") == T0 + 0.001
    assert parse_time("2027-01-15") == T0 - 8 * 3600


@pytest.mark.parametrize(
    "text",
    ["2026-12-07T10:00:00", "yesterday", "2026-13-01", "2026-12-07T25:00:00Z", "1765100000", "", "2026-12-07Z"],
)
def test_parse_time_errors_name_the_value_and_the_forms(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_time(text)
    message = str(caught.value)
    assert repr(text) in message
    assert "RFC 3339" in message and "2026-12-07" in message


# -- CLI ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def published(trail: Path, key: Ed25519PrivateKey) -> Path:
    export_public_key(trail.with_name("audit.pub"), key)
    return trail


def test_cli_search_prints_one_line_per_hit(published: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "search", str(published), "--actor", "ops", "--action", "api.*"]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert rows[0].split() == ["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "HASH"]
    stored = lines(published)
    assert [row.split() for row in rows[1:]] == [
        ["3", "2027-01-15T08:03:00.000Z", "api:ops", "api.logs_read", "job-1", "ok", line_hash(stored[3])],
        ["6", "2027-01-15T08:06:00.000Z", "api:ops", "api.cancel", "job-1", "ok", line_hash(stored[6])],
    ]
    assert err == ""


def test_cli_search_json_and_the_cursor(published: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["audit", "search", str(published), "--job", "job-1", "--since", "2027-01-15T08:02:00Z", "--limit", "2"]
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(row) for row in out.splitlines()]
    stored = lines(published)
    assert rows == [{"hash": line_hash(stored[i]), "record": json.loads(stored[i])} for i in (2, 3)]
    assert err == "more records match: continue with --after 3\n"
    assert main([*argv, "--json", "--after", "3", "--until", "2027-01-15T08:08:00Z"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(row)["record"]["seq"] for row in out.splitlines()] == [6, 7]
    assert err == ""  # 8 is past --until: nothing more
    assert main(["audit", "search", str(published), "--actor", "nobody"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # the header only


def test_cli_search_quotes_text_that_could_fake_output(
    tmp_path: Path, key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / AUDIT_FILE_NAME
    with AuditLog(path, key) as log:
        log.record(GITEA, "webhook.rejected", "job 1\n    9  forged\x1b[2K", "bad_spec")
    assert main(["audit", "search", str(path)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2
    assert '"job 1\\n    9  forged\\u001b[2K"' in rows[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last week"], "--since: bad time 'last week'"),
        (["--until", "2026-12-07T10:00:00"], "--until: bad time '2026-12-07T10:00:00'"),
        (["--limit", "0"], "--limit must be 1..1000"),
        (["--after", "-1"], "--after must be >= 0"),
    ],
)
def test_cli_search_usage_errors_exit_2(
    published: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "search", str(published), *args]) == 2
    out, err = capsys.readouterr()
    assert message in err and out == ""


def test_cli_search_needs_a_file_that_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "search"]) == 2
    assert "give the audit file or --config" in capsys.readouterr().err
    assert main(["audit", "search", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_export_writes_a_slice_that_the_printed_command_verifies(
    published: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exports" / "slice.jsonl"
    out.parent.mkdir()
    assert main(["audit", "export", str(published), "--from-seq", "2", "--to-seq", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    stored = lines(published)
    assert out.read_bytes() == b"".join(line + b"\n" for line in stored[2:5])
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["slice.jsonl"]  # no temp file left
    assert printed[0] == f"exported records 2..4 (3 records) of {published} to {out}"
    assert printed[1] == f"anchor (prev of record 2): {line_hash(stored[1])}"
    assert printed[2] == f"head (record 4, signed): {line_hash(stored[4])}"
    command = shlex.split(printed[4])
    assert command[:3] == ["orchestrator", "audit", "verify"]
    assert command[command.index("--expect-prev") + 1] == line_hash(stored[1])

    assert main(command[1:]) == 0
    assert capsys.readouterr().out == (
        f"OK: 3 records (seq 2..4), verified from seq 2 anchored on prev {line_hash(stored[1])}, "
        f"head {line_hash(stored[4])}\n"
    )
    assert main(["audit", "verify", str(out), "--pubkey", str(published.with_name("audit.pub"))]) == 1
    assert "the start was removed" in capsys.readouterr().out

    altered = bytearray(out.read_bytes())
    altered[len(altered) // 2] ^= 0x20
    out.write_bytes(bytes(altered))
    assert main(command[1:]) == 1
    assert capsys.readouterr().out.startswith("TAMPERED: ")


def test_cli_export_by_time_and_its_errors(published: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "slice.jsonl"
    argv = ["audit", "export", str(published), "--out", str(out)]
    assert main([*argv, "--since", "2027-01-15T08:05:00Z", "--until", "2027-01-15T08:06:00Z"]) == 0
    assert capsys.readouterr().out.startswith("exported records 5..5 (1 records)")
    assert main([*argv, "--since", "soon"]) == 2
    assert "--since: bad time 'soon'" in capsys.readouterr().err
    assert main([*argv, "--from-seq", "-3"]) == 2
    assert "--from-seq must be >= 0" in capsys.readouterr().err
    before = out.read_bytes()
    assert main([*argv, "--from-seq", "50"]) == 1
    assert "nothing to export" in capsys.readouterr().err
    assert out.read_bytes() == before  # a failed export leaves the earlier file alone
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert main(["audit", "export", str(published), "--out", str(published)]) == 2
    assert "--out is the audit trail itself" in capsys.readouterr().err
    assert lines(published)[0].startswith(b'{"action":"config.loaded"')


def test_cli_verify_expect_prev_must_be_hex(published: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(published), "--expect-prev", "xyz"]) == 2
    assert "--expect-prev must be a 64-digit hex SHA-256" in capsys.readouterr().err
    # a whole log verifies with its genesis hash as the anchor, and says so
    anchor = genesis_hash(json.loads(lines(published)[0])["chain"])
    assert main(["audit", "verify", str(published), "--expect-prev", anchor.upper()]) == 0
    assert capsys.readouterr().out.startswith(
        f"OK: 10 records (seq 0..9), verified from seq 0 anchored on prev {anchor}"
    )


def test_the_module_is_importable_without_asyncio_or_network() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import orchestrator.evidence.audit_search; "
        "bad = [m for m in ('asyncio', 'aiohttp', 'socket') if m in sys.modules]; print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_search_reads_from_a_stream_not_the_whole_file(trail: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_whole_reads(self: Path) -> bytes:
        raise AssertionError("search must not read the whole file")

    monkeypatch.setattr(Path, "read_bytes", no_whole_reads)
    monkeypatch.setattr(Path, "read_text", no_whole_reads)
    assert seqs(trail, AuditQuery(outcome="refused")) == [5]
    assert export(trail, io.BytesIO(), first_seq=5).records == 5
