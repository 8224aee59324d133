"""The controller's JobEvents sink: a signed audit record per state change, the job metrics, and one info line
per job when it ends (its acceptance is in the audit trail already)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from orchestrator.evidence.auditor import Auditor
from orchestrator.jobs.states import Job
from orchestrator.platform.metrics import Metrics

log = logging.getLogger(__name__)


def finished_fields(job: Job) -> dict[str, object]:
    """The one info line per job: its outcome, for journald/Loki."""
    ran = job.finished_at - job.started_at if job.finished_at is not None and job.started_at is not None else None
    return {
        "job_id": job.id,
        "pool": job.pool,
        "state": job.state.value,
        "exit_code": job.exit_code,
        "reason": job.reason,
        "ran_s": None if ran is None else round(ran, 3),
        "attempt": job.attempt,
    }


class ControllerJobEvents:
    def __init__(self, auditor: Auditor, metrics: Metrics) -> None:
        self.auditor = auditor
        self.metrics = metrics
        # Told of every stored state change, e.g. the callback dispatcher (whose outbox rows the store wrote with
        # the change): it looks at the outbox now instead of at its next poll.
        self.listeners: list[Callable[[Job], None]] = []

    def state_changed(self, job: Job) -> None:
        self.auditor.job_state(job)
        for listener in self.listeners:
            listener(job)
        if job.state.final:
            self.metrics.jobs_finished.labels(job.pool, job.state.value).inc()
            log.info("job finished", extra=finished_fields(job))

    def created(self, job: Job) -> None:
        # (its acceptance is audited by the intake, with the delivery)
        for listener in self.listeners:
            listener(job)

    def started(self, job: Job) -> None:
        if job.started_at is not None:
            self.metrics.start_latency.labels(job.pool).observe(max(job.started_at - job.created_at, 0))

    def torn_down(self, job: Job, seconds: float) -> None:
        self.metrics.teardown.observe(seconds)
