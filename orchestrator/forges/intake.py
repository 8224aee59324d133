"""A forge source's verified deliveries (GitHub's or Gitea's `workflow_job`, `ping`, anything else), after the
signature held: what each one changes. Speaks no HTTP: it returns the job it stored (Accepted / Duplicate) or a
`Handled` value, or raises a Refusal; intake/webhooks.py answers.

* `queued` → the matching pool's runner job (jobs/), stored before the answer and never refused for capacity:
  GitHub does not redeliver, so a refused `queued` is a workflow job that waits until it times out.
* `in_progress` / `completed` → the runner record says which forge job the runner ran and how it ended.
* a job no pool serves (labels, or a repository no pool allows) → nothing registered; counted, audited, logged.
* `ping`, `waiting`, other events → acknowledged and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from orchestrator.config import Config
from orchestrator.evidence.auditor import Auditor
from orchestrator.forges.events import COMPLETED, IN_PROGRESS, QUEUED, OtherEvent, Ping, WorkflowJob, parse_event
from orchestrator.forges.matching import Unmatched, choose_pool
from orchestrator.forges.runners import ForgeRunners, runner_job_id
from orchestrator.jobs.admission import Accepted, Duplicate
from orchestrator.jobs.states import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Handled:
    """A forge delivery taken that started no runner: `what` happened ("ping", "recorded", "ignored",
    "unmatched") and a small JSON-able `detail` for the sender (never a secret)."""

    what: str
    detail: dict[str, object] = field(default_factory=dict)


Admit = Callable[[Job], Awaitable[tuple[Job, bool]]]


class ForgeIntake:
    def __init__(
        self,
        config: Config,
        runners: ForgeRunners,
        auditor: Auditor,
        events: Counter,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.runners = runners
        self.auditor = auditor
        self.events = events  # orchestrator_forge_events{source, event, outcome}
        self.clock = clock

    def _count(self, source: str, event: str, outcome: str) -> None:
        self.events.labels(source, event, outcome).inc()

    async def accept(
        self, source: str, delivery: str | None, body: bytes, admit: Admit
    ) -> Accepted | Duplicate | Handled:
        """`admit` stores and queues a runner job (Scheduler.admit, uncapped, with the delivery's record). Raises
        Refusal for a body that is not a forge event."""
        event = parse_event(body)
        if isinstance(event, Ping):
            self._count(source, "ping", "ok")
            return Handled("ping", {"hook_id": event.hook_id})
        if isinstance(event, OtherEvent):
            self._count(source, event.kind, "ignored")
            return Handled("ignored", {"event": event.kind})
        if event.action == QUEUED:
            return await self._queued(source, delivery, event, admit)
        if event.action in (IN_PROGRESS, COMPLETED) and event.runner_name:
            return await self._progress(source, event)
        self._count(source, f"workflow_job.{event.action}", "ignored")
        return Handled("ignored", {"event": "workflow_job", "action": event.action})

    async def _queued(
        self, source: str, delivery: str | None, event: WorkflowJob, admit: Admit
    ) -> Accepted | Duplicate | Handled:
        choice = choose_pool(self.runners.pools, source=source, repository=event.repository, labels=event.labels)
        if isinstance(choice, Unmatched):
            self._count(source, "workflow_job.queued", choice.reason)
            details = {
                "forge_job_id": event.job_id,
                "repository": event.repository,
                "labels": list(event.labels),
                "delivery": delivery,
                "message": choice.message,
            }
            self.auditor.runner("unmatched", None, choice.reason, details)
            log.info("forge job not served", extra={"source": source, "reason": choice.reason, **details})
            return Handled("unmatched", {"reason": choice.reason, "message": choice.message})
        job, record = self.runners.build_job(
            source, choice.pool, repository=event.repository, owner=event.owner, installation_id=event.installation_id,
            trigger=event.job_id, run_id=event.run_id, job_id=runner_job_id(source, event.job_id), now=self.clock(),
        )  # fmt: skip
        stored, created = await self.runners.request(job, record, admit)
        self._count(source, "workflow_job.queued", "runner_requested" if created else "duplicate")
        return Accepted(stored) if created else Duplicate(stored)

    async def _progress(self, source: str, event: WorkflowJob) -> Handled:
        name = event.runner_name or ""
        if event.action == IN_PROGRESS:
            record = await self.runners.took_job(
                name, forge_job_id=event.job_id, job_name=event.name, repository=event.repository
            )
        else:
            record = await self.runners.job_completed(name, forge_job_id=event.job_id, conclusion=event.conclusion)
        outcome = "recorded" if record is not None else "not_ours"
        self._count(source, f"workflow_job.{event.action}", outcome)
        if record is None:
            return Handled("ignored", {"event": "workflow_job", "action": event.action, "runner": "not ours"})
        return Handled("recorded", {"action": event.action, "job_id": record.job_id, "runner": record.name})
