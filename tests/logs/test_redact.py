"""Tests for streaming secret redaction (orchestrator.logs.redact); no I/O.

Every test runs against each available matcher backend, because the fallback
backend only runs on machines without Hyperscan and must be just as correct.
Property tests draw the backend per example, so that one Hypothesis run
(generation is their main cost) covers both.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from orchestrator.logs import redact
from orchestrator.logs.redact import (
    DEFAULT_MASK,
    DEFAULT_MIN_SECRET_LENGTH,
    SecretSet,
    SecretTooShortError,
    StreamRedactor,
    secret_forms,
)

M = DEFAULT_MASK


BACKENDS = [
    name
    for name in sorted(redact._BACKENDS)
    if name != "hyperscan" or importlib.util.find_spec("hyperscan") is not None
]


@contextlib.contextmanager
def selected_backend(name: str) -> Iterator[None]:
    """Compile matchers with ``name`` (matchers are compiled on first use)."""
    previous, redact._BACKEND = redact._BACKEND, name
    try:
        yield
    finally:
        redact._BACKEND = previous


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    with selected_backend(name):
        yield name


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def registered(*values: str | bytes, min_length: int = DEFAULT_MIN_SECRET_LENGTH) -> set[bytes]:
    return {form for value in values for form in secret_forms(value) if len(form) >= min_length}


def secret_set(*values: str | bytes) -> SecretSet:
    secrets = SecretSet()
    for value in values:
        secrets.add(value)
    return secrets


def run(secrets: SecretSet, chunks: Iterable[bytes], mask: bytes = M) -> bytes:
    """Stream ``chunks`` through a fresh redactor, then end the stream."""
    redactor = StreamRedactor(secrets, mask)
    out = [redactor.feed(chunk) for chunk in chunks]
    out.append(redactor.flush())
    assert redactor.pending == 0
    return b"".join(out)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def assert_no_form(output: bytes, forms: Iterable[bytes]) -> None:
    leaked = [form for form in forms if form in output]
    assert not leaked, f"{len(leaked)} registered form(s) survived redaction"


def held_at_end(data: bytes, forms: Iterable[bytes]) -> int:
    """Length of the longest suffix of ``data`` that is a proper prefix of a form (brute force)."""
    forms = list(forms)
    return max(
        (k for k in range(1, len(data) + 1) if any(len(form) > k and form.startswith(data[-k:]) for form in forms)),
        default=0,
    )


def expected_stream(data: bytes, forms: Iterable[bytes], mask: bytes = M) -> bytes:
    """What a whole stream must redact to, by brute force, independent of the implementation.

    Every occurrence of every form is masked (overlapping or touching ones
    under one mask), and so is a trailing possible prefix of a form: at the
    end of the stream it is the beginning of a secret that never completed.
    """
    forms = list(forms)
    ranges = [
        (start, start + len(form))
        for form in forms
        for start in range(len(data) - len(form) + 1)
        if data.startswith(form, start)
    ]
    if held := held_at_end(data, forms):
        ranges.append((len(data) - held, len(data)))
    out: list[bytes] = []
    covered = -1  # end of the masked stretch so far; a range starting at or before it extends it
    for start, end in sorted(ranges):
        if start > covered:
            out += [data[max(covered, 0) : start], mask]
        covered = max(covered, end)
    out.append(data[max(covered, 0) :])
    return b"".join(out)


# --------------------------------------------------------------------------- forms

VALUE = 'p@ss w/rd+é"<x>&~?'


def test_forms_cover_each_encoding() -> None:
    raw = VALUE.encode()
    forms = secret_forms(VALUE)
    expected = {
        raw,
        base64.b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        quote(VALUE, safe="").encode(),
        quote_plus(VALUE).encode(),
        json.dumps(VALUE)[1:-1].encode(),
        json.dumps(VALUE, ensure_ascii=False)[1:-1].encode(),
        b'p@ss w/rd+\xc3\xa9\\"\\u003cx\\u003e\\u0026~?',  # Go's encoding/json
    }
    assert expected <= forms
    assert len(expected) == 10  # the encodings really differ for this value
    assert b"" not in forms


def test_forms_of_utf8_bytes_equal_forms_of_text() -> None:
    assert secret_forms(VALUE.encode()) == secret_forms(VALUE)


def test_forms_of_non_utf8_bytes() -> None:
    value = b"\xff\xfe\x00raw-bytes"
    forms = secret_forms(value)
    assert {value, base64.b64encode(value), quote(value, safe="").encode()} <= forms


@pytest.mark.parametrize("prefix", [b"", b"x", b"xx", b"xyz", b"wxyz", b"vwxyz"])
@pytest.mark.parametrize("suffix", [b"", b"y", b"yz", b"xyz"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_of_secret_embedded_at_any_offset_contains_a_form(
    prefix: bytes, suffix: bytes, encode: Callable[[bytes], bytes]
) -> None:
    secret = b"s3cr3t?~>value"
    blob = encode(prefix + secret + suffix)
    assert any(form in blob for form in secret_forms(secret))


def test_multiline_secret_registers_each_line() -> None:
    pem = "-----BEGIN TEST KEY-----\r\nMIIBOgIBAAJBAKj34GkxFhD9\r\n\r\nZ0aBcD+/eFgH==\r\n-----END TEST KEY-----\r\n"
    forms = secret_forms(pem)
    for line in ("-----BEGIN TEST KEY-----", "MIIBOgIBAAJBAKj34GkxFhD9", "Z0aBcD+/eFgH==", "-----END TEST KEY-----"):
        assert line.encode() in forms
        assert base64.b64encode(line.encode()) in forms
    assert pem.encode() in forms
    assert json.dumps(pem)[1:-1].encode() in forms  # "\r\n" escaped, as in a JSON payload
    assert b"MIIBOgIBAAJBAKj34GkxFhD9\r" not in forms


# Independent statements of what the tools write, for the forms below.


def wrap(data: bytes, columns: int) -> bytes:
    return b"\n".join(data[i : i + columns] for i in range(0, len(data), columns)) or data


def lower_escapes(encoded: str) -> bytes:
    return re.sub("%[0-9A-F]{2}", lambda match: match.group().lower(), encoded).encode()


def od_tx1(raw: bytes) -> bytes:
    """``od -An -tx1`` without its trailing newline: " 73 33 ..." 16 bytes a line."""
    return b"\n".join(b"".join(b" %02x" % byte for byte in raw[i : i + 16]) for i in range(0, len(raw), 16))


def shell_double_quoted(raw: bytes) -> bytes:
    return b"".join(b"\\" + bytes([byte]) if byte in b'"\\$`' else bytes([byte]) for byte in raw)


LONG = 'fake-t0ken/it\'s "quoted" $HOME `cmd` back\\slash+plus=eq%pct&amp;<b>~?' + "x" * 31  # 100 bytes


def test_forms_cover_tool_encodings() -> None:
    raw = LONG.encode()
    assert len(raw) > 76 * 3 // 4  # long enough for every wrapped form to wrap
    padded, urlsafe = base64.b64encode(raw), base64.urlsafe_b64encode(raw)
    core = base64.b64encode(raw + b"\n")[: 8 * len(raw) // 6]  # what ``echo "$S" | base64`` begins with
    forms = secret_forms(LONG)
    expected = {
        # base64 of the value alone, wrapped as GNU base64 (76) and openssl/PEM (64) do
        wrap(padded, 76),
        wrap(padded.rstrip(b"="), 76),
        wrap(core, 76),
        wrap(padded, 64),
        wrap(core, 64),
        wrap(urlsafe, 76),  # basenc --base64url
        # URL encoding: lower-case escapes, and quote()'s default safe="/"
        lower_escapes(quote(LONG, safe="")),
        lower_escapes(quote_plus(LONG, safe="")),
        quote(LONG).encode(),
        # JSON with escaped solidus (PHP json_encode)
        json.dumps(LONG)[1:-1].replace("/", "\\/").encode(),
        # shells printing the variable
        raw.replace(b"'", b"'\\''"),
        raw.replace(b"'", b"'\"'\"'"),
        shell_double_quoted(raw),
        # hex: contiguous either case, xxd -p (60 a line), od -An -tx1 (from the first digit)
        raw.hex().encode(),
        raw.hex().upper().encode(),
        wrap(raw.hex().encode(), 60),
        wrap(raw.hex().upper().encode(), 60),
        od_tx1(raw)[1:],
    }
    assert len(expected) == 18  # all differ for this value
    missing = sorted(expected - forms)
    assert not missing, missing


def test_forms_only_differ_where_the_value_needs_it() -> None:
    # A plain value gets no wrapped, lower-case, solidus or shell variants: they would equal other forms.
    plain = "Plain0Token0V42"  # <= 16 bytes: one od line
    forms = secret_forms(plain)
    raw = plain.encode()
    assert {raw, raw.hex().encode(), raw.hex().upper().encode(), od_tx1(raw)[1:]} <= forms
    assert not [form for form in forms if b"\n" in form]
    assert len(forms) == len(secret_forms("Other0Token0V42"))


# What the real tools on this machine print, redacted.  Each case: the tools
# it needs, a shell command printing "$S", and what the redacted output must
# be ([MASKED] is the mask; the rest is the tool's own framing).
MASKED = re.escape(M)
REST_OF_ECHO = rb"[A-Za-z0-9+/]{1,3}=*\n"  # mixes the value's last bits with the newline's
TOOL_CASES = [
    (["base64"], 'printf %s "$S" | base64', MASKED + rb"\n"),
    (["base64"], 'printf %s "$S" | base64 -w 0; echo', MASKED + rb"\n"),
    (["base64"], 'echo "$S" | base64', MASKED + REST_OF_ECHO),
    (["basenc"], 'printf %s "$S" | basenc --base64url', MASKED + rb"\n"),
    (["openssl"], 'printf %s "$S" | openssl base64', MASKED + rb"\n"),
    (["openssl"], 'echo "$S" | openssl base64', MASKED + REST_OF_ECHO),
    (["busybox"], 'printf %s "$S" | busybox base64', MASKED + rb"\n"),
    (["xxd"], 'printf %s "$S" | xxd -p', MASKED + rb"\n"),
    (["xxd"], 'printf %s "$S" | xxd -p -u', MASKED + rb"\n"),
    (["busybox"], 'printf %s "$S" | busybox xxd -p', MASKED + rb"\n"),
    (["od"], 'printf %s "$S" | od -An -tx1', rb" " + MASKED + rb"\n"),
    (["od"], 'printf %s "$S" | od -An -tx1 -v', rb" " + MASKED + rb"\n"),
    (["busybox"], 'printf %s "$S" | busybox od -An -tx1', rb" " + MASKED + rb"\n"),
    (["hexdump"], """printf %s "$S" | hexdump -ve '1/1 "%02x"'; echo""", MASKED + rb"\n"),
    (["hexdump"], """printf %s "$S" | hexdump -ve '1/1 "%02X"'; echo""", MASKED + rb"\n"),
    (["bash"], "bash -c 'declare -p S'", rb'declare -x S="' + MASKED + rb'"\n'),
    (["bash"], "bash -c 'export -p' | grep '^declare -x S='", rb'declare -x S="' + MASKED + rb'"\n'),
    (["bash"], "bash --posix -c 'export -p' | grep '^export S='", rb'export S="' + MASKED + rb'"\n'),
    (["bash"], "bash -c set | grep '^S='", rb"S='" + MASKED + rb"'\n"),
    (["bash"], """bash -c 'echo "${S@Q}"'""", rb"'" + MASKED + rb"'\n"),
    (["dash"], "dash -c 'export -p' | grep '^export S='", rb"export S='" + MASKED + rb"'\n"),
    (["dash"], "dash -c set | grep '^S='", rb"S='" + MASKED + rb"'\n"),
    (["busybox"], "busybox sh -c 'export -p' | grep '^export S='", rb"export S='" + MASKED + rb"'\n"),
    (["busybox"], "busybox sh -c set | grep '^S='", rb"S='" + MASKED + rb"'\n"),
    ([], """"$PYTHON" -c 'import os, shlex; print(shlex.quote(os.environ["S"]))'""", rb"'" + MASKED + rb"'\n"),
]
SHORT = "sh0rt'tok\"en$1"  # no line of any wrapped form would wrap


@pytest.mark.parametrize("value", [LONG, SHORT], ids=["long", "short"])
@pytest.mark.parametrize(("tools", "command", "expected"), TOOL_CASES, ids=[case[1] for case in TOOL_CASES])
def test_real_tool_output_is_masked(value: str, tools: list[str], command: str, expected: bytes) -> None:
    missing = [tool for tool in ["sh", *tools] if shutil.which(tool) is None]
    if missing:
        if os.environ.get("ORCHESTRATOR_REQUIRE_TOOLS") == "1":  # .ci/run: .ci/setup installs them
            pytest.fail(f"not installed: {', '.join(missing)}")
        pytest.skip(f"not installed: {', '.join(missing)}")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "S": value, "PYTHON": sys.executable, "LC_ALL": "C"}
    printed = subprocess.run(["sh", "-c", command], env=env, capture_output=True, check=True, timeout=30).stdout
    assert printed, "the tool printed nothing"
    secrets = secret_set(value)
    log = b"== step ==\n" + printed + b"== done ==\n"
    frame = rb"== step ==\n(.*)== done ==\n"
    for redacted in (secrets.redact(log), run(secrets, pieces(log, 1)), run(secrets, pieces(log, 7))):
        body = re.fullmatch(frame, redacted, re.DOTALL)
        assert body is not None
        assert re.fullmatch(expected, body.group(1)), (printed, body.group(1))


# --------------------------------------------------------------------------- registration


def test_too_short_secret_error_names_secret_but_not_value() -> None:
    with pytest.raises(SecretTooShortError) as caught:
        SecretSet().add("q7!", name="DB_PASSWORD")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "DB_PASSWORD" in message
    assert "3 characters" in message
    assert "6 characters" in message
    assert "q7!" not in message


def test_too_short_unnamed_bytes_secret() -> None:
    with pytest.raises(SecretTooShortError) as caught:
        SecretSet().add(b"\x01z9")
    assert "3 bytes" in str(caught.value)
    assert "z9" not in str(caught.value)


def test_min_length_is_configurable() -> None:
    strict = SecretSet(min_length=12)
    with pytest.raises(SecretTooShortError, match="shorter than 12"):
        strict.add("elevenchars")
    strict.add("twelve-chars")
    lenient = SecretSet(min_length=3)
    lenient.add("abc")
    assert lenient.redact(b"xabcx") == b"x" + M + b"x"
    with pytest.raises(ValueError):
        SecretSet(min_length=0)


def test_add_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        SecretSet().add(12345678)  # type: ignore[arg-type]


def test_forms_below_min_length_are_not_registered() -> None:
    secrets = secret_set("first-line-ok\nab\n")
    assert len(secrets) == len(registered("first-line-ok\nab\n"))
    assert all(len(form) >= DEFAULT_MIN_SECRET_LENGTH for form in registered("first-line-ok\nab\n"))
    assert secrets.redact(b"ab cd first-line-ok") == b"ab cd " + M


def test_len_counts_distinct_forms() -> None:
    secrets = SecretSet()
    assert len(secrets) == 0
    secrets.add("alnumsecret1")
    first = len(secrets)
    assert first == len(registered("alnumsecret1"))
    secrets.add("alnumsecret1")  # idempotent
    assert len(secrets) == first


# --------------------------------------------------------------------------- streaming

PW = "hunter2-long-pw"
TEXT = f"login as admin with {PW} now\n".encode()
EXPECTED = b"login as admin with " + M + b" now\n"


def test_secret_split_at_every_point() -> None:
    secrets = secret_set(PW)
    for cut in range(len(TEXT) + 1):
        assert run(secrets, [TEXT[:cut], TEXT[cut:]]) == EXPECTED


def test_secret_split_at_every_pair_of_points() -> None:
    secrets = secret_set(PW, "abcdef12", "ef12345678")
    text = b"a " + PW.encode() + b"abcdef12345678 " + PW.encode()[:6] + b"!"
    expected = secrets.redact(text)
    assert expected == b"a " + M + b" hunter!"
    for first in range(len(text) + 1):
        for second in range(first, len(text) + 1):
            assert run(secrets, split(text, [first, second])) == expected


def test_one_byte_chunks() -> None:
    secrets = secret_set(PW, "second-secret")
    text = TEXT + b"second-secret" + TEXT
    assert run(secrets, pieces(text, 1)) == secrets.redact(text)
    assert run(secrets, pieces(text, 1)) == EXPECTED + M + EXPECTED


def test_multiple_occurrences() -> None:
    secrets = secret_set(PW)
    text = f"{PW} and {PW}, again {PW}".encode()
    assert run(secrets, pieces(text, 5)) == M + b" and " + M + b", again " + M


def test_overlapping_secrets_mask_union() -> None:
    secrets = secret_set("abcdef12", "ef12345678")
    text = b"xxabcdef12345678yy"
    assert secrets.redact(text) == b"xx" + M + b"yy"
    for size in (1, 2, 3, 7):
        assert run(secrets, pieces(text, size)) == b"xx" + M + b"yy"


def test_self_overlapping_occurrences() -> None:
    secrets = secret_set("aaaaaa")
    assert run(secrets, pieces(b"-aaaaaaaa-aaaaa-", 1)) == b"-" + M + b"-aaaaa-"


def test_adjacent_secrets_share_one_mask() -> None:
    secrets = secret_set("first-secret", "second-secret")
    text = b"<first-secretsecond-secret>"
    assert secrets.redact(text) == b"<" + M + b">"
    assert run(secrets, pieces(text, 1)) == b"<" + M + b">"


def test_secret_inside_a_word() -> None:
    secrets = secret_set("S3cretValue!")
    text = b"prefixS3cretValue!suffix"
    assert run(secrets, pieces(text, 4)) == b"prefix" + M + b"suffix"


def test_regex_special_and_nul_bytes_in_secret() -> None:
    secret = b"a.*+?(\x00)[]{}|^$\\"
    secrets = secret_set(secret)
    text = b"x" + secret + b"y" + secret.replace(b".", b"Q")
    assert run(secrets, pieces(text, 3)) == b"x" + M + b"y" + secret.replace(b".", b"Q")


def test_pem_key_printed_line_by_line() -> None:
    lines = [
        "-----BEGIN TEST KEY-----",
        "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu",
        "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQJAIJLixBy2qpFoS4DSmoEm",
        "-----END TEST KEY-----",
    ]
    pem = "\n".join(lines) + "\n"
    secrets = secret_set(pem)
    log = "".join(f"  key: {line}\r\n" for line in lines).encode()  # indented, CRLF
    out = run(secrets, pieces(log, 7))
    assert out == b"  key: " + M + b"\r\n" + (b"  key: " + M + b"\r\n") * 3
    as_json = json.dumps({"key": pem}).encode()
    assert run(secrets, pieces(as_json, 5)) == b'{"key": "' + M + b'"}'


def test_each_encoded_form_is_masked() -> None:
    forms = registered(VALUE)
    secrets = secret_set(VALUE)
    for form in forms:
        text = b"<" + form + b">"
        assert secrets.redact(text) == b"<" + M + b">"
        assert run(secrets, pieces(text, 1)) == b"<" + M + b">"
        assert run(secrets, pieces(text, 9)) == b"<" + M + b">"


@pytest.mark.parametrize("prefix", [b"", b"x", b"xx", b"xyz", b"wxyz"])
@pytest.mark.parametrize("suffix", [b"", b"y", b"yz"])
def test_base64_embedded_at_offset_is_masked(prefix: bytes, suffix: bytes) -> None:
    secret = b"s3cr3t?~>value"
    secrets = secret_set(secret)
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        blob = encode(prefix + secret + suffix)
        out = run(secrets, pieces(b"data=" + blob + b"\n", 3))
        assert M in out
        assert_no_form(out, registered(secret))
        # Only the <= 2 characters at each edge that mix in neighbouring bits
        # may survive, plus the encoding of the neighbours themselves.
        kept = out.replace(M, b"")
        assert len(kept) <= len(b"data=\n") + 2 * (len(prefix) + len(suffix)) + 4


def test_quiet_prefix_stays_held_then_becomes_one_mask() -> None:
    # Defect 6: a job printed "token: hun", paused, then printed the rest; an
    # idle flush had stored "hun" raw and the log read "hun[MASKED]".
    redactor = StreamRedactor(secret_set(PW))
    assert redactor.feed(b"Enter token: hun") == b"Enter token: "
    assert redactor.pending == 3  # "hun" may be the start of the secret
    # The job is quiet now.  Nothing can show the held bytes: there is no
    # flush on a pause, and an empty read emits nothing.
    assert not hasattr(redactor, "flush_idle")
    assert redactor.feed(b"") == b""
    assert redactor.pending == 3
    rest = redactor.feed(b"ter2-long-pw done\n")
    assert rest == M + b" done\n"  # exactly one mask for the whole secret
    assert b"h" not in rest
    assert redactor.flush() == b""


def test_prefix_at_end_of_stream_is_masked_not_shown() -> None:
    redactor = StreamRedactor(secret_set(PW))
    assert redactor.feed(b"Enter token: hunter2-lo") == b"Enter token: "
    assert redactor.flush() == M
    assert redactor.pending == 0
    assert run(secret_set(PW), [b"a hunt", b"er2"]) == b"a " + M


def test_held_prefix_is_released_raw_once_output_diverges() -> None:
    secrets = secret_set(PW)
    redactor = StreamRedactor(secrets)
    assert redactor.feed(b"say hun") == b"say "
    assert redactor.feed(b"gry now") == b"hungry now"  # not a secret after all
    assert run(secrets, [b"say hun", b"gry now"]) == b"say hungry now"


def test_end_of_stream_masks_a_known_match_inside_held_bytes() -> None:
    # "aaSECRET" is a proper prefix of one form and contains another one.
    secrets = secret_set("SECRET", "aaSECRET99")
    redactor = StreamRedactor(secrets)
    assert redactor.feed(b"> aaSECRET") == b"> "
    assert redactor.flush() == M  # one mask for all held bytes
    redactor = StreamRedactor(secrets)
    assert redactor.feed(b"> aaSECRET") == b"> "
    assert redactor.feed(b"9 <") == b"aa" + M + b"9 <"  # diverged: only the real match is masked


def test_end_of_stream_mask_continues_a_mask_it_touches() -> None:
    secrets = secret_set("SECRET", "TOKEN-ab")
    redactor = StreamRedactor(secrets)
    assert redactor.feed(b"<SECRETTOK") == b"<" + M
    assert redactor.pending == 3
    assert redactor.flush() == b""  # the mask already emitted covers "TOK" too
    assert run(secrets, [b"<SECRETTOK"]) == b"<" + M


def test_holds_back_only_a_possible_prefix() -> None:
    secrets = secret_set(PW)
    redactor = StreamRedactor(secrets)
    assert redactor.feed(b"plain line\n") == b"plain line\n"
    assert redactor.pending == 0
    assert redactor.feed(b"xx hunter2-lo") == b"xx "
    assert redactor.pending == len(b"hunter2-lo")
    assert redactor.feed(b"ng") == b""
    assert redactor.feed(b"!") == b"hunter2-long!"
    longest = max(map(len, registered(PW)))
    redactor.feed(b"hunter2-long-p" * 3)
    assert 0 < redactor.pending <= longest - 1


def test_flush_masks_rest_and_starts_a_new_stream() -> None:
    secrets = secret_set(PW)
    redactor = StreamRedactor(secrets)
    assert redactor.feed(b"end hunter") == b"end "
    assert redactor.flush() == M
    assert redactor.pending == 0
    assert redactor.feed(b"2-long-pw") == b"2-long-pw"  # new stream, no stale context
    assert redactor.feed(b" " + PW.encode()) + redactor.flush() == b" " + M


def test_passthrough_without_secrets() -> None:
    empty = SecretSet()
    data = bytes(range(256)) * 20
    assert run(empty, pieces(data, 7)) == data
    redactor = StreamRedactor(empty)
    assert redactor.feed(b"abc") == b"abc"
    assert redactor.pending == 0
    assert redactor.flush() == b""
    assert empty.redact(data) == data


def test_passthrough_when_secrets_are_absent() -> None:
    secrets = secret_set(PW, "another-secret-value", "abcdef12")
    log = b"".join(b"2026-05-01T12:00:%02dZ step %d: hunter abcdef1 another-secret\n" % (i, i) for i in range(50))
    for size in (1, 3, 64, 4096):
        assert run(secrets, pieces(log, size)) == log
    assert secrets.redact(log) == log


def test_custom_mask() -> None:
    secrets = secret_set(PW)
    assert run(secrets, pieces(TEXT, 4), mask=b"***") == b"login as admin with *** now\n"
    assert secrets.redact(TEXT, mask=b"***") == b"login as admin with *** now\n"


def test_mask_must_not_be_empty_or_contain_a_secret() -> None:
    secrets = secret_set(PW)
    with pytest.raises(ValueError, match="empty"):
        StreamRedactor(secrets, mask=b"")
    with pytest.raises(ValueError, match="contains a registered"):
        StreamRedactor(secrets, mask=b"<" + PW.encode() + b">")
    with pytest.raises(ValueError, match="contains a registered"):
        secrets.redact(TEXT, mask=PW.encode())


def test_redactor_keeps_the_secrets_it_was_created_with() -> None:
    secrets = secret_set(PW)
    before = StreamRedactor(secrets)
    secrets.add("added-later-secret")
    assert before.feed(b"added-later-secret ") == b"added-later-secret "
    assert run(secrets, [b"added-later-secret "]) == M + b" "


def test_feed_accepts_bytes_like_chunks() -> None:
    # Typed as bytes, but socket reads often hand over bytearray/memoryview.
    redactor = StreamRedactor(secret_set(PW))
    first = redactor.feed(bytearray(b"a " + PW.encode()))  # type: ignore[arg-type]
    second = redactor.feed(memoryview(b" b"))  # type: ignore[arg-type]
    assert first + second + redactor.flush() == b"a " + M + b" b"


# --------------------------------------------------------------------------- properties

# Secrets and filler share a small alphabet (regex metacharacters, NUL, high
# bytes) so that partial matches, overlaps and self-overlaps are common.  "["
# and "]" stay out of secrets: a secret containing mask bytes could be
# re-assembled from the mask and its neighbours (a documented limit).
SMALL = b"ab.*+?()\\|^${}\x00\xff%=/"
small_bytes = st.lists(st.sampled_from(SMALL), max_size=12).map(bytes)


def no_brackets(value: str | bytes) -> bool:
    if isinstance(value, str):
        return "[" not in value and "]" not in value
    return b"[" not in value and b"]" not in value


secret_values = st.one_of(
    st.lists(st.sampled_from(SMALL), min_size=6, max_size=14).map(bytes),
    st.binary(min_size=6, max_size=20),
    st.text(min_size=6, max_size=12),
).filter(no_brackets)

Scenario = tuple[list[str | bytes], bytes, list[int]]


@st.composite
def scenarios(draw: st.DrawFn, whole_forms: bool = True) -> Scenario:
    """Secrets; output built from filler and (truncated) forms; chunk cuts."""
    values: list[str | bytes] = draw(st.lists(secret_values, min_size=1, max_size=3))
    if draw(st.booleans()):
        # A secret containing another one (held-back bytes may then already
        # hold a complete match when the stream ends).
        inner = values[0] if isinstance(values[0], bytes) else values[0].encode()
        values.append(draw(small_bytes) + inner + draw(small_bytes))
    forms = sorted(registered(*values))
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 3 if whole_forms else 2))
        if kind == 0:
            parts.append(draw(small_bytes))
        elif kind == 1:
            parts.append(draw(st.binary(max_size=8)))
        else:
            form = forms[draw(st.integers(0, len(forms) - 1))]
            parts.append(form if kind == 3 else form[: draw(st.integers(1, len(form) - 1))])
    data = b"".join(parts)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    return values, data, cuts


class TestProperties:
    @pytest.fixture(autouse=True)
    def backend(self) -> None:
        """Overrides the module's parametrised fixture: examples draw the backend."""

    @PROPERTY
    @given(scenarios(), st.sampled_from(BACKENDS))
    def test_no_form_survives(self, scenario: Scenario, backend: str) -> None:
        values, data, cuts = scenario
        forms = registered(*values)
        assume(not any(form in M for form in forms))
        with selected_backend(backend):
            secrets = secret_set(*values)
            assert_no_form(run(secrets, split(data, cuts)), forms)
            assert_no_form(run(secrets, pieces(data, 1)), forms)

    @PROPERTY
    @given(scenarios(), st.sampled_from(BACKENDS))
    def test_streaming_equals_one_shot_and_holds_little(self, scenario: Scenario, backend: str) -> None:
        values, data, cuts = scenario
        forms = registered(*values)
        assume(not any(form in M for form in forms))
        longest = max(map(len, forms))
        with selected_backend(backend):
            secrets = secret_set(*values)
            redactor = StreamRedactor(secrets)
            out: list[bytes] = []
            fed = 0
            for chunk in split(data, cuts):
                out.append(redactor.feed(chunk))
                fed += len(chunk)
                held = redactor.pending
                assert held <= longest - 1
                # Only the end of a stretch of input that could still become a form is held.
                assert held <= held_at_end(data[:fed], forms)
            out.append(redactor.flush())
            streamed = b"".join(out)
            # One-shot redaction of the whole stream, except that a stream
            # ending inside a possible prefix ends with a mask.
            assert streamed == expected_stream(data, forms)
            if not held_at_end(data, forms):
                assert streamed == secrets.redact(data)

    @PROPERTY
    @given(scenarios(whole_forms=False), st.binary(max_size=40), st.sampled_from(BACKENDS))
    def test_identity_without_secrets_in_data(self, scenario: Scenario, noise: bytes, backend: str) -> None:
        values, data, cuts = scenario
        data += noise
        forms = registered(*values)
        assume(not any(form in data for form in forms))
        held = held_at_end(data, forms)
        with selected_backend(backend):
            assert run(secret_set(*values), split(data, cuts)) == (data[: len(data) - held] + M if held else data)
            assert run(SecretSet(), split(data, cuts)) == data

    @PROPERTY
    @given(st.data(), st.sampled_from(BACKENDS))
    def test_a_prefix_of_a_secret_is_never_shown(self, data: st.DataObject, backend: str) -> None:
        """Defect 6: a job prints part of a secret (or of an encoded form), pauses, then prints the rest
        or ends.  No prefix of 4 or more bytes that the surrounding text does not contain may be stored."""
        value = data.draw(secret_values, label="secret")
        forms = sorted(registered(value))
        assume(not any(form in M for form in forms))
        form = data.draw(st.sampled_from(forms), label="form")
        before = data.draw(st.one_of(small_bytes, st.binary(max_size=8)), label="before")
        after = data.draw(st.one_of(small_bytes, st.binary(max_size=8)), label="after")
        shown = data.draw(st.integers(1, len(form) - 1), label="prefix length")
        ends_in_prefix = data.draw(st.booleans(), label="stream ends after the prefix")
        stream = before + form[:shown] + (b"" if ends_in_prefix else form[shown:] + after)
        pause = len(before) + shown
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts")
        with selected_backend(backend):
            redactor = StreamRedactor(secret_set(value))
            stored: list[bytes] = []
            for chunk in split(stream, [*cuts, pause]):
                stored.append(redactor.feed(chunk))
                # The job may be quiet here for as long as it likes: no API
                # releases held bytes but more input or the end of the stream.
            stored.append(redactor.flush())
        output = b"".join(stored)
        # Masks separate what was shown; a prefix must not appear in any
        # stretch of raw output unless the surrounding text itself holds it.
        for stretch in output.split(M):
            for length in range(4, len(form)):
                prefix = form[:length]
                assert prefix not in stretch or prefix in before or prefix in after, (length, output)


