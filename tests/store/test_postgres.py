"""Tests for the PostgreSQL job store (orchestrator/store/postgres.py) and its `[storage]` config.

The shared behaviour (contract.py) runs against a real server named by ORCHESTRATOR_TEST_POSTGRES_DSN, each test in
its own schema, dropped afterwards. Without that variable those tests are skipped, unless
ORCHESTRATOR_REQUIRE_POSTGRES=1, which makes a missing DSN a failure. Config validation and the errors of a store
that cannot connect need no server and always run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import secrets
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orchestrator.app import build_controller
from orchestrator.config import Config, ConfigError, StorageConfig, load_config
from orchestrator.jobs.states import JobState, transition
from orchestrator.store.postgres import PostgresJobStore, PostgresStoreError
from orchestrator.store.sqlite import SQLiteJobStore

from contract import JobStoreContract, MakeStore, Query, make_job
from ports import free_port
from unprivileged import as_unprivileged, hand_over, unprivileged_dir

DSN = os.environ.get("ORCHESTRATOR_TEST_POSTGRES_DSN", "")
REQUIRE = os.environ.get("ORCHESTRATOR_REQUIRE_POSTGRES") == "1"
PASSWORD = "pw-" + secrets.token_hex(8)  # planted in DSNs; must never come out of an error or a log


def dsn_file(directory: Path, dsn: str, name: str = "postgres.dsn", mode: int = 0o600) -> Path:
    path = directory / name
    path.write_text(dsn + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


def assert_no_secret(text: str, *secrets_: str) -> None:
    for secret in (PASSWORD, *secrets_):
        assert secret not in text


def all_text(exc: BaseException) -> str:
    """Everything a log line of this exception could show: message, repr, chained causes, traceback."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


# --- config ---------------------------------------------------------------------------------------------------

MINIMAL = """
controller_id = "ctl-1"
data_dir = "data"

[pools.default]
image = "alpine:3"
"""


