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
from collections.abc import Callable, Iterable, Iterator, Sequence
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


def run(secrets: SecretSet, chunks: Iterable[bytes], idle_after: Sequence[bool] = (), mask: bytes = M) -> bytes:
    """Stream ``chunks`` through a fresh redactor, idle-flushing where asked."""
    redactor = StreamRedactor(secrets, mask)
    out: list[bytes] = []
    for index, chunk in enumerate(chunks):
        out.append(redactor.feed(chunk))
        if index < len(idle_after) and idle_after[index]:
            out.append(redactor.flush_idle())
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


def test_idle_flush_shows_quiet_output_then_masks_the_rest() -> None:
    redactor = StreamRedactor(secret_set(PW))
    assert redactor.feed(b"Enter token: hun") == b"Enter token: "
    assert redactor.pending == 3  # "hun" may be the start of the secret
    assert redactor.flush_idle() == b"hun"
    assert redactor.pending == 0
    assert redactor.feed(b"ter2-long-pw done\n") == M + b" done\n"
    assert redactor.flush() == b""


def test_idle_flush_never_lets_a_full_form_through() -> None:
    secrets = secret_set(PW, "abcdef12", "ef12345678")
    forms = registered(PW, "abcdef12", "ef12345678")
    text = b"x" + PW.encode() + b" abcdef12345678 " + PW.encode() + PW.encode()
    for size in (1, 2, 5):
        out = run(secrets, pieces(text, size), idle_after=[True] * len(text))
        assert_no_form(out, forms)
        assert out.startswith(b"x")


def test_idle_flush_without_continuation_passes_through() -> None:
    secrets = secret_set(PW)
    out = run(secrets, [b"say hun", b"gry now"], idle_after=[True])
    assert out == b"say hungry now"


def test_idle_flush_emits_known_match_inside_held_bytes() -> None:
    # "aaSECRET" is a proper prefix of one form and contains another one.
    secrets = secret_set("SECRET", "aaSECRET99")
    redactor = StreamRedactor(secrets)
    assert redactor.feed(b"> aaSECRET") == b"> "
    assert redactor.flush_idle() == b"aa" + M
    assert redactor.feed(b"99 <") == b" <"  # the mask simply continues


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


def test_flush_emits_rest_and_starts_a_new_stream() -> None:
    secrets = secret_set(PW)
    redactor = StreamRedactor(secrets)
    assert redactor.feed(b"end hunter") == b"end "
    assert redactor.flush() == b"hunter"
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
    assert redactor.flush_idle() == b""
    assert empty.redact(data) == data


def test_passthrough_when_secrets_are_absent() -> None:
    secrets = secret_set(PW, "another-secret-value", "abcdef12")
    log = b"".join(b"2026-05-01T12:00:%02dZ step %d: hunter abcdef1 another-secret\n" % (i, i) for i in range(50))
    for size in (1, 3, 64, 4096):
        assert run(secrets, pieces(log, size)) == log
        assert run(secrets, pieces(log, size), idle_after=[True, False] * len(log)) == log
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

Scenario = tuple[list[str | bytes], bytes, list[int], list[bool]]


@st.composite
def scenarios(draw: st.DrawFn, whole_forms: bool = True) -> Scenario:
    """Secrets; output built from filler and (truncated) forms; chunk cuts; idle flags."""
    values: list[str | bytes] = draw(st.lists(secret_values, min_size=1, max_size=3))
    if draw(st.booleans()):
        # A secret containing another one (held-back bytes may then already
        # hold a complete match when an idle flush comes).
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
    idle_bits = draw(st.integers(0, (1 << (len(cuts) + 1)) - 1))  # one draw instead of a list
    idle = [bool(idle_bits >> index & 1) for index in range(len(cuts) + 1)]
    return values, data, cuts, idle


class TestProperties:
    @pytest.fixture(autouse=True)
    def backend(self) -> None:
        """Overrides the module's parametrised fixture: examples draw the backend."""

    @PROPERTY
    @given(scenarios(), st.sampled_from(BACKENDS))
    def test_no_form_survives(self, scenario: Scenario, backend: str) -> None:
        values, data, cuts, idle = scenario
        forms = registered(*values)
        assume(not any(form in M for form in forms))
        with selected_backend(backend):
            secrets = secret_set(*values)
            assert_no_form(run(secrets, split(data, cuts), idle_after=idle), forms)
            assert_no_form(run(secrets, pieces(data, 1), idle_after=[True] * len(data)), forms)

    @PROPERTY
    @given(scenarios(), st.sampled_from(BACKENDS))
    def test_streaming_equals_one_shot_and_holds_little(self, scenario: Scenario, backend: str) -> None:
        values, data, cuts, _ = scenario
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
                if held:
                    # The held bytes end a stretch of input that could still become a form.
                    seen = data[:fed]
                    assert any(
                        form.startswith(seen[-k:]) and len(form) > k
                        for k in range(held, min(longest, fed + 1))
                        for form in forms
                    )
            out.append(redactor.flush())
            assert b"".join(out) == secrets.redact(data)

    @PROPERTY
    @given(scenarios(whole_forms=False), st.binary(max_size=40), st.sampled_from(BACKENDS))
    def test_identity_without_secrets_in_data(self, scenario: Scenario, noise: bytes, backend: str) -> None:
        values, data, cuts, idle = scenario
        data += noise
        assume(not any(form in data for form in registered(*values)))
        with selected_backend(backend):
            assert run(secret_set(*values), split(data, cuts), idle_after=idle) == data
            assert run(SecretSet(), split(data, cuts)) == data
