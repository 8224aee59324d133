"""POST /webhooks/{source}: size cap → signature on the raw body → parse → validate → dedupe → store → 202.

The order matters: nothing is parsed before the signature holds, and nothing is acknowledged before it is
durably stored. Every refusal is a 4xx with a message the sender can act on."""

from __future__ import annotations

import json
import logging
import time

from aiohttp import web
from prometheus_client import Counter
from pydantic import ValidationError

from orchestrator.config import Config
from orchestrator.evidence.auditor import Auditor
from orchestrator.evidence.canonical import DuplicateKeyError, unique_keys
from orchestrator.evidence.refusals import RefusalThrottle
from orchestrator.intake.receive import Rejected, WebhookSource, authenticate, error_response
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import Job, new_job
from orchestrator.jobs.views import job_view
from orchestrator.platform.metrics import Metrics
from orchestrator.scheduling.scheduler import QueueFullError, Scheduler
from orchestrator.store.base import JobStore

log = logging.getLogger(__name__)


def _queued(job: Job) -> web.Response:
    """The 202, without a JSON encoder on the hot path: a job id matches [A-Za-z0-9._-]{1,128} and a state is a
    lowercase word, so neither needs escaping -- the bytes are what `json.dumps` would give."""
    body = b'{"job_id": "%s", "status": "%s"}' % (job.id.encode(), job.state.value.encode())
    return web.Response(body=body, status=202, content_type="application/json", charset="utf-8")


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]} for err in exc.errors()]


# One decoder, made once: `json.loads(..., object_pairs_hook=...)` builds a new one per call, which costs more
# than the parse of a small body.
_NO_DUPLICATES = json.JSONDecoder(object_pairs_hook=unique_keys)


