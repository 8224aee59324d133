"""PostgreSQL job store, for installations that run several controllers against one database.

Same contract as the SQLite store (orchestrator/store/sqlite.py):

- `create` is one `INSERT … ON CONFLICT (id) DO NOTHING RETURNING id` in its own transaction; when it inserted
  nothing, a second statement reads the row that won. Under READ COMMITTED the INSERT waits for a concurrent
  insert of the same id to commit, and the SELECT runs with a new snapshot, so it sees that row: exactly one
  caller, whichever controller it runs in, gets `created=True`.
- `update` is a compare-and-set on `state` (`UPDATE … WHERE id = %s AND state = %s`); a concurrent writer that
  got there first changes the row's state, PostgreSQL re-checks the WHERE clause against it, and the loser
  updates nothing.
- Forge runner records (`runners`): `create_runner` is the same insert-or-read-the-winner as `create` (a name
  another job holds violates its UNIQUE constraint: RunnerNameTaken); `update_runner` sets only the columns it
  is given in one `UPDATE … RETURNING`, so writers of different fields, in any controller, keep each other's.
- The callback outbox (`callback_outbox`, orchestrator/callbacks/outbox.py) is written in the transaction of the
  state change it announces: `create` inserts the job and its `queued` rows together, `update` the compare-and-set
  and the change's rows (the next `seq` is read after the UPDATE has locked the job's row, so two writers of one
  job cannot take the same one). A stored state change therefore never lacks its callbacks, whatever crashes.
- Every write commits before the call returns, with `synchronous_commit` at least `on`: a server whose default is
  `off` is overridden per connection, because a webhook's 202 promises the job is on disk. The server already
  groups concurrent commits into one WAL flush, so there is no client-side batching as in the SQLite store.

The connection string (libpq key=value or a postgresql:// URI) is read from a file (chmod 600) at `open()`, because
it may hold a password. It is never logged, and errors raised here never contain it or its password.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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

log = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[TupleRow]

# Serialises schema creation across controllers starting at once: concurrent CREATE TABLE IF NOT EXISTS can
# otherwise fail with a unique violation in the catalog. Any fixed 64-bit key; this one spells "orchjobs".
_SCHEMA_LOCK_KEY = 0x6F7263686A6F6273

# `id` and `job_id` compare bytewise (COLLATE "C") so that list order matches the SQLite store whatever the
# database's locale.
# `spec` is the JSON text as written: JSONB would refuse a \u0000 escape and reorder keys.
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id TEXT COLLATE "C" PRIMARY KEY,
        source TEXT NOT NULL,
        pool TEXT NOT NULL,
        state TEXT NOT NULL,
        spec TEXT NOT NULL,
        controller_id TEXT NOT NULL,
        timeout_s BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        exit_code BIGINT,
        reason TEXT,
        container_id TEXT,
        credentials_accessor TEXT,
        attempt INTEGER NOT NULL DEFAULT 1,
        approval TEXT
    )
    """,
    *(f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {name} {kind}" for name, kind in ADDED_COLUMNS.items()),
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_pool ON jobs (pool, created_at)",
    "CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at DOUBLE PRECISION NOT NULL)",
    # One lease per controller: its generation fences a controller whose jobs were taken over (scheduling/cluster.py).
    """
    CREATE TABLE IF NOT EXISTS controllers (
        id TEXT COLLATE "C" PRIMARY KEY,
        generation BIGINT NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL,
        taken_over_by TEXT,
        url TEXT
    )
    """,
    # Forge ids (job, runner) outgrow 32 bits: BIGINT.
    """
    CREATE TABLE IF NOT EXISTS runners (
        job_id TEXT COLLATE "C" PRIMARY KEY,
        source TEXT NOT NULL,
        name TEXT NOT NULL CONSTRAINT runners_name_key UNIQUE,
        scope TEXT NOT NULL,
        trigger_job_id BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        registration_id BIGINT,
        ran_job_id BIGINT,
        ran_job_name TEXT,
        ran_repository TEXT,
        online_at DOUBLE PRECISION,
        completed_at DOUBLE PRECISION,
        conclusion TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS runners_source ON runners (source, created_at)",
    """
    CREATE TABLE IF NOT EXISTS callback_outbox (
        job_id TEXT COLLATE "C" NOT NULL,
        target TEXT COLLATE "C" NOT NULL,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        attempt INTEGER NOT NULL,
        exit_code BIGINT,
        reason TEXT,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        first_attempt_at DOUBLE PRECISION,
        last_error TEXT,
        finished_at DOUBLE PRECISION,
        PRIMARY KEY (job_id, target, seq)
    )
    """,
    "CREATE INDEX IF NOT EXISTS callback_outbox_pending ON callback_outbox (job_id, target, seq) "
    "WHERE status = 'pending'",
)

# Everything _SCHEMA creates: a database made by an older version lacks some (e.g. `runners`), and then the whole
# of _SCHEMA runs again (each statement IF NOT EXISTS), so a new table must be named here too.
_SCHEMA_OBJECTS = (
    *("jobs", "jobs_state", "jobs_created", "jobs_pool", "probe", "runners", "runners_source"),
    *("callback_outbox", "callback_outbox_pending", "controllers"),
)
_SCHEMA_EXISTS = "SELECT " + ", ".join(["to_regclass(%s)"] * len(_SCHEMA_OBJECTS))
_COLUMNS_PRESENT = (
    "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'jobs' "
    "AND column_name = ANY(%s)"
)

_COLUMNS = COLUMNS
_INSERT = (
    f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join(['%s'] * len(_COLUMNS.split(',')))}) "  # noqa: S608
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
_SELECT_ONE = f"SELECT {_COLUMNS} FROM jobs WHERE id = %s"  # noqa: S608
# `controller_id = %s`: only the job's owner writes it -- a controller whose jobs were taken over (its lease expired)
# finds its writes refused and stops (fencing).
_UPDATE = (
    f"UPDATE jobs SET {', '.join(f'{c.strip()} = %s' for c in _COLUMNS.split(',')[1:])} "  # noqa: S608
    "WHERE id = %s AND state = %s AND controller_id = %s"
)
_UPDATE_WITHIN_LIMIT = (
    f"{_UPDATE} AND (SELECT count(*) FROM jobs WHERE pool = %s AND state IN {ACTIVE_STATES_SQL}) < %s"  # noqa: S608
)
# A transaction-scoped advisory lock per pool: (a fixed class key spelling "pool", the pool name's hash).
_POOL_LOCK = f"SELECT pg_advisory_xact_lock({0x706F6F6C}, hashtext(%s))"
_LEASE_ACQUIRE = (
    "INSERT INTO controllers (id, generation, heartbeat_at, taken_over_by, url) VALUES (%s, 1, %s, NULL, %s) "
    "ON CONFLICT (id) DO UPDATE SET generation = controllers.generation + 1, heartbeat_at = EXCLUDED.heartbeat_at, "
    "taken_over_by = NULL, url = EXCLUDED.url RETURNING generation"
)
_CONTROLLER_URL = "SELECT url FROM controllers WHERE id = %s"
_LEASE_RENEW = "UPDATE controllers SET heartbeat_at = %s WHERE id = %s AND generation = %s AND taken_over_by IS NULL"
_LEASES_EXPIRED = (
    "SELECT id, generation FROM controllers WHERE heartbeat_at < %s AND taken_over_by IS NULL AND id <> %s ORDER BY id"
)
_LEASE_TAKE = (
    "UPDATE controllers SET generation = generation + 1, taken_over_by = %s "
    "WHERE id = %s AND generation = %s AND taken_over_by IS NULL"
)
# Queued jobs of other controllers, oldest first, for a controller with room: SKIP LOCKED lets several claim at
# once without waiting on each other, and a job its owner is starting right now (its row locked) is skipped. Only
# jobs that waited `min_age` (not updated since): an owner with room starts its own at once, and a job just claimed
# is not claimed away again before its new owner starts it.
_CLAIM_QUEUED = (
    "UPDATE jobs SET controller_id = %s, updated_at = %s WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' "  # noqa: S608
    "AND pool = %s AND controller_id <> %s AND updated_at < %s ORDER BY created_at, id LIMIT GREATEST(0, LEAST(%s, "
    f"%s - (SELECT count(*) FROM jobs WHERE pool = %s AND state IN {ACTIVE_STATES_SQL}))) "
    f"FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}"
)
_JOBS_TAKE = (
    f"UPDATE jobs SET controller_id = %s, updated_at = %s WHERE controller_id = %s AND NOT (state = ANY(%s)) "  # noqa: S608
    f"RETURNING {_COLUMNS}"
)
_UNFINISHED = f"SELECT {_COLUMNS} FROM jobs WHERE NOT (state = ANY(%s)) ORDER BY created_at, id"  # noqa: S608
_RUNNER_SELECT = f"SELECT {RUNNER_COLUMNS} FROM runners"  # noqa: S608
_RUNNER_INSERT = (
    f"INSERT INTO runners ({RUNNER_COLUMNS}) VALUES ({', '.join(['%s'] * len(RUNNER_FIELDS))}) "  # noqa: S608
    "ON CONFLICT (job_id) DO NOTHING RETURNING job_id"
)
_RUNNERS_OF_UNFINISHED = (
    f"SELECT {', '.join(f'r.{field}' for field in RUNNER_FIELDS)} FROM runners r "  # noqa: S608
    "JOIN jobs j ON j.id = r.job_id WHERE NOT (j.state = ANY(%s)) AND (%s::text IS NULL OR r.source = %s) "
    "ORDER BY r.created_at, r.job_id"
)
# Free-form text the forge sends back (job name, repository, conclusion): a NUL in it must not make a write fail.
_FORGE_TEXT = frozenset({"ran_job_name", "ran_repository", "conclusion"})
_OUTBOX_INSERT = (
    f"INSERT INTO callback_outbox ({NEW_ROW_COLUMNS}) VALUES ({', '.join(['%s'] * 8)}) "  # noqa: S608
    "ON CONFLICT DO NOTHING"
)
_OUTBOX_NEXT_SEQ = "SELECT COALESCE(MAX(seq), 0) + 1 FROM callback_outbox WHERE job_id = %s"
_OUTBOX_COLUMNS_OF_O = ", ".join(f"o.{c.strip()}" for c in DELIVERY_COLUMNS.split(","))
_PENDING_DELIVERIES = (
    f"SELECT {_OUTBOX_COLUMNS_OF_O} FROM callback_outbox o JOIN jobs j ON j.id = o.job_id "  # noqa: S608
    "WHERE o.status = %s AND j.controller_id = %s ORDER BY o.job_id, o.target, o.seq LIMIT %s"
)
_PROBE = "INSERT INTO probe (id, at) VALUES (1, %s) ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at"

_SECRET_KEYS = ("password", "sslpassword")


class PostgresStoreError(Exception):
    """The store could not be opened. The message names the DSN file and the server, never the DSN's content."""


def read_dsn(path: Path) -> str:
    """The connection string in `path`, checked to parse; errors name the file but never quote its content.

    Errors are raised outside the `except` blocks: libpq's parse error quotes the offending part of the string,
    which may be the password, so the original must not even ride along as `__context__`.
    """
    text, problem = "", None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        problem = "file not found"
    except PermissionError:
        problem = "not readable by this user"
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except OSError as exc:
        problem = f"cannot read: {exc.strerror}"
    if problem is None and not text:
        problem = "the file is empty"
    if problem is None and "\n" in text:
        problem = "the connection string must be a single line"
    if problem is None:
        try:
            conninfo_to_dict(text)
        except psycopg.Error:
            problem = "not a valid PostgreSQL connection string (libpq key=value pairs or a postgresql:// URI)"
    if problem is not None:
        raise PostgresStoreError(f"{path}: {problem}")
    return text


def _secrets_of(dsn: str) -> list[str]:
    """Every spelling of the DSN's secrets that an error message could contain, longest first."""
    found = [dsn]
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        params = {}
    for key in _SECRET_KEYS:
        value = params.get(key)
        if isinstance(value, str) and value:
            found += [value, urllib.parse.quote(value, safe=""), urllib.parse.quote(value)]
    return sorted({s for s in found if s}, key=len, reverse=True)


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _where(dsn: str) -> str:
    """host:port/dbname for messages; no user, no password."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or params.get("hostaddr") or "(default host)")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or "(default database)")
    return f"{host}:{port}/{dbname}"


def _row(job: Job) -> tuple[object, ...]:
    # PostgreSQL text cannot hold NUL; a free-form reason (e.g. an engine error) must not make the write fail.
    if job.reason is not None and "\x00" in job.reason:
        job = dataclasses.replace(job, reason=job.reason.replace("\x00", "\ufffd"))
    return job_to_row(job)


def _job(row: TupleRow) -> Job:
    return job_from_row(row)


def _without_nul(field: str, value: object) -> object:
    if field in _FORGE_TEXT and isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _runner_row(record: RunnerRecord) -> tuple[object, ...]:
    return tuple(_without_nul(f, v) for f, v in zip(RUNNER_FIELDS, runner_to_row(record), strict=True))


async def _configure(conn: Connection) -> None:
    """Runs once per new pooled connection."""
    cur = await conn.execute("SHOW synchronous_commit")
    row = await cur.fetchone()
    if row is not None and row[0] == "off":
        await conn.execute("SET synchronous_commit TO on")


async def _create_schema(conn: Connection) -> None:
    """Creates what is missing. When everything exists no DDL runs, so a role that was granted only
    SELECT/INSERT/UPDATE on tables a DBA created beforehand (or a read-only standby) can still open the store."""
    cur = await conn.execute(_SCHEMA_EXISTS, _SCHEMA_OBJECTS)
    row = await cur.fetchone()
    cur = await conn.execute(_COLUMNS_PRESENT, (list(ADDED_COLUMNS),))
    present = await cur.fetchone()
    if row is not None and all(row) and present is not None and present[0] == len(ADDED_COLUMNS):
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
        for statement in _SCHEMA:
            await conn.execute(statement)


def _no_outbox(job: Job) -> tuple[str, ...]:
    return ()


def _outbox_rows(job: Job, seq: int, targets: Sequence[str]) -> list[tuple[object, ...]]:
    rows = new_rows(job, seq, targets)
    if job.reason is not None and "\x00" in job.reason:  # as in _row: text cannot hold NUL
        rows = [(*row[:7], job.reason.replace("\x00", "\ufffd")) for row in rows]
    return rows


class PostgresJobStore:
    def __init__(
        self,
        dsn_file: Path,
        *,
        pool_size: int = 4,
        connect_timeout_s: float = 10.0,
        outbox: OutboxTargets | None = None,
    ) -> None:
        """`outbox`: the callback targets of a job's state change (orchestrator/callbacks/routing.py)."""
        self.dsn_file = dsn_file
        self.outbox: OutboxTargets = outbox or _no_outbox
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        self._pool: AsyncConnectionPool[Connection] | None = None

    def __repr__(self) -> str:
        return f"PostgresJobStore(dsn_file={str(self.dsn_file)!r}, open={self._pool is not None})"

    def _conninfo(self, dsn: str) -> str:
        params = conninfo_to_dict(dsn)
        extra: dict[str, Any] = {}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = max(1, round(self.connect_timeout_s))
        if "application_name" not in params:
            extra["application_name"] = "runner-orchestrator"
        return make_conninfo(dsn, **extra)

    async def open(self) -> None:
        if self._pool is not None:
            return
        dsn = read_dsn(self.dsn_file)
        secrets = _secrets_of(dsn)
        where = _where(dsn)
        conninfo = self._conninfo(dsn)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            conninfo,
            connection_class=psycopg.AsyncConnection,
            kwargs={"autocommit": True},
            min_size=1,
            max_size=self.pool_size,
            open=False,
            configure=_configure,
            check=AsyncConnectionPool.check_connection,
            timeout=self.connect_timeout_s,
            name="orchestrator-jobs",
        )
        problem: str | None = None
        try:
            # A direct connection first: its error says why (the pool's would only say it timed out).
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            try:
                await _create_schema(conn)
            finally:
                await conn.close()
            await pool.open(wait=True, timeout=self.connect_timeout_s)
        except (psycopg.Error, PoolTimeout) as exc:
            problem = redact(f"{type(exc).__name__}: {exc}".strip(), secrets)
        if problem is not None:
            await pool.close()
            # Raised outside the except block so the original exception is not chained onto ours.
            raise PostgresStoreError(f"PostgreSQL job store at {where} (dsn_file {self.dsn_file}): {problem}")
        self._pool = pool
        log.info("postgres job store open", extra={"database": where, "pool_size": self.pool_size})

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Connection]:
        pool = self._pool
        if pool is None:
            raise RuntimeError("store is not open")
        async with pool.connection() as conn:
            yield conn

    async def create(self, job: Job) -> tuple[Job, bool]:
        targets = tuple(self.outbox(job))
        async with self._conn() as conn:
            # Rows are never deleted, so the second pass is only for a conflicting insert that rolled back.
            for _ in range(3):
                if targets:
                    async with conn.transaction():
                        cur = await conn.execute(_INSERT, _row(job))
                        inserted = await cur.fetchone() is not None
                        if inserted:
                            async with conn.cursor() as outbox:
                                await outbox.executemany(_OUTBOX_INSERT, _outbox_rows(job, 1, targets))
                    if inserted:
                        return job, True
                else:
                    cur = await conn.execute(_INSERT, _row(job))
                    if await cur.fetchone() is not None:
                        return job, True
                cur = await conn.execute(_SELECT_ONE, (job.id,))
                row = await cur.fetchone()
                if row is not None:
                    return _job(row), False
        raise RuntimeError(f"job {job.id}: neither inserted nor found")

    async def get(self, job_id: str) -> Job | None:
        async with self._conn() as conn:
            cur = await conn.execute(_SELECT_ONE, (job_id,))
            row = await cur.fetchone()
        return _job(row) if row is not None else None

    async def list_jobs(self, *, state: JobState | None = None, pool: str | None = None, limit: int = 100) -> list[Job]:
        where, params = list_filter(state, pool, "%s")
        sql = f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY created_at DESC, id DESC LIMIT %s"  # noqa: S608
        # As in SQLite, a negative limit means none; LIMIT NULL is PostgreSQL's spelling of that.
        params.append(limit if limit >= 0 else None)
        async with self._conn() as conn:
            cur = await conn.execute(sql, params)
            rows = await cur.fetchall()
        return [_job(r) for r in rows]

    async def update(self, job: Job, *, expected: JobState, pool_limit: int | None = None) -> bool:
        values: tuple[object, ...] = (*_row(job)[1:], job.id, expected.value, job.controller_id)
        sql = _UPDATE
        if pool_limit is not None:
            sql, values = _UPDATE_WITHIN_LIMIT, (*values, job.pool, pool_limit)
        targets = tuple(self.outbox(job)) if job.state is not expected else ()
        async with self._conn() as conn:
            if not targets and pool_limit is None:
                cur = await conn.execute(sql, values)
                return cur.rowcount == 1
            async with conn.transaction():
                if pool_limit is not None:
                    # Controllers starting jobs of one pool take turns until commit: the count below then sees
                    # every start committed before it (READ COMMITTED takes a snapshot per statement).
                    await conn.execute(_POOL_LOCK, (job.pool,))
                cur = await conn.execute(sql, values)
                if cur.rowcount != 1:
                    return False
                if not targets:
                    return True
                cur = await conn.execute(_OUTBOX_NEXT_SEQ, (job.id,))
                row = await cur.fetchone()
                seq = int(row[0]) if row is not None else 1
                async with conn.cursor() as outbox:
                    await outbox.executemany(_OUTBOX_INSERT, _outbox_rows(job, seq, targets))
            return True

    # --- leases of controllers sharing this database (scheduling/cluster.py) ------------------------------------

    async def acquire_lease(self, controller_id: str, now: float, url: str | None = None) -> int:
        """Registers the controller (again): a new generation, which fences off its previous process; `url` is
        where the others reach its API (to forward log followers of its jobs)."""
        async with self._conn() as conn:
            cur = await conn.execute(_LEASE_ACQUIRE, (controller_id, now, url))
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def controller_url(self, controller_id: str) -> str | None:
        async with self._conn() as conn:
            cur = await conn.execute(_CONTROLLER_URL, (controller_id,))
            row = await cur.fetchone()
        return str(row[0]) if row is not None and row[0] else None

    async def renew_lease(self, controller_id: str, generation: int, now: float) -> bool:
        """False: the lease is no longer this process's (taken over, or a newer process of the same id)."""
        async with self._conn() as conn:
            cur = await conn.execute(_LEASE_RENEW, (now, controller_id, generation))
            return cur.rowcount == 1

    async def expired_leases(self, cutoff: float, *, besides: str) -> list[tuple[str, int]]:
        async with self._conn() as conn:
            cur = await conn.execute(_LEASES_EXPIRED, (cutoff, besides))
            return [(str(r[0]), int(r[1])) for r in await cur.fetchall()]

    async def take_over(self, controller_id: str, generation: int, *, by: str, now: float) -> list[Job] | None:
        """Ends the lease of `controller_id` at `generation` and makes `by` the owner of its unfinished jobs, in one
        transaction; returns them. None: someone else took it over first, or it renewed its lease meanwhile."""
        final = sorted(s.value for s in FINAL_STATES)
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(_LEASE_TAKE, (by, controller_id, generation))
            if cur.rowcount != 1:
                return None
            cur = await conn.execute(_JOBS_TAKE, (by, now, controller_id, final))
            rows = await cur.fetchall()
        return [_job(r) for r in rows]

    async def claim_queued(
        self, pool: str, limit: int, *, pool_limit: int, by: str, now: float, min_age_s: float = 1.0
    ) -> list[Job]:
        """Up to `limit` queued jobs of `pool` that other controllers accepted and have not touched for `min_age_s`,
        now `by`'s (oldest first); no more than the pool's free slots across controllers (`pool_limit` minus the
        jobs starting or running): a job claimed but not startable would only wait here instead of there. Their old
        owner's attempt to start one then fails (the fenced write)."""
        params = (by, now, pool, by, now - min_age_s, limit, pool_limit, pool)
        async with self._conn() as conn:
            cur = await conn.execute(_CLAIM_QUEUED, params)
            rows = await cur.fetchall()
        return sorted((_job(r) for r in rows), key=lambda j: (j.created_at, j.id))

    async def unfinished(self) -> list[Job]:
        final = sorted(s.value for s in FINAL_STATES)
        async with self._conn() as conn:
            cur = await conn.execute(_UNFINISHED, (final,))
            rows = await cur.fetchall()
        return [_job(r) for r in rows]

    async def check_writable(self) -> None:
        now = time.time()
        async with self._conn() as conn:
            await conn.execute(_PROBE, (now,))

    async def pending_deliveries(self, controller_id: str, *, limit: int = 10_000) -> list[Delivery]:
        async with self._conn() as conn:
            cur = await conn.execute(_PENDING_DELIVERIES, (PENDING, controller_id, limit))
            rows = await cur.fetchall()
        return [delivery_from_row(r) for r in rows]

    async def note_delivery_attempt(self, job_id: str, target: str, seq: int, /, *, at: float, error: str) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE callback_outbox SET attempts = attempts + 1, last_error = %s, "
                "first_attempt_at = COALESCE(first_attempt_at, %s) WHERE job_id = %s AND target = %s AND seq = %s",
                (error.replace("\x00", "\ufffd"), at, job_id, target, seq),
            )

    async def finish_delivery(
        self, job_id: str, target: str, seq: int, /, *, status: Status, at: float, error: str | None
    ) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE callback_outbox SET status = %s, finished_at = %s, last_error = COALESCE(%s, last_error) "
                "WHERE job_id = %s AND target = %s AND seq = %s AND status = %s",
                (status, at, None if error is None else error.replace("\x00", "\ufffd"), job_id, target, seq, PENDING),
            )

    async def deliveries(self, job_id: str) -> list[Delivery]:
        sql = f"SELECT {DELIVERY_COLUMNS} FROM callback_outbox WHERE job_id = %s ORDER BY target, seq"  # noqa: S608
        async with self._conn() as conn:
            cur = await conn.execute(sql, (job_id,))
            rows = await cur.fetchall()
        return [delivery_from_row(r) for r in rows]

    async def create_runner(self, record: RunnerRecord) -> tuple[RunnerRecord, bool]:
        row = _runner_row(record)
        async with self._conn() as conn:
            # As in `create`: the second pass is only for a conflicting insert that rolled back.
            for _ in range(3):
                try:
                    cur = await conn.execute(_RUNNER_INSERT, row)
                except psycopg.errors.UniqueViolation as exc:
                    if exc.diag.constraint_name != "runners_name_key":
                        raise
                    cur = await conn.execute("SELECT job_id FROM runners WHERE name = %s", (record.name,))
                    holder = await cur.fetchone()
                    if holder is None:  # the record that held the name rolled back
                        continue
                    raise RunnerNameTaken(record.name, holder[0]) from None
                if await cur.fetchone() is not None:
                    return runner_from_row(row), True
                cur = await conn.execute(f"{_RUNNER_SELECT} WHERE job_id = %s", (record.job_id,))
                stored = await cur.fetchone()
                if stored is not None:
                    return runner_from_row(stored), False
        raise RuntimeError(f"runner of job {record.job_id}: neither inserted nor found")

    async def update_runner(self, job_id: str, /, **fields: object) -> RunnerRecord | None:
        if not fields:
            return await self.get_runner(job_id)
        assignments, params = runner_assignments({f: _without_nul(f, v) for f, v in fields.items()}, "%s")
        sql = f"UPDATE runners SET {assignments} WHERE job_id = %s RETURNING {RUNNER_COLUMNS}"  # noqa: S608
        async with self._conn() as conn:
            cur = await conn.execute(sql, (*params, job_id))
            row = await cur.fetchone()
        return runner_from_row(row) if row is not None else None

    async def get_runner(self, job_id: str) -> RunnerRecord | None:
        return await self._one_runner(f"{_RUNNER_SELECT} WHERE job_id = %s", job_id)

    async def runner_by_name(self, name: str) -> RunnerRecord | None:
        return await self._one_runner(f"{_RUNNER_SELECT} WHERE name = %s", name)

    async def _one_runner(self, sql: str, key: str) -> RunnerRecord | None:
        async with self._conn() as conn:
            cur = await conn.execute(sql, (key,))
            row = await cur.fetchone()
        return runner_from_row(row) if row is not None else None

    async def list_runners(self, *, source: str | None = None, limit: int = 100) -> list[RunnerRecord]:
        params: list[object] = [] if source is None else [source]
        where = "" if source is None else "WHERE source = %s"
        sql = f"{_RUNNER_SELECT} {where} ORDER BY created_at DESC, job_id DESC LIMIT %s"
        params.append(limit if limit >= 0 else None)  # LIMIT NULL: no limit, as in list_jobs
        async with self._conn() as conn:
            cur = await conn.execute(sql, params)
            rows = await cur.fetchall()
        return [runner_from_row(r) for r in rows]

    async def runners_of_unfinished_jobs(self, source: str | None = None) -> list[RunnerRecord]:
        final = sorted(s.value for s in FINAL_STATES)
        async with self._conn() as conn:
            cur = await conn.execute(_RUNNERS_OF_UNFINISHED, (final, source, source))
            rows = await cur.fetchall()
        return [runner_from_row(r) for r in rows]
