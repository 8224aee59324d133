"""Per-job database users ("dynamic secrets"): a REAL OpenBao (tests/openbao.py) with its database engine, set up by
config/vault/setup-vault.sh, creates a PostgreSQL user for one job on the REAL PostgreSQL 15 of this machine; the
job logs in with it from its container, and the user is dropped when the job ends.

Needs the server named by ORCHESTRATOR_TEST_POSTGRES_DSN prepared by `ORCHESTRATOR_SETUP_POSTGRES=1 .ci/setup`
(the role orchestrator_vault that OpenBao manages users through, the NOLOGIN group ci_app that every job user acts
as, and the database ci_app that ci_app owns), and the image runner-orchestrator/psql-runner:local
(images/build-test-images.sh; it carries the host's psql). Without them the tests are skipped, unless
ORCHESTRATOR_REQUIRE_POSTGRES=1, which makes anything missing a failure.

The DSN's user only reads catalogs (pg_roles, pg_auth_members, pg_tables) and the job's table (the job grants it
SELECT); the table is dropped at the end by a user of the same engine, acting as ci_app like the job did.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import hvac.exceptions
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orchestrator.config import Config
from orchestrator.credentials.vault import VaultCredentials, _Session
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import new_job

from conftest import RunningController, job_spec, make_config
from openbao import VaultLayout
from vault_controller import start_with_openbao

DSN = os.environ.get("ORCHESTRATOR_TEST_POSTGRES_DSN", "")
REQUIRE = os.environ.get("ORCHESTRATOR_REQUIRE_POSTGRES") == "1"
PSQL_IMAGE = os.environ.get("ORCHESTRATOR_TEST_PSQL_IMAGE", "runner-orchestrator/psql-runner:local")
# What .ci/setup creates (ORCHESTRATOR_SETUP_POSTGRES=1).
VAULT_DB_USER = "orchestrator_vault"
VAULT_DB_PASSWORD = "orchestrator-vault-test-only"  # a test-only account (.ci/setup)
GROUP = "ci_app"
DATABASE = "ci_app"
JOB_TIMEOUT_S = 60
TTL_GRACE_S = 60
SETUP_HINT = "run `ORCHESTRATOR_SETUP_POSTGRES=1 .ci/setup` as root"


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"ORCHESTRATOR_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Server:
    """The PostgreSQL server of ORCHESTRATOR_TEST_POSTGRES_DSN, as the jobs and OpenBao reach it."""

    dsn: str
    host: str
    port: int
    reader: str  # the DSN's user, granted SELECT on the job's table

    @property
    def app_dsn(self) -> str:
        return make_conninfo(self.dsn, dbname=DATABASE)

    def login_dsn(self, user: str, password: str) -> str:
        return make_conninfo(host=self.host, port=self.port, dbname=DATABASE, user=user, password=password)

    def query(self, statement: str | sql.Composable, *args: Any, dsn: str | None = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn or self.app_dsn, connect_timeout=10, autocommit=True) as conn:
            cursor = conn.execute(cast(Any, statement), args or None)
            return cursor.fetchall() if cursor.description is not None else []

    def group_members(self) -> set[str]:
        rows = self.query(
            "SELECT m.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid "
            "JOIN pg_roles m ON m.oid = a.member WHERE g.rolname = %s",
            GROUP,
        )
        return {row[0] for row in rows}

    def role(self, name: str) -> tuple[Any, ...] | None:
        rows = self.query(
            "SELECT rolcanlogin, rolsuper, rolvaliduntil, rolconfig FROM pg_roles WHERE rolname = %s", name
        )
        return rows[0] if rows else None


@pytest.fixture(scope="module")
def server() -> Server:
    if not DSN:
        _unavailable(
            f"ORCHESTRATOR_TEST_POSTGRES_DSN is not set (the per-job database user tests need it; {SETUP_HINT})"
        )
    params = conninfo_to_dict(DSN)
    host, port = str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)
    if host.startswith("/"):
        _unavailable(f"ORCHESTRATOR_TEST_POSTGRES_DSN names a Unix socket ({host}); jobs and OpenBao need TCP")
    found = Server(dsn=DSN, host=host, port=port, reader=str(params.get("user") or ""))
    try:
        roles = dict(
            found.query(
                "SELECT rolname, rolcanlogin AND rolcreaterole AND NOT rolsuper OR NOT rolcanlogin "
                "FROM pg_roles WHERE rolname IN (%s, %s)",
                VAULT_DB_USER,
                GROUP,
                dsn=DSN,
            )
        )
        databases = found.query("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", DATABASE, dsn=DSN)
    except psycopg.Error as exc:
        # A DSN was given, so the server is expected: that it cannot be reached is a failure, not a skip.
        pytest.fail(f"ORCHESTRATOR_TEST_POSTGRES_DSN is set but the server is unreachable: {type(exc).__name__}")
    missing = [name for name in (VAULT_DB_USER, GROUP) if name not in roles]
    if missing or databases != [(GROUP,)] or not all(roles.values()):
        _unavailable(
            f"PostgreSQL lacks the per-job database user setup (roles {VAULT_DB_USER} LOGIN CREATEROLE and {GROUP} "
            f"NOLOGIN, database {DATABASE} owned by {GROUP}; missing: {missing or 'none'}, owner: {databases}); "
            + SETUP_HINT
        )
    try:
        found.query("SELECT 1", dsn=found.login_dsn(VAULT_DB_USER, VAULT_DB_PASSWORD))
    except psycopg.OperationalError as exc:
        _unavailable(f"cannot log in as {VAULT_DB_USER} with its test password ({type(exc).__name__}); {SETUP_HINT}")
    return found


@pytest.fixture
def psql_image(docker_client: docker.DockerClient) -> str:
    try:
        docker_client.images.get(PSQL_IMAGE)
    except docker.errors.ImageNotFound:
        _unavailable(f"the image {PSQL_IMAGE} is missing: run images/build-test-images.sh (needs the host's psql)")
    return PSQL_IMAGE


async def _db_controller(
    controller_factory: Any, layout: VaultLayout, server: Server, image: str, tmp_path: Path
) -> tuple[RunningController, str]:
    """A controller whose default pool runs `image` on the host network (the jobs reach 127.0.0.1:5432), and
    setup-vault.sh with the database options on a mount of this test's own. Returns it and the mount."""
    mount = f"db-{layout.suffix}"
    layout.extra_mounts.append(mount)  # disabled (all its leases revoked, its users dropped) after the test
    password_file = tmp_path / "orchestrator-vault.password"
    password_file.write_text(VAULT_DB_PASSWORD + "\n")
    password_file.chmod(0o600)
    setup = {
        "ORCH_DATABASE_URL": f"postgresql://{{{{username}}}}:{{{{password}}}}@{server.host}:{server.port}/{DATABASE}",
        "ORCH_DATABASE_USERNAME": VAULT_DB_USER,
        "ORCH_DATABASE_PASSWORD_FILE": str(password_file),
        "ORCH_DATABASE_GROUP_ROLE": GROUP,
        "DB_MOUNT": mount,
    }
    pool = {"image": image, "unsafe": {"host_network": True}}
    ctl = await start_with_openbao(controller_factory, layout, setup=setup, pool=pool, ttl_grace_s=TTL_GRACE_S)
    return ctl, mount


