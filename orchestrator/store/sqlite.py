"""Embedded default store: one SQLite file in WAL mode.

Durability is chosen per write: accepting a job commits with synchronous=FULL (the WAL is fsynced before the
webhook gets its 202), while state changes use NORMAL (durable across a controller crash; a power loss may undo
the last few, which start-up reconciliation settles anyway); forge runner records are written like state changes.
Concurrent job creations are group-committed: one
transaction and one fsync for every webhook that arrived while the previous commit ran or within a short linger.

The callback outbox (`callback_outbox`, see orchestrator/callbacks/outbox.py) is written in the transaction of the
state change it announces: the job's insert (its `queued`) or its compare-and-set update, so both are on disk or
neither is. Delivery progress is written like state changes.

All calls run on one dedicated thread: SQLite connections are not shareable across threads and fsync must not
block the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from orchestrator.callbacks.outbox import NEW_ROW_COLUMNS, PENDING, Delivery, OutboxTargets, Status, new_rows
from orchestrator.forges.records import RunnerRecord
from orchestrator.jobs.states import FINAL_STATES, Job, JobState
from orchestrator.store.base import (
    ACTIVE_STATES_SQL,
    ADDED_COLUMNS,
    COLUMNS,
    DELIVERY_COLUMNS,
    RUNNER_COLUMNS,
    RUNNER_FIELDS,
    RunnerNameTaken,
    delivery_from_row,
    job_from_row,
    job_to_row,
    list_filter,
    runner_assignments,
    runner_from_row,
    runner_to_row,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    pool TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    controller_id TEXT NOT NULL,
    timeout_s INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    exit_code INTEGER,
    reason TEXT,
    container_id TEXT,
    credentials_accessor TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    approval TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created_at);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runners (
    job_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    trigger_job_id INTEGER NOT NULL,
    created_at REAL NOT NULL,
    registration_id INTEGER,
    ran_job_id INTEGER,
    ran_job_name TEXT,
    ran_repository TEXT,
    online_at REAL,
    completed_at REAL,
    conclusion TEXT
);
CREATE INDEX IF NOT EXISTS runners_source ON runners(source, created_at);
CREATE TABLE IF NOT EXISTS callback_outbox (
    job_id TEXT NOT NULL,
    target TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    attempt INTEGER NOT NULL,
    exit_code INTEGER,
    reason TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt_at REAL,
    last_error TEXT,
    finished_at REAL,
    PRIMARY KEY (job_id, target, seq)
);
CREATE INDEX IF NOT EXISTS callback_outbox_pending ON callback_outbox(job_id, target, seq) WHERE status = 'pending';
"""

_COLUMNS = COLUMNS
_row = job_to_row


def _job(row: sqlite3.Row) -> Job:
    return job_from_row(tuple(row))


def _runner(row: sqlite3.Row) -> RunnerRecord:
    return runner_from_row(tuple(row))


_RUNNER_SELECT = f"SELECT {RUNNER_COLUMNS} FROM runners"  # noqa: S608
_RUNNER_INSERT = f"INSERT INTO runners ({RUNNER_COLUMNS}) VALUES ({', '.join('?' * len(RUNNER_FIELDS))})"  # noqa: S608
_RUNNER_COLUMNS_OF_R = ", ".join(f"r.{field}" for field in RUNNER_FIELDS)


