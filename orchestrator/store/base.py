"""The job store interface the rest of the controller depends on (SQLite now, PostgreSQL later)."""

from __future__ import annotations

from typing import Protocol

from orchestrator.jobs.states import Job, JobState


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
