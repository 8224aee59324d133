"""Tests for webhook signature verification (pure, no I/O)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from orchestrator.intake.signatures import SCHEMES, SignatureError, decode_secret, sign, verify

NOW = 1_700_000_000
BODY = b'{"action":"queued","workflow_job":{"id":1}}'
SECRET = b"s3cr3t-for-tests"
# base64 of b"0123456789abcdef0123456789abcdef"
SW_SECRET_TEXT = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
SW_KEY = b"0123456789abcdef0123456789abcdef"

GITHUB_VECTOR_SECRET = b"It's a Secret to Everybody"
GITHUB_VECTOR_BODY = b"Hello, World!"
GITHUB_VECTOR_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def _sign_any(scheme: str, secret: bytes, body: bytes, msg_id: str = "msg_1") -> dict[str, str]:
    return sign(scheme, secret, body, msg_id=msg_id, timestamp=NOW)


def _reason(exc: pytest.ExceptionInfo[SignatureError]) -> str:
    return exc.value.reason


# --- valid signatures -----------------------------------------------------------------------------


def test_schemes_constant() -> None:
    assert frozenset({"hub-sha256", "gitea-sha256", "standard-webhooks"}) == SCHEMES


def test_github_documented_vector() -> None:
    headers = {"X-Hub-Signature-256": GITHUB_VECTOR_SIG}
    assert verify("hub-sha256", [GITHUB_VECTOR_SECRET], headers, GITHUB_VECTOR_BODY, NOW) is None
    assert sign("hub-sha256", GITHUB_VECTOR_SECRET, GITHUB_VECTOR_BODY) == headers


def test_standard_webhooks_reference_vector() -> None:
    # Test vector from the Standard Webhooks reference libraries.
    key = decode_secret("standard-webhooks", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    got = verify("standard-webhooks", [key], headers, b'{"test": 2432232314}', 1614265330)
    assert got == "msg_p5jXN8AQM9LWM0D4loKWxJek"


def test_hub_valid_returns_delivery_id() -> None:
    headers = {
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest(),
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    }
    assert verify("hub-sha256", [SECRET], headers, BODY, NOW) == "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def test_hub_uppercase_hex_accepted() -> None:
    hexsig = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest().upper()
    assert verify("hub-sha256", [SECRET], {"X-Hub-Signature-256": "sha256=" + hexsig}, BODY, NOW) is None


@pytest.mark.parametrize("header", ["X-Gitea-Signature", "X-Forgejo-Signature"])
def test_gitea_valid(header: str) -> None:
    headers = {header: hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()}
    assert verify("gitea-sha256", [SECRET], headers, BODY, NOW) is None


@pytest.mark.parametrize("delivery", ["X-Gitea-Delivery", "X-Forgejo-Delivery"])
def test_gitea_delivery_id(delivery: str) -> None:
    headers = {"X-Gitea-Signature": hmac.new(SECRET, BODY, hashlib.sha256).hexdigest(), delivery: "d-42"}
    assert verify("gitea-sha256", [SECRET], headers, BODY, NOW) == "d-42"


def test_standard_webhooks_valid() -> None:
    content = b"msg_abc." + str(NOW).encode() + b"." + BODY
    sig = base64.b64encode(hmac.new(SW_KEY, content, hashlib.sha256).digest()).decode()
    headers = {"webhook-id": "msg_abc", "webhook-timestamp": str(NOW), "webhook-signature": f"v1,{sig}"}
    assert verify("standard-webhooks", [SW_KEY], headers, BODY, NOW) == "msg_abc"
    assert sign("standard-webhooks", SW_KEY, BODY, msg_id="msg_abc", timestamp=NOW) == headers


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_sign_then_verify_each_scheme(scheme: str) -> None:
    headers = _sign_any(scheme, SECRET, BODY, msg_id="msg_7")
    assert verify(scheme, [SECRET], headers, BODY, NOW) == "msg_7"


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_headers_case_insensitive(scheme: str) -> None:
    headers = _sign_any(scheme, SECRET, BODY)
    for transform in (str.lower, str.upper):
        mangled = {transform(k): v for k, v in headers.items()}
        assert verify(scheme, [SECRET], mangled, BODY, NOW) == "msg_1"


def test_headers_cimultidict_proxy() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    headers = CIMultiDictProxy(CIMultiDict(_sign_any("standard-webhooks", SECRET, BODY)))
    assert verify("standard-webhooks", [SECRET], headers, BODY, NOW) == "msg_1"


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_wrong_secret(scheme: str) -> None:
    headers = _sign_any(scheme, SECRET, BODY)
    with pytest.raises(SignatureError) as exc:
        verify(scheme, [b"other-secret"], headers, BODY, NOW)
    assert _reason(exc) == "bad_signature"


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_tampered_body(scheme: str) -> None:
    headers = _sign_any(scheme, SECRET, BODY)
    with pytest.raises(SignatureError) as exc:
        verify(scheme, [SECRET], headers, BODY + b" ", NOW)
    assert _reason(exc) == "bad_signature"


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_missing_signature_header(scheme: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify(scheme, [SECRET], {"Content-Type": "application/json"}, BODY, NOW)
    assert _reason(exc) == "missing_signature"


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_empty_signature_header(scheme: str) -> None:
    headers = {k: ("" if "ignature" in k else v) for k, v in _sign_any(scheme, SECRET, BODY).items()}
    with pytest.raises(SignatureError) as exc:
        verify(scheme, [SECRET], headers, BODY, NOW)
    assert _reason(exc) == "missing_signature"


@pytest.mark.parametrize("dropped", ["webhook-id", "webhook-timestamp"])
def test_standard_webhooks_missing_header(dropped: str) -> None:
    headers = _sign_any("standard-webhooks", SECRET, BODY)
    del headers[dropped]
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", [SECRET], headers, BODY, NOW)
    assert _reason(exc) == "missing_header"


@pytest.mark.parametrize(
    "value",
    [
        "sha256=zz" + "0" * 62,  # non-hex
        "sha256=" + "0" * 63,  # too short
        "sha256=" + "0" * 66,  # too long
        "sha1=" + "0" * 40,  # wrong algorithm
        "0" * 64,  # missing prefix
        "sha256=" + "\uff10" * 64,  # non-ASCII (fullwidth) digits
    ],
)
def test_hub_malformed(value: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("hub-sha256", [SECRET], {"X-Hub-Signature-256": value}, BODY, NOW)
    assert _reason(exc) == "malformed_signature"


@pytest.mark.parametrize("value", ["not-hex", "g" * 64, "0" * 63, "sha256=" + "0" * 64])
def test_gitea_malformed(value: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify("gitea-sha256", [SECRET], {"X-Gitea-Signature": value}, BODY, NOW)
    assert _reason(exc) == "malformed_signature"


@pytest.mark.parametrize(
    "value",
    [
        "v1,!!!not-base64!!!",
        "v1,",
        "v1,AAAA",  # valid base64 but not a SHA-256 length
        "v1,not base64 either",
    ],
)
def test_standard_webhooks_malformed_base64(value: str) -> None:
    headers = _sign_any("standard-webhooks", SECRET, BODY)
    headers["webhook-signature"] = value
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", [SECRET], headers, BODY, NOW)
    assert _reason(exc) == "malformed_signature"


@pytest.mark.parametrize("value", ["v1a,AAAA", "v2,AAAA", "garbage", "V1,AAAA"])
def test_standard_webhooks_no_v1_entry(value: str) -> None:
    headers = _sign_any("standard-webhooks", SECRET, BODY)
    headers["webhook-signature"] = value
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", [SECRET], headers, BODY, NOW)
    assert _reason(exc) == "missing_signature"


@pytest.mark.parametrize("ts", ["1700000000.5", "abc", "-1700000000", "+1700000000", "1_700_000_000", "1e9"])
def test_standard_webhooks_non_integer_timestamp(ts: str) -> None:
    headers = _sign_any("standard-webhooks", SECRET, BODY)
    headers["webhook-timestamp"] = ts
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", [SECRET], headers, BODY, NOW)
    assert _reason(exc) == "malformed_signature"


@pytest.mark.parametrize("skew", [301, -301, 10_000, -10_000])
def test_standard_webhooks_stale_timestamp(skew: int) -> None:
    # Signature is valid; only the clock differs.
    headers = _sign_any("standard-webhooks", SECRET, BODY)
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", [SECRET], headers, BODY, NOW + skew)
    assert _reason(exc) == "stale_timestamp"


@pytest.mark.parametrize("skew", [0, 300, -300, 299.9, -299.9])
def test_standard_webhooks_within_tolerance(skew: float) -> None:
    headers = _sign_any("standard-webhooks", SECRET, BODY)
    assert verify("standard-webhooks", [SECRET], headers, BODY, NOW + skew) == "msg_1"


def test_standard_webhooks_msg_id_is_signed() -> None:
    headers = _sign_any("standard-webhooks", SECRET, BODY)
    headers["webhook-id"] = "msg_other"
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", [SECRET], headers, BODY, NOW)
    assert _reason(exc) == "bad_signature"


def test_standard_webhooks_timestamp_is_signed() -> None:
    headers = _sign_any("standard-webhooks", SECRET, BODY)
    headers["webhook-timestamp"] = str(NOW + 1)
    with pytest.raises(SignatureError) as exc:
        verify("standard-webhooks", [SECRET], headers, BODY, NOW)
    assert _reason(exc) == "bad_signature"


# --- rotation -----------------------------------------------------------------------------------


def test_standard_webhooks_multiple_signatures_second_matches() -> None:
    good = _sign_any("standard-webhooks", SECRET, BODY)
    bad = _sign_any("standard-webhooks", b"old-secret", BODY)
    headers = dict(good)
    headers["webhook-signature"] = f"{bad['webhook-signature']} {good['webhook-signature']}"
    assert verify("standard-webhooks", [SECRET], headers, BODY, NOW) == "msg_1"


def test_standard_webhooks_ignores_other_versions_and_bad_entries() -> None:
    good = _sign_any("standard-webhooks", SECRET, BODY)
    headers = dict(good)
    headers["webhook-signature"] = f"v1a,AAAA v1,!!! {good['webhook-signature']}"
    assert verify("standard-webhooks", [SECRET], headers, BODY, NOW) == "msg_1"


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_rotation_list_of_secrets(scheme: str) -> None:
    for signing_secret in (b"old-key", b"new-key"):
        headers = _sign_any(scheme, signing_secret, BODY)
        assert verify(scheme, [b"old-key", b"new-key"], headers, BODY, NOW) == "msg_1"
    with pytest.raises(SignatureError):
        verify(scheme, [b"old-key", b"new-key"], _sign_any(scheme, b"retired", BODY), BODY, NOW)


# --- configuration errors -------------------------------------------------------------------------


def test_unknown_scheme_rejected() -> None:
    with pytest.raises(ValueError, match="unknown signature scheme"):
        verify("sha1", [SECRET], {}, BODY, NOW)
    with pytest.raises(ValueError, match="unknown signature scheme"):
        sign("sha1", SECRET, BODY)
    with pytest.raises(ValueError, match="unknown signature scheme"):
        decode_secret("sha1", "x")


@pytest.mark.parametrize("secrets", [[], [b""], [SECRET, b""]])
def test_empty_secrets_rejected(secrets: list[bytes]) -> None:
    headers = _sign_any("hub-sha256", SECRET, BODY)
    with pytest.raises(ValueError):
        verify("hub-sha256", secrets, headers, BODY, NOW)


def test_single_bytes_secret_is_not_a_sequence_of_secrets() -> None:
    headers = _sign_any("hub-sha256", SECRET, BODY)
    with pytest.raises(TypeError):
        verify("hub-sha256", SECRET, headers, BODY, NOW)  # type: ignore[arg-type]


def test_sign_standard_webhooks_requires_id_and_timestamp() -> None:
    with pytest.raises(ValueError):
        sign("standard-webhooks", SECRET, BODY, timestamp=NOW)
    with pytest.raises(ValueError):
        sign("standard-webhooks", SECRET, BODY, msg_id="msg_1")


# --- decode_secret --------------------------------------------------------------------------------


def test_decode_secret_plain_schemes() -> None:
    assert decode_secret("hub-sha256", "  hunter2\n") == b"hunter2"
    assert decode_secret("gitea-sha256", "pässwort\n") == "pässwort".encode()
    # whsec_ has no meaning for these schemes: the text is the key.
    assert decode_secret("hub-sha256", SW_SECRET_TEXT) == SW_SECRET_TEXT.encode()


def test_decode_secret_standard_webhooks() -> None:
    assert decode_secret("standard-webhooks", SW_SECRET_TEXT + "\n") == SW_KEY
    assert decode_secret("standard-webhooks", SW_SECRET_TEXT.removeprefix("whsec_")) == SW_KEY


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("raw", ["", "   ", "\n\t\n"])
def test_decode_secret_empty(scheme: str, raw: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        decode_secret(scheme, raw)


def test_decode_secret_whsec_prefix_only_is_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        decode_secret("standard-webhooks", "whsec_")


@pytest.mark.parametrize("raw", ["whsec_not*base64!", "whsec_abc", "zzz~~"])
def test_decode_secret_invalid_base64(raw: str) -> None:
    with pytest.raises(ValueError, match="base64") as exc:
        decode_secret("standard-webhooks", raw)
    assert raw.removeprefix("whsec_") not in str(exc.value)


# --- error messages do not leak -------------------------------------------------------------------


def _expected_signature_strings(scheme: str, secret: bytes, body: bytes) -> list[str]:
    headers = _sign_any(scheme, secret, body)
    sig = headers.get("X-Hub-Signature-256") or headers.get("X-Gitea-Signature") or headers["webhook-signature"]
    out = [sig, sig.removeprefix("sha256=").removeprefix("v1,")]
    raw = hmac.new(secret, body, hashlib.sha256).hexdigest()
    out.append(raw)
    return out


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_error_messages_do_not_leak_secret_or_expected_signature(scheme: str) -> None:
    secret = b"very-distinctive-secret-value"
    forged = _sign_any(scheme, b"attacker", BODY)
    cases: list[dict[str, str]] = [
        forged,
        {},
        {k: v + "x" for k, v in forged.items()},
    ]
    if scheme == "standard-webhooks":
        cases.append({**forged, "webhook-timestamp": str(NOW - 1000)})
        cases.append({**forged, "webhook-timestamp": "soon"})
    forbidden = [secret.decode(), *_expected_signature_strings(scheme, secret, BODY)]
    for headers in cases:
        with pytest.raises(SignatureError) as exc:
            verify(scheme, [secret], headers, BODY, NOW)
        texts = [str(exc.value), exc.value.message, repr(exc.value), *map(str, exc.value.args)]
        for text in texts:
            assert text
            for needle in forbidden:
                assert needle not in text


# --- constant-time comparison ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("valid", [True, False])
def test_uses_compare_digest(scheme: str, valid: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, object]] = []
    real: Callable[..., bool] = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("orchestrator.intake.signatures.hmac.compare_digest", spy)
    headers = _sign_any(scheme, SECRET if valid else b"wrong", BODY)
    if valid:
        verify(scheme, [SECRET], headers, BODY, NOW)
    else:
        with pytest.raises(SignatureError):
            verify(scheme, [SECRET], headers, BODY, NOW)
    assert calls


# --- property tests -------------------------------------------------------------------------------

_secrets = st.binary(min_size=1, max_size=64)
_msg_ids = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(sorted(SCHEMES)),
    secret=_secrets,
    body=st.binary(max_size=512),
    msg_id=_msg_ids,
)
def test_property_sign_then_verify(scheme: str, secret: bytes, body: bytes, msg_id: str) -> None:
    headers = sign(scheme, secret, body, msg_id=msg_id, timestamp=NOW)
    assert verify(scheme, [secret], headers, body, NOW) == msg_id


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(sorted(SCHEMES)),
    secret=_secrets,
    body=st.binary(min_size=1, max_size=512),
    data=st.data(),
)
def test_property_flipping_any_body_byte_fails(scheme: str, secret: bytes, body: bytes, data: st.DataObject) -> None:
    headers = sign(scheme, secret, body, msg_id="msg_1", timestamp=NOW)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1), label="index")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="mask")
    tampered = bytearray(body)
    tampered[index] ^= mask
    with pytest.raises(SignatureError) as exc:
        verify(scheme, [secret], headers, bytes(tampered), NOW)
    assert exc.value.reason == "bad_signature"


@settings(max_examples=100, deadline=None)
@given(scheme=st.sampled_from(sorted(SCHEMES)), secret=_secrets, other=_secrets, body=st.binary(max_size=256))
def test_property_other_secret_fails(scheme: str, secret: bytes, other: bytes, body: bytes) -> None:
    # HMAC zero-pads short keys, so b"k" and b"k\x00" are the same key.
    assume(other.rstrip(b"\x00") != secret.rstrip(b"\x00"))
    headers = sign(scheme, secret, body, msg_id="msg_1", timestamp=NOW)
    with pytest.raises(SignatureError):
        verify(scheme, [other], headers, body, NOW)