def _db_secrets(mount: str) -> list[dict[str, str]]:
    path = f"{mount}/creds/ci-default"
    return [
        {"path": path, "engine": "generic", "key": "username", "name": "DB_USER"},
        {"path": path, "engine": "generic", "key": "password", "name": "DB_PASSWORD"},
    ]


def _job_commands(server: Server, table: str) -> list[str]:
    """Log in with the delivered pair, record who the server says we are and the password we used, then wait for
    the test's release (a file it creates with docker exec)."""
    statements = (
        f"CREATE TABLE {table} (login name NOT NULL, password text NOT NULL,"
        " acting name NOT NULL DEFAULT current_user);"
        f" INSERT INTO {table} (login, password) VALUES (session_user, :'pw');"
        f' GRANT SELECT ON {table} TO "{server.reader}";'
        f" SELECT 'rows: ' || count(*) FROM {table};"
    )
    return [
        "cat /run/secrets/DB_USER; echo; cat /run/secrets/DB_PASSWORD; echo",
        f"export PGHOST={server.host} PGPORT={server.port} PGDATABASE={DATABASE} PGCONNECT_TIMEOUT=10",
        'export PGUSER="$(cat /run/secrets/DB_USER)" PGPASSWORD="$(cat /run/secrets/DB_PASSWORD)"',
        f"printf '%s\\n' {shlex.quote(statements)} | psql -X -q -tA -v ON_ERROR_STOP=1 -v pw=\"$PGPASSWORD\"",
        "echo psql-done",
        # As its own identity (SET ROLE NONE) a job user may own nothing, or dropping it would fail and keep it.
        f"printf 'SET ROLE NONE; CREATE TABLE {table}_own (x int);' | psql -X -q -v ON_ERROR_STOP=1 2>/dev/null"
        " && echo own-created || echo own-refused",
        "while [ ! -e /tmp/release ]; do sleep 0.1; done",
        "echo released",
    ]