def storage_problems(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "orchestrator.toml"
    path.write_text(MINIMAL + body, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert_no_secret(str(exc.value))
    return exc.value.problems


def test_sqlite_stays_the_default() -> None:
    storage = StorageConfig()
    assert (storage.backend, storage.dsn_file, storage.pool_size) == ("sqlite", None, 4)


def test_postgres_config_loads(tmp_path: Path) -> None:
    file = dsn_file(tmp_path, f"host=db.example user=ci dbname=ci password={PASSWORD}")
    path = tmp_path / "orchestrator.toml"
    body = f'\n[storage]\nbackend = "postgres"\ndsn_file = "{file}"\npool_size = 8\nconnect_timeout_s = 3\n'
    path.write_text(MINIMAL + body, encoding="utf-8")
    config = load_config(path)
    assert config.storage == StorageConfig(backend="postgres", dsn_file=file, pool_size=8, connect_timeout_s=3)
    assert_no_secret(config.model_dump_json())
    assert_no_secret(repr(config))


def test_postgres_config_accepts_a_uri(tmp_path: Path) -> None:
    file = dsn_file(tmp_path, f"postgresql://ci:{PASSWORD}@db.example:5433/ci?sslmode=require")
    assert StorageConfig(backend="postgres", dsn_file=file).dsn_file == file


def test_postgres_needs_dsn_file(tmp_path: Path) -> None:
    assert storage_problems(tmp_path, '[storage]\nbackend = "postgres"\n') == [
        'storage: Value error, backend = "postgres" needs dsn_file, a chmod 600 file holding the connection string'
    ]


def test_dsn_file_must_be_absolute(tmp_path: Path) -> None:
    dsn_file(tmp_path, "host=db")
    problems = storage_problems(tmp_path, '[storage]\nbackend = "postgres"\ndsn_file = "postgres.dsn"\n')
    assert problems == ["storage: Value error, dsn_file postgres.dsn: must be an absolute path"]


def test_dsn_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.dsn"
    problems = storage_problems(tmp_path, f'[storage]\nbackend = "postgres"\ndsn_file = "{missing}"\n')
    assert problems == [f"storage.dsn_file: {missing}: file not found"]


def test_dsn_file_readable_by_others(tmp_path: Path) -> None:
    file = dsn_file(tmp_path, f"host=db password={PASSWORD}", mode=0o644)
    problems = storage_problems(tmp_path, f'[storage]\nbackend = "postgres"\ndsn_file = "{file}"\n')
    assert problems == [f"storage.dsn_file: {file}: readable by group/others; run chmod 600 on it"]


def test_dsn_file_group_readable(tmp_path: Path) -> None:
    file = dsn_file(tmp_path, f"host=db password={PASSWORD}", mode=0o640)
    problems = storage_problems(tmp_path, f'[storage]\nbackend = "postgres"\ndsn_file = "{file}"\n')
    assert problems == [f"storage.dsn_file: {file}: readable by group/others; run chmod 600 on it"]


def test_dsn_file_not_readable() -> None:
    """Run as an unprivileged user, so that also as root (as in CI) the file's mode means something."""
    with unprivileged_dir() as directory:
        file = dsn_file(directory, "host=db")
        body = f'[storage]\nbackend = "postgres"\ndsn_file = "{file}"\n'
        config = directory / "orchestrator.toml"
        config.write_text(MINIMAL + body, encoding="utf-8")
        hand_over(file, config)
        assert as_unprivileged(lambda: load_config(config).storage.dsn_file) == file  # that user can read it
        file.chmod(0o000)
        problems = as_unprivileged(storage_problems, directory, body)
        assert problems == [f"storage.dsn_file: {file}: not readable by this user"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "the file is empty"),
        ("\n  \n", "the file is empty"),
        (f"host=db\npassword={PASSWORD}", "the connection string must be a single line"),
        (f"host=db password={PASSWORD} bogus", "not a valid PostgreSQL connection string"),
        (f"host=db pasword={PASSWORD}", "not a valid PostgreSQL connection string"),
        (f"host=db password='{PASSWORD}", "not a valid PostgreSQL connection string"),
        (f"postgresql://ci:{PASSWORD}@db/ci?bogus_{PASSWORD}=1", "not a valid PostgreSQL connection string"),
    ],
)
def test_dsn_file_content_checked_without_quoting_it(tmp_path: Path, content: str, problem: str) -> None:
    file = tmp_path / "postgres.dsn"
    file.write_text(content, encoding="utf-8")
    file.chmod(0o600)
    problems = storage_problems(tmp_path, f'[storage]\nbackend = "postgres"\ndsn_file = "{file}"\n')
    assert len(problems) == 1
    assert problems[0].startswith(f"storage.dsn_file: {file}: {problem}")
    assert_no_secret(problems[0], "bogus", "pasword")


def test_dsn_file_only_with_postgres(tmp_path: Path) -> None:
    file = dsn_file(tmp_path, "host=db")
    problems = storage_problems(tmp_path, f'[storage]\ndsn_file = "{file}"\n')
    assert problems == ['storage: Value error, dsn_file is only used with backend = "postgres"']


def test_unknown_backend(tmp_path: Path) -> None:
    problems = storage_problems(tmp_path, '[storage]\nbackend = "mysql"\n')
    assert problems == ["storage.backend: Input should be 'sqlite' or 'postgres'"]


def _config(tmp_path: Path, **storage: Any) -> Config:
    return Config.model_validate(
        {
            "controller_id": "ctl-1",
            "data_dir": str(tmp_path / "data"),
            "pools": {"default": {"image": "alpine:3"}},
            "storage": storage,
        }
    )


def test_build_controller_picks_the_store_by_config(tmp_path: Path) -> None:
    file = dsn_file(tmp_path, f"host=127.0.0.1 password={PASSWORD}")
    pg = build_controller(_config(tmp_path, backend="postgres", dsn_file=str(file), pool_size=2)).store
    assert isinstance(pg, PostgresJobStore)
    assert (pg.dsn_file, pg.pool_size, pg.connect_timeout_s) == (file, 2, 10.0)
    assert_no_secret(repr(pg))
    default = build_controller(_config(tmp_path / "other")).store
    assert isinstance(default, SQLiteJobStore)
    assert default.path == tmp_path / "other" / "data" / "jobs.sqlite3"


