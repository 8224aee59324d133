"""Tests for signed job attestations (orchestrator/attestation.py): pure functions, files only under tmp_path."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.evidence import keys
from orchestrator.evidence.attestation import (
    BUILD_TYPE,
    MAX_SIGNATURES,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    AttestationError,
    AttestedJob,
    JobFacts,
    build_statement,
    check_job,
    key_id,
    pae,
    read_job,
    rfc3339,
    sha256_file,
    sign_envelope,
    verify_dsse,
    verify_envelope,
)
from orchestrator.evidence.canonical import canonical_json
from orchestrator.evidence.keys import export_public_key as write_public_key
from orchestrator.jobs.states import JobState

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
IMAGE_HEX = "a" * 64
LOG_HEX = hashlib.sha256(b"redacted log\n").hexdigest()
SPEC_JSON = b'{"commands":["make test"],"id":"delivery-123","pool":"default"}'
STARTED = 1_714_564_800.0  # 2024-05-01T12:00:00Z
FINISHED = 1_714_564_862.25  # 62.25 s later
NEVER_PASSED = "s3cr3t-value-that-was-never-given"
KEY = Ed25519PrivateKey.generate()  # module-level so hypothesis tests need no function-scoped fixture


def facts(**overrides: Any) -> JobFacts:
    base = JobFacts(
        job_id="delivery-123",
        repository="org/app",
        ref="refs/heads/main",
        sha=SHA,
        pool="default",
        commands=["make test", "make lint"],
        env={"GOFLAGS": "-mod=mod", "GREETING": "hello attestation"},
        secrets=[{"name": "APP_TOKEN", "path": "ci/app/deploy-token"}],
        spec_json=SPEC_JSON,
        image="runner-orchestrator/runner:1.4",
        image_id=f"sha256:{IMAGE_HEX}",
        controller_id="ctrl-1",
        started_at=STARTED,
        finished_at=FINISHED,
        state="succeeded",
        exit_code=0,
        reason=None,
        log_sha256=LOG_HEX,
        pool_config_digest="c" * 64,
    )
    return dataclasses.replace(base, **overrides)


def envelope_for(key: Ed25519PrivateKey = KEY, **overrides: Any) -> dict[str, Any]:
    return sign_envelope(build_statement(facts(**overrides)), key)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def payload_of(envelope: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return decoded


def raw_envelope(payload: bytes, key: Ed25519PrivateKey = KEY, payload_type: str = PAYLOAD_TYPE) -> dict[str, Any]:
    """A correctly signed DSSE envelope around arbitrary bytes, to reach the checks after the signature."""
    sig = key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": b64(payload),
        "signatures": [{"keyid": key_id(key), "sig": b64(sig)}],
    }


def reject(envelope: Any, match: str, key: Ed25519PrivateKey = KEY) -> None:
    with pytest.raises(AttestationError, match=match):
        verify_envelope(envelope, key.public_key())


# -- PAE ----------------------------------------------------------------------------------------------------------


def test_pae_known_answer_from_the_dsse_spec() -> None:
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_lengths_are_utf8_byte_counts_and_an_empty_body_keeps_its_separator() -> None:
    assert pae("application/vnd.exämple+json", b"{}") == "DSSEv1 29 application/vnd.exämple+json 2 {}".encode()
    assert pae(PAYLOAD_TYPE, b"") == b"DSSEv1 28 application/vnd.in-toto+json 0 "


# -- envelope round trip ------------------------------------------------------------------------------------------


def test_round_trip_returns_the_signed_statement() -> None:
    statement = build_statement(facts())
    assert verify_envelope(sign_envelope(statement, KEY), KEY.public_key()) == statement


def test_envelope_is_plain_dsse_verifiable_without_this_module() -> None:
    envelope = envelope_for()
    assert set(envelope) == {"payloadType", "payload", "signatures"}
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    payload = base64.b64decode(envelope["payload"], validate=True)
    assert payload == canonical_json(build_statement(facts()))
    [signature] = envelope["signatures"]
    raw_public = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert signature["keyid"] == hashlib.sha256(raw_public).hexdigest() == key_id(KEY) == key_id(KEY.public_key())
    message = b"DSSEv1 28 application/vnd.in-toto+json %d %b" % (len(payload), payload)
    KEY.public_key().verify(base64.b64decode(signature["sig"]), message)  # raises if wrong


def test_signing_is_deterministic() -> None:
    assert envelope_for() == envelope_for()


def test_url_safe_unpadded_base64_is_accepted_as_dsse_requires() -> None:
    envelope = envelope_for()

    def url_safe(text: str) -> str:
        return base64.urlsafe_b64encode(base64.b64decode(text)).decode().rstrip("=")

    envelope["payload"] = url_safe(envelope["payload"])
    envelope["signatures"][0]["sig"] = url_safe(envelope["signatures"][0]["sig"])
    assert verify_envelope(envelope, KEY.public_key()) == build_statement(facts())


def test_keyid_is_only_a_hint_every_signature_is_tried() -> None:
    other = Ed25519PrivateKey.generate()
    envelope = envelope_for()
    foreign = envelope_for(other)["signatures"][0]
    mine = envelope["signatures"][0]
    envelope["signatures"] = [foreign, {"keyid": "some-other-naming-scheme", "sig": mine["sig"]}]
    assert verify_envelope(envelope, KEY.public_key())["_type"] == STATEMENT_TYPE
    del envelope["signatures"][1]["keyid"]
    assert verify_envelope(envelope, KEY.public_key())["_type"] == STATEMENT_TYPE


def test_sign_refuses_what_verify_would_reject() -> None:
    with pytest.raises(ValueError, match="not an in-toto Statement v1"):
        sign_envelope({"_type": "https://in-toto.io/Statement/v0.1", "subject": []}, KEY)


# -- tampering ----------------------------------------------------------------------------------------------------


def test_tampered_payload_fails() -> None:
    envelope = envelope_for(state="failed", exit_code=1, reason="exit code 1")
    statement = payload_of(envelope)
    statement["predicate"]["runDetails"]["byproducts"][0]["annotations"]["state"] = "succeeded"
    envelope["payload"] = b64(canonical_json(statement))
    reject(envelope, r"^signature by key [0-9a-f]{64} does not match: payload, payloadType or signature was altered$")


def test_tampered_signature_fails() -> None:
    envelope = envelope_for()
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[10] ^= 0x01
    envelope["signatures"][0]["sig"] = b64(bytes(sig))
    reject(envelope, "does not match: payload, payloadType or signature was altered")


def test_tampered_payload_type_fails() -> None:
    envelope = envelope_for()
    envelope["payloadType"] = "application/json"
    reject(envelope, r"^wrong payloadType 'application/json': expected 'application/vnd.in-toto\+json'$")
    del envelope["payloadType"]
    reject(envelope, "wrong payloadType None")


def test_payload_type_is_covered_by_the_signature() -> None:
    """Signed as another type, relabelled as in-toto: PAE makes the signature fail, not just the label check."""
    envelope = raw_envelope(canonical_json(build_statement(facts())), payload_type="application/vnd.other+json")
    envelope["payloadType"] = PAYLOAD_TYPE
    reject(envelope, "does not match")


def test_other_key_fails_naming_the_expected_keyid() -> None:
    other = Ed25519PrivateKey.generate()
    envelope = envelope_for(other)
    with pytest.raises(AttestationError) as exc:
        verify_envelope(envelope, KEY.public_key())
    assert str(exc.value) == f"no valid signature by key {key_id(KEY)} (envelope keyids: {key_id(other)})"


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda e: e.update(payload="not*base64!"), "^payload is not valid base64$"),
        (lambda e: e.update(payload="QUJD="), "^payload is not valid base64$"),  # bad padding position
        (lambda e: e.pop("payload"), "^payload is missing or not a string$"),
        (lambda e: e["signatures"][0].update(sig="%%%"), r"^signatures\[0\]\.sig is not valid base64$"),
        (lambda e: e["signatures"][0].pop("sig"), r"^signatures\[0\]\.sig is missing or not a string$"),
        (lambda e: e.update(signatures=[]), "^envelope has no signatures$"),
        (lambda e: e.pop("signatures"), "^envelope has no signatures$"),
        (lambda e: e.update(signatures=["x"]), r"^signatures\[0\] is not an object$"),
        (
            lambda e: e.update(signatures=e["signatures"] * (MAX_SIGNATURES + 1)),
            f"^envelope has {MAX_SIGNATURES + 1} signatures; at most {MAX_SIGNATURES} are checked$",
        ),
    ],
)
def test_malformed_envelopes_fail_with_specific_messages(mutate: Any, match: str) -> None:
    envelope = envelope_for()
    mutate(envelope)
    reject(envelope, match)


def test_envelope_must_be_an_object() -> None:
    reject([envelope_for()], "^envelope is not a JSON object$")


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\xff\xfe", "^payload is not JSON"),
        (b"{not json", "^payload is not JSON"),
        (b'{"_type":"https://in-toto.io/Statement/v1","_type":"x"}', "duplicate key '_type'"),
        (b'{"_type":"https://in-toto.io/Statement/v1","n":NaN}', "NaN is not JSON"),
        (b"[1, 2]", "^not an in-toto Statement: payload is not a JSON object$"),
        (b'{"_type":"https://in-toto.io/Statement/v0.1"}', "^not an in-toto Statement v1: _type is 'https://in-toto"),
        (b'{"_type":"https://in-toto.io/Statement/v1","subject":[]}', "subject must be a non-empty list"),
        (b'{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"x"}]}', "predicateType is missing"),
    ],
)
def test_signed_but_not_an_in_toto_statement_fails(payload: bytes, match: str) -> None:
    envelope = raw_envelope(payload)
    assert verify_dsse(envelope, KEY.public_key()) == payload  # the signature itself is fine
    reject(envelope, match)


# -- statement contents -------------------------------------------------------------------------------------------


def test_statement_fields_are_exact() -> None:
    statement = build_statement(facts())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [
        {"name": "git+org/app@refs/heads/main", "digest": {"gitCommit": SHA}},
        {"name": "log/delivery-123", "digest": {"sha256": LOG_HEX}},
    ]
    definition = statement["predicate"]["buildDefinition"]
    assert definition == {
        "buildType": "https://runner-orchestrator.dev/job/v1",
        "externalParameters": {
            "repository": "org/app",
            "ref": "refs/heads/main",
            "sha": SHA,
            "pool": "default",
            "commands": ["make test", "make lint"],
            "env": {"GOFLAGS": "-mod=mod", "GREETING": "hello attestation"},
            "secrets": [{"name": "APP_TOKEN", "path": "ci/app/deploy-token"}],
        },
        "internalParameters": {"controller_id": "ctrl-1", "pool_config_digest": "c" * 64},
        "resolvedDependencies": [
            {"uri": "docker-image:runner-orchestrator/runner:1.4", "digest": {"sha256": IMAGE_HEX}}
        ],
    }
    run = statement["predicate"]["runDetails"]
    assert run["builder"] == {"id": "https://runner-orchestrator.dev/controller/ctrl-1"}
    assert run["metadata"] == {
        "invocationId": "delivery-123",
        "startedOn": "2024-05-01T12:00:00Z",
        "finishedOn": "2024-05-01T12:01:02.250Z",
    }
    exit_facts = {"state": "succeeded", "exit_code": 0, "reason": None}
    assert run["byproducts"] == [
        {
            "name": "exit",
            "mediaType": "application/json",
            "content": b64(canonical_json(exit_facts)),
            "annotations": exit_facts,
        },
        {"name": "job-spec", "digest": {"sha256": hashlib.sha256(SPEC_JSON).hexdigest()}},
    ]
    assert json.loads(base64.b64decode(run["byproducts"][0]["content"])) == exit_facts


def test_failed_job_records_its_exit() -> None:
    statement = build_statement(facts(state="failed", exit_code=137, reason="exit code 137: killed (SIGKILL)"))
    assert statement["predicate"]["runDetails"]["byproducts"][0]["annotations"] == {
        "state": "failed",
        "exit_code": 137,
        "reason": "exit code 137: killed (SIGKILL)",
    }


RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$")


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [(0.0, "1970-01-01T00:00:00Z"), (STARTED, "2024-05-01T12:00:00Z"), (STARTED + 0.5, "2024-05-01T12:00:00.500Z")],
)
def test_timestamps_are_rfc3339_utc(timestamp: float, expected: str) -> None:
    assert rfc3339(timestamp) == expected
    assert RFC3339_UTC.match(expected)


def test_unknown_times_are_omitted_not_invented() -> None:
    """A job cancelled while queued never started; SLSA metadata times are optional."""
    metadata = build_statement(facts(started_at=None, finished_at=None, state="cancelled", exit_code=None))[
        "predicate"
    ]["runDetails"]["metadata"]
    assert metadata == {"invocationId": "delivery-123"}


def test_optional_internal_parameters_and_unknown_image_id() -> None:
    statement = build_statement(facts(pool_config_digest=None, image_id=""))
    definition = statement["predicate"]["buildDefinition"]
    assert definition["internalParameters"] == {"controller_id": "ctrl-1"}
    assert definition["resolvedDependencies"] == [{"uri": "docker-image:runner-orchestrator/runner:1.4"}]


def test_controller_id_is_escaped_in_the_builder_uri() -> None:
    builder = build_statement(facts(controller_id="host a/b"))["predicate"]["runDetails"]["builder"]
    assert builder == {"id": "https://runner-orchestrator.dev/controller/host%20a%2Fb"}


def test_secrets_appear_by_name_and_path_only() -> None:
    secrets = [
        {"name": "APP_TOKEN", "path": "ci/app/deploy-token", "key": "token", "deliver": "env"},
        # A caller bug must not leak a value: anything but name and path is dropped.
        {"name": "DB_PASSWORD", "path": "ci/app/db", "value": NEVER_PASSED + "-extra"},
    ]
    envelope = envelope_for(secrets=secrets)
    text = json.dumps(envelope) + base64.b64decode(envelope["payload"]).decode()
    assert "ci/app/deploy-token" in text and "ci/app/db" in text
    assert NEVER_PASSED not in text
    assert payload_of(envelope)["predicate"]["buildDefinition"]["externalParameters"]["secrets"] == [
        {"name": "APP_TOKEN", "path": "ci/app/deploy-token"},
        {"name": "DB_PASSWORD", "path": "ci/app/db"},
    ]


def test_env_values_appear_only_as_given() -> None:
    env = {"GOFLAGS": "-mod=mod", "GREETING": "hello attestation", "EMPTY": "", "UNICODE": "grüße ✓"}
    payload = base64.b64decode(envelope_for(env=env)["payload"]).decode()
    assert json.loads(payload)["predicate"]["buildDefinition"]["externalParameters"]["env"] == env
    for value in ("-mod=mod", "hello attestation", "grüße ✓"):
        assert payload.count(value) == 1  # in env and nowhere else: not masked, not copied


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"image_id": "a" * 64}, "image_id .* is not 'sha256:<64 hex>'"),
        ({"image_id": "sha512:" + "a" * 64}, "is not 'sha256:<64 hex>'"),
        ({"log_sha256": "abc"}, "log_sha256 'abc' is not 64 hex digits"),
        ({"sha": "main"}, "sha 'main' is not a hex git commit id"),
        ({"secrets": [{"name": "APP_TOKEN"}]}, r"secrets\[0\] needs string 'name' and 'path'"),
    ],
)
def test_malformed_facts_are_refused(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_statement(facts(**overrides))


def test_digests_are_normalised_to_lowercase_hex() -> None:
    statement = build_statement(facts(sha=SHA.upper(), image_id="sha256:" + "A" * 64, log_sha256=LOG_HEX.upper()))
    assert statement["subject"][0]["digest"] == {"gitCommit": SHA}
    assert statement["subject"][1]["digest"] == {"sha256": LOG_HEX}
    assert statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"] == {"sha256": "a" * 64}


def test_read_job_extracts_what_a_deploy_gate_decides_on() -> None:
    job = read_job(verify_envelope(envelope_for(), KEY.public_key()))
    assert job == AttestedJob(
        job_id="delivery-123",
        state="succeeded",
        exit_code=0,
        reason=None,
        repository="org/app",
        ref="refs/heads/main",
        sha=SHA,
        builder_id="https://runner-orchestrator.dev/controller/ctrl-1",
    )


def test_read_job_refuses_a_statement_whose_subject_and_parameters_disagree() -> None:
    statement = build_statement(facts())
    statement["subject"][0]["digest"]["gitCommit"] = "0" * 40
    with pytest.raises(AttestationError, match="does not carry gitCommit"):
        read_job(statement)
    statement = build_statement(facts())
    statement["predicate"]["runDetails"]["byproducts"][0]["annotations"]["state"] = "succeeded!"
    with pytest.raises(AttestationError, match="content and annotations disagree"):
        read_job(statement)
    statement = build_statement(facts())
    statement["predicateType"] = "https://slsa.dev/provenance/v0.2"
    with pytest.raises(AttestationError, match=re.escape("predicateType is 'https://slsa.dev/provenance/v0.2'")):
        read_job(statement)


@settings(max_examples=50, deadline=None)
@given(
    ref=st.text(min_size=1, max_size=40),
    commands=st.lists(st.text(max_size=60), min_size=1, max_size=5),
    env=st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), st.text(max_size=40), max_size=5),
    exit_code=st.none() | st.integers(min_value=0, max_value=255),
)
def test_any_facts_round_trip(ref: str, commands: list[str], env: dict[str, str], exit_code: int | None) -> None:
    statement = build_statement(facts(ref=ref, commands=commands, env=env, exit_code=exit_code))
    assert verify_envelope(sign_envelope(statement, KEY), KEY.public_key()) == statement
    assert read_job(statement).ref == ref


# -- files and the CLI --------------------------------------------------------------------------------------------


@pytest.fixture
def controller_key(tmp_path: Path) -> Ed25519PrivateKey:
    return keys.load_or_create(tmp_path / "data" / "attestation.key")


@pytest.fixture
def pubkey(tmp_path: Path, controller_key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "data" / "attestation.pub"
    write_public_key(path, controller_key)
    return path


def write_envelope(tmp_path: Path, key: Ed25519PrivateKey, **overrides: Any) -> Path:
    path = tmp_path / "envelope.json"
    path.write_text(json.dumps(envelope_for(key, **overrides)))
    return path


def test_write_public_key_publishes_a_loadable_world_readable_pem(
    pubkey: Path, controller_key: Ed25519PrivateKey
) -> None:
    assert pubkey.stat().st_mode & 0o777 == 0o644
    assert key_id(keys.load_public(pubkey.read_bytes())) == key_id(controller_key)
    assert not list(pubkey.parent.glob(".*.tmp"))


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    path = tmp_path / "log"
    data = bytes(range(256)) * 20_000  # 5 MB, several read chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def cli_verify(
    file: Path,
    pubkey: Path,
    *,
    expect_sha: str | None = None,
    expect_repository: str | None = None,
    require_success: bool = True,
) -> int:
    """`orchestrator attest verify` as a deploy step runs it."""
    argv = ["attest", "verify", str(file), "--pubkey", str(pubkey)]
    argv += ["--expect-sha", expect_sha] if expect_sha is not None else []
    argv += ["--expect-repository", expect_repository] if expect_repository is not None else []
    argv += [] if require_success else ["--allow-failed"]
    return main(argv)


def test_cli_verify_ok(
    tmp_path: Path, controller_key: Ed25519PrivateKey, pubkey: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = write_envelope(tmp_path, controller_key)
    assert cli_verify(envelope, pubkey, expect_sha=SHA.upper(), expect_repository="org/app") == 0
    out, err = capsys.readouterr()
    assert out == f"OK: job delivery-123 succeeded org/app@{SHA}\n"
    assert err == ""


@pytest.mark.parametrize(
    ("kwargs", "overrides", "message"),
    [
        (
            {"expect_sha": "0" * 40},
            {},
            f"INVALID: commit mismatch: attested {SHA}, expected {'0' * 40}",
        ),
        (
            {"expect_sha": SHA},
            {"sha": SHA[:7]},  # a short sha never satisfies a full one
            f"INVALID: commit mismatch: attested {SHA[:7]}, expected {SHA}",
        ),
        (
            {"expect_repository": "org/other"},
            {},
            "INVALID: repository mismatch: attested 'org/app', expected 'org/other'",
        ),
        (
            {},
            {"state": "failed", "exit_code": 2, "reason": "exit code 2"},
            "INVALID: job delivery-123 ended failed, not succeeded",
        ),
        (
            {"expect_sha": "0" * 40, "expect_repository": "org/other"},
            {"state": "timed_out", "exit_code": None},
            "INVALID: job delivery-123 ended timed_out, not succeeded; commit mismatch: attested "
            f"{SHA}, expected {'0' * 40}; repository mismatch: attested 'org/app', expected 'org/other'",
        ),
    ],
)
def test_cli_verify_refuses_expectation_mismatches(
    tmp_path: Path,
    controller_key: Ed25519PrivateKey,
    pubkey: Path,
    capsys: pytest.CaptureFixture[str],
    kwargs: dict[str, Any],
    overrides: dict[str, Any],
    message: str,
) -> None:
    envelope = write_envelope(tmp_path, controller_key, **overrides)
    assert cli_verify(envelope, pubkey, **kwargs) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", message + "\n")


def test_cli_verify_accepts_a_failed_job_when_success_is_not_required(
    tmp_path: Path, controller_key: Ed25519PrivateKey, pubkey: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = write_envelope(tmp_path, controller_key, state="failed", exit_code=1)
    assert cli_verify(envelope, pubkey, require_success=False, expect_sha=SHA) == 0
    assert capsys.readouterr().out == f"OK: job delivery-123 failed org/app@{SHA}\n"


def test_cli_verify_refuses_another_controllers_attestation(
    tmp_path: Path, pubkey: Path, controller_key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = write_envelope(tmp_path, Ed25519PrivateKey.generate())
    assert cli_verify(envelope, pubkey) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"INVALID: no valid signature by key {key_id(controller_key)} ")


def test_cli_verify_refuses_a_tampered_envelope(
    tmp_path: Path, controller_key: Ed25519PrivateKey, pubkey: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_envelope(tmp_path, controller_key, sha="1" * 40)
    envelope = json.loads(path.read_text())
    statement = payload_of(envelope)
    statement["subject"][0]["digest"]["gitCommit"] = SHA
    statement["predicate"]["buildDefinition"]["externalParameters"]["sha"] = SHA
    envelope["payload"] = b64(canonical_json(statement))
    path.write_text(json.dumps(envelope))
    assert cli_verify(path, pubkey, expect_sha=SHA) == 1
    assert "does not match: payload, payloadType or signature was altered" in capsys.readouterr().err


def test_cli_verify_reports_unusable_inputs(
    tmp_path: Path, controller_key: Ed25519PrivateKey, pubkey: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = write_envelope(tmp_path, controller_key)
    assert cli_verify(tmp_path / "missing.json", pubkey) == 1
    assert capsys.readouterr().err.startswith("INVALID: cannot read ")
    (tmp_path / "garbage.json").write_text("<html>")
    assert cli_verify(tmp_path / "garbage.json", pubkey) == 1
    assert "is not a JSON envelope" in capsys.readouterr().err
    (tmp_path / "dup.json").write_text('{"payload": "", "payload": ""}')
    assert cli_verify(tmp_path / "dup.json", pubkey) == 1
    assert "duplicate key 'payload'" in capsys.readouterr().err
    (tmp_path / "bad.pub").write_text("not a key")
    assert cli_verify(envelope, tmp_path / "bad.pub") == 1
    assert "is not an Ed25519 public key" in capsys.readouterr().err
    assert cli_verify(envelope, tmp_path / "data" / "attestation.key") == 1  # a private key is not accepted
    assert "is not an Ed25519 public key" in capsys.readouterr().err


def test_cli_verify_refuses_a_signed_statement_that_is_not_job_provenance(
    tmp_path: Path, controller_key: Ed25519PrivateKey, pubkey: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    statement: dict[str, Any] = {"_type": STATEMENT_TYPE, "subject": [{"name": "x", "digest": {"sha256": "0" * 64}}]}
    statement["predicateType"] = PREDICATE_TYPE
    statement["predicate"] = {"buildDefinition": {"buildType": "https://example.com/other"}}
    path = tmp_path / "envelope.json"
    path.write_text(json.dumps(sign_envelope(statement, controller_key)))
    assert cli_verify(path, pubkey) == 1
    assert capsys.readouterr().err == f"INVALID: buildType is not {BUILD_TYPE!r}\n"


def test_job_state_enum_is_recorded_as_its_value() -> None:
    statement = build_statement(facts(state=JobState.TIMED_OUT, exit_code=None, reason="timed out after 900 s"))
    assert b'"state":"timed_out"' in base64.b64decode(sign_envelope(statement, KEY)["payload"])
    assert read_job(statement).state == "timed_out"


# -- what the controller verified itself: the fetched commit, the source, the artifacts and reports -------------


ARTIFACT_SHA = hashlib.sha256(b"the build").hexdigest()


def rich(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": "ci",
        "checkout": {"remote": "https://git.example/org/app.git", "commit": SHA},
        "artifacts": [{"name": "dist/app.tar.gz", "sha256": ARTIFACT_SHA, "size": 9}],
        "junit": {"name": "junit.xml", "sha256": "ab" * 32, "tests": 3, "passed": 2, "failed": 1, "skipped": 0},
        "sbom": {"name": "sbom.json", "sha256": "cd" * 32, "format": "CycloneDX", "spec_version": "1.6"},
    }
    return {**base, **overrides}


def test_artifacts_checkout_source_and_reports_are_in_the_statement() -> None:
    statement = build_statement(facts(**rich()))
    assert {"name": "artifact/dist/app.tar.gz", "digest": {"sha256": ARTIFACT_SHA}} in statement["subject"]
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {"uri": "git+https://git.example/org/app.git", "digest": {"gitCommit": SHA},
            "annotations": {"fetchedBy": "controller", "repository": "org/app"}} in deps  # fmt: skip
    assert statement["predicate"]["buildDefinition"]["externalParameters"]["source"] == "ci"
    byproducts = {b["name"]: b for b in statement["predicate"]["runDetails"]["byproducts"]}
    assert byproducts["junit"]["annotations"] == {"file": "junit.xml", "tests": 3, "passed": 2, "failed": 1,
                                                  "skipped": 0}  # fmt: skip
    assert byproducts["sbom"]["digest"] == {"sha256": "cd" * 32}
    job = read_job(statement)
    assert job.source == "ci" and job.fetched_commit == SHA and job.artifacts == {ARTIFACT_SHA: "dist/app.tar.gz"}
    assert job.fetched_from == "https://git.example/org/app.git" and job.junit is not None


def test_a_gate_can_require_what_the_controller_verified() -> None:
    claimed = read_job(build_statement(facts()))
    fetched = read_job(build_statement(facts(**rich())))
    assert check_job(fetched, require_checkout=True, expect_source="ci", expect_ref="refs/heads/main",
                     artifact_sha256=ARTIFACT_SHA) == []  # fmt: skip
    assert any("did not fetch commit" in p for p in check_job(claimed, require_checkout=True))
    assert any("source mismatch" in p for p in check_job(fetched, expect_source="other"))
    assert any("ref mismatch" in p for p in check_job(fetched, expect_ref="refs/heads/dev"))
    assert any("not a subject" in p for p in check_job(fetched, artifact_sha256="00" * 32))


def test_a_fetched_commit_that_is_not_the_sha_is_refused() -> None:
    statement = build_statement(facts(**rich(checkout={"remote": "https://x/y.git", "commit": "1" * 40})))
    with pytest.raises(AttestationError, match="is not the attested sha"):
        read_job(statement)


def test_cli_verify_artifact(tmp_path: Path, pubkey: Path, controller_key: Ed25519PrivateKey, capsys: Any) -> None:
    envelope = tmp_path / "envelope.json"
    envelope.write_text(json.dumps(envelope_for(controller_key, **rich())))
    built = tmp_path / "app.tar.gz"
    built.write_bytes(b"the build")
    argv = ["attest", "verify", str(envelope), "--pubkey", str(pubkey), "--artifact", str(built)]
    assert main([*argv, "--require-checkout", "--expect-source", "ci"]) == 0
    out = capsys.readouterr().out
    assert f"OK: {built} is artifact dist/app.tar.gz (sha256 {ARTIFACT_SHA}) of job delivery-123" in out
    built.write_bytes(b"tampered")
    assert main(argv) == 1
    assert "is not a subject" in capsys.readouterr().err


def test_an_approval_is_signed_into_the_attestation_and_read_back() -> None:
    key = KEY
    approval = {"decision": "approved", "by": "bob@example.com", "at": 1_700_000_000.5, "comment": "ship it"}
    job = read_job(verify_envelope(sign_envelope(build_statement(facts(approval=approval)), key), key.public_key()))
    assert job.approval == {**approval, "at": "2023-11-14T22:13:20.500Z"}
    assert check_job(job, require_approval=True) == []
    unapproved = read_job(verify_envelope(sign_envelope(build_statement(facts()), key), key.public_key()))
    assert unapproved.approval is None
    assert check_job(unapproved, require_approval=True) == [
        f"job {unapproved.job_id} was not approved by a person (no approval in its attestation)"
    ]


def test_an_approval_whose_readable_copy_disagrees_with_its_content_is_refused() -> None:
    approval = {"decision": "rejected", "by": "carol", "at": 1_700_000_000.0, "comment": ""}
    statement = build_statement(facts(approval=approval))
    (byproduct,) = [b for b in statement["predicate"]["runDetails"]["byproducts"] if b["name"] == "approval"]
    byproduct["annotations"] = {**byproduct["annotations"], "decision": "approved"}
    with pytest.raises(AttestationError, match="content and annotations disagree"):
        read_job(statement)