async def _eventually(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """`check()` (run in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not so after {timeout:g} s (last: {result!r})")
        await asyncio.sleep(0.1)


def _lease_ids(layout: VaultLayout, prefix: str) -> list[str]:
    """The live leases under `prefix` (LIST sys/leases/lookup/<prefix>, as root)."""
    try:
        keys = layout.bao.client().sys.list_leases(prefix=prefix)["data"]["keys"]  # type: ignore[no-untyped-call]
    except hvac.exceptions.InvalidPath:
        return []
    return [prefix + key for key in keys]


def _lease(layout: VaultLayout, lease_id: str) -> dict[str, Any]:
    """What sys/leases/lookup reports about a lease (as root); raises InvalidRequest once it is gone."""
    return dict(layout.bao.client().sys.read_lease(lease_id=lease_id)["data"])  # type: ignore[no-untyped-call]


def _lease_gone(layout: VaultLayout, lease_id: str) -> bool:
    try:
        _lease(layout, lease_id)
        return False
    except hvac.exceptions.InvalidRequest:
        return True


def _drop_table(layout: VaultLayout, server: Server, mount: str, table: str) -> None:
    """Drops the job's table as its owner would: a fresh user of the same role (root's read), acting as ci_app."""
    if not server.query("SELECT to_regclass(%s)", f"public.{table}")[0][0]:
        return
    client = layout.bao.client()
    creds = cast(dict[str, Any], client.read(f"{mount}/creds/ci-default"))
    try:
        user, password = creds["data"]["username"], creds["data"]["password"]
        server.query(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)), dsn=server.login_dsn(user, password))
    finally:
        client.sys.revoke_lease(lease_id=creds["lease_id"])  # type: ignore[no-untyped-call]


@pytest.mark.docker
async def test_job_gets_its_own_database_user_that_dies_with_the_job(
    controller_factory: Any,
    vault_layout: Callable[..., VaultLayout],
    server: Server,
    psql_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    layout = vault_layout()
    ctl, mount = await _db_controller(controller_factory, layout, server, psql_image, tmp_path)
    table = f"vault_job_{layout.suffix}_{secrets.token_hex(3)}"
    lease_prefix = f"{mount}/creds/ci-default/"
    before = await asyncio.to_thread(server.group_members)
    assert await asyncio.to_thread(_lease_ids, layout, lease_prefix) == []
    spec = job_spec(secrets=_db_secrets(mount), commands=_job_commands(server, table), timeout_s=JOB_TIMEOUT_S)
    try:
        assert (await ctl.post_webhook(spec))[0] == 202
        running = await ctl.wait_status(spec["id"], {"running"}, timeout=120)

        def recorded() -> tuple[Any, ...] | None:
            if not server.query("SELECT to_regclass(%s)", f"public.{table}")[0][0]:
                return None
            rows = server.query(sql.SQL("SELECT login, password, acting FROM {}").format(sql.Identifier(table)))
            return rows[0] if rows else None

        async def job_row() -> tuple[Any, ...]:
            deadline = time.monotonic() + 60
            while (row := await asyncio.to_thread(recorded)) is None:
                job = await ctl.job(spec["id"])
                if job["status"] != "running" or time.monotonic() > deadline:
                    raise AssertionError(f"the job wrote no row: {job} {(await ctl.logs(spec['id'])).decode()!r}")
                await asyncio.sleep(0.1)
            return row

        username, password, acting = await job_row()

        # While it runs: the user the job logged in as is the one Vault delivered, and it is a live login role.
        container = await asyncio.to_thread(docker_client.containers.get, running["container_id"])
        shown = await asyncio.to_thread(
            container.exec_run, ["sh", "-c", "cat /run/secrets/DB_USER; echo; stat -c %a /run/secrets/DB_USER"]
        )
        assert shown.exit_code == 0 and cast(bytes, shown.output).decode().split() == [username, "600"]
        assert acting == GROUP  # ALTER ROLE ... SET role: the job acts as the group
        role = await asyncio.to_thread(server.role, username)
        assert role is not None, f"{username} is not in pg_roles while its job runs"
        can_login, superuser, valid_until, config = role
        assert can_login and not superuser and valid_until is not None
        assert f"role={GROUP}" in (config or [])
        tokens = await asyncio.to_thread(layout.job_tokens)
        assert len(tokens) == 1
        accessor = tokens[0]["accessor"]
        # One user for two keys: one read of the path, so one lease on this test's mount and one new member of the
        # group among the names made for this job's token (Vault's default username template for PostgreSQL is
        # v-<display name, 8 chars>-<role, 8 chars>-<random>-<time>; other test runs may share the group).
        ours = f"v-{tokens[0]['display_name'][:8]}-"
        assert username.startswith(ours), (username, ours)
        during = await asyncio.to_thread(server.group_members)
        assert {name for name in during - before if name.startswith(ours)} == {username}
        leases = await asyncio.to_thread(_lease_ids, layout, lease_prefix)
        assert len(leases) == 1, leases
        lease = await asyncio.to_thread(_lease, layout, leases[0])
        assert 0 < lease["ttl"] <= JOB_TIMEOUT_S + TTL_GRACE_S, lease
        # The pair matches: the test can log in with it too, as the same user, acting as the group.
        who = await asyncio.to_thread(
            server.query, "SELECT session_user, current_user", dsn=server.login_dsn(username, password)
        )
        assert who == [(username, GROUP)]
        assert await asyncio.to_thread(layout.token_exists, accessor)

        await asyncio.to_thread(container.exec_run, ["touch", "/tmp/release"])
        job = await ctl.wait_final(spec["id"], timeout=60)
        log = (await ctl.logs(spec["id"])).decode()
        assert job["status"] == "succeeded", (job, log)
        assert "rows: 1" in log and "psql-done" in log and "released" in log
        assert "\nown-refused\n" in log and "\nown-created\n" not in log, log

        # After it: the user is dropped, its password opens nothing, the lease and the job's token are gone.
        await _eventually(lambda: server.role(username) is None, f"{username} dropped from pg_roles")
        with pytest.raises(psycopg.OperationalError, match=r"password authentication failed|does not exist"):
            await asyncio.to_thread(server.query, "SELECT 1", dsn=server.login_dsn(username, password))
        await _eventually(lambda: _lease_gone(layout, leases[0]), "the job's database lease revoked")
        assert not await asyncio.to_thread(layout.token_exists, accessor)
        stored = await ctl.controller.store.get(spec["id"])
        assert stored is not None and stored.credentials_accessor == accessor
        assert username not in (await asyncio.to_thread(server.group_members))
        # Neither value in the log: both were printed, both masked.
        assert username not in log and password not in log, log
        assert log.count("[MASKED]") >= 2, log
        # What the job made belongs to the group, so it outlived the user.
        owner = await asyncio.to_thread(
            server.query, "SELECT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = %s", table
        )
        assert owner == [(GROUP,)]
    finally:
        await asyncio.to_thread(_drop_table, layout, server, mount, table)


# --- unit level: one read per path, whatever the number of keys ----------------------------------------------


class _FakeDatabaseEngine:
    """What hvac's read of database/creds/<role> returns: a new user per read, on a renewable lease."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.renewed: list[tuple[str, int]] = []
        self.sys = self

    def read(self, path: str) -> dict[str, Any]:
        self.reads.append(path)
        n = len(self.reads)
        return {
            "lease_id": f"{path}/lease-{n}",
            "lease_duration": 900,
            "renewable": True,
            "data": {"username": f"v-user-{n}", "password": f"password-{n}-{secrets.token_hex(4)}"},
        }

    def renew_lease(self, lease_id: str, increment: int) -> dict[str, Any]:
        self.renewed.append((lease_id, increment))
        return {"lease_id": lease_id, "lease_duration": increment}


