"""The callback outbox in both job stores: rows written in the state change's own transaction, sequence numbers,
progress, ownership. PostgreSQL runs when ORCHESTRATOR_TEST_POSTGRES_DSN names a server (each test in its own
schema, as tests/store/test_postgres.py does), else it is skipped."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.callbacks.outbox import CALLBACK, STATUS, Delivery
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import Job, JobState, new_job, transition
from orchestrator.store.base import JobStore
from orchestrator.store.sqlite import SQLiteJobStore

DSN = os.environ.get("ORCHESTRATOR_TEST_POSTGRES_DSN", "")


def make_job(job_id: str, *, controller_id: str = "ctl", now: float = 1000.0) -> Job:
    spec = JobSpec.model_validate(
        {"id": job_id, "pool": "default", "repository": "acme/app", "ref": "main", "sha": "abcdef1", "commands": ["x"]}
    )
    return new_job(spec, source="ci", controller_id=controller_id, timeout_s=60, now=now)


def targets(job: Job) -> tuple[str, ...]:
    """Callbacks for every job but `quiet-*`; commit statuses except for `starting`."""
    if job.id.startswith("quiet"):
        return ()
    return (CALLBACK,) if job.state is JobState.STARTING else (CALLBACK, STATUS)


Query = Callable[[str], Awaitable[list[tuple[Any, ...]]]]
Backend = tuple[JobStore, Query, Callable[[], JobStore]]  # the store, SQL on the same database, another store on it


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "jobs.sqlite3"
        store: JobStore = SQLiteJobStore(path, outbox=targets)

        async def query(sql: str) -> list[tuple[Any, ...]]:
            import sqlite3

            with sqlite3.connect(path) as conn:
                return [tuple(r) for r in conn.execute(sql).fetchall()]

        await store.open()
        try:
            yield store, query, lambda: SQLiteJobStore(path, outbox=targets)
        finally:
            await store.close()
        return
    if not DSN:
        pytest.skip("set ORCHESTRATOR_TEST_POSTGRES_DSN to run the PostgreSQL outbox tests")
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from orchestrator.store.postgres import PostgresJobStore

    schema = f"orch_cb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    options = conninfo_to_dict(DSN).get("options") or ""
    dsn = make_conninfo(DSN, options=f"{options} -c search_path={schema}".strip())
    dsn_file = tmp_path / "pg.dsn"
    dsn_file.write_text(dsn)
    dsn_file.chmod(0o600)
    store = PostgresJobStore(dsn_file, pool_size=2, outbox=targets)

    async def pg_query(sql: str) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute(sql)
            return await cur.fetchall() if cur.description else []

    await store.open()
    try:
        yield store, pg_query, lambda: PostgresJobStore(dsn_file, pool_size=2, outbox=targets)
    finally:
        await store.close()
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def summary(deliveries: list[Delivery]) -> list[tuple[str, int, str, str]]:
    return [(d.target, d.seq, d.state.value, d.status) for d in deliveries]


async def test_every_state_change_writes_its_rows(backend: Backend) -> None:
    store, _, _ = backend
    job = make_job("j1")
    assert (await store.create(job))[1]
    assert not (await store.create(job))[1]  # a duplicate writes nothing more
    starting = transition(job, JobState.STARTING, now=1001.0)
    assert await store.update(starting, expected=JobState.QUEUED)
    running = transition(starting, JobState.RUNNING, now=1002.0, container_id="c1")
    assert await store.update(running, expected=JobState.STARTING)
    same_state = running.__class__(**{**running.__dict__, "updated_at": 1003.0})
    assert await store.update(same_state, expected=JobState.RUNNING)  # no state change: no callback
    failed = transition(running, JobState.FAILED, now=1004.0, exit_code=3, reason="exit code 3")
    assert await store.update(failed, expected=JobState.RUNNING)
    rows = await store.deliveries("j1")
    assert summary(rows) == [
        (CALLBACK, 1, "queued", "pending"),
        (CALLBACK, 2, "starting", "pending"),
        (CALLBACK, 3, "running", "pending"),
        (CALLBACK, 4, "failed", "pending"),
        (STATUS, 1, "queued", "pending"),
        (STATUS, 3, "running", "pending"),
        (STATUS, 4, "failed", "pending"),
    ]
    final = rows[3]
    assert (final.at, final.exit_code, final.reason, final.attempt) == (1004.0, 3, "exit code 3", 1)


async def test_a_lost_compare_and_set_writes_no_rows(backend: Backend) -> None:
    store, _, _ = backend
    job = make_job("j2")
    await store.create(job)
    assert await store.update(transition(job, JobState.CANCELLED, now=1001.0), expected=JobState.QUEUED)
    assert not await store.update(transition(job, JobState.STARTING, now=1002.0), expected=JobState.QUEUED)
    assert [(d.seq, d.state.value) for d in await store.deliveries("j2") if d.target == CALLBACK] == [
        (1, "queued"),
        (2, "cancelled"),
    ]


async def test_the_state_change_and_its_rows_commit_together(backend: Backend) -> None:
    """If the outbox rows cannot be written, the state change is not stored either."""
    store, query, _ = backend
    job = make_job("j3")
    await store.create(job)
    await query("DROP TABLE callback_outbox")
    with pytest.raises(Exception):  # noqa: B017 -- whatever the driver raises for a missing table
        await store.update(transition(job, JobState.STARTING, now=1001.0), expected=JobState.QUEUED)
    stored = await store.get("j3")
    assert stored is not None and stored.state is JobState.QUEUED
    with pytest.raises(Exception):  # noqa: B017
        await store.create(make_job("j4"))
    assert await store.get("j4") is None


async def test_jobs_without_targets_write_nothing(backend: Backend) -> None:
    store, _, _ = backend
    job = make_job("quiet-1")
    await store.create(job)
    assert await store.update(transition(job, JobState.ERROR, now=1001.0, reason="x"), expected=JobState.QUEUED)
    assert await store.deliveries("quiet-1") == []


async def test_pending_deliveries_progress_and_ownership(backend: Backend) -> None:
    store, _, _ = backend
    mine, theirs = make_job("m1"), make_job("t1", controller_id="other")
    for job in (mine, theirs):
        await store.create(job)
    await store.update(transition(mine, JobState.STARTING, now=1001.0), expected=JobState.QUEUED)
    pending = await store.pending_deliveries("ctl")
    assert [(d.job_id, d.target, d.seq) for d in pending] == [
        ("m1", CALLBACK, 1),
        ("m1", CALLBACK, 2),
        ("m1", STATUS, 1),
    ]
    await store.note_delivery_attempt("m1", CALLBACK, 1, at=50.0, error="HTTP 503")
    await store.note_delivery_attempt("m1", CALLBACK, 1, at=60.0, error="connection failed")
    head = (await store.pending_deliveries("ctl"))[0]
    assert (head.attempts, head.first_attempt_at, head.last_error) == (2, 50.0, "connection failed")
    await store.finish_delivery("m1", CALLBACK, 1, status="delivered", at=70.0, error=None)
    await store.finish_delivery("m1", STATUS, 1, status="failed", at=71.0, error="HTTP 422")
    await store.finish_delivery("m1", STATUS, 1, status="delivered", at=72.0, error=None)  # finished stays so
    assert [(d.target, d.seq) for d in await store.pending_deliveries("ctl")] == [(CALLBACK, 2)]
    rows = {(d.target, d.seq): d for d in await store.deliveries("m1")}
    assert (rows[(CALLBACK, 1)].status, rows[(CALLBACK, 1)].finished_at) == ("delivered", 70.0)
    assert (rows[(STATUS, 1)].status, rows[(STATUS, 1)].last_error) == ("failed", "HTTP 422")
    assert [d.job_id for d in await store.pending_deliveries("other")] == ["t1", "t1"]
    assert len(await store.pending_deliveries("ctl", limit=0)) == 0


async def test_rows_survive_a_new_store(backend: Backend) -> None:
    """What a restarted controller finds: another store on the same database sees the pending rows."""
    store, _, reopen = backend
    job = make_job("r1")
    await store.create(job)
    await store.update(transition(job, JobState.STARTING, now=1001.0), expected=JobState.QUEUED)
    again = reopen()
    await again.open()
    try:
        assert [(d.target, d.seq) for d in await again.pending_deliveries("ctl")] == [
            (CALLBACK, 1),
            (CALLBACK, 2),
            (STATUS, 1),
        ]
    finally:
        await again.close()
