"""Signed job attestations: an in-toto Statement v1 with an SLSA-provenance-style predicate, in a DSSE envelope.

Why: a deploy step must be able to prove, offline and with only the controller's public key, that *this*
commit of *this* repository went through a job on this controller and that the job succeeded. The envelope
format (DSSE v1, payloadType `application/vnd.in-toto+json`) is the one in-toto and Sigstore tooling consume.

Everything here is pure (no network, no clock) apart from the tiny file helpers at the bottom."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.evidence import keys
from orchestrator.evidence.canonical import SHA256_HEX, canonical_json, strict_json

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://runner-orchestrator.dev/job/v1"
BUILDER_ID_PREFIX = "https://runner-orchestrator.dev/controller/"
PUBLIC_KEY_FILENAME = "attestation.pub"
SUCCEEDED = "succeeded"
ARTIFACT_PREFIX = "artifact/"
# A verifier tries every signature; bound the work an attacker-supplied envelope can cause.
MAX_SIGNATURES = 16

_GIT_SHA = re.compile(r"^[0-9a-f]{7,64}$")


class AttestationError(Exception):
    """An envelope or statement that must not be trusted; the message says why, for a deploy log."""


@dataclass(frozen=True)
class JobFacts:
    """What the controller knows about a finished job; the only input to `build_statement`.

    `secrets` carries names and paths only (other keys are dropped, so a value can never leak into a
    statement); `spec_json` is the canonical job spec, digested rather than embedded."""

    job_id: str
    repository: str
    ref: str
    sha: str
    pool: str
    commands: list[str]
    env: dict[str, str]
    secrets: list[dict[str, Any]]
    spec_json: bytes
    image: str
    image_id: str
    controller_id: str
    started_at: float | None
    finished_at: float | None
    state: str
    exit_code: int | None
    reason: str | None
    log_sha256: str
    pool_config_digest: str | None = None
    source: str = ""  # the webhook source that sent the job
    checkout: dict[str, str] | None = None  # {"remote", "commit"}: the commit the controller fetched and verified
    submodules: list[dict[str, str]] = field(default_factory=list)  # {"path", "repository", "commit", "remote"}
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # {"name", "sha256", "size"}
    junit: dict[str, Any] | None = None  # {"name", "sha256", "tests", "passed", "failed", "skipped"}
    sbom: dict[str, Any] | None = None  # {"name", "sha256", "format", "spec_version"}
    approval: dict[str, Any] | None = None  # {"decision", "by", "at", "comment"}: who let a gated job run, or not


@dataclass(frozen=True)
class AttestedJob:
    """The facts a deploy gate decides on, read back out of a verified statement."""

    job_id: str
    state: str
    exit_code: int | None
    reason: str | None
    repository: str
    ref: str
    sha: str
    builder_id: str
    source: str | None = None
    fetched_commit: str | None = None  # the commit the controller fetched itself (None: it only was told the sha)
    fetched_from: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)  # sha256 -> name
    junit: dict[str, Any] | None = None
    approval: dict[str, Any] | None = None  # {"decision", "by", "at" (RFC 3339), "comment"} of a gated job


# -- building -----------------------------------------------------------------------------------------------------


def rfc3339(timestamp: float) -> str:
    """UTC RFC 3339 (`2024-05-01T12:00:00Z`, milliseconds only when present), as SLSA timestamps require."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _exit_facts(facts: JobFacts) -> dict[str, Any]:
    return {"state": str(facts.state), "exit_code": facts.exit_code, "reason": facts.reason}


def _image_dependency(image: str, image_id: str) -> dict[str, Any]:
    dependency: dict[str, Any] = {"uri": f"docker-image:{image}"}
    if image_id:  # empty when the job ended before an image was resolved: then the name is all we know
        algorithm, sep, value = image_id.partition(":")
        if not sep or algorithm != "sha256" or not SHA256_HEX.fullmatch(value.lower()):
            raise ValueError(f"image_id {image_id!r} is not 'sha256:<64 hex>'")
        dependency["digest"] = {"sha256": value.lower()}
    return dependency


