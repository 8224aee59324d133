"""The job store interface the rest of the controller depends on (SQLite now, PostgreSQL later)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from orchestrator.callbacks.outbox import Delivery, Status
from orchestrator.forges.records import UPDATABLE, RunnerRecord
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import Approval, Job, JobState

# Column order shared by every SQL store: rows are written and read positionally in this order.
COLUMNS = (
    "id, source, pool, state, spec, controller_id, timeout_s, created_at, updated_at, started_at, "
    "finished_at, exit_code, reason, container_id, credentials_accessor, attempt, approval"
)
# Columns added after the first release: a store opened on an older database adds them (TEXT, NULL by default).
ADDED_COLUMNS = {"approval": "TEXT"}


# What counts against a pool's max_concurrent, as an SQL list (a constant: no user input reaches it).
ACTIVE_STATES_SQL = f"('{JobState.STARTING.value}', '{JobState.RUNNING.value}')"


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
        json.dumps(job.approval.to_json(), sort_keys=True) if job.approval is not None else None,
    )


def job_from_row(row: Sequence[Any]) -> Job:
    (_, source, _, state, spec, controller_id, timeout_s, created_at, updated_at, started_at, finished_at,
     exit_code, reason, container_id, credentials_accessor, attempt, approval) = tuple(row)  # fmt: skip
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
        approval=Approval.from_json(json.loads(approval)) if approval else None,
    )


# Column order of the `runners` table, read and written positionally: RunnerRecord's fields in declaration order.
RUNNER_FIELDS = tuple(f.name for f in dataclasses.fields(RunnerRecord))
RUNNER_COLUMNS = ", ".join(RUNNER_FIELDS)


class RunnerNameTaken(ValueError):
    """`create_runner` for a new job with a runner name another job's record already holds: the forge knows a
    runner by its name, so two records with one name could not be told apart."""

    def __init__(self, name: str, job_id: str) -> None:
        super().__init__(f"runner name {name!r} is already taken by job {job_id}")
        self.name = name
        self.job_id = job_id


def runner_to_row(record: RunnerRecord) -> tuple[object, ...]:
    return tuple(getattr(record, field) for field in RUNNER_FIELDS)


def runner_from_row(row: Sequence[Any]) -> RunnerRecord:
    return RunnerRecord(*row)


def runner_assignments(fields: Mapping[str, object], placeholder: str) -> tuple[str, list[object]]:
    """The SET clause and parameters of `update_runner`, for both SQL stores. Column names come only from
    UPDATABLE (anything else is refused with a ValueError naming it); values are always parameters."""
    unknown = sorted(set(fields) - UPDATABLE)
    if unknown:
        raise ValueError(f"runner fields cannot be updated: {', '.join(unknown)} (updatable: {sorted(UPDATABLE)})")
    names = sorted(fields)  # a stable statement text whatever the keyword order
    return ", ".join(f"{name} = {placeholder}" for name in names), [fields[name] for name in names]


# Column order of the `callback_outbox` table (orchestrator/callbacks/outbox.py), read positionally: Delivery's
# fields in declaration order. A state change writes the first eight (outbox.NEW_ROW_COLUMNS); the rest are the
# delivery's progress.
DELIVERY_FIELDS = tuple(f.name for f in dataclasses.fields(Delivery))
DELIVERY_COLUMNS = ", ".join(DELIVERY_FIELDS)


def delivery_from_row(row: Sequence[Any]) -> Delivery:
    values = list(row)
    values[3] = JobState(values[3])
    return Delivery(*values)


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

    async def update(self, job: Job, *, expected: JobState, pool_limit: int | None = None) -> bool:
        """Compare-and-set on state: False if another writer moved the job first. A move to another state also
        writes that change's outbox rows (the store's `outbox` targets for `job`) in the same transaction, as
        `create` does for a new job's `queued`: a stored state change never lacks its callbacks. With
        `pool_limit`, also False when that many jobs of the job's pool are already starting or running -- counted
        over every controller sharing the store, atomically with the write: a pool's limit holds cluster-wide."""
        ...

    async def unfinished(self) -> list[Job]:
        """Jobs not in a final state, oldest first: the work reconciliation must settle."""
        ...

    async def check_writable(self) -> None:
        """Raises if a write would fail now (readiness probe)."""
        ...

    # --- the callback outbox (orchestrator/callbacks/outbox.py) ----------------------------------------------

    async def pending_deliveries(self, controller_id: str, *, limit: int = 10_000) -> list[Delivery]:
        """Pending deliveries of the jobs `controller_id` owns, by job, target and seq."""
        ...

    async def note_delivery_attempt(self, job_id: str, target: str, seq: int, /, *, at: float, error: str) -> None:
        """One more failed attempt: counts it, keeps `error` and the first attempt's time (`at` if none yet)."""
        ...

    async def finish_delivery(
        self, job_id: str, target: str, seq: int, /, *, status: Status, at: float, error: str | None
    ) -> None:
        """Marks a pending delivery delivered or failed (given up); a finished one is left as it is."""
        ...

    async def deliveries(self, job_id: str) -> list[Delivery]:
        """Every outbox row of a job, by target and seq (what was owed and what became of it)."""
        ...

    # --- forge runners: one RunnerRecord per job that runs a single-use forge runner -------------------------

    async def create_runner(self, record: RunnerRecord) -> tuple[RunnerRecord, bool]:
        """Insert unless a record for `record.job_id` exists; returns (stored record, created). A webhook and
        reconciliation may both ask for the same job's runner, so a repeat returns what is stored and overwrites
        nothing. Raises RunnerNameTaken if another job's record has `record.name` (the forge's key for it)."""
        ...

    async def update_runner(self, job_id: str, /, **fields: object) -> RunnerRecord | None:
        """Sets only `fields` (each in records.UPDATABLE, else ValueError naming it) and returns the record as
        stored, or None for an unknown job_id. Field by field, not the whole row: the registration and the forge's
        webhooks (in_progress, completed) arrive concurrently, possibly at different controllers, and a writer
        must not undo the field another one just set."""
        ...

    async def get_runner(self, job_id: str) -> RunnerRecord | None:
        """The runner of one of our jobs (what its container, cancel and logs belong to)."""
        ...

    async def runner_by_name(self, name: str) -> RunnerRecord | None:
        """The record the forge means when its webhooks name a runner (`runner_name`)."""
        ...

    async def list_runners(self, *, source: str | None = None, limit: int = 100) -> list[RunnerRecord]:
        """Newest first (created_at, then job_id, descending); a negative limit means none, as in list_jobs."""
        ...

    async def runners_of_unfinished_jobs(self, source: str | None = None) -> list[RunnerRecord]:
        """Records whose job is not in a final state, oldest first: the runners the forge supervisor must still
        watch (and settle after a restart). A record without a job row is not included."""
        ...