def _duplicate_key(key: str) -> Rejected:
    shown = key if len(key) <= 64 else key[:64] + "…"
    return Rejected(
        400,
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
            raise Rejected(422, "invalid_spec", "body must be a JSON object (a job spec)") from None
        raise _invalid_spec(exc) from None
    except RecursionError:
        raise Rejected(400, "invalid_json", "body is nested too deeply") from None


def _invalid_spec(exc: ValidationError) -> Rejected:
    fields = _field_errors(exc)
    names = ", ".join(f["field"] for f in fields)
    return Rejected(422, "invalid_spec", f"invalid job spec: {names}", fields=fields)


def _parse_spec_slowly(body: bytes) -> JobSpec:
    """The standard library's parser alone: what `parse_spec` answers, the long way."""
    check_no_duplicate_keys(body)
    return _parse_checked_slowly(body)


def _parse_checked_slowly(body: bytes) -> JobSpec:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise Rejected(400, "invalid_json", f"body is not valid JSON: {detail}") from None
    if not isinstance(data, dict):
        raise Rejected(422, "invalid_spec", "body must be a JSON object (a job spec)")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise _invalid_spec(exc) from None
    except RecursionError:
        raise Rejected(400, "invalid_json", "body is nested too deeply") from None


def check_admissible(spec: JobSpec, config: Config, *, credentials_configured: bool) -> int:
    """Pool-level checks; returns the effective timeout."""
    pool = config.pools.get(spec.pool)
    if pool is None:
        raise Rejected(
            422, "unknown_pool", f"unknown pool {spec.pool!r}; configured pools: {', '.join(sorted(config.pools))}"
        )
    if spec.secrets and not credentials_configured:
        raise Rejected(
            422,
            "secrets_unavailable",
            "the job asks for secrets but this controller has no credentials backend configured",
        )
    clash = sorted({s.name for s in spec.secrets} & set(pool.secrets)) if spec.secrets else []
    if clash:
        raise Rejected(
            422, "secret_name_taken", f"secret name(s) {', '.join(clash)} are already provided by pool {spec.pool!r}"
        )
    timeout = spec.timeout_s or pool.default_timeout_s
    if timeout > pool.max_timeout_s:
        raise Rejected(
            422,
            "timeout_too_long",
            f"timeout_s {timeout} exceeds pool {spec.pool!r} max_timeout_s {pool.max_timeout_s}",
        )
    return timeout


class WebhookIntake:
    def __init__(
        self,
        config: Config,
        sources: dict[str, WebhookSource],
        store: JobStore,
        scheduler: Scheduler,
        *,
        credentials_configured: bool,
        metrics: Metrics | None = None,
        auditor: Auditor | None = None,
    ) -> None:
        self.metrics = metrics
        self.auditor = auditor or Auditor(None)
        self.config = config
        self.sources = sources
        self.store = store
        self.scheduler = scheduler
        self.credentials_configured = credentials_configured
        self.accepting = True
        self.refusals = RefusalThrottle("webhook")
        self._accepted: dict[str, Counter] = {}

    def _accepted_counter(self, source: str) -> Counter:
        """The per-source child, looked up once: `labels()` costs more than the rest of the metric update."""
        assert self.metrics is not None
        counter = self._accepted.get(source)
        if counter is None:
            counter = self._accepted[source] = self.metrics.webhooks_accepted.labels(source)
        return counter

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["source"]
        try:
            return await self._handle(name, request)
        except Rejected as rej:
            return self.rejected(name, request.remote, rej)

    def rejected(self, source: str, remote: str | None, rej: Rejected) -> web.Response:
        """The answer to a refused delivery, counted, audited and logged."""
        self.record_rejection(source, remote, rej.status, rej.reason)
        return error_response(rej)

    def record_rejection(self, source: str, remote: str | None, status: int, reason: str) -> None:
        """Counts a refusal, also one an intake worker answered itself, and audits and logs it on its own while
        its address is within its allowance (else it is in the window's summary: see refusal_summaries)."""
        if self.metrics is not None:
            self.metrics.webhook_rejections.labels(reason).inc()
        if self.refusals.refused(remote, reason, time.time()):
            self.auditor.webhook(source, None, remote, "rejected", reason=reason, status=status)
            extra = {"source": source, "status": status, "reason": reason, "remote": remote}
            log.info("webhook rejected", extra=extra)

    async def _handle(self, name: str, request: web.Request) -> web.StreamResponse:
        server = self.config.server
        delivery, body = await authenticate(request, self.sources, name, server.max_body_bytes, server.body_timeout_s)
        if not self.accepting:  # after authentication, as for a delivery an intake worker relays
            raise Rejected(503, "shutting_down", "controller is shutting down; retry later")
        return await self.accept(name, delivery, request.remote, body)

    async def accept(self, name: str, delivery: str | None, remote: str | None, body: bytes) -> web.Response:
        """Everything after authentication: parse, admit, store durably, audit, enqueue, answer. Raises Rejected.
        `body` must be the verified raw body of a delivery to source `name`."""
        spec = parse_spec(body)
        timeout = check_admissible(spec, self.config, credentials_configured=self.credentials_configured)
        try:
            self.scheduler.reserve(spec.pool)
        except QueueFullError as exc:
            existing = await self.store.get(spec.id)  # a redelivery is still answered when the queue is full
            if existing is None:
                raise Rejected(429, "queue_full", str(exc)) from None
            stored, created = existing, False
        else:
            job = new_job(
                spec, source=name, controller_id=self.config.controller_id, timeout_s=timeout, now=time.time()
            )
            try:
                stored, created = await self.store.create(job)
            finally:
                self.scheduler.release(spec.pool)
        if not created:
            log.info("duplicate delivery", extra={"job_id": spec.id, "source": name, "delivery": delivery})
            self.auditor.webhook(name, delivery, remote, "duplicate", job_id=spec.id, status=200)
            return web.json_response({**job_view(stored), "duplicate": True}, status=200)
        # Debug, not info: each acceptance is already a signed audit record and a metric, and one line per job at
        # info ("job finished", with its outcome) is written at job rate instead of on the intake's hot path.
        log.debug("job accepted", extra={"job_id": spec.id, "pool": spec.pool, "source": name, "delivery": delivery})
        if self.metrics is not None:
            self._accepted_counter(name).inc()
        self.auditor.webhook(name, delivery, remote, "accepted", job_id=spec.id, status=202)
        self.scheduler.submit(stored)
        return _queued(stored)