def _secret_refs(secrets: list[dict[str, Any]]) -> list[dict[str, str]]:
    refs = []
    for i, secret in enumerate(secrets):
        if not isinstance(secret.get("name"), str) or not isinstance(secret.get("path"), str):
            raise ValueError(f"secrets[{i}] needs string 'name' and 'path'")
        refs.append({"name": secret["name"], "path": secret["path"]})  # whitelist: never a value
    return refs


def build_statement(facts: JobFacts) -> dict[str, Any]:
    """The in-toto Statement for a finished job; raises ValueError on malformed digests (a bug upstream)."""
    sha = facts.sha.lower()
    if not _GIT_SHA.match(sha):
        raise ValueError(f"sha {facts.sha!r} is not a hex git commit id")
    log_sha256 = facts.log_sha256.lower()
    if not SHA256_HEX.fullmatch(log_sha256):
        raise ValueError(f"log_sha256 {facts.log_sha256!r} is not 64 hex digits")

    internal: dict[str, Any] = {"controller_id": facts.controller_id}
    if facts.pool_config_digest is not None:
        internal["pool_config_digest"] = facts.pool_config_digest
    metadata: dict[str, Any] = {"invocationId": facts.job_id}
    if facts.started_at is not None:
        metadata["startedOn"] = rfc3339(facts.started_at)
    if facts.finished_at is not None:
        metadata["finishedOn"] = rfc3339(facts.finished_at)
    exit_facts = _exit_facts(facts)
    subjects: list[dict[str, Any]] = [
        {"name": f"git+{facts.repository}@{facts.ref}", "digest": {"gitCommit": sha}},
        {"name": f"log/{facts.job_id}", "digest": {"sha256": log_sha256}},
    ]
    for artifact in facts.artifacts:
        digest = str(artifact["sha256"]).lower()
        if not SHA256_HEX.fullmatch(digest):
            raise ValueError(f"artifact {artifact.get('name')!r} has no sha256")
        subjects.append({"name": f"{ARTIFACT_PREFIX}{artifact['name']}", "digest": {"sha256": digest}})
    dependencies = [_image_dependency(facts.image, facts.image_id)]
    if facts.checkout is not None:
        dependencies.append(
            {
                "uri": f"git+{facts.checkout['remote']}",
                "digest": {"gitCommit": facts.checkout["commit"].lower()},
                "annotations": {"fetchedBy": "controller", "repository": facts.repository},
            }
        )
        for module in facts.submodules:
            dependencies.append(
                {
                    "uri": f"git+{module['remote']}",
                    "digest": {"gitCommit": module["commit"].lower()},
                    "annotations": {"fetchedBy": "controller", "submodule": module["path"],
                                    "repository": module["repository"]},
                }
            )  # fmt: skip
    external: dict[str, Any] = {
        "repository": facts.repository,
        "ref": facts.ref,
        "sha": sha,
        "pool": facts.pool,
        "commands": list(facts.commands),
        "env": dict(facts.env),  # env values are not secret by contract; secrets travel separately
        "secrets": _secret_refs(facts.secrets),
    }
    if facts.source:
        external["source"] = facts.source
    reports: list[dict[str, Any]] = []
    if facts.junit is not None:
        totals = {k: facts.junit[k] for k in ("tests", "passed", "failed", "skipped")}
        reports.append({"name": "junit", "digest": {"sha256": facts.junit["sha256"]},
                        "annotations": {"file": facts.junit["name"], **totals}})  # fmt: skip
    if facts.sbom is not None:
        reports.append({"name": "sbom", "digest": {"sha256": facts.sbom["sha256"]},
                        "annotations": {"file": facts.sbom["name"], "format": facts.sbom["format"],
                                        "specVersion": facts.sbom["spec_version"]}})  # fmt: skip
    if facts.approval is not None:
        approval = {**facts.approval, "at": rfc3339(float(facts.approval["at"]))}
        reports.append({"name": "approval", "mediaType": "application/json",
                        "content": base64.b64encode(canonical_json(approval)).decode("ascii"),
                        "annotations": approval})  # fmt: skip

    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID_PREFIX + quote(facts.controller_id, safe="")},
                "metadata": metadata,
                "byproducts": [
                    # ResourceDescriptor.content is bytes (base64 in JSON); annotations repeat it readably.
                    {
                        "name": "exit",
                        "mediaType": "application/json",
                        "content": base64.b64encode(canonical_json(exit_facts)).decode("ascii"),
                        "annotations": exit_facts,
                    },
                    {"name": "job-spec", "digest": {"sha256": hashlib.sha256(facts.spec_json).hexdigest()}},
                    *reports,
                ],
            },
        },
    }