# --------------------------------------------------------------------------- properties of the tool forms

# Values rich in the characters the tool forms treat specially: quotes, "$",
# backquote, backslash, "/", "%", space, non-ASCII.
TOOLISH = "ab'\"$`\\/%+= &<>é~?x"


def toolish_values(min_size: int) -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        st.text(alphabet=TOOLISH, min_size=min_size, max_size=min_size + 40),
        st.binary(min_size=min_size, max_size=min_size + 40),
        st.text(min_size=min_size, max_size=min_size + 20),
    ).filter(no_brackets)


def as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def text_only(encode: Callable[[str], bytes]) -> Callable[[str | bytes], bytes | None]:
    return lambda value: encode(value) if isinstance(value, str) else None


# name -> (how the tool prints a value, None where it does not apply; how
# many trailing characters may stay unmasked; the length from which the
# tool wraps, so that half of the values are at least that long).
ToolEncoder = Callable[[str | bytes], bytes | None]
TOOL_FORMS: dict[str, tuple[ToolEncoder, int, int]] = {
    # Python's base64.encodebytes is GNU base64's output: 76 columns, final newline.
    "base64 76": (lambda value: base64.encodebytes(as_bytes(value)), 0, 58),
    "base64 64 (PEM)": (lambda value: wrap(base64.b64encode(as_bytes(value)), 64) + b"\n", 0, 49),
    "base64url 76": (lambda value: wrap(base64.urlsafe_b64encode(as_bytes(value)), 76) + b"\n", 0, 58),
    # The last characters mix the value's bits with the newline's.
    "echo | base64": (lambda value: base64.encodebytes(as_bytes(value) + b"\n"), 4, 57),
    "echo | openssl base64": (lambda value: wrap(base64.b64encode(as_bytes(value) + b"\n"), 64) + b"\n", 4, 48),
    "quote lower": (lambda value: lower_escapes(quote(value, safe="")), 0, 6),
    "quote_plus lower": (lambda value: lower_escapes(quote_plus(value, safe="")), 0, 6),
    "quote safe=/": (lambda value: quote(value).encode(), 0, 6),
    "json \\/": (text_only(lambda text: json.dumps(text).replace("/", "\\/").encode()), 0, 6),
    "json utf-8 \\/": (text_only(lambda text: json.dumps(text, ensure_ascii=False).replace("/", "\\/").encode()), 0, 6),
    "sh '\\''": (lambda value: b"'" + as_bytes(value).replace(b"'", b"'\\''") + b"'", 0, 6),
    "shlex.quote": (text_only(lambda text: shlex.quote(text).encode()), 0, 6),
    'bash "…"': (lambda value: b'"' + shell_double_quoted(as_bytes(value)) + b'"', 0, 6),
    "hex": (lambda value: as_bytes(value).hex().encode(), 0, 6),
    "HEX": (lambda value: as_bytes(value).hex().upper().encode(), 0, 6),
    "xxd -p": (lambda value: wrap(as_bytes(value).hex().encode(), 60) + b"\n", 0, 31),
    "xxd -p -u": (lambda value: wrap(as_bytes(value).hex().upper().encode(), 60) + b"\n", 0, 31),
    "od -An -tx1": (lambda value: od_tx1(as_bytes(value)) + b"\n", 0, 17),
}


