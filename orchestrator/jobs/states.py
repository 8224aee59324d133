"""The job state machine. Pure: every state change in the product goes through `transition`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from orchestrator.jobs.spec import JobSpec


class JobState(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"  # its pool or a secret it reads needs a person's approval first
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    ERROR = "error"
    REJECTED = "rejected"  # an approver said no, or nobody approved in time

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED, JobState.ERROR, JobState.REJECTED}
)

_ENDINGS = FINAL_STATES - {JobState.REJECTED}
ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.AWAITING_APPROVAL: frozenset({JobState.QUEUED, JobState.REJECTED, JobState.CANCELLED, JobState.ERROR}),
    JobState.QUEUED: frozenset({JobState.STARTING, JobState.CANCELLED, JobState.ERROR}),
    # Back to QUEUED only when a controller restart re-queues the job (pool retry_on_restart).
    JobState.STARTING: frozenset({JobState.RUNNING, JobState.QUEUED} | _ENDINGS),
    JobState.RUNNING: frozenset({JobState.QUEUED} | _ENDINGS),
}


class InvalidTransitionError(Exception):
    def __init__(self, job_id: str, current: JobState, new: JobState) -> None:
        super().__init__(f"job {job_id}: cannot go from {current} to {new}")
        self.current = current
        self.new = new


@dataclass(frozen=True)
class Approval:
    """A person's decision on a job that waited for approval (in the store, the audit trail and the attestation).
    `by` is the approver's name as the API knew them; `decision` "approved" or "rejected"; "expired" when nobody
    decided in time (then `by` is None)."""

    decision: str
    at: float
    by: str | None = None
    comment: str = ""

    def to_json(self) -> dict[str, object]:
        return {"decision": self.decision, "by": self.by, "at": self.at, "comment": self.comment}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Approval:
        return cls(str(data["decision"]), float(data["at"]), data.get("by"), str(data.get("comment", "")))


@dataclass(frozen=True)
class Job:
    spec: JobSpec
    source: str
    state: JobState
    created_at: float
    controller_id: str
    timeout_s: int
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    container_id: str | None = None
    credentials_accessor: str | None = None
    attempt: int = 1
    approval: Approval | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def pool(self) -> str:
        return self.spec.pool


def new_job(
    spec: JobSpec, *, source: str, controller_id: str, timeout_s: int, now: float, awaiting: str | None = None
) -> Job:
    """A job as accepted: queued, or -- `awaiting`, the reason it needs approval -- awaiting approval."""
    return Job(
        spec=spec,
        source=source,
        state=JobState.AWAITING_APPROVAL if awaiting else JobState.QUEUED,
        reason=awaiting,
        created_at=now,
        updated_at=now,
        controller_id=controller_id,
        timeout_s=timeout_s,
    )


def transition(
    job: Job,
    new: JobState,
    *,
    now: float,
    reason: str | None = None,
    exit_code: int | None = None,
    container_id: str | None = None,
    credentials_accessor: str | None = None,
    approval: Approval | None = None,
) -> Job:
    """Returns the job in its new state; raises InvalidTransitionError for a move the machine forbids."""
    if new not in ALLOWED.get(job.state, frozenset()):
        raise InvalidTransitionError(job.id, job.state, new)
    changes: dict[str, object] = {"state": new, "updated_at": now}
    if new is JobState.RUNNING:
        changes["started_at"] = now
    if new.final:
        changes["finished_at"] = now
    if new is JobState.QUEUED and job.state is not JobState.AWAITING_APPROVAL:  # queued again: a new attempt
        changes.update(attempt=job.attempt + 1, started_at=None, container_id=None, exit_code=None)
        changes["credentials_accessor"] = None
    if reason is not None:
        changes["reason"] = reason
    if exit_code is not None:
        changes["exit_code"] = exit_code
    if container_id is not None:
        changes["container_id"] = container_id
    if credentials_accessor is not None:
        changes["credentials_accessor"] = credentials_accessor
    if approval is not None:
        changes["approval"] = approval
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


def state_for_exit(exit_code: int) -> JobState:
    return JobState.SUCCEEDED if exit_code == 0 else JobState.FAILED


def exit_reason(exit_code: int) -> str | None:
    """Human-readable reason for the common non-zero exit codes a CI user meets."""
    if exit_code == 0:
        return None
    if exit_code == 137:
        return "exit code 137: killed (SIGKILL), often the pool's memory limit"
    if exit_code == 127:
        return "exit code 127: command not found"
    if 128 < exit_code <= 128 + 64:  # Linux has 64 signals; 255 is usually `exit -1`
        return f"exit code {exit_code}: terminated by signal {exit_code - 128}"
    return f"exit code {exit_code}"