# -- DSSE ---------------------------------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: binds the type to the body so neither can be swapped alone."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw 32-byte public key: a stable hint for picking the key, never trusted alone."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign_envelope(statement: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Signs the statement as a DSSE envelope; refuses anything a verifier would reject as not a Statement."""
    if statement.get("_type") != STATEMENT_TYPE:
        raise ValueError(f"not an in-toto Statement v1: _type is {statement.get('_type')!r}")
    payload = canonical_json(statement)
    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": key_id(key), "sig": base64.b64encode(signature).decode("ascii")}],
    }


def _b64decode(text: object, what: str) -> bytes:
    """DSSE verifiers must accept standard and URL-safe base64, padded or not; anything else is rejected."""
    if not isinstance(text, str):
        raise AttestationError(f"{what} is missing or not a string")
    unpadded = text.replace("-", "+").replace("_", "/").rstrip("=")
    padding = "=" * (-len(unpadded) % 4)
    # Padding is optional (DSSE allows both), but when present it must be exactly right.
    if "=" in unpadded or len(text) - len(unpadded) not in (0, len(padding)):
        raise AttestationError(f"{what} is not valid base64")
    try:
        return base64.b64decode(unpadded + padding, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AttestationError(f"{what} is not valid base64") from exc


def verify_dsse(envelope: object, public_key: Ed25519PublicKey, *, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """The authenticated payload bytes of a DSSE envelope signed by `public_key`; parses nothing unverified."""
    if not isinstance(envelope, dict):
        raise AttestationError("envelope is not a JSON object")
    got_type = envelope.get("payloadType")
    if got_type != payload_type:
        raise AttestationError(f"wrong payloadType {got_type!r}: expected {payload_type!r}")
    payload = _b64decode(envelope.get("payload"), "payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise AttestationError("envelope has no signatures")
    if len(signatures) > MAX_SIGNATURES:
        raise AttestationError(f"envelope has {len(signatures)} signatures; at most {MAX_SIGNATURES} are checked")

    expected_id = key_id(public_key)
    message = pae(payload_type, payload)
    seen_ids: list[str] = []
    for i, entry in enumerate(signatures):
        if not isinstance(entry, dict):
            raise AttestationError(f"signatures[{i}] is not an object")
        signature = _b64decode(entry.get("sig"), f"signatures[{i}].sig")
        seen_ids.append(str(entry.get("keyid") or "(none)"))
        try:
            public_key.verify(signature, message)  # keyid is only a hint (DSSE): every signature is tried
        except InvalidSignature:
            continue
        return payload
    if expected_id in seen_ids:
        raise AttestationError(
            f"signature by key {expected_id} does not match: payload, payloadType or signature was altered"
        )
    raise AttestationError(f"no valid signature by key {expected_id} (envelope keyids: {', '.join(seen_ids)})")


def parse_statement(payload: bytes) -> dict[str, Any]:
    """Parses verified payload bytes as an in-toto Statement v1."""
    try:
        statement = strict_json(payload)
    except ValueError as exc:  # also JSONDecodeError and UnicodeDecodeError
        raise AttestationError(f"payload is not JSON: {exc}") from exc
    if not isinstance(statement, dict):
        raise AttestationError("not an in-toto Statement: payload is not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise AttestationError(f"not an in-toto Statement v1: _type is {statement.get('_type')!r}")
    subject = statement.get("subject")
    if not isinstance(subject, list) or not subject or not all(isinstance(s, dict) for s in subject):
        raise AttestationError("not an in-toto Statement v1: subject must be a non-empty list of objects")
    if not isinstance(statement.get("predicateType"), str):
        raise AttestationError("not an in-toto Statement v1: predicateType is missing")
    return statement


def verify_envelope(envelope: dict[str, Any], public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The statement inside a DSSE envelope, only if `public_key` signed it; AttestationError otherwise."""
    return parse_statement(verify_dsse(envelope, public_key))


# -- reading a verified statement ---------------------------------------------------------------------------------


def _get(node: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(node, dict) or name not in node:
            raise AttestationError(f"not a runner-orchestrator job provenance: {'.'.join(path)} is missing")
        node = node[name]
    return node


def _string(node: Any, *path: str) -> str:
    value = _get(node, *path)
    if not isinstance(value, str):
        raise AttestationError(f"not a runner-orchestrator job provenance: {'.'.join(path)} is not a string")
    return value


def _digests(descriptor: dict[str, Any]) -> dict[str, Any]:
    digest = descriptor.get("digest")
    return digest if isinstance(digest, dict) else {}


def read_job(statement: dict[str, Any]) -> AttestedJob:
    """What a verified statement says about the job, cross-checked so subject and predicate cannot disagree."""
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise AttestationError(f"predicateType is {statement.get('predicateType')!r}, expected {PREDICATE_TYPE!r}")
    if _get(statement, "predicate", "buildDefinition", "buildType") != BUILD_TYPE:
        raise AttestationError(f"buildType is not {BUILD_TYPE!r}")
    params = ("predicate", "buildDefinition", "externalParameters")
    repository = _string(statement, *params, "repository")
    ref = _string(statement, *params, "ref")
    sha = _string(statement, *params, "sha")
    source = f"git+{repository}@{ref}"
    subjects = _get(statement, "subject")
    if not isinstance(subjects, list) or not all(isinstance(s, dict) for s in subjects):
        raise AttestationError("not an in-toto Statement v1: subject must be a list of objects")
    commits = [_digests(s).get("gitCommit") for s in subjects if s.get("name") == source]
    if commits != [sha]:
        raise AttestationError(f"subject {source!r} does not carry gitCommit {sha}")

    byproducts = _get(statement, "predicate", "runDetails", "byproducts")
    if not isinstance(byproducts, list) or not all(isinstance(b, dict) for b in byproducts):
        raise AttestationError("not a runner-orchestrator job provenance: byproducts is not a list of objects")
    exits = [b for b in byproducts if b.get("name") == "exit"]
    if len(exits) != 1 or not isinstance(exits[0].get("annotations"), dict):
        raise AttestationError("not a runner-orchestrator job provenance: exactly one 'exit' byproduct expected")
    exit_facts = exits[0]["annotations"]
    if _b64decode(exits[0].get("content"), "exit content") != canonical_json(exit_facts):
        raise AttestationError("exit byproduct content and annotations disagree")
    state, exit_code, reason = exit_facts.get("state"), exit_facts.get("exit_code"), exit_facts.get("reason")
    if not isinstance(state, str) or not isinstance(exit_code, int | None) or not isinstance(reason, str | None):
        raise AttestationError("not a runner-orchestrator job provenance: exit byproduct is malformed")
    source = _get(statement, *params).get("source")
    fetched = [
        d
        for d in _get(statement, "predicate", "buildDefinition", "resolvedDependencies") or []
        if isinstance(d, dict)
        and isinstance(d.get("annotations"), dict)
        and d["annotations"].get("fetchedBy") == "controller"
        and "submodule" not in d["annotations"]
        and str(d.get("uri", "")).startswith("git+")
    ]
    fetched_commit = fetched_from = None
    if fetched:
        commit = _digests(fetched[0]).get("gitCommit")
        if not isinstance(commit, str) or not commit.startswith(sha):
            raise AttestationError(f"the fetched commit {commit!r} is not the attested sha {sha}")
        fetched_commit, fetched_from = commit, str(fetched[0]["uri"]).removeprefix("git+")
    artifacts = {
        str(_digests(s).get("sha256")): str(s["name"]).removeprefix(ARTIFACT_PREFIX)
        for s in subjects
        if str(s.get("name", "")).startswith(ARTIFACT_PREFIX) and isinstance(_digests(s).get("sha256"), str)
    }
    junit = next((b.get("annotations") for b in byproducts if b.get("name") == "junit"), None)
    approval = next((b for b in byproducts if b.get("name") == "approval"), None)
    approved = None
    if approval is not None:  # the signed content, not its readable copy, is what counts
        try:
            approved = json.loads(base64.b64decode(approval.get("content", ""), validate=True))
        except (ValueError, TypeError) as exc:
            raise AttestationError(f"the approval byproduct is not base64 JSON: {exc}") from None
        if approved != approval.get("annotations"):
            raise AttestationError("the approval byproduct's content and annotations disagree")
    return AttestedJob(
        job_id=_string(statement, "predicate", "runDetails", "metadata", "invocationId"),
        state=state,
        exit_code=exit_code,
        reason=reason,
        repository=repository,
        ref=ref,
        sha=sha,
        builder_id=_string(statement, "predicate", "runDetails", "builder", "id"),
        source=source if isinstance(source, str) else None,
        fetched_commit=fetched_commit,
        fetched_from=fetched_from,
        artifacts=artifacts,
        junit=junit if isinstance(junit, dict) else None,
        approval=approved if isinstance(approved, dict) else None,
    )


# -- files and the CLI --------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so a multi-gigabyte job log never sits in memory."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_job(
    job: AttestedJob,
    *,
    expect_sha: str | None = None,
    expect_repository: str | None = None,
    require_success: bool = True,
    expect_ref: str | None = None,
    expect_source: str | None = None,
    require_checkout: bool = False,
    artifact_sha256: str | None = None,
    require_approval: bool = False,
) -> list[str]:
    """Every reason a deploy gate should refuse this job; empty means it may proceed."""
    problems = []
    if require_approval and (job.approval is None or job.approval.get("decision") != "approved"):
        problems.append(f"job {job.job_id} was not approved by a person (no approval in its attestation)")
    if expect_ref is not None and job.ref != expect_ref:
        problems.append(f"ref mismatch: attested {job.ref!r}, expected {expect_ref!r}")
    if expect_source is not None and job.source != expect_source:
        problems.append(f"source mismatch: the job came from {job.source!r}, expected {expect_source!r}")
    if require_checkout and job.fetched_commit is None:
        problems.append(
            f"job {job.job_id}: the controller did not fetch commit {job.sha} itself (the sha is only what the "
            "sender claimed)"
        )
    if artifact_sha256 is not None and artifact_sha256 not in job.artifacts:
        problems.append(f"the artifact (sha256 {artifact_sha256}) is not a subject of job {job.job_id}'s attestation")
    if require_success and job.state != SUCCEEDED:
        problems.append(f"job {job.job_id} ended {job.state}, not {SUCCEEDED}")
    if expect_sha is not None and job.sha != expect_sha.strip().lower():
        problems.append(f"commit mismatch: attested {job.sha}, expected {expect_sha}")
    if expect_repository is not None and job.repository != expect_repository:
        problems.append(f"repository mismatch: attested {job.repository!r}, expected {expect_repository!r}")
    return problems


def verify_file(
    file: Path,
    pubkey: Path,
    *,
    expect_sha: str | None = None,
    expect_repository: str | None = None,
    require_success: bool = True,
    expect_ref: str | None = None,
    expect_source: str | None = None,
    require_checkout: bool = False,
    artifact: Path | None = None,
    require_approval: bool = False,
) -> AttestedJob:
    """What `orchestrator attest verify` checks: the envelope in `file`, signed by the key in `pubkey`, attesting
    a job a deploy may rely on. AttestationError says why not. Commits are compared in full (lowercase hex): a
    short sha in an attestation never satisfies a long one."""
    try:
        envelope = strict_json(file.read_bytes())
    except OSError as exc:
        raise AttestationError(f"cannot read {file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise AttestationError(f"{file} is not a JSON envelope: {exc}") from None
    try:
        public_key = keys.load_public(pubkey.read_bytes())
    except OSError as exc:
        raise AttestationError(f"cannot read {pubkey}: {exc.strerror or exc}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AttestationError(f"{pubkey} is not an Ed25519 public key (PEM): {exc}") from None
    job = read_job(verify_envelope(envelope, public_key))
    artifact_sha256 = None
    if artifact is not None:
        try:
            artifact_sha256 = sha256_file(artifact)
        except OSError as exc:
            raise AttestationError(f"cannot read {artifact}: {exc.strerror or exc}") from None
    problems = check_job(
        job, expect_sha=expect_sha, expect_repository=expect_repository, require_success=require_success,
        expect_ref=expect_ref, expect_source=expect_source, require_checkout=require_checkout,
        artifact_sha256=artifact_sha256, require_approval=require_approval,
    )  # fmt: skip
    if problems:
        raise AttestationError("; ".join(problems))
    return job
