"""Tests for the SQLite job store (orchestrator/store/sqlite.py) against a real database file in tmp_path.

The behaviour every store shares is in contract.py (run here by TestSQLiteContract); this file adds what is
SQLite's own: file modes, WAL, synchronous levels, group commit, read-only files.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.jobs.states import Job, JobState, transition
from orchestrator.store.sqlite import SQLiteJobStore

from contract import JobStoreContract, MakeStore, Query, make_job
from unprivileged import as_unprivileged, unprivileged_dir


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "jobs.sqlite3"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteJobStore]:
    s = SQLiteJobStore(db_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


class TestSQLiteContract(JobStoreContract):
    @pytest.fixture
    def make_store(self, db_path: Path) -> MakeStore:
        return lambda: SQLiteJobStore(db_path)

    @pytest.fixture
    def query(self, db_path: Path) -> Query:
        async def _query(sql: str) -> list[tuple[Any, ...]]:
            conn = sqlite3.connect(db_path)
            try:
                return [tuple(r) for r in conn.execute(sql).fetchall()]
            finally:
                conn.close()

        return _query


# --- file format and durability -----------------------------------------------------------------------


async def test_create_sets_data_dir_private(db_path: Path, store: SQLiteJobStore) -> None:
    assert db_path.exists()
    assert db_path.parent.stat().st_mode & 0o777 == 0o700


async def _trace(store: SQLiteJobStore, creating: list[str] | None, updating: list[str] | None) -> None:
    def _set(conn: sqlite3.Connection) -> None:
        assert store._durable is not None
        store._durable.set_trace_callback(creating.append if creating is not None else None)
        conn.set_trace_callback(updating.append if updating is not None else None)

    await store._run(_set)


async def test_wal_mode_and_full_sync_for_accepted_jobs(db_path: Path, store: SQLiteJobStore) -> None:
    creating: list[str] = []
    updating: list[str] = []
    await _trace(store, creating, updating)
    await store.create(make_job("x"))
    await store.update(transition(make_job("x"), JobState.STARTING, now=2.0), expected=JobState.QUEUED)
    await _trace(store, None, None)
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    # the accepting transaction commits on the connection with synchronous=FULL, state changes on the NORMAL one
    assert [s.split()[0] for s in creating] == ["BEGIN", "SELECT", "INSERT", "COMMIT"]
    assert [s.split()[0] for s in updating] == ["UPDATE"]
    assert store._durable is not None
    assert await store._run(lambda _: store._durable.execute("PRAGMA synchronous").fetchone()[0]) == 2  # type: ignore[union-attr]
    assert await store._run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1


async def test_concurrent_creates_are_group_committed(db_path: Path, store: SQLiteJobStore) -> None:
    creating: list[str] = []
    await _trace(store, creating, None)
    results = await asyncio.gather(*(store.create(make_job(f"g{i}")) for i in range(50)))
    await _trace(store, None, None)
    assert all(created for _, created in results)
    commits = creating.count("COMMIT")
    assert commits < 10  # batched, not one fsync per job
    # Four one-step statements per batch, whatever its size: each statement step hands the GIL back and forth
    # with the event loop, so a row returned per job would make the batch wait on the loop once per job.
    assert len(creating) == 4 * commits
    assert not any("RETURNING" in s for s in creating)


# --- check_writable -----------------------------------------------------------------------------------


def _with_store(path: Path, then: Callable[[SQLiteJobStore], Awaitable[Any]]) -> Any:
    """Opens the store at `path`, runs `then` on it and closes it, in an event loop of its own."""

    async def run() -> Any:
        store = SQLiteJobStore(path)
        try:
            await store.open()
            return await then(store)
        finally:
            await store.close()

    return asyncio.run(run())


async def _create_and_probe(store: SQLiteJobStore) -> None:
    await store.create(make_job("x"))
    await store.check_writable()


async def _read_then_probe(store: SQLiteJobStore) -> Job | None:
    job = await store.get("x")
    with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
        await store.check_writable()
    return job


def test_check_writable_raises_on_read_only_database() -> None:
    """A database file that is read-only for the controller's user still opens and reads: only the readiness probe's
    write notices. Run as an unprivileged user, so that also as root (as in CI) the modes mean something."""
    with unprivileged_dir() as directory:
        db_path = directory / "data" / "jobs.sqlite3"
        as_unprivileged(_with_store, db_path, _create_and_probe)  # that user can write here
        db_path.chmod(0o400)
        assert as_unprivileged(_with_store, db_path, _read_then_probe) == make_job("x")


async def test_check_writable_raises_when_connection_is_read_only(db_path: Path, store: SQLiteJobStore) -> None:
    """Root-proof variant: a query_only connection refuses writes regardless of file modes."""
    await store._run(lambda c: c.execute("PRAGMA query_only = ON"))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await store.check_writable()
    await store._run(lambda c: c.execute("PRAGMA query_only = OFF"))
    await store.check_writable()


async def test_a_database_of_an_older_version_gains_the_new_columns(tmp_path: Path) -> None:
    """A jobs table made before `approval` existed: opening adds the column, its rows read with no approval."""
    path = tmp_path / "old.sqlite3"
    old_columns = (
        "id TEXT PRIMARY KEY, source TEXT NOT NULL, pool TEXT NOT NULL, state TEXT NOT NULL, spec TEXT NOT NULL, "
        "controller_id TEXT NOT NULL, timeout_s INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, "
        "started_at REAL, finished_at REAL, exit_code INTEGER, reason TEXT, container_id TEXT, "
        "credentials_accessor TEXT, attempt INTEGER NOT NULL DEFAULT 1"
    )
    job = make_job("old-1")
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE jobs ({old_columns})")
        conn.execute(f"INSERT INTO jobs VALUES ({', '.join('?' * 16)})", (
            job.id, job.source, job.pool, job.state.value, job.spec.model_dump_json(), job.controller_id,
            job.timeout_s, job.created_at, job.updated_at, None, None, None, None, None, None, 1,
        ))  # fmt: skip
    store = SQLiteJobStore(path)
    await store.open()
    try:
        assert await store.get("old-1") == job
        moved = transition(job, JobState.STARTING, now=5.0)
        assert await store.update(moved, expected=JobState.QUEUED)
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert "approval" in {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