# --- opening fails cleanly and never shows the DSN ------------------------------------------------------------


async def test_open_with_missing_dsn_file(tmp_path: Path) -> None:
    store = PostgresJobStore(tmp_path / "gone.dsn")
    with pytest.raises(PostgresStoreError, match=re.escape(f"{tmp_path / 'gone.dsn'}: file not found")):
        await store.open()
    with pytest.raises(RuntimeError, match="store is not open"):
        await store.get("x")
    await store.close()


async def test_open_with_invalid_dsn_never_quotes_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = PostgresJobStore(dsn_file(tmp_path, f"host=127.0.0.1 password={PASSWORD} {PASSWORD}x"))
    with pytest.raises(PostgresStoreError, match="not a valid PostgreSQL connection string") as exc:
        await store.open()
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None
    assert_no_secret(all_text(exc.value))
    assert_no_secret(caplog.text)


@pytest.mark.parametrize("uri", [False, True])
async def test_unreachable_server_error_has_no_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, uri: bool
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()  # reserved, nothing listens there: connection refused
    dsn = (
        f"postgresql://ci:{PASSWORD}@127.0.0.1:{port}/jobs"
        if uri
        else f"host=127.0.0.1 port={port} user=ci password={PASSWORD} dbname=jobs"
    )
    store = PostgresJobStore(dsn_file(tmp_path, dsn), connect_timeout_s=2)
    with pytest.raises(PostgresStoreError) as exc:
        await store.open()
    message = str(exc.value)
    assert message.startswith(f"PostgreSQL job store at 127.0.0.1:{port}/jobs (dsn_file {tmp_path / 'postgres.dsn'}): ")
    assert "OperationalError" in message
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None
    assert_no_secret(all_text(exc.value), dsn)
    assert_no_secret(caplog.text, dsn)
    with pytest.raises(RuntimeError, match="store is not open"):
        await store.check_writable()


# --- against a real server ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def server_dsn() -> str:
    if not DSN:
        if REQUIRE:
            pytest.fail("ORCHESTRATOR_REQUIRE_POSTGRES=1 but ORCHESTRATOR_TEST_POSTGRES_DSN is not set")
        pytest.skip("set ORCHESTRATOR_TEST_POSTGRES_DSN to run the PostgreSQL store tests")
    try:
        with psycopg.connect(DSN, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        # A DSN was given, so the server is expected: that it cannot be reached is a failure, not a skip.
        pytest.fail(f"ORCHESTRATOR_TEST_POSTGRES_DSN is set but the server is unreachable: {type(exc).__name__}")
    return DSN


@pytest.fixture
def schema_dsn(server_dsn: str) -> Iterator[str]:
    """The server DSN with search_path set to a schema of this test's own."""
    schema = f"orch_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    options = conninfo_to_dict(server_dsn).get("options") or ""
    try:
        yield make_conninfo(server_dsn, options=f"{options} -c search_path={schema}".strip())
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def pg_dsn_file(tmp_path: Path, schema_dsn: str) -> Path:
    return dsn_file(tmp_path, schema_dsn)


async def _query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql)
        return await cur.fetchall()


class TestPostgresContract(JobStoreContract):
    @pytest.fixture
    def make_store(self, pg_dsn_file: Path) -> MakeStore:
        return lambda: PostgresJobStore(pg_dsn_file, pool_size=4)

    @pytest.fixture
    def query(self, schema_dsn: str) -> Query:
        return lambda sql: _query(schema_dsn, sql)