def _create_runner(conn: sqlite3.Connection, record: RunnerRecord) -> tuple[RunnerRecord, bool]:
    """One write transaction (BEGIN IMMEDIATE also excludes another controller on the same file): an existing
    record for the job wins, then a name held by another job is refused, then the insert."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(f"{_RUNNER_SELECT} WHERE job_id = ?", (record.job_id,)).fetchone()
        if row is not None:
            conn.execute("COMMIT")
            return _runner(row), False
        holder = conn.execute("SELECT job_id FROM runners WHERE name = ?", (record.name,)).fetchone()
        if holder is not None:
            raise RunnerNameTaken(record.name, holder[0])
        conn.execute(_RUNNER_INSERT, runner_to_row(record))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return record, True


_MAX_BATCH = 256  # 16 bound values per row: well under SQLite's 32766-variable limit
# How long a new job waits for others to share its commit (and its fsync). Under load this makes batches several
# times larger, which costs less CPU per job and fewer hand-offs to the store thread; alone, a webhook's 202 comes
# that much later -- nothing next to the fsync itself.
_COMMIT_LINGER_S = 0.002
_ROW_PLACEHOLDERS = f"({', '.join('?' * len(COLUMNS.split(',')))})"
_OUTBOX_PLACEHOLDERS = f"({', '.join('?' * len(NEW_ROW_COLUMNS.split(',')))})"
_OUTBOX_NEXT_SEQ = "SELECT COALESCE(MAX(seq), 0) + 1 FROM callback_outbox WHERE job_id = ?"


def _insert_outbox(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    if rows:
        values = ", ".join([_OUTBOX_PLACEHOLDERS] * len(rows))
        params = [value for row in rows for value in row]
        conn.execute(f"INSERT OR IGNORE INTO callback_outbox ({NEW_ROW_COLUMNS}) VALUES {values}", params)  # noqa: S608


def _no_outbox(job: Job) -> tuple[str, ...]:
    return ()


def _create_batch(
    conn: sqlite3.Connection, *, jobs: list[Job], outbox: OutboxTargets = _no_outbox
) -> list[tuple[Job, bool]]:
    """One durable transaction for many new jobs; an id seen before (or earlier in the batch) is returned as is.

    Four statements whatever the batch size, each run in one step: this thread gives up the GIL around every
    statement step and under load waits for the event loop to take it back, so a RETURNING row per job (one step
    each) made a batch several times slower than its fsync. `conn` commits with synchronous=FULL."""
    ids = list(dict.fromkeys(job.id for job in jobs))
    select = f"SELECT {_COLUMNS} FROM jobs WHERE id IN ({', '.join('?' * len(ids))})"  # noqa: S608
    conn.execute("BEGIN IMMEDIATE")
    try:
        existing = {row[0]: _job(row) for row in conn.execute(select, ids)}
        fresh: dict[str, Job] = {}
        for job in jobs:
            if job.id not in existing:
                fresh.setdefault(job.id, job)
        if fresh:
            values = ", ".join([_ROW_PLACEHOLDERS] * len(fresh))
            params = [value for job in fresh.values() for value in _row(job)]
            conn.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES {values}", params)  # noqa: S608
            _insert_outbox(conn, [row for job in fresh.values() for row in new_rows(job, 1, outbox(job))])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    results: list[tuple[Job, bool]] = []
    for job in jobs:
        stored = existing.get(job.id) or fresh[job.id]
        results.append((stored, stored is job))  # a second copy of an id in this batch is a duplicate of the first
    return results


def _update_with_outbox(
    conn: sqlite3.Connection, *, sql: str, values: tuple[object, ...], job: Job, targets: tuple[str, ...]
) -> bool:
    """The compare-and-set and the outbox rows of the change, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute(sql, values).rowcount != 1:
            conn.execute("ROLLBACK")
            return False
        seq = conn.execute(_OUTBOX_NEXT_SEQ, (job.id,)).fetchone()[0]
        _insert_outbox(conn, new_rows(job, seq, targets))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return True