async def test_one_read_per_path_so_username_and_password_belong_together(tmp_path: Path) -> None:
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_text("whsec_" + "A" * 32)
    config: Config = make_config(
        tmp_path,
        controller_id="unit",
        secret_file=secret_file,
        token="t",
        viewer="v",
        settings={
            "server": {"host": "127.0.0.1", "port": 0, "public_url": "http://127.0.0.1:1"},
            "credentials": {"vault": {"address": "http://127.0.0.1:1", "ttl_grace_s": 30}},
        },
    )
    creds = VaultCredentials(config, issuer=cast(Any, None), auditor=cast(Any, None))
    engine = _FakeDatabaseEngine()
    creds._client = lambda token=None: cast(Any, engine)  # type: ignore[method-assign]
    spec = JobSpec.model_validate(
        job_spec(
            secrets=[
                *_db_secrets("database"),
                {"path": "other/creds/ci-default", "engine": "generic", "key": "username", "name": "OTHER_USER"},
            ]
        )
    )
    job = new_job(spec, source="test", controller_id="unit", timeout_s=45, now=0.0)
    files = await creds._read_all(_Session(token="job-token", accessor="acc"), "ci-default", job)
    values = {f.name: f.value for f in files}
    assert engine.reads == ["database/creds/ci-default", "other/creds/ci-default"]
    assert values["DB_USER"] == "v-user-1" and values["DB_PASSWORD"].startswith("password-1-")
    assert values["OTHER_USER"] == "v-user-2"
    # Each lease is shortened to the job's timeout plus the grace.
    assert engine.renewed == [("database/creds/ci-default/lease-1", 75), ("other/creds/ci-default/lease-2", 75)]
