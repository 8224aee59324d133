"""The job store interface the rest of the controller depends on (SQLite now, PostgreSQL later)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import Job, JobState

# Column order shared by every SQL store: rows are written and read positionally in this order.
COLUMNS = (
    "id, source, pool, state, spec, controller_id, timeout_s, created_at, updated_at, started_at, "
    "finished_at, exit_code, reason, container_id, credentials_accessor, attempt"
)


def list_filter(state: JobState | None, pool: str | None, placeholder: str) -> tuple[str, list[object]]:
    """The WHERE clause and parameters of `list_jobs`, for both SQL stores (only the placeholder differs)."""
    clauses: list[str] = []
    params: list[object] = []
    if state is not None:
        clauses.append(f"state = {placeholder}")
        params.append(state.value)
    if pool is not None:
        clauses.append(f"pool = {placeholder}")
        params.append(pool)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def job_to_row(job: Job) -> tuple[object, ...]:
    return (
        job.id,
        job.source,
        job.pool,
        job.state.value,
        job.spec.model_dump_json(),
        job.controller_id,
        job.timeout_s,
        job.created_at,
        job.updated_at,
        job.started_at,
        job.finished_at,
        job.exit_code,
        job.reason,
        job.container_id,
        job.credentials_accessor,
        job.attempt,
    )


def job_from_row(row: Sequence[Any]) -> Job:
    (_, source, _, state, spec, controller_id, timeout_s, created_at, updated_at, started_at, finished_at,
     exit_code, reason, container_id, credentials_accessor, attempt) = tuple(row)  # fmt: skip
    return Job(
        spec=JobSpec.model_validate_json(spec),
        source=source,
        state=JobState(state),
        controller_id=controller_id,
        timeout_s=timeout_s,
        created_at=created_at,
        updated_at=updated_at,
        started_at=started_at,
        finished_at=finished_at,
        exit_code=exit_code,
        reason=reason,
        container_id=container_id,
        credentials_accessor=credentials_accessor,
        attempt=attempt,
    )


class JobStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, job: Job) -> tuple[Job, bool]:
        """Insert unless a job with that id exists; returns (stored job, created). Atomic and durable."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def list_jobs(
        self, *, state: JobState | None = None, pool: str | None = None, limit: int = 100
    ) -> list[Job]: ...

    async def update(self, job: Job, *, expected: JobState) -> bool:
        """Compare-and-set on state: False if another writer moved the job first."""
        ...

    async def unfinished(self) -> list[Job]:
        """Jobs not in a final state, oldest first: the work reconciliation must settle."""
        ...

    async def check_writable(self) -> None:
        """Raises if a write would fail now (readiness probe)."""
        ...