class SQLiteJobStore:
    def __init__(self, path: Path, *, outbox: OutboxTargets | None = None) -> None:
        """`outbox`: the callback targets of a job's state change (orchestrator/callbacks/routing.py); none when
        not given."""
        self.path = path
        self.outbox: OutboxTargets = outbox or _no_outbox
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._durable: sqlite3.Connection | None = None  # job creations only: synchronous=FULL, set once
        self._pending: list[tuple[Job, asyncio.Future[tuple[Job, bool]]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)

    async def open(self) -> None:
        def _connect(synchronous: str) -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.execute("PRAGMA busy_timeout=30000")
            return conn

        def _open() -> tuple[sqlite3.Connection, sqlite3.Connection]:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = _connect("NORMAL")
            conn.executescript(_SCHEMA)
            present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            for name, kind in ADDED_COLUMNS.items():  # a database made by an older version
                if name not in present:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            return conn, _connect("FULL")

        self._conn, self._durable = await asyncio.get_running_loop().run_in_executor(self._executor, _open)

    async def close(self) -> None:
        if self._conn is not None:
            connections = [c for c in (self._conn, self._durable) if c is not None]

            def _close(_: sqlite3.Connection) -> None:
                for conn in connections:
                    conn.close()

            await self._run(_close)
            self._conn = self._durable = None
        self._executor.shutdown(wait=True)

    async def create(self, job: Job) -> tuple[Job, bool]:
        future: asyncio.Future[tuple[Job, bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        return await future

    async def _commit_pending(self) -> None:
        while self._pending:
            await asyncio.sleep(_COMMIT_LINGER_S)
            batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
            jobs = [job for job, _ in batch]
            try:
                results = await self._run(functools.partial(self._create_batch, jobs=jobs))
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)

    def _create_batch(self, _: sqlite3.Connection, *, jobs: list[Job]) -> list[tuple[Job, bool]]:
        if self._durable is None:
            raise RuntimeError("store is not open")
        return _create_batch(self._durable, jobs=jobs, outbox=self.outbox)

    async def get(self, job_id: str) -> Job | None:
        def _get(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()  # noqa: S608
            return _job(row) if row else None

        return await self._run(_get)

    async def list_jobs(self, *, state: JobState | None = None, pool: str | None = None, limit: int = 100) -> list[Job]:
        where, params = list_filter(state, pool, "?")
        sql = f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY created_at DESC, id DESC LIMIT ?"  # noqa: S608
        return await self._run(lambda c: [_job(r) for r in c.execute(sql, (*params, limit))])

    async def update(self, job: Job, *, expected: JobState, pool_limit: int | None = None) -> bool:
        assignments = ", ".join(f"{c.strip()} = ?" for c in _COLUMNS.split(",")[1:])
        sql = f"UPDATE jobs SET {assignments} WHERE id = ? AND state = ?"  # noqa: S608
        values: tuple[object, ...] = (*_row(job)[1:], job.id, expected.value)
        if pool_limit is not None:  # one statement: SQLite serialises writers, so the count cannot go stale
            sql += f" AND (SELECT count(*) FROM jobs WHERE pool = ? AND state IN {ACTIVE_STATES_SQL}) < ?"  # noqa: S608
            values = (*values, job.pool, pool_limit)
        targets = tuple(self.outbox(job)) if job.state is not expected else ()
        if targets:
            update = functools.partial(_update_with_outbox, sql=sql, values=values, job=job, targets=targets)
            return await self._run(update)
        return await self._run(lambda c: c.execute(sql, values).rowcount == 1)

    async def unfinished(self) -> list[Job]:
        final = tuple(s.value for s in FINAL_STATES)
        sql = (
            f"SELECT {_COLUMNS} FROM jobs WHERE state NOT IN ({', '.join('?' * len(final))}) "  # noqa: S608
            "ORDER BY created_at, id"
        )
        return await self._run(lambda c: [_job(r) for r in c.execute(sql, final)])

    async def check_writable(self) -> None:
        now = time.time()
        await self._run(lambda c: c.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (now,)))

    async def pending_deliveries(self, controller_id: str, *, limit: int = 10_000) -> list[Delivery]:
        columns = ", ".join(f"o.{c.strip()}" for c in DELIVERY_COLUMNS.split(","))
        sql = (
            f"SELECT {columns} FROM callback_outbox o JOIN jobs j ON j.id = o.job_id "  # noqa: S608
            "WHERE o.status = ? AND j.controller_id = ? ORDER BY o.job_id, o.target, o.seq LIMIT ?"
        )
        params = (PENDING, controller_id, limit)
        return await self._run(lambda c: [delivery_from_row(tuple(r)) for r in c.execute(sql, params)])

    async def note_delivery_attempt(self, job_id: str, target: str, seq: int, /, *, at: float, error: str) -> None:
        sql = (
            "UPDATE callback_outbox SET attempts = attempts + 1, last_error = ?, "
            "first_attempt_at = COALESCE(first_attempt_at, ?) WHERE job_id = ? AND target = ? AND seq = ?"
        )
        params = (error, at, job_id, target, seq)
        await self._run(lambda c: c.execute(sql, params))

    async def finish_delivery(
        self, job_id: str, target: str, seq: int, /, *, status: Status, at: float, error: str | None
    ) -> None:
        sql = (
            "UPDATE callback_outbox SET status = ?, finished_at = ?, last_error = COALESCE(?, last_error) "
            "WHERE job_id = ? AND target = ? AND seq = ? AND status = ?"
        )
        params = (status, at, error, job_id, target, seq, PENDING)
        await self._run(lambda c: c.execute(sql, params))

    async def deliveries(self, job_id: str) -> list[Delivery]:
        sql = f"SELECT {DELIVERY_COLUMNS} FROM callback_outbox WHERE job_id = ? ORDER BY target, seq"  # noqa: S608
        return await self._run(lambda c: [delivery_from_row(tuple(r)) for r in c.execute(sql, (job_id,))])

    async def create_runner(self, record: RunnerRecord) -> tuple[RunnerRecord, bool]:
        return await self._run(functools.partial(_create_runner, record=record))

    async def update_runner(self, job_id: str, /, **fields: object) -> RunnerRecord | None:
        if not fields:
            return await self.get_runner(job_id)
        assignments, params = runner_assignments(fields, "?")
        sql = f"UPDATE runners SET {assignments} WHERE job_id = ? RETURNING {RUNNER_COLUMNS}"  # noqa: S608

        def _update(conn: sqlite3.Connection) -> RunnerRecord | None:
            row = conn.execute(sql, (*params, job_id)).fetchone()
            return _runner(row) if row else None

        return await self._run(_update)

    async def get_runner(self, job_id: str) -> RunnerRecord | None:
        def _get(conn: sqlite3.Connection) -> RunnerRecord | None:
            row = conn.execute(f"{_RUNNER_SELECT} WHERE job_id = ?", (job_id,)).fetchone()
            return _runner(row) if row else None

        return await self._run(_get)

    async def runner_by_name(self, name: str) -> RunnerRecord | None:
        def _get(conn: sqlite3.Connection) -> RunnerRecord | None:
            row = conn.execute(f"{_RUNNER_SELECT} WHERE name = ?", (name,)).fetchone()
            return _runner(row) if row else None

        return await self._run(_get)

    async def list_runners(self, *, source: str | None = None, limit: int = 100) -> list[RunnerRecord]:
        params: list[object] = [] if source is None else [source]
        where = "" if source is None else "WHERE source = ?"
        sql = f"{_RUNNER_SELECT} {where} ORDER BY created_at DESC, job_id DESC LIMIT ?"
        return await self._run(lambda c: [_runner(r) for r in c.execute(sql, (*params, limit))])

    async def runners_of_unfinished_jobs(self, source: str | None = None) -> list[RunnerRecord]:
        final = tuple(s.value for s in FINAL_STATES)
        params: list[object] = list(final)
        by_source = ""
        if source is not None:
            by_source = " AND r.source = ?"
            params.append(source)
        sql = (
            f"SELECT {_RUNNER_COLUMNS_OF_R} FROM runners r JOIN jobs j ON j.id = r.job_id "  # noqa: S608
            f"WHERE j.state NOT IN ({', '.join('?' * len(final))}){by_source} ORDER BY r.created_at, r.job_id"
        )
        return await self._run(lambda c: [_runner(r) for r in c.execute(sql, params)])
