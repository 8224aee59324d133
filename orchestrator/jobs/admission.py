"""Admission of a job spec from a verified webhook body: parse (duplicate keys refused), validate, check it
against its pool; and the two outcomes of taking it, a new job or a redelivery of a stored one. Pure: no HTTP,
no store. Every refusal is a `Refusal` whose reason the webhook edge maps to its answer."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from orchestrator.config import Config
from orchestrator.evidence.canonical import DuplicateKeyError, unique_keys
from orchestrator.jobs.refusal import Refusal
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import Job


@dataclass(frozen=True, slots=True)
class Accepted:
    """The delivery's job is new and durably stored (and queued)."""

    job: Job


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The delivery repeats a job already stored under its id (a replay or retry): `job` is the stored one,
    never run a second time."""

    job: Job


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]} for err in exc.errors()]


# One decoder, made once: `json.loads(..., object_pairs_hook=...)` builds a new one per call, which costs more
# than the parse of a small body.
_NO_DUPLICATES = json.JSONDecoder(object_pairs_hook=unique_keys)


def _duplicate_key(key: str) -> Refusal:
    shown = key if len(key) <= 64 else key[:64] + "…"
    return Refusal(
        "duplicate_key",
        f"body has the key {shown!r} twice in one object: a signed body must mean the same to every parser, "
        "so it is refused rather than read as last-one-wins",
    )


def check_no_duplicate_keys(body: bytes) -> None:
    """Refuses a JSON text in which some object names a key twice. Parsers disagree on what that means (first
    wins, last wins, error), so the job one of them would run could differ from what another showed, e.g. a
    reviewer's tool or the sender's own log. Text that is not valid JSON is left to the real parse to report."""
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")
        _NO_DUPLICATES.decode(text)
    except DuplicateKeyError as exc:
        try:  # the decoder stops at the first repeat; text that is not JSON at all is reported as that
            json.loads(text)
        except (ValueError, RecursionError):
            return
        raise _duplicate_key(exc.key) from None
    except (ValueError, RecursionError):
        return


def parse_spec(body: bytes) -> JobSpec:
    """Refuses duplicate keys, then parses and validates in one pass with pydantic's JSON parser (UTF-8 only,
    refuses lone surrogates). What that parser refuses goes through the standard library's parser instead, which
    also reads UTF-16/32 bodies and names the field holding a lone surrogate escape: the answers stay those of
    `_parse_spec_slowly`."""
    check_no_duplicate_keys(body)
    try:
        return JobSpec.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors and errors[0]["type"] == "json_invalid":
            return _parse_checked_slowly(body)
        if errors and errors[0]["type"] == "model_type" and not errors[0]["loc"]:
            raise Refusal("invalid_spec", "body must be a JSON object (a job spec)") from None
        raise _invalid_spec(exc) from None
    except RecursionError:
        raise Refusal("invalid_json", "body is nested too deeply") from None


def _invalid_spec(exc: ValidationError) -> Refusal:
    fields = _field_errors(exc)
    names = ", ".join(f["field"] for f in fields)
    return Refusal("invalid_spec", f"invalid job spec: {names}", fields)


def _parse_spec_slowly(body: bytes) -> JobSpec:
    """The standard library's parser alone: what `parse_spec` answers, the long way."""
    check_no_duplicate_keys(body)
    return _parse_checked_slowly(body)


def _parse_checked_slowly(body: bytes) -> JobSpec:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise Refusal("invalid_json", f"body is not valid JSON: {detail}") from None
    if not isinstance(data, dict):
        raise Refusal("invalid_spec", "body must be a JSON object (a job spec)")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise _invalid_spec(exc) from None
    except RecursionError:
        raise Refusal("invalid_json", "body is nested too deeply") from None


def check_admissible(spec: JobSpec, config: Config, *, credentials_configured: bool) -> int:
    """Pool-level checks; returns the effective timeout."""
    pool = config.pools.get(spec.pool)
    if pool is None:
        raise Refusal(
            "unknown_pool", f"unknown pool {spec.pool!r}; configured pools: {', '.join(sorted(config.pools))}"
        )
    if spec.runner is not None:
        raise Refusal("invalid_spec", "runner: forge runners are asked for by forge webhooks, not by job specs")
    if pool.runner is not None:
        raise Refusal("unknown_pool", f"pool {spec.pool!r} serves forge jobs (single-use runners), not job specs")
    if spec.secrets and not credentials_configured:
        raise Refusal(
            "secrets_unavailable",
            "the job asks for secrets but this controller has no credentials backend configured",
        )
    clash = sorted({s.name for s in spec.secrets} & set(pool.secrets)) if spec.secrets else []
    if clash:
        raise Refusal(
            "secret_name_taken", f"secret name(s) {', '.join(clash)} are already provided by pool {spec.pool!r}"
        )
    timeout = spec.timeout_s or pool.default_timeout_s
    if timeout > pool.max_timeout_s:
        raise Refusal(
            "timeout_too_long",
            f"timeout_s {timeout} exceeds pool {spec.pool!r} max_timeout_s {pool.max_timeout_s}",
        )
    return timeout
