"""Behaviour every JobStore must have, whatever the database: run by test_sqlite.py and test_postgres.py.

A backend's test module subclasses `JobStoreContract` (as `Test…`, so pytest collects it) and provides two fixtures:

- `make_store`: a callable returning a new, not yet opened store on the test's database. Two stores from it are
  two controllers sharing that database.
- `query`: runs one SQL statement on an independent connection to the same database and returns its rows as
  tuples (`SELECT id FROM probe` → `[(1,)]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from orchestrator.forges.records import UPDATABLE, RunnerRecord
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import FINAL_STATES, Approval, Job, JobState, new_job, transition
from orchestrator.store.base import JobStore, RunnerNameTaken

MakeStore = Callable[[], JobStore]
OpenStore = Callable[[], Awaitable[JobStore]]
Query = Callable[[str], Awaitable[list[tuple[Any, ...]]]]


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


def ids(jobs: list[Job]) -> list[str]:
    return [j.id for j in jobs]


def make_runner(job_id: str, *, source: str = "gh", now: float = 1_000.0, **fields: object) -> RunnerRecord:
    return RunnerRecord(
        job_id=job_id,
        source=source,
        name=f"ctl-{job_id}",
        scope="repo:owner/app",
        trigger_job_id=2**40 + 1,  # forge ids outgrow 32 bits
        created_at=now,
        **fields,  # type: ignore[arg-type]
    )


def job_ids(records: list[RunnerRecord]) -> list[str]:
    return [r.job_id for r in records]


# A value of the right type for each updatable field, none of them the default.
UPDATES: dict[str, object] = {
    "registration_id": 2**33 + 7,
    "ran_job_id": 2**41 + 3,
    "ran_job_name": "build (ubuntu) — ü",
    "ran_repository": "owner/app",
    "online_at": 1_700_000_000.123456789,
    "completed_at": 0.1 + 0.2,
    "conclusion": "success",
}


async def _table_exists(query: Query, table: str) -> bool:
    try:
        await query(f"SELECT COUNT(*) FROM {table}")
    except Exception:
        return False
    return True


async def _seed(store: JobStore) -> None:
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


class JobStoreContract:
    @pytest.fixture
    def make_store(self) -> MakeStore:
        raise NotImplementedError("a backend's test class provides make_store")

    @pytest.fixture
    def query(self) -> Query:
        raise NotImplementedError("a backend's test class provides query")

    @pytest.fixture
    async def open_store(self, make_store: MakeStore) -> AsyncIterator[OpenStore]:
        """Opens another store on the same database (another controller); every one is closed afterwards."""
        made: list[JobStore] = []

        async def _open() -> JobStore:
            s = make_store()
            made.append(s)
            await s.open()
            return s

        yield _open
        for s in made:
            await s.close()

    @pytest.fixture
    async def store(self, open_store: OpenStore) -> JobStore:
        return await open_store()

    # --- create / get -------------------------------------------------------------------------------

    async def test_create_then_get_round_trips_every_field(self, store: JobStore) -> None:
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

    async def test_round_trip_keeps_unicode_escapes_and_exact_floats(self, store: JobStore) -> None:
        job = make_job(
            "uni",
            now=1_700_000_000.123456789,
            commands=["echo 'ü → 🚀'", 'printf "%s\\n" "$X"'],
            env={"X": "tab\there \\u0000 literal"},
            secrets=[{"path": "ci/app", "key": "k\x00ey", "name": "T"}],
        )
        job = dataclasses.replace(job, reason="späť — 理由", started_at=0.1 + 0.2, exit_code=-1, attempt=2**31 - 1)
        assert await store.create(job) == (job, True)
        got = await store.get("uni")
        assert got == job
        assert got is not None
        assert got.created_at == 1_700_000_000.123456789
        assert got.spec.secrets[0].key == "k\x00ey"

    async def test_get_unknown_is_none(self, store: JobStore) -> None:
        assert await store.get("nope") is None

    async def test_create_is_idempotent_and_never_overwrites(self, store: JobStore) -> None:
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

    async def test_create_after_update_returns_current_row(self, store: JobStore) -> None:
        job = make_job("j")
        await store.create(job)
        starting = transition(job, JobState.STARTING, now=1_001.0, container_id="c1")
        assert await store.update(starting, expected=JobState.QUEUED)
        existing, created = await store.create(make_job("j", now=5_000.0))
        assert created is False
        assert existing == starting

    # --- list_jobs ----------------------------------------------------------------------------------

    async def test_list_jobs_newest_first(self, store: JobStore) -> None:
        await _seed(store)
        assert ids(await store.list_jobs()) == ["e", "d", "c", "b", "a"]

    async def test_list_jobs_limit(self, store: JobStore) -> None:
        await _seed(store)
        assert ids(await store.list_jobs(limit=2)) == ["e", "d"]
        assert ids(await store.list_jobs(limit=0)) == []
        assert ids(await store.list_jobs(limit=100)) == ["e", "d", "c", "b", "a"]

    async def test_list_jobs_negative_limit_means_no_limit(self, store: JobStore) -> None:
        await _seed(store)
        assert ids(await store.list_jobs(limit=-1)) == ["e", "d", "c", "b", "a"]

    async def test_list_jobs_filters(self, store: JobStore) -> None:
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

    async def test_list_jobs_ties_broken_by_id_descending(self, store: JobStore) -> None:
        for job_id in ("m", "z", "a"):
            await store.create(make_job(job_id, now=10.0))
        assert ids(await store.list_jobs()) == ["z", "m", "a"]

    async def test_list_jobs_ties_compare_ids_bytewise(self, store: JobStore) -> None:
        """Not by locale: upper case before lower case, '-' < digits < 'Z' < '_' < 'a'."""
        for job_id in ("a", "B", "_x", "-y", "9", "Z", "a-b", "ab"):
            await store.create(make_job(job_id, now=10.0))
        assert ids(await store.list_jobs()) == ["ab", "a-b", "a", "_x", "Z", "B", "9", "-y"]
        assert ids(await store.unfinished()) == ["-y", "9", "B", "Z", "_x", "a", "a-b", "ab"]

    async def test_list_jobs_filter_values_are_parameters(self, store: JobStore) -> None:
        await _seed(store)
        assert await store.list_jobs(pool="p1' OR '1'='1") == []

    # --- update (compare-and-set) -------------------------------------------------------------------

    async def test_update_compare_and_set(self, store: JobStore) -> None:
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

    async def test_update_writes_every_mutable_field(self, store: JobStore) -> None:
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

    async def test_update_unknown_job_is_false(self, store: JobStore) -> None:
        assert await store.update(make_job("ghost"), expected=JobState.QUEUED) is False
        assert await store.get("ghost") is None

    async def test_update_touches_only_its_own_row(self, store: JobStore) -> None:
        a, b = make_job("a", now=1.0), make_job("b", now=2.0)
        await store.create(a)
        await store.create(b)
        assert await store.update(transition(a, JobState.CANCELLED, now=3.0), expected=JobState.QUEUED)
        assert await store.get("b") == b

    async def test_concurrent_cas_exactly_one_winner(self, store: JobStore) -> None:
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

    # --- unfinished ---------------------------------------------------------------------------------

    async def test_unfinished_oldest_first_without_final_states(self, store: JobStore) -> None:
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
        assert [j.state for j in unfinished] == [
            JobState.QUEUED,
            JobState.RUNNING,
            JobState.STARTING,
            JobState.QUEUED,
        ]

    async def test_unfinished_empty(self, store: JobStore) -> None:
        assert await store.unfinished() == []

    # --- durability and visibility ------------------------------------------------------------------

    async def test_data_survives_close_and_reopen(self, open_store: OpenStore) -> None:
        first = await open_store()
        job = make_job("durable", env={"K": "v"})
        await first.create(job)
        running = transition(transition(job, JobState.STARTING, now=2.0), JobState.RUNNING, now=3.0)
        assert await first.update(running, expected=JobState.QUEUED)
        await first.close()

        second = await open_store()
        assert await second.get("durable") == running
        assert ids(await second.unfinished()) == ["durable"]
        assert (await second.create(job)) == (running, False)

    async def test_committed_rows_visible_to_another_connection_immediately(
        self, store: JobStore, query: Query
    ) -> None:
        job = make_job("visible")
        await store.create(job)
        rows = await query("SELECT id, state, pool, attempt FROM jobs")
        assert rows == [("visible", "queued", "default", 1)]

    async def test_open_twice_on_same_database_keeps_schema(self, open_store: OpenStore) -> None:
        for i in range(2):
            s = await open_store()
            await s.create(make_job(f"j{i}"))
            await s.close()
        s = await open_store()
        assert sorted(ids(await s.list_jobs())) == ["j0", "j1"]

    async def test_close_twice_is_harmless(self, open_store: OpenStore) -> None:
        s = await open_store()
        await s.close()
        await s.close()

    async def test_calls_before_open_raise(self, make_store: MakeStore) -> None:
        s = make_store()
        with pytest.raises(RuntimeError, match="store is not open"):
            await s.get("x")
        await s.close()

    async def test_calls_after_close_raise(self, make_store: MakeStore) -> None:
        s = make_store()
        await s.open()
        await s.close()
        with pytest.raises(RuntimeError, match="store is not open"):
            await s.list_jobs()

    # --- concurrency within one store ---------------------------------------------------------------

    async def test_concurrent_creates_exactly_one_winner_per_id(self, store: JobStore, query: Query) -> None:
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

        assert (await query("SELECT COUNT(*), COUNT(DISTINCT id) FROM jobs"))[0] == (50, 50)

    # --- two controllers on one database ------------------------------------------------------------

    async def test_two_stores_race_create_exactly_one_winner_per_id(self, open_store: OpenStore, query: Query) -> None:
        a, b = await open_store(), await open_store()
        job_ids = [f"r-{i:02d}" for i in range(40)]
        # Each id is offered four times, twice through each controller, every offer a different job.
        attempts = [
            (a if n % 2 == 0 else b, make_job(job_id, now=float(n * 100 + i), pool=f"p{n}"))
            for n in range(4)
            for i, job_id in enumerate(job_ids)
        ]
        results = await asyncio.gather(*(s.create(j) for s, j in attempts))

        created = Counter(job.id for job, was_created in results if was_created)
        assert created == Counter({job_id: 1 for job_id in job_ids})
        winners = {job.id: job for job, was_created in results if was_created}
        for job, _ in results:
            assert job == winners[job.id]
        for job_id, winner in winners.items():
            assert await a.get(job_id) == winner
            assert await b.get(job_id) == winner
        assert (await query("SELECT COUNT(*), COUNT(DISTINCT id) FROM jobs"))[0] == (40, 40)

    async def test_two_stores_create_seen_by_the_other_at_once(self, open_store: OpenStore) -> None:
        a, b = await open_store(), await open_store()
        job = make_job("shared")
        assert await a.create(job) == (job, True)
        assert await b.get("shared") == job
        assert await b.create(make_job("shared", now=9.0, pool="other")) == (job, False)
        assert ids(await b.unfinished()) == ["shared"]

    async def test_two_stores_cas_conflict(self, open_store: OpenStore) -> None:
        a, b = await open_store(), await open_store()
        job = make_job("contested")
        await a.create(job)
        seen_by_b = await b.get("contested")
        assert seen_by_b == job

        starting = transition(job, JobState.STARTING, now=2.0, container_id="ca")
        assert await a.update(starting, expected=JobState.QUEUED) is True
        # Controller b still believes the job is queued: its cancel loses and changes nothing.
        cancelled = transition(seen_by_b, JobState.CANCELLED, now=3.0, reason="user")
        assert await b.update(cancelled, expected=JobState.QUEUED) is False
        assert await b.get("contested") == starting
        # Having re-read, b moves it on; now a's stale write loses.
        current = await b.get("contested")
        assert current is not None
        cancelled = transition(current, JobState.CANCELLED, now=4.0, reason="user")
        assert await b.update(cancelled, expected=JobState.STARTING) is True
        running = transition(starting, JobState.RUNNING, now=5.0)
        assert await a.update(running, expected=JobState.STARTING) is False
        assert await a.get("contested") == cancelled

    async def test_two_stores_concurrent_cas_exactly_one_winner(self, open_store: OpenStore) -> None:
        a, b = await open_store(), await open_store()
        jobs = [make_job(f"c{i}") for i in range(10)]
        for job in jobs:
            await a.create(job)
        targets = [JobState.STARTING, JobState.CANCELLED, JobState.ERROR]
        calls = [
            (s, transition(job, t, now=2.0 + n, reason=f"w{n}"))
            for job in jobs
            for n, (s, t) in enumerate((s, t) for s in (a, b) for t in targets)
        ]
        results = await asyncio.gather(*(s.update(moved, expected=JobState.QUEUED) for s, moved in calls))
        for job in jobs:
            won = [moved for (_, moved), ok in zip(calls, results, strict=True) if ok and moved.id == job.id]
            assert len(won) == 1, job.id
            assert await a.get(job.id) == won[0]
            assert await b.get(job.id) == won[0]

    async def test_a_start_within_the_pool_limit(self, store: JobStore) -> None:
        for n, state in enumerate((JobState.STARTING, JobState.RUNNING)):
            job = make_job(f"busy{n}", pool="gpu")
            await store.create(job)
            moved = transition(job, JobState.STARTING, now=2.0)
            if state is JobState.RUNNING:
                moved = transition(moved, JobState.RUNNING, now=3.0)
            assert await store.update(moved, expected=JobState.QUEUED)
        await store.create(make_job("done", pool="gpu"))
        assert await store.update(transition(make_job("done", pool="gpu"), JobState.CANCELLED, now=2.0),
                                  expected=JobState.QUEUED)  # fmt: skip
        waiting = make_job("next", pool="gpu")
        other = make_job("elsewhere", pool="default")
        for job in (waiting, other):
            await store.create(job)
        # Two active in gpu (a final one does not count, nor the other pool's): a limit of 2 refuses, 3 starts.
        assert not await store.update(transition(waiting, JobState.STARTING, now=4.0), expected=JobState.QUEUED,
                                      pool_limit=2)  # fmt: skip
        assert await store.get("next") == waiting
        assert await store.update(transition(other, JobState.STARTING, now=4.0), expected=JobState.QUEUED,
                                  pool_limit=1)  # fmt: skip
        assert await store.update(transition(waiting, JobState.STARTING, now=5.0), expected=JobState.QUEUED,
                                  pool_limit=3)  # fmt: skip

    async def test_two_stores_racing_to_start_stay_within_the_pool_limit(self, open_store: OpenStore) -> None:
        a, b = await open_store(), await open_store()
        jobs = [make_job(f"p{i}", pool="gpu") for i in range(24)]
        for job in jobs:
            await a.create(job)
        starts = [transition(job, JobState.STARTING, now=2.0) for job in jobs]
        results = await asyncio.gather(
            *((a, b)[n % 2].update(moved, expected=JobState.QUEUED, pool_limit=3) for n, moved in enumerate(starts))
        )
        assert sum(results) == 3
        states = [j.state for j in await a.list_jobs(pool="gpu", limit=-1)]
        assert states.count(JobState.STARTING) == 3 and states.count(JobState.QUEUED) == 21

    # --- check_writable -----------------------------------------------------------------------------

    async def test_check_writable_ok(self, store: JobStore, query: Query) -> None:
        await store.check_writable()
        await store.check_writable()
        assert await query("SELECT id FROM probe") == [(1,)]

    # --- forge runner records -----------------------------------------------------------------------

    async def test_runner_round_trips_every_field(self, store: JobStore) -> None:
        assert set(UPDATES) == UPDATABLE
        bare = make_runner("j1", now=1_700_000_000.987654321)
        assert await store.create_runner(bare) == (bare, True)
        assert await store.get_runner("j1") == bare
        assert (await store.get_runner("j1")).registration_id is None  # type: ignore[union-attr]

        full = dataclasses.replace(make_runner("j2"), name="ctl-ü-j2", scope="org:owner", **UPDATES)  # type: ignore[arg-type]
        assert await store.create_runner(full) == (full, True)
        assert await store.get_runner("j2") == full
        assert await store.runner_by_name("ctl-ü-j2") == full
        assert await store.get_runner("nope") is None
        assert await store.runner_by_name("nope") is None

    async def test_create_runner_is_idempotent_and_never_overwrites(self, store: JobStore, query: Query) -> None:
        first = make_runner("j", now=1.0)
        assert await store.create_runner(first) == (first, True)
        again = make_runner("j", source="other", now=2.0, registration_id=5)
        assert await store.create_runner(again) == (first, False)
        updated = await store.update_runner("j", registration_id=9)
        assert updated == dataclasses.replace(first, registration_id=9)
        # A repeat after an update returns the current row, even under another name.
        renamed = dataclasses.replace(first, name="another-name")
        assert await store.create_runner(renamed) == (updated, False)
        assert await store.runner_by_name("another-name") is None
        assert (await query("SELECT COUNT(*) FROM runners"))[0] == (1,)

    async def test_concurrent_create_runner_exactly_one_winner(self, open_store: OpenStore) -> None:
        a, b = await open_store(), await open_store()
        attempts = [(a if i % 2 else b, make_runner(f"r{i % 5}", now=float(i))) for i in range(30)]
        results = await asyncio.gather(*(s.create_runner(r) for s, r in attempts))
        assert Counter(r.job_id for r, created in results if created) == Counter({f"r{i}": 1 for i in range(5)})
        winners = {r.job_id: r for r, created in results if created}
        assert all(r == winners[r.job_id] for r, _ in results)
        assert len(await a.list_runners(limit=-1)) == 5

    async def test_runner_name_is_unique(self, open_store: OpenStore) -> None:
        a, b = await open_store(), await open_store()
        first = make_runner("j1")
        await a.create_runner(first)
        clash = dataclasses.replace(make_runner("j2"), name=first.name)
        with pytest.raises(RunnerNameTaken, match="j1") as exc:
            await b.create_runner(clash)
        assert isinstance(exc.value, ValueError)
        assert (exc.value.name, exc.value.job_id) == (first.name, "j1")
        assert await a.get_runner("j2") is None
        assert await a.runner_by_name(first.name) == first
        # The store still works after the refusal.
        assert (await b.create_runner(make_runner("j2")))[1] is True

    async def test_concurrent_create_runner_same_name_one_winner(self, open_store: OpenStore) -> None:
        a, b = await open_store(), await open_store()
        records = [dataclasses.replace(make_runner(f"j{i}"), name="shared") for i in range(8)]
        results = await asyncio.gather(
            *((a if i % 2 else b).create_runner(r) for i, r in enumerate(records)), return_exceptions=True
        )
        won = [r for r in results if isinstance(r, tuple)]
        assert len(won) == 1 and won[0][1] is True
        assert all(isinstance(r, RunnerNameTaken) for r in results if not isinstance(r, tuple))
        assert await a.runner_by_name("shared") == won[0][0]

    async def test_update_runner_sets_only_the_given_fields(self, store: JobStore) -> None:
        record = make_runner("u", registration_id=1, conclusion="pending")
        await store.create_runner(record)
        other = make_runner("v")
        await store.create_runner(other)
        got = await store.update_runner("u", ran_job_id=77, online_at=5.5)
        expected = dataclasses.replace(record, ran_job_id=77, online_at=5.5)
        assert got == expected
        assert await store.get_runner("u") == expected
        assert await store.get_runner("v") == other
        # None is a value like any other; no fields is a read.
        cleared = await store.update_runner("u", conclusion=None)
        assert cleared == dataclasses.replace(expected, conclusion=None)
        assert await store.update_runner("u") == cleared

    async def test_update_runner_every_updatable_field(self, store: JobStore) -> None:
        record = make_runner("all")
        await store.create_runner(record)
        assert await store.update_runner("all", **UPDATES) == dataclasses.replace(record, **UPDATES)  # type: ignore[arg-type]
        assert await store.get_runner("all") == dataclasses.replace(record, **UPDATES)  # type: ignore[arg-type]

    async def test_update_runner_unknown_job_is_none(self, store: JobStore) -> None:
        assert await store.update_runner("ghost", conclusion="success") is None
        assert await store.update_runner("ghost") is None
        assert await store.get_runner("ghost") is None

    @pytest.mark.parametrize("field", ["name", "job_id", "source", "scope", "trigger_job_id", "created_at", "nope"])
    async def test_update_runner_refuses_fields_not_updatable(self, store: JobStore, field: str) -> None:
        record = make_runner("fixed")
        await store.create_runner(record)
        with pytest.raises(ValueError, match=field):
            await store.update_runner("fixed", **{field: "x", "conclusion": "success"})
        assert await store.get_runner("fixed") == record, "a refused update changes nothing"

    async def test_update_runner_values_are_parameters(self, store: JobStore) -> None:
        record = make_runner("p")
        await store.create_runner(record)
        await store.create_runner(make_runner("q"))
        text = "x', conclusion = 'pwned"
        assert await store.update_runner("p", ran_job_name=text) == dataclasses.replace(record, ran_job_name=text)
        assert (await store.get_runner("q")).ran_job_name is None  # type: ignore[union-attr]
        assert await store.update_runner("p' OR '1'='1", conclusion="x") is None

    async def test_forge_text_with_nul_does_not_fail_a_write(self, store: JobStore) -> None:
        """What the forge sends back is stored as sent, or (PostgreSQL text) with NUL as U+FFFD."""
        await store.create_runner(make_runner("nul", ran_job_name="a\x00b"))
        got = await store.update_runner("nul", ran_repository="o/r\x00", conclusion="\x00")
        assert got is not None
        assert got.ran_job_name in ("a\x00b", "a\ufffdb")
        assert (got.ran_repository, got.conclusion) in (("o/r\x00", "\x00"), ("o/r\ufffd", "\ufffd"))
        assert await store.get_runner("nul") == got

    async def test_concurrent_updates_of_different_fields_all_survive(self, open_store: OpenStore) -> None:
        """The registration and the forge's webhooks land at once, possibly at two controllers."""
        a, b = await open_store(), await open_store()
        records = [make_runner(f"c{i}") for i in range(10)]
        for record in records:
            await a.create_runner(record)
        calls = [
            (a if n % 2 else b, record.job_id, field, value)
            for record in records
            for n, (field, value) in enumerate(UPDATES.items())
        ]
        results = await asyncio.gather(*(s.update_runner(job_id, **{f: v}) for s, job_id, f, v in calls))
        for (_, job_id, field, value), result in zip(calls, results, strict=True):
            assert result is not None and result.job_id == job_id
            assert getattr(result, field) == value
        for record in records:
            assert await b.get_runner(record.job_id) == dataclasses.replace(record, **UPDATES)  # type: ignore[arg-type]

    async def test_list_runners_newest_first_limit_and_source(self, store: JobStore) -> None:
        for job_id, source, now in (("a", "gh", 1.0), ("b", "gt", 2.0), ("c", "gh", 3.0), ("d", "gt", 4.0)):
            await store.create_runner(make_runner(job_id, source=source, now=now))
        for job_id in ("m", "z", "e"):  # a tie on created_at: job_id descending, bytewise
            await store.create_runner(make_runner(job_id, source="gh", now=5.0))
        await store.create_runner(make_runner("Z", source="gh", now=5.0))
        assert job_ids(await store.list_runners()) == ["z", "m", "e", "Z", "d", "c", "b", "a"]
        assert job_ids(await store.list_runners(limit=3)) == ["z", "m", "e"]
        assert job_ids(await store.list_runners(limit=0)) == []
        assert job_ids(await store.list_runners(limit=-1)) == ["z", "m", "e", "Z", "d", "c", "b", "a"]
        assert job_ids(await store.list_runners(source="gh")) == ["z", "m", "e", "Z", "c", "a"]
        assert job_ids(await store.list_runners(source="gt", limit=1)) == ["d"]
        assert job_ids(await store.list_runners(source="gt", limit=-1)) == ["d", "b"]
        assert await store.list_runners(source="nope") == []
        assert await store.list_runners(source="gh' OR '1'='1") == []

    async def test_runners_of_unfinished_jobs_follow_the_job_state(self, store: JobStore) -> None:
        jobs = {name: make_job(name, now=t) for name, t in (("q", 1.0), ("s", 2.0), ("r", 3.0), ("done", 4.0))}
        for job in jobs.values():
            await store.create(job)
        # Runner order (created_at) differs from job order on purpose: the records' order counts.
        for name, source, t in (("r", "gh", 10.0), ("q", "gh", 12.0), ("s", "gt", 11.0), ("done", "gh", 9.0)):
            await store.create_runner(make_runner(name, source=source, now=t))
        await store.create_runner(make_runner("no-job", now=8.0))  # a record without a job row is not watched
        await store.create(make_job("no-runner", now=0.5))

        s = transition(jobs["s"], JobState.STARTING, now=20.0)
        assert await store.update(s, expected=JobState.QUEUED)
        r = transition(transition(jobs["r"], JobState.STARTING, now=21.0), JobState.RUNNING, now=22.0)
        assert await store.update(r, expected=JobState.QUEUED)
        assert await store.update(transition(jobs["done"], JobState.CANCELLED, now=23.0), expected=JobState.QUEUED)

        assert job_ids(await store.runners_of_unfinished_jobs()) == ["r", "s", "q"]
        assert job_ids(await store.runners_of_unfinished_jobs("gh")) == ["r", "q"]
        assert job_ids(await store.runners_of_unfinished_jobs(source="gt")) == ["s"]
        assert await store.runners_of_unfinished_jobs("nope") == []
        assert (await store.runners_of_unfinished_jobs())[0] == make_runner("r", now=10.0)

        # Every final state takes a job's runner off the list; a restart's re-queue keeps it on.
        assert await store.update(transition(r, JobState.QUEUED, now=24.0), expected=JobState.RUNNING)
        assert job_ids(await store.runners_of_unfinished_jobs()) == ["r", "s", "q"]
        for job_id, final in zip(("q", "s"), sorted(FINAL_STATES), strict=False):
            current = await store.get(job_id)
            assert current is not None
            assert await store.update(transition(current, final, now=30.0), expected=current.state)
        assert job_ids(await store.runners_of_unfinished_jobs()) == ["r"]

    async def test_runners_of_unfinished_jobs_every_final_state(self, store: JobStore) -> None:
        for i, final in enumerate(sorted(FINAL_STATES)):
            job = make_job(f"f{i}")
            if final is JobState.REJECTED:  # only a job awaiting approval is rejected
                job = dataclasses.replace(job, state=JobState.AWAITING_APPROVAL)
            await store.create(job)
            await store.create_runner(make_runner(job.id, now=float(i)))
            if final is not JobState.REJECTED:
                running = transition(transition(job, JobState.STARTING, now=2.0), JobState.RUNNING, now=3.0)
                assert await store.update(running, expected=JobState.QUEUED)
                job = running
            assert job_ids(await store.runners_of_unfinished_jobs()) == [job.id]
            assert await store.update(transition(job, final, now=4.0), expected=job.state)
            assert await store.runners_of_unfinished_jobs() == []
        assert await store.runners_of_unfinished_jobs("gh") == []

    async def test_an_approval_round_trips(self, store: JobStore) -> None:
        waiting = dataclasses.replace(make_job("gated"), state=JobState.AWAITING_APPROVAL, reason="pool needs it")
        await store.create(waiting)
        assert await store.get("gated") == waiting
        decision = Approval("approved", 5.5, "carol@example.com", "ok ✓")
        queued = transition(waiting, JobState.QUEUED, now=5.5, approval=decision)
        assert await store.update(queued, expected=JobState.AWAITING_APPROVAL)
        stored = await store.get("gated")
        assert stored == queued and stored is not None and stored.approval == decision
        assert [j.id for j in await store.unfinished()] == ["gated"]

    async def test_runners_survive_close_and_reopen(self, open_store: OpenStore) -> None:
        first = await open_store()
        record = make_runner("durable")
        await first.create(make_job("durable"))
        await first.create_runner(record)
        await first.update_runner("durable", registration_id=3)
        await first.close()
        second = await open_store()
        assert await second.get_runner("durable") == dataclasses.replace(record, registration_id=3)
        assert job_ids(await second.runners_of_unfinished_jobs()) == ["durable"]

    async def test_a_database_from_before_runners_gets_the_table(self, open_store: OpenStore, query: Query) -> None:
        """An existing database whose schema predates `runners`: opening it adds the table, keeping the jobs."""
        old = await open_store()
        job = make_job("old")
        await old.create(job)
        await old.close()
        with contextlib.suppress(Exception):  # the DROP has run; psycopg refuses to fetch rows it has not
            await query("DROP TABLE runners")
        assert not await _table_exists(query, "runners")

        store = await open_store()
        assert await store.get("old") == job
        record = make_runner("old")
        assert await store.create_runner(record) == (record, True)
        assert job_ids(await store.runners_of_unfinished_jobs()) == ["old"]
        with pytest.raises(RunnerNameTaken):
            await store.create_runner(dataclasses.replace(make_runner("new"), name=record.name))
