"""Tests for the SQLite job store (orchestrator/store/sqlite.py) against a real database file in tmp_path."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import Job, JobState, new_job, transition
from orchestrator.store.sqlite import SQLiteJobStore


def spec(job_id: str, pool: str = "default", **overrides: object) -> JobSpec:
    data: dict[str, object] = {
        "id": job_id,
        "pool": pool,
        "repository": "example/app",
        "ref": "refs/heads/main",
        "sha": "abcdef1",
        "commands": ["echo hi"],
    }
    data.update(overrides)
    return JobSpec.model_validate(data)


def make_job(job_id: str, *, pool: str = "default", now: float = 1_000.0, **overrides: object) -> Job:
    return new_job(spec(job_id, pool, **overrides), source="src", controller_id="ctl", timeout_s=60, now=now)


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


# --- create / get -----------------------------------------------------------------------------------


async def test_create_then_get_round_trips_every_field(store: SQLiteJobStore) -> None:
    job = make_job(
        "job-1",
        env={"A": "b"},
        timeout_s=30,
        secrets=[{"path": "ci/app", "key": "k", "name": "TOKEN", "deliver": "env"}],
        commands=["echo 'x'", "make\ntest"],
    )
    job = dataclasses.replace(
        job,
        updated_at=1_001.5,
        started_at=1_001.0,
        finished_at=None,
        exit_code=3,
        reason="why",
        container_id="c0ffee",
        credentials_accessor="acc",
        attempt=2,
    )
    stored, created = await store.create(job)
    assert created is True
    assert stored == job
    assert await store.get("job-1") == job


async def test_create_sets_data_dir_private(db_path: Path, store: SQLiteJobStore) -> None:
    assert db_path.exists()
    assert db_path.parent.stat().st_mode & 0o777 == 0o700


async def test_get_unknown_is_none(store: SQLiteJobStore) -> None:
    assert await store.get("nope") is None


async def test_create_is_idempotent_and_never_overwrites(store: SQLiteJobStore) -> None:
    first = make_job("dup", now=1_000.0)
    second = dataclasses.replace(
        make_job("dup", pool="other", now=2_000.0, commands=["rm -rf /"]), state=JobState.RUNNING, attempt=5
    )
    assert await store.create(first) == (first, True)
    existing, created = await store.create(second)
    assert created is False
    assert existing == first
    assert await store.get("dup") == first
    assert len(await store.list_jobs()) == 1


async def test_create_after_update_returns_current_row(store: SQLiteJobStore) -> None:
    job = make_job("j")
    await store.create(job)
    starting = transition(job, JobState.STARTING, now=1_001.0, container_id="c1")
    assert await store.update(starting, expected=JobState.QUEUED)
    existing, created = await store.create(make_job("j", now=5_000.0))
    assert created is False
    assert existing == starting


# --- list_jobs --------------------------------------------------------------------------------------


async def _seed(store: SQLiteJobStore) -> None:
    jobs = [
        make_job("a", pool="p1", now=1.0),
        make_job("b", pool="p2", now=2.0),
        make_job("c", pool="p1", now=3.0),
        make_job("d", pool="p2", now=4.0),
        make_job("e", pool="p1", now=5.0),
    ]
    for job in jobs:
        assert (await store.create(job))[1]
    # c: running, e: failed
    c = transition(transition(jobs[2], JobState.STARTING, now=6.0), JobState.RUNNING, now=7.0)
    assert await store.update(c, expected=JobState.QUEUED)
    e = transition(jobs[4], JobState.ERROR, now=8.0, reason="boom")
    assert await store.update(e, expected=JobState.QUEUED)


def ids(jobs: list[Job]) -> list[str]:
    return [j.id for j in jobs]


async def test_list_jobs_newest_first(store: SQLiteJobStore) -> None:
    await _seed(store)
    assert ids(await store.list_jobs()) == ["e", "d", "c", "b", "a"]


async def test_list_jobs_limit(store: SQLiteJobStore) -> None:
    await _seed(store)
    assert ids(await store.list_jobs(limit=2)) == ["e", "d"]
    assert ids(await store.list_jobs(limit=0)) == []
    assert ids(await store.list_jobs(limit=100)) == ["e", "d", "c", "b", "a"]


async def test_list_jobs_filters(store: SQLiteJobStore) -> None:
    await _seed(store)
    assert ids(await store.list_jobs(pool="p1")) == ["e", "c", "a"]
    assert ids(await store.list_jobs(pool="p2")) == ["d", "b"]
    assert ids(await store.list_jobs(pool="nope")) == []
    assert ids(await store.list_jobs(state=JobState.QUEUED)) == ["d", "b", "a"]
    assert ids(await store.list_jobs(state=JobState.RUNNING)) == ["c"]
    assert ids(await store.list_jobs(state=JobState.ERROR)) == ["e"]
    assert ids(await store.list_jobs(state=JobState.SUCCEEDED)) == []
    assert ids(await store.list_jobs(state=JobState.QUEUED, pool="p1")) == ["a"]
    assert ids(await store.list_jobs(state=JobState.QUEUED, pool="p2", limit=1)) == ["d"]


async def test_list_jobs_ties_broken_by_id_descending(store: SQLiteJobStore) -> None:
    for job_id in ("m", "z", "a"):
        await store.create(make_job(job_id, now=10.0))
    assert ids(await store.list_jobs()) == ["z", "m", "a"]


async def test_list_jobs_filter_values_are_parameters(store: SQLiteJobStore) -> None:
    await _seed(store)
    assert await store.list_jobs(pool="p1' OR '1'='1") == []


# --- update (compare-and-set) -----------------------------------------------------------------------


async def test_update_compare_and_set(store: SQLiteJobStore) -> None:
    job = make_job("cas")
    await store.create(job)
    starting = transition(job, JobState.STARTING, now=1_001.0, container_id="c1")

    assert await store.update(starting, expected=JobState.RUNNING) is False
    assert await store.get("cas") == job, "a failed compare-and-set changes nothing"

    assert await store.update(starting, expected=JobState.QUEUED) is True
    assert await store.get("cas") == starting

    # A second writer that still believes the job is queued loses.
    cancelled = transition(job, JobState.CANCELLED, now=1_002.0, reason="user")
    assert await store.update(cancelled, expected=JobState.QUEUED) is False
    assert await store.get("cas") == starting


async def test_update_writes_every_mutable_field(store: SQLiteJobStore) -> None:
    job = make_job("u")
    await store.create(job)
    running = transition(
        transition(job, JobState.STARTING, now=2.0, container_id="c", credentials_accessor="acc"),
        JobState.RUNNING,
        now=3.0,
    )
    assert await store.update(running, expected=JobState.QUEUED)
    done = transition(running, JobState.FAILED, now=4.0, exit_code=2, reason="exit code 2")
    assert await store.update(done, expected=JobState.RUNNING)
    got = await store.get("u")
    assert got == done
    assert got is not None
    assert (got.state, got.exit_code, got.reason, got.finished_at, got.started_at) == (
        JobState.FAILED,
        2,
        "exit code 2",
        4.0,
        3.0,
    )
    requeue_from_final = transition(running, JobState.QUEUED, now=5.0)
    assert await store.update(requeue_from_final, expected=JobState.RUNNING) is False
    assert await store.get("u") == done


async def test_update_unknown_job_is_false(store: SQLiteJobStore) -> None:
    assert await store.update(make_job("ghost"), expected=JobState.QUEUED) is False
    assert await store.get("ghost") is None


async def test_update_touches_only_its_own_row(store: SQLiteJobStore) -> None:
    a, b = make_job("a", now=1.0), make_job("b", now=2.0)
    await store.create(a)
    await store.create(b)
    assert await store.update(transition(a, JobState.CANCELLED, now=3.0), expected=JobState.QUEUED)
    assert await store.get("b") == b


async def test_concurrent_cas_exactly_one_winner(store: SQLiteJobStore) -> None:
    job = make_job("race")
    await store.create(job)
    targets = [JobState.STARTING, JobState.CANCELLED, JobState.ERROR] * 10
    results = await asyncio.gather(
        *(store.update(transition(job, t, now=2.0 + i), expected=JobState.QUEUED) for i, t in enumerate(targets))
    )
    assert results.count(True) == 1
    winner = targets[results.index(True)]
    got = await store.get("race")
    assert got is not None
    assert got.state is winner


# --- unfinished -------------------------------------------------------------------------------------


async def test_unfinished_oldest_first_without_final_states(store: SQLiteJobStore) -> None:
    base = {name: make_job(name, now=t) for name, t in (("q2", 5.0), ("r", 2.0), ("s", 3.0), ("q1", 1.0))}
    finals = {
        "ok": (JobState.SUCCEEDED, 0.5),
        "f": (JobState.FAILED, 1.5),
        "to": (JobState.TIMED_OUT, 2.5),
        "c": (JobState.CANCELLED, 3.5),
        "e": (JobState.ERROR, 4.5),
    }
    for job in base.values():
        await store.create(job)
    for name, (state, t) in finals.items():
        job = make_job(name, now=t)
        await store.create(job)
        running = transition(transition(job, JobState.STARTING, now=t + 10), JobState.RUNNING, now=t + 11)
        assert await store.update(running, expected=JobState.QUEUED)
        assert await store.update(transition(running, state, now=t + 12), expected=JobState.RUNNING)
    s = transition(base["s"], JobState.STARTING, now=20.0)
    assert await store.update(s, expected=JobState.QUEUED)
    r = transition(transition(base["r"], JobState.STARTING, now=21.0), JobState.RUNNING, now=22.0)
    assert await store.update(r, expected=JobState.QUEUED)

    unfinished = await store.unfinished()
    assert ids(unfinished) == ["q1", "r", "s", "q2"]
    assert [j.state for j in unfinished] == [JobState.QUEUED, JobState.RUNNING, JobState.STARTING, JobState.QUEUED]


async def test_unfinished_empty(store: SQLiteJobStore) -> None:
    assert await store.unfinished() == []


# --- durability and file format ---------------------------------------------------------------------


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    first = SQLiteJobStore(db_path)
    await first.open()
    job = make_job("durable", env={"K": "v"})
    await first.create(job)
    running = transition(transition(job, JobState.STARTING, now=2.0), JobState.RUNNING, now=3.0)
    assert await first.update(running, expected=JobState.QUEUED)
    await first.close()

    second = SQLiteJobStore(db_path)
    await second.open()
    try:
        assert await second.get("durable") == running
        assert ids(await second.unfinished()) == ["durable"]
        assert (await second.create(job)) == (running, False)
    finally:
        await second.close()


async def test_committed_rows_visible_to_another_connection_immediately(db_path: Path, store: SQLiteJobStore) -> None:
    job = make_job("visible")
    await store.create(job)
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT id, state, pool, attempt FROM jobs").fetchall()
    finally:
        conn.close()
    assert rows == [("visible", "queued", "default", 1)]


async def test_wal_mode_and_full_sync_for_accepted_jobs(db_path: Path, store: SQLiteJobStore) -> None:
    statements: list[str] = []
    await store._run(lambda c: c.set_trace_callback(statements.append))
    await store.create(make_job("x"))
    await store.update(transition(make_job("x"), JobState.STARTING, now=2.0), expected=JobState.QUEUED)
    await store._run(lambda c: c.set_trace_callback(None))
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    # the accepting transaction commits with synchronous=FULL, state changes run with NORMAL
    full, commit = statements.index("PRAGMA synchronous=FULL"), statements.index("COMMIT")
    assert full < commit
    assert statements[commit + 1] == "PRAGMA synchronous=NORMAL"
    assert await store._run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1


async def test_concurrent_creates_are_group_committed(db_path: Path, store: SQLiteJobStore) -> None:
    statements: list[str] = []
    await store._run(lambda c: c.set_trace_callback(statements.append))
    results = await asyncio.gather(*(store.create(make_job(f"g{i}")) for i in range(50)))
    await store._run(lambda c: c.set_trace_callback(None))
    assert all(created for _, created in results)
    assert statements.count("COMMIT") < 10  # batched, not one fsync per job


async def test_open_twice_on_same_file_keeps_schema(db_path: Path) -> None:
    for _ in range(2):
        s = SQLiteJobStore(db_path)
        await s.open()
        await s.create(make_job(f"j{_}"))
        await s.close()
    s = SQLiteJobStore(db_path)
    await s.open()
    try:
        assert sorted(ids(await s.list_jobs())) == ["j0", "j1"]
    finally:
        await s.close()


async def test_calls_before_open_raise(db_path: Path) -> None:
    s = SQLiteJobStore(db_path)
    with pytest.raises(RuntimeError, match="store is not open"):
        await s.get("x")
    await s.close()


async def test_calls_after_close_raise(db_path: Path) -> None:
    s = SQLiteJobStore(db_path)
    await s.open()
    await s.close()
    with pytest.raises(RuntimeError, match="store is not open"):
        await s.list_jobs()


# --- concurrency ------------------------------------------------------------------------------------


async def test_concurrent_creates_exactly_one_winner_per_id(db_path: Path, store: SQLiteJobStore) -> None:
    job_ids = [f"job-{i:02d}" for i in range(50)]
    attempts = [make_job(job_ids[i % 50], now=float(i)) for i in range(200)]
    results = await asyncio.gather(*(store.create(j) for j in attempts))

    created = Counter(job.id for job, was_created in results if was_created)
    assert created == Counter({job_id: 1 for job_id in job_ids})
    # Every caller gets back the row that won, whether or not it was theirs.
    winners = {job.id: job for job, was_created in results if was_created}
    for job, _ in results:
        assert job == winners[job.id]
    assert len(await store.list_jobs(limit=1000)) == 50

    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM jobs").fetchone() == (50, 50)
    finally:
        conn.close()


# --- check_writable ---------------------------------------------------------------------------------


async def test_check_writable_ok(store: SQLiteJobStore) -> None:
    await store.check_writable()
    await store.check_writable()
    rows = await store._run(lambda c: c.execute("SELECT id FROM probe").fetchall())
    assert [tuple(r) for r in rows] == [(1,)]


async def test_check_writable_raises_on_read_only_database(db_path: Path) -> None:
    s = SQLiteJobStore(db_path)
    await s.open()
    await s.create(make_job("x"))
    await s.close()
    db_path.chmod(0o400)
    db_path.parent.chmod(0o500)
    try:
        if os.geteuid() == 0:
            pytest.skip("running as root: file modes do not stop writes")
        ro = SQLiteJobStore(db_path)
        try:
            # Refusing to open a read-only store, or refusing the probe write, both fail the readiness check.
            with pytest.raises(sqlite3.Error):
                await ro.open()
                await ro.check_writable()
        finally:
            await ro.close()
    finally:
        db_path.parent.chmod(0o700)
        db_path.chmod(0o600)


async def test_check_writable_raises_when_connection_is_read_only(db_path: Path, store: SQLiteJobStore) -> None:
    """Root-proof variant: a query_only connection refuses writes regardless of file modes."""
    await store._run(lambda c: c.execute("PRAGMA query_only = ON"))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await store.check_writable()
    await store._run(lambda c: c.execute("PRAGMA query_only = OFF"))
    await store.check_writable()