class TestToolFormProperties:
    @pytest.fixture(autouse=True)
    def backend(self) -> None:
        """Overrides the module's parametrised fixture: examples draw the backend."""

    @pytest.mark.parametrize("name", sorted(TOOL_FORMS))
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), backend=st.sampled_from(BACKENDS))
    def test_tool_form_embedded_in_text_is_masked(self, name: str, data: st.DataObject, backend: str) -> None:
        encode, slack, wraps_from = TOOL_FORMS[name]
        value = data.draw(st.one_of(toolish_values(6), toolish_values(wraps_from)), label="secret")
        printed = encode(value)
        assume(printed is not None)
        assert printed is not None
        forms = registered(value)
        assume(not any(form in M for form in forms))
        before = data.draw(st.one_of(small_bytes, st.binary(max_size=8)), label="before")
        after = data.draw(st.one_of(small_bytes, st.binary(max_size=8)), label="after")
        stream = before + printed + after
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts")
        with selected_backend(backend):
            output = run(secret_set(value), split(stream, cuts))
        assert M in output
        # No stretch of raw output holds 8 characters of what the tool printed,
        # except at its very end (``slack``: characters mixing in the newline's
        # bits) or where the surrounding text holds them anyway.
        secret_part = printed[: len(printed) - slack] if slack else printed
        window = min(8, len(secret_part))
        for stretch in output.split(M):
            for start in range(len(secret_part) - window + 1):
                piece = secret_part[start : start + window]
                assert piece not in stretch or piece in before or piece in after, (name, piece, output)


def test_a_secret_of_kilobytes_is_masked_in_every_form_and_stream_split() -> None:
    """A forge runner's one-time registration is kilobytes of base64: longer than Hyperscan accepts as a pattern
    (it refused to compile), so long forms go to aho-corasick next to the short ones."""
    long_secret = base64.b64encode(os.urandom(3000)).decode()
    short_secret = "short-secret-value"
    secrets = SecretSet()
    secrets.add(long_secret, name="JITCONFIG")
    secrets.add(short_secret, name="OTHER")
    text = f"config: {long_secret}\nb64: {base64.b64encode(long_secret.encode()).decode()}\nshort: {short_secret}\n"
    out = secrets.redact(text.encode(), b"[MASKED]")
    assert long_secret.encode() not in out and short_secret.encode() not in out
    assert base64.b64encode(long_secret.encode()) not in out and out.count(b"[MASKED]") >= 3
    redactor = StreamRedactor(secrets, mask=b"[MASKED]")
    data = text.encode()
    streamed = b"".join(redactor.feed(data[i : i + 97]) for i in range(0, len(data), 97)) + redactor.flush()
    assert streamed == out
