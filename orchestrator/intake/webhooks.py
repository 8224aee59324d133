"""POST /webhooks/{source}: size cap → signature on the raw body → parse → validate → dedupe → store → 202.

The order matters: nothing is parsed before the signature holds, and nothing is acknowledged before it is
durably stored (`Scheduler.admit` holds that rule). Every refusal is a 4xx with a message the sender can act on.
`WebhookIntake.accept` speaks no HTTP: it returns `Accepted` or `Duplicate`, or raises a `Refusal`; this port
(`handle`) and the webhook listener (its own port, and the intake workers over the relay) turn either into the
same answer: `answer` here, the refusal table in `intake.answers`."""

from __future__ import annotations

import functools
import logging
import time

from aiohttp import web
from prometheus_client import Counter

from orchestrator.callbacks.routing import check_callback_request
from orchestrator.config import Config
from orchestrator.evidence.auditor import Auditor
from orchestrator.evidence.refusals import RefusalThrottle
from orchestrator.forges.intake import ForgeIntake, Handled
from orchestrator.intake.answers import Answer, json_answer, refusal_answer
from orchestrator.intake.receive import WebhookSource, authenticate
from orchestrator.jobs.admission import Accepted, Duplicate, check_admissible, parse_spec
from orchestrator.jobs.refusal import Refusal
from orchestrator.jobs.states import Job, new_job
from orchestrator.jobs.views import job_view
from orchestrator.platform.metrics import Metrics
from orchestrator.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)


ACCEPTED_STATUS = 202
DUPLICATE_STATUS = 200


def _queued(job: Job) -> Answer:
    """The 202, without a JSON encoder on the hot path: a job id matches [A-Za-z0-9._-]{1,128} and a state is a
    lowercase word, so neither needs escaping -- the bytes are what `json.dumps` would give."""
    return Answer(ACCEPTED_STATUS, b'{"job_id": "%s", "status": "%s"}' % (job.id.encode(), job.state.value.encode()))


# A forge delivery that started no runner: a ping and what we recorded are 200, what we do not serve 202 (taken,
# not acted on), so the forge's delivery log shows which is which.
_HANDLED_STATUS = {"ping": 200, "recorded": 200, "ignored": 202, "unmatched": 202}


def _handled_status(outcome: Handled) -> int:
    return _HANDLED_STATUS.get(outcome.what, 202)


def answer(outcome: Accepted | Duplicate | Handled) -> Answer:
    """What the sender gets for a delivery taken: 202 for a new job, 200 with the stored job for a redelivery."""
    if isinstance(outcome, Accepted):
        return _queued(outcome.job)
    if isinstance(outcome, Handled):
        return json_answer({"status": outcome.what, **outcome.detail}, _handled_status(outcome))
    return json_answer({**job_view(outcome.job), "duplicate": True}, DUPLICATE_STATUS)


class WebhookIntake:
    def __init__(
        self,
        config: Config,
        sources: dict[str, WebhookSource],
        scheduler: Scheduler,
        *,
        credentials_configured: bool,
        metrics: Metrics,
        auditor: Auditor,
        forges: ForgeIntake | None = None,
    ) -> None:
        self.forges = forges
        self.metrics = metrics
        self.auditor = auditor
        self.config = config
        self.sources = sources
        self.scheduler = scheduler
        self.credentials_configured = credentials_configured
        self.accepting = True
        self.refusals = RefusalThrottle("webhook")
        self._accepted: dict[str, Counter] = {}

    def _accepted_counter(self, source: str) -> Counter:
        """The per-source child, looked up once: `labels()` costs more than the rest of the metric update."""
        counter = self._accepted.get(source)
        if counter is None:
            counter = self._accepted[source] = self.metrics.webhooks_accepted.labels(source)
        return counter

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["source"]
        try:
            outcome = await self._handle(name, request)
        except Refusal as refusal:
            return self.rejected(name, request.remote, refusal).response()
        return answer(outcome).response()

    def rejected(self, source: str, remote: str | None, refusal: Refusal) -> Answer:
        """The answer to a refused delivery, counted, audited and logged."""
        refused = refusal_answer(refusal)
        self.record_rejection(source, remote, refused.status, refusal.reason)
        return refused

    def record_rejection(self, source: str, remote: str | None, status: int, reason: str) -> None:
        """Counts a refusal, also one an intake worker answered itself, and audits and logs it on its own while
        its address is within its allowance (else it is in the window's summary: see evidence/refusals.py)."""
        self.metrics.webhook_rejections.labels(reason).inc()
        if self.refusals.refused(remote, reason, time.time()):
            self.auditor.webhook(source, None, remote, "rejected", reason=reason, status=status)
            extra = {"source": source, "status": status, "reason": reason, "remote": remote}
            log.info("webhook rejected", extra=extra)

    async def _handle(self, name: str, request: web.Request) -> Accepted | Duplicate | Handled:
        server = self.config.server
        delivery, body = await authenticate(request, self.sources, name, server.max_body_bytes, server.body_timeout_s)
        if not self.accepting:  # after authentication, as for a delivery an intake worker relays
            raise Refusal("shutting_down", "controller is shutting down; retry later")
        return await self.accept(name, delivery, request.remote, body)

    async def accept(
        self, name: str, delivery: str | None, remote: str | None, body: bytes
    ) -> Accepted | Duplicate | Handled:
        """Everything after authentication: parse, admit, store durably, audit, enqueue. Raises Refusal.
        `body` must be the verified raw body of a delivery to source `name`."""
        source = self.config.sources.get(name)
        if source is not None and source.forge is not None:
            if self.forges is None:
                raise Refusal("internal_error", f"source {name!r} delivers forge events but no forge is set up")
            record = functools.partial(self._stored, name, delivery, remote)
            outcome = await self.forges.accept(
                name, delivery, body, lambda job: self.scheduler.admit(job, record, capped=False)
            )
            if isinstance(outcome, Handled):
                self.auditor.webhook(
                    name, delivery, remote, "accepted", reason=outcome.what, status=_handled_status(outcome)
                )
            return outcome
        spec = parse_spec(body)
        timeout = check_admissible(spec, self.config, credentials_configured=self.credentials_configured)
        check_callback_request(spec, name, source)
        job = new_job(spec, source=name, controller_id=self.config.controller_id, timeout_s=timeout, now=time.time())
        stored, created = await self.scheduler.admit(job, functools.partial(self._stored, name, delivery, remote))
        return Accepted(stored) if created else Duplicate(stored)

    def _stored(self, name: str, delivery: str | None, remote: str | None, job: Job, created: bool) -> None:
        """The delivery's record, once its job is durably stored and before it is queued (`Scheduler.admit`).
        Kept here, not in the scheduler: what it records is the delivery (source, delivery id, sender, what it
        was answered), which the scheduler knows nothing of."""
        if not created:
            log.info("duplicate delivery", extra={"job_id": job.id, "source": name, "delivery": delivery})
            self.auditor.webhook(name, delivery, remote, "duplicate", job_id=job.id, status=DUPLICATE_STATUS)
            return
        # Debug, not info: each acceptance is already a signed audit record and a metric, and one line per job at
        # info ("job finished", with its outcome) is written at job rate instead of on the intake's hot path.
        log.debug("job accepted", extra={"job_id": job.id, "pool": job.pool, "source": name, "delivery": delivery})
        self._accepted_counter(name).inc()
        self.auditor.webhook(name, delivery, remote, "accepted", job_id=job.id, status=ACCEPTED_STATUS)