@pytest.fixture
async def pg_store(pg_dsn_file: Path) -> AsyncIterator[PostgresJobStore]:
    s = PostgresJobStore(pg_dsn_file, pool_size=2)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_schema_types(pg_store: PostgresJobStore, schema_dsn: str) -> None:
    rows = await _query(
        schema_dsn,
        "SELECT column_name, data_type, collation_name FROM information_schema.columns "
        "WHERE table_name = 'jobs' AND table_schema = current_schema() ORDER BY ordinal_position",
    )
    types = {name: (data_type, collation) for name, data_type, collation in rows}
    assert types["id"] == ("text", "C")
    assert types["spec"][0] == "text"
    assert {types[c][0] for c in ("created_at", "updated_at", "started_at", "finished_at")} == {"double precision"}
    indexes = await _query(schema_dsn, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    assert {"jobs_pkey", "jobs_state", "jobs_created", "jobs_pool", "probe_pkey"} <= {r[0] for r in indexes}


async def test_controllers_starting_at_once_create_the_schema_once(pg_dsn_file: Path) -> None:
    """Concurrent CREATE TABLE IF NOT EXISTS can collide in the catalog; the advisory lock serialises it."""
    stores = [PostgresJobStore(pg_dsn_file, pool_size=1) for _ in range(6)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert await stores[0].create(make_job("x")) == (make_job("x"), True)
        for s in stores[1:]:
            assert await s.get("x") == make_job("x")
    finally:
        for s in stores:
            await s.close()


async def _schema_of(dsn: str) -> list[tuple[Any, ...]]:
    """Every column (type, nullability, default, collation) and index definition in the test's schema."""
    columns = await _query(
        dsn,
        "SELECT table_name, column_name, data_type, is_nullable, column_default, collation_name "
        "FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position",
    )
    indexes = await _query(
        dsn, "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 2"
    )
    return columns + indexes


async def test_open_is_idempotent_on_an_existing_schema(pg_dsn_file: Path, schema_dsn: str) -> None:
    """Opening a store whose schema exists raises nothing and changes nothing: the same columns and indexes, every
    row kept as it was. A second open of the same instance keeps its connection pool."""
    first = PostgresJobStore(pg_dsn_file)
    await first.open()
    jobs = [make_job("queued"), transition(make_job("failed"), JobState.ERROR, now=2.0, reason="boom")]
    try:
        for job in jobs:
            await first.create(job)
    finally:
        await first.close()
    schema = await _schema_of(schema_dsn)
    assert {row[0] for row in schema} == {"jobs", "probe", "runners", "callback_outbox", "controllers"}
    rows = await _query(schema_dsn, "SELECT * FROM jobs ORDER BY id")
    assert len(rows) == 2
    for _ in range(3):
        s = PostgresJobStore(pg_dsn_file)
        await s.open()
        pool = s._pool
        await s.open()  # a second open of the same instance is a no-op
        try:
            assert pool is not None and s._pool is pool
            assert [await s.get(job.id) for job in jobs] == jobs
            await s.check_writable()
        finally:
            await s.close()
        assert await _schema_of(schema_dsn) == schema
        assert await _query(schema_dsn, "SELECT * FROM jobs ORDER BY id") == rows


async def test_writes_are_durable_even_if_the_server_default_is_not(tmp_path: Path, schema_dsn: str) -> None:
    options = conninfo_to_dict(schema_dsn)["options"]
    file = dsn_file(tmp_path, make_conninfo(schema_dsn, options=f"{options} -c synchronous_commit=off"))
    store = PostgresJobStore(file, pool_size=1)
    await store.open()
    try:
        assert store._pool is not None
        async with store._pool.connection() as conn:
            cur = await conn.execute("SHOW synchronous_commit")
            assert await cur.fetchone() == ("on",)
            cur = await conn.execute("SHOW application_name")
            assert await cur.fetchone() == ("runner-orchestrator",)
    finally:
        await store.close()


async def test_check_writable_raises_on_a_read_only_session(tmp_path: Path, schema_dsn: str) -> None:
    """What a controller sees when its DSN lands on a hot standby after a failover."""
    store = PostgresJobStore(dsn_file(tmp_path, schema_dsn), pool_size=1)
    await store.open()
    try:
        assert store._pool is not None
        async with store._pool.connection() as conn:
            await conn.execute("SET default_transaction_read_only = on")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await store.check_writable()
        async with store._pool.connection() as conn:
            await conn.execute("SET default_transaction_read_only = off")
        await store.check_writable()
    finally:
        await store.close()


async def test_opens_without_ddl_when_the_schema_exists(
    tmp_path: Path, pg_store: PostgresJobStore, schema_dsn: str
) -> None:
    """A role without CREATE rights (tables made by a DBA) or a read-only standby still opens; writes then fail
    the readiness probe instead of the start-up."""
    await pg_store.create(make_job("before"))
    options = conninfo_to_dict(schema_dsn)["options"]
    read_only = dsn_file(
        tmp_path, make_conninfo(schema_dsn, options=f"{options} -c default_transaction_read_only=on"), name="ro.dsn"
    )
    store = PostgresJobStore(read_only, pool_size=1)
    await store.open()
    try:
        assert await store.get("before") == make_job("before")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await store.check_writable()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await store.create(make_job("after"))
    finally:
        await store.close()
    assert await pg_store.get("after") is None


async def test_recovers_after_the_server_drops_its_connections(pg_store: PostgresJobStore, schema_dsn: str) -> None:
    job = make_job("survivor")
    await pg_store.create(job)
    await _query(
        schema_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'runner-orchestrator' AND pid <> pg_backend_pid() AND datname = current_database()",
    )
    assert await pg_store.get("survivor") == job
    await pg_store.check_writable()


async def test_nul_in_reason_is_stored_as_replacement_character(pg_store: PostgresJobStore) -> None:
    job = make_job("nul")
    await pg_store.create(job)
    failed = transition(job, JobState.ERROR, now=2.0, reason="engine said: bad\x00byte")
    assert await pg_store.update(failed, expected=JobState.QUEUED)
    got = await pg_store.get("nul")
    assert got is not None
    assert got.reason == "engine said: bad\ufffdbyte"


async def test_wrong_password_error_has_no_password(
    tmp_path: Path, server_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = make_conninfo(server_dsn, password=PASSWORD)
    real = conninfo_to_dict(server_dsn).get("password")
    store = PostgresJobStore(dsn_file(tmp_path, dsn), connect_timeout_s=5)
    with pytest.raises(PostgresStoreError) as exc:
        await store.open()
    assert "OperationalError" in str(exc.value)
    assert exc.value.__context__ is None
    assert_no_secret(all_text(exc.value), dsn, *([str(real)] if real else []))
    assert_no_secret(caplog.text, dsn)


async def test_nothing_logged_contains_the_dsn(
    pg_dsn_file: Path, schema_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = PostgresJobStore(pg_dsn_file)
    await store.open()
    try:
        await store.create(make_job("logged"))
        await store.check_writable()
    finally:
        await store.close()
    assert "postgres job store open" in caplog.text
    real = conninfo_to_dict(schema_dsn).get("password")
    assert_no_secret(caplog.text, schema_dsn, *([str(real)] if real else []))
    assert_no_secret(repr(store), schema_dsn)


# --- leases of controllers sharing the database (scheduling/cluster.py) ----------------------------------------


async def test_leases_take_over_and_fence(pg_store: PostgresJobStore) -> None:
    assert await pg_store.acquire_lease("a", 100.0) == 1
    assert await pg_store.acquire_lease("b", 100.0) == 1
    queued = dataclasses.replace(make_job("q1"), controller_id="a")
    running = transition(dataclasses.replace(make_job("r1"), controller_id="a"), JobState.STARTING, now=101.0)
    mine = dataclasses.replace(make_job("b1"), controller_id="b")
    for job in (queued, running, mine):
        assert (await pg_store.create(job))[1]
    assert await pg_store.renew_lease("a", 1, 105.0)
    assert await pg_store.expired_leases(104.0, besides="b") == []
    assert await pg_store.expired_leases(106.0, besides="b") == [("a", 1)]
    taken = await pg_store.take_over("a", 1, by="b", now=120.0)
    assert taken is not None and sorted(j.id for j in taken) == ["q1", "r1"]
    assert {j.controller_id for j in taken} == {"b"}
    assert await pg_store.take_over("a", 1, by="c", now=121.0) is None  # only one controller takes it over
    # Fencing: the old owner can renew nothing and write nothing of the jobs it lost.
    assert not await pg_store.renew_lease("a", 1, 122.0)
    ended = transition(running, JobState.ERROR, now=123.0, reason="the old owner's late write")
    assert not await pg_store.update(ended, expected=JobState.STARTING)
    stored = await pg_store.get("r1")
    assert stored is not None and stored.controller_id == "b" and stored.state is JobState.STARTING
    # The same controller id starting again gets a new generation, and nothing back.
    assert await pg_store.acquire_lease("a", 130.0) == 3
    assert await pg_store.expired_leases(125.0, besides="b") == []


async def test_claim_queued_takes_the_oldest_of_others_once(pg_store: PostgresJobStore) -> None:
    jobs = [dataclasses.replace(make_job(f"q{n}", now=100.0 + n), controller_id="a") for n in range(5)]
    jobs.append(dataclasses.replace(make_job("fresh", now=199.5), controller_id="a"))  # not waited min_age_s yet
    jobs.append(transition(dataclasses.replace(make_job("started", now=10.0), controller_id="a"), JobState.STARTING,
                           now=11.0))  # fmt: skip
    for job in jobs:
        assert (await pg_store.create(job))[1]
    first, second = await asyncio.gather(
        pg_store.claim_queued("default", 2, pool_limit=9, by="b", now=200.0),
        pg_store.claim_queued("default", 2, pool_limit=9, by="c", now=200.0),
    )
    claimed = [j.id for j in first + second]
    assert len(claimed) == 4 and len(set(claimed)) == 4 and set(claimed) <= {"q0", "q1", "q2", "q3", "q4"}
    assert [j.id for j in first] == sorted(j.id for j in first)  # oldest first
    assert await pg_store.claim_queued("other-pool", 5, pool_limit=9, by="b", now=200.0) == []
    # the old owner's start of a claimed job is refused (fenced)
    (lost,) = [j for j in jobs if j.id == claimed[0]]
    assert not await pg_store.update(transition(lost, JobState.STARTING, now=201.0), expected=JobState.QUEUED)


async def test_claim_queued_takes_no_more_than_the_pool_has_free_across_controllers(pg_store: PostgresJobStore) -> None:
    busy = transition(dataclasses.replace(make_job("busy", now=10.0), controller_id="a"), JobState.STARTING, now=11.0)
    waiting = [dataclasses.replace(make_job(f"w{n}", now=100.0 + n), controller_id="a") for n in range(4)]
    for job in (busy, *waiting):
        assert (await pg_store.create(job))[1]
    # Pool limit 3, one starting on a: two free slots, although b has room for four.
    assert [j.id for j in await pg_store.claim_queued("default", 4, pool_limit=3, by="b", now=200.0)] == ["w0", "w1"]
    assert await pg_store.claim_queued("default", 4, pool_limit=1, by="c", now=200.0) == []


async def test_a_database_of_an_older_version_gains_the_new_columns(pg_dsn_file: Path, schema_dsn: str) -> None:
    first = PostgresJobStore(pg_dsn_file, pool_size=1)
    await first.open()
    await first.create(make_job("old-1"))
    await first.close()
    with psycopg.connect(schema_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE jobs DROP COLUMN approval")  # as an older version made it
    again = PostgresJobStore(pg_dsn_file, pool_size=1)
    await again.open()
    try:
        stored = await again.get("old-1")
        assert stored is not None and stored.approval is None
    finally:
        await again.close()
    columns = await _query(schema_dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs' "
                                       "AND table_schema = current_schema()")  # fmt: skip
    assert ("approval",) in columns
