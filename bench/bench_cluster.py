"""Several engines and controllers (issue 18): failover time, and jobs/min with 1 vs 3 engines and 1 vs 2 controllers.

Why: issue 18 asks for the failover time (SIGKILL of a controller -> first of its queued jobs running on another)
as a median over several runs, and for jobs/min of 200 short jobs with 1 vs 3 Docker engines and 1 vs 2
controllers on one PostgreSQL, in the same run -- on this 2-core machine that shows the overhead of spreading the
work, not a speed-up -- with the per-job CPU cost of coordination.

Every controller runs as its own process (`python -m orchestrator.cli serve --config FILE`, JSON logs at info to
a file), as deployed. PostgreSQL: one fresh schema per use (`options=-c search_path=<schema>` in the DSN file, as
tests/integration/test_cluster_failover.py does), dropped at the end.

1. Failover (--runs, default 5): controllers A and B on one schema, `[cluster] heartbeat_s` / `lease_ttl_s`
   (--heartbeat, --lease-ttl; default 0.5 / 3) and, where the product has it, `share_queued = false` on both, so
   B does not claim A's queued jobs before A dies (that would measure claiming, not takeover). B runs throughout;
   each run starts a fresh A (pool max_concurrent 1) and sends it 1 job `sleep 30` (waited for until `running`)
   and 4 jobs `true` (queued behind it); A is SIGKILLed; the bench polls B's API (`GET /api/v1/jobs/{id}` for the
   4, in turn, without pause) until one is `running` (or already final). Shown: kill -> seen running on B, and
   kill -> the job's own `started_at` (wall clock, no polling granularity), against the bound
   lease_ttl_s + heartbeat_s (after the last heartbeat, so at most that after the kill) plus a container start.
   The run then waits for all 5 jobs to be final on B (the running one in `error` naming A, the queued ones
   `succeeded`) and for A's containers to be gone.
2. Jobs/min (--jobs per side, default 200, in --rounds rounds, default 2; concurrency C, default 6): three extra
   dockerd instances (tests/dockerds.py `daemons`, imported with tests/ on sys.path as the tests do), all sides on
   them so every side uses the same kind of engine. Sides:
     * `1 engine`:  controller E (SQLite), pool `one`,   engines = {dd0 = C}
     * `3 engines`: controller E (SQLite), pool `three`, engines = {dd0 = C/3, dd1 = C/3, dd2 = C/3}
     * `1 ctl pg`:  controller P (PostgreSQL, schema of its own), engines = {dd0 = C}
     * `2 ctl pg`:  controllers Q and R (PostgreSQL, one schema), each engines = {dd0 = C}, max_concurrent C;
                    the jobs are split between their webhooks (alternately); product [cluster] defaults
   Each round sends the side's share of jobs (`commands: ["true"]`) at once; it ends when every job's container
   is destroyed (Docker event streams of the three engines) and the API confirms every job `succeeded`. Rounds
   alternate the order of the sides (forward, then backward, ...) after one unmeasured warm-up round per side.
   CPU: utime + stime of the side's controller processes from /proc/<pid>/stat over its rounds, per job; also each
   controller's idle CPU (while other sides ran) per second, and the three dockerd+containerd pairs per job.
   `1 ctl pg` against `1 engine` is PostgreSQL against SQLite for one controller on one engine.

Nothing here asserts on timings. At the end every container (labelled with this run's controller ids, on the main
engine and the three daemons), daemon, controller process and schema is removed, and that is checked and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker
import psycopg
from _support import (
    SOURCE,
    TEST_IMAGE,
    check_no_leftovers,
    job_spec,
    leftovers,
    machine_line,
    median,
    new_controller_id,
    proc_cpu_seconds,
    reproduce_line,
    signed,
    table,
    write_serve_config,
)
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orchestrator.config import ClusterConfig
from orchestrator.runtime.container_spec import LABEL_CONTROLLER, LABEL_JOB

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
dockerds: Any = __import__("dockerds")  # tests/dockerds.py: pytest-free (stdlib and the docker SDK only)

DEFAULT_DSN = "host=127.0.0.1 port=5432 user=orchestrator_test password=orchestrator-test-only dbname=orchestrator_test"
FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}
SCHEMA_PREFIX = "orch_bench_cluster_"
HAS_SHARE_QUEUED = "share_queued" in ClusterConfig.model_fields
CLUSTER_DEFAULTS = {name: f.default for name, f in ClusterConfig.model_fields.items()}


# -- PostgreSQL schemas ------------------------------------------------------------------------------------------------


class Schemas:
    """Fresh schemas on the shared database, each with its DSN file; all dropped by drop_all()."""

    def __init__(self, dsn: str, directory: Path) -> None:
        self.dsn = dsn
        self.directory = directory
        self.made: list[str] = []

    def new(self) -> Path:
        schema = f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        self.made.append(schema)
        options = conninfo_to_dict(self.dsn).get("options") or ""
        path = self.directory / f"{schema}.dsn"
        path.write_text(make_conninfo(self.dsn, options=f"{options} -c search_path={schema}".strip()) + "\n")
        path.chmod(0o600)
        return path

    def drop_all(self) -> list[str]:
        """Drops every schema made here; returns those of this run still present afterwards (should be none)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for schema in self.made:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            rows = conn.execute(
                "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ANY(%s)", (self.made,)
            ).fetchall()
        return [r[0] for r in rows]


# -- controller processes ----------------------------------------------------------------------------------------------


@dataclass
class Ctl:
    name: str
    controller_id: str
    proc: subprocess.Popen[bytes]
    url: str
    key: bytes
    token: str
    directory: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu_seconds(Path(f"/proc/{self.pid}/stat"))

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def pool_toml(name: str, image: str, concurrency: int, engines: dict[str, int] | None) -> str:
    q = json.dumps
    text = f"""
[pools.{name}]
image = {q(image)}
memory = "128m"
cpus = 1.0
pids = 64
max_concurrent = {concurrency}
max_queue = 5000
default_timeout_s = 60
max_timeout_s = 300
"""
    if engines:
        text += "engines = { " + ", ".join(f"{k} = {v}" for k, v in engines.items()) + " }\n"
    return text


def write_config(
    directory: Path,
    controller_id: str,
    *,
    total: int,
    pools: str,
    engines: dict[str, str] | None = None,
    dsn_file: Path | None = None,
    cluster: dict[str, Any] | None = None,
) -> tuple[Path, bytes, str]:
    """A TOML config for `orchestrator serve`; `pools` is TOML of [pools.*]."""
    q = json.dumps
    tail = pools
    for name, base_url in (engines or {}).items():
        tail += f"\n[engines.{name}]\nbase_url = {q(base_url)}\n"
    if dsn_file is not None:
        tail += f'\n[storage]\nbackend = "postgres"\ndsn_file = {q(str(dsn_file))}\n'
    if cluster:
        tail += "\n[cluster]\n" + "".join(f"{k} = {q(v)}\n" for k, v in cluster.items())
    return write_serve_config(directory, controller_id, total=total, tail=tail)


class Processes:
    """Every controller process this run started, so that all are gone at the end whatever happened."""

    def __init__(self) -> None:
        self.all: list[Ctl] = []

    async def start(self, base: Path, name: str, **config: Any) -> Ctl:
        directory = base / f"{name}-{len(self.all)}"
        directory.mkdir()
        controller_id = new_controller_id()
        path, key, token = write_config(directory, controller_id, **config)
        log = (directory / "controller.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(path)],
            cwd=ROOT,
            stdout=log,
            stderr=log,
            env={**os.environ, "ORCHESTRATOR_LOG_LEVEL": "info"},
            start_new_session=True,
        )
        log.close()
        ctl = Ctl(name, controller_id, proc, "", key, token, directory)
        self.all.append(ctl)
        deadline = time.monotonic() + 30
        while (url := _listening_url(directory / "controller.log")) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"controller {name} did not start listening; see {directory / 'controller.log'}")
            await asyncio.sleep(0.05)
        ctl.url = url
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/readyz") as resp:
                        if resp.status == 200:
                            return ctl
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"controller {name} did not become ready; see {directory / 'controller.log'}")
                await asyncio.sleep(0.1)

    @staticmethod
    def stop(ctl: Ctl) -> int | None:
        """SIGTERM and wait (SIGKILL after 60 s); the exit code, or None if it had already exited."""
        if ctl.proc.poll() is not None:
            return None
        ctl.proc.send_signal(signal.SIGTERM)
        try:
            return ctl.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            ctl.proc.kill()
            return ctl.proc.wait()

    def stop_all(self) -> list[str]:
        """Stops every one still running; returns problems (non-zero exits on SIGTERM)."""
        problems = []
        for ctl in self.all:
            code = self.stop(ctl)
            if code not in (None, 0):
                problems.append(f"controller {ctl.name} ({ctl.controller_id}) exited {code} on SIGTERM")
        return problems

    def alive(self) -> list[int]:
        return [c.pid for c in self.all if c.proc.poll() is None]


def _listening_url(log: Path) -> str | None:
    for line in log.read_bytes().split(b"\n")[:-1]:  # whole lines only
        if line.startswith(b"{") and b'"event": "listening"' in line:
            return str(json.loads(line)["url"])
    return None


async def post(session: aiohttp.ClientSession, ctl: Ctl, spec: dict[str, Any]) -> None:
    body, headers = signed(ctl.key, spec)
    async with session.post(f"{ctl.url}/webhooks/{SOURCE}", data=body, headers=headers) as resp:
        if resp.status != 202:
            raise RuntimeError(f"webhook of {ctl.name} answered {resp.status}: {await resp.text()}")
        await resp.read()


async def get_job(session: aiohttp.ClientSession, ctl: Ctl, job_id: str) -> dict[str, Any]:
    async with session.get(f"{ctl.url}/api/v1/jobs/{job_id}", headers=ctl.auth) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET job {job_id} from {ctl.name}: {resp.status} {await resp.text()}")
        return dict(await resp.json())


async def wait_status(
    session: aiohttp.ClientSession, ctl: Ctl, job_id: str, statuses: set[str], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = await get_job(session, ctl, job_id)
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {job['status']} on {ctl.name} after {timeout} s: {job}")
        await asyncio.sleep(0.05)


# -- 1. failover -------------------------------------------------------------------------------------------------------


@dataclass
class Failover:
    seen_s: float  # kill -> B's API shows a taken-over queued job running (or final)
    started_s: float  # kill -> that job's started_at (wall clock)
    first_status: str
    running_end: str  # final status and reason of A's running job
    queued_end: str


async def failover_run(
    session: aiohttp.ClientSession, procs: Processes, base: Path, b: Ctl, a_config: dict[str, Any], r: int
) -> Failover:
    a = await procs.start(base, f"a{r}", **a_config)
    running = job_spec(f"fo{r}-running-{uuid.uuid4().hex[:6]}", ["sleep 30"])
    queued = [job_spec(f"fo{r}-queued{i}-{uuid.uuid4().hex[:6]}", ["true"]) for i in range(4)]
    await post(session, a, running)
    await wait_status(session, a, running["id"], {"running"})
    for spec in queued:
        await post(session, a, spec)
    await asyncio.sleep(1.0)  # a couple of heartbeats of both, with the jobs queued on A
    ids = [s["id"] for s in queued]
    before = [await get_job(session, b, job_id) for job_id in ids]
    stolen = [j["job_id"] for j in before if j["status"] != "queued" or j["controller_id"] != a.controller_id]
    if stolen:
        raise RuntimeError(f"run {r}: queued jobs left A before the kill (claimed by B?): {stolen}")
    a.proc.send_signal(signal.SIGKILL)
    killed_wall, killed = time.time(), time.perf_counter()
    a.proc.wait()
    seen: dict[str, Any] | None = None
    seen_s = float("nan")
    while seen is None:
        for job_id in ids:
            job = await get_job(session, b, job_id)
            if job["status"] == "running" or job["status"] in FINAL:
                seen, seen_s = job, time.perf_counter() - killed
                break
        if time.perf_counter() - killed > 120:
            raise RuntimeError(f"run {r}: no taken-over job running on B 120 s after the kill")
    ends = [await wait_status(session, b, job_id, FINAL) for job_id in [running["id"], *ids]]
    starts = [j["started_at"] for j in ends[1:] if j["started_at"] is not None]
    started_s = min(starts) - killed_wall if starts else float("nan")
    client = docker.from_env()
    try:
        deadline = time.monotonic() + 30
        while leftovers(client, a.controller_id):  # B removes A's containers when it takes over
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {r}: A's containers still there 30 s after the kill")
            await asyncio.sleep(0.1)
    finally:
        client.close()
    first = ends[0]
    return Failover(
        seen_s,
        started_s,
        str(seen["status"]),
        f"{first['status']}: {first['reason']}",
        ",".join(sorted({j["status"] for j in ends[1:]})),
    )


async def run_failover(
    args: argparse.Namespace, session: aiohttp.ClientSession, procs: Processes, schemas: Schemas, base: Path
) -> tuple[list[Failover], dict[str, Any]]:
    dsn_file = schemas.new()
    cluster: dict[str, Any] = {"heartbeat_s": args.heartbeat, "lease_ttl_s": args.lease_ttl}
    if HAS_SHARE_QUEUED:
        cluster["share_queued"] = False
    common = {"dsn_file": dsn_file, "cluster": cluster}
    b = await procs.start(base, "b", total=4, pools=pool_toml("default", args.image, 4, None), **common)
    a_config = {"total": 1, "pools": pool_toml("default", args.image, 1, None), **common}
    results = []
    for r in range(args.runs):
        got = await failover_run(session, procs, base, b, a_config, r)
        print(f"  failover run {r}: seen running on B {got.seen_s:.2f} s after the kill", flush=True)
        results.append(got)
    code = procs.stop(b)
    if code not in (None, 0):
        raise RuntimeError(f"controller B exited {code} on SIGTERM; see {b.directory / 'controller.log'}")
    return results, cluster


# -- 2. jobs/min ------------------------------------------------------------------------------------------------------


class Destroyed:
    """Job ids whose container was destroyed, from the Docker event streams of several engines (one thread each)."""

    def __init__(self, clients: Sequence[docker.DockerClient]) -> None:
        self.job_ids: set[str] = set()
        self._lock = threading.Lock()
        self._streams = []
        self._clients = list(clients)
        for client in clients:
            stream = client.events(
                decode=True, filters={"label": LABEL_CONTROLLER, "type": "container", "event": "destroy"}
            )
            self._streams.append(stream)
            threading.Thread(target=self._run, args=(stream,), name="docker-events", daemon=True).start()

    def _run(self, stream: Any) -> None:
        try:
            for event in stream:
                job_id = event.get("Actor", {}).get("Attributes", {}).get(LABEL_JOB)
                if job_id:
                    with self._lock:
                        self.job_ids.add(job_id)
        except Exception:  # closed under us at the end
            return

    def count(self, ids: set[str]) -> int:
        with self._lock:
            return len(ids & self.job_ids)

    def close(self) -> None:
        for stream in self._streams:
            stream.close()
        for client in self._clients:
            client.close()


@dataclass
class Side:
    name: str
    ctls: list[Ctl]
    pool: str
    jobs: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    docker_cpu_s: float = 0.0
    rounds: list[float] = field(default_factory=list)  # jobs/min per measured round
    bad: dict[str, dict[str, Any]] = field(default_factory=dict)  # jobs that ended other than `succeeded`
    sent_to: dict[str, str] = field(default_factory=dict)  # job id -> the controller whose webhook took it

    @property
    def per_min(self) -> float:
        return self.jobs / self.wall_s * 60 if self.wall_s else float("nan")


def daemon_pids(daemons: Sequence[Any]) -> list[int]:
    """dockerd and containerd of each harness daemon (the shims come and go with the containers)."""
    pids = []
    for d in daemons:
        for proc in (d._dockerd, d._containerd):
            if proc is not None and proc.poll() is None:
                pids.append(proc.pid)
    return pids


def cpu_of(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += proc_cpu_seconds(Path(f"/proc/{pid}/stat"))
    return total


async def unfinished(session: aiohttp.ClientSession, side: Side, ids: set[str]) -> int:
    """How many of `ids` are not final yet (asked of the side's first controller: on PostgreSQL any controller
    answers for every job); a job that ended other than `succeeded` is noted in `side.bad`, once."""
    ctl = side.ctls[0]
    async with session.get(f"{ctl.url}/api/v1/jobs", params={"limit": "1000"}, headers=ctl.auth) as resp:
        listed = {j["job_id"]: j for j in (await resp.json())["jobs"] if j["job_id"] in ids}
    for job_id in ids - set(listed):  # older than the newest 1000: asked one by one
        listed[job_id] = await get_job(session, ctl, job_id)
    for j in listed.values():
        if j["status"] in FINAL and j["status"] != "succeeded" and j["job_id"] not in side.bad:
            side.bad[j["job_id"]] = j
    return sum(1 for j in listed.values() if j["status"] not in FINAL)


async def side_round(
    session: aiohttp.ClientSession, side: Side, destroyed: Destroyed, prefix: str, n: int, dpids: list[int]
) -> tuple[float, float, float]:
    """n jobs at once (split over the side's controllers in turn): wall s, controllers' CPU s, daemons' CPU s."""
    ids = [f"{prefix}-{i:03d}" for i in range(n)]
    specs = [
        (side.ctls[i % len(side.ctls)], job_spec(job_id, ["true"], pool=side.pool)) for i, job_id in enumerate(ids)
    ]
    wanted = set(ids)
    side.sent_to.update((spec["id"], ctl.name) for ctl, spec in specs)
    cpu0, dcpu0 = sum(c.cpu() for c in side.ctls), cpu_of(dpids)
    t0 = time.perf_counter()
    await asyncio.gather(*(post(session, ctl, spec) for ctl, spec in specs))
    last_poll = time.perf_counter()
    while True:
        gone = destroyed.count(wanted) >= n
        if gone or time.perf_counter() - last_poll > 2.0:
            last_poll = time.perf_counter()
            if await unfinished(session, side, wanted) == 0:
                break
        await asyncio.sleep(0.005 if gone else 0.02)
    wall = time.perf_counter() - t0
    return wall, sum(c.cpu() for c in side.ctls) - cpu0, cpu_of(dpids) - dcpu0


async def run_throughput(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    procs: Processes,
    schemas: Schemas,
    base: Path,
    daemons: Sequence[Any],
) -> tuple[list[Side], dict[str, float], list[str]]:
    c = args.concurrency
    third = c // 3
    urls = {d.name: d.base_url for d in daemons}
    dd0 = {daemons[0].name: c}
    spread = {d.name: third for d in daemons}
    e = await procs.start(
        base,
        "E",
        total=c,
        engines=urls,
        pools=pool_toml("one", args.image, c, dd0) + pool_toml("three", args.image, c, spread),
    )
    one_engine = {"total": c, "engines": {daemons[0].name: daemons[0].base_url}}
    p = await procs.start(
        base, "P", pools=pool_toml("default", args.image, c, dd0), dsn_file=schemas.new(), **one_engine
    )
    shared = schemas.new()
    q = await procs.start(base, "Q", pools=pool_toml("default", args.image, c, dd0), dsn_file=shared, **one_engine)
    r = await procs.start(base, "R", pools=pool_toml("default", args.image, c, dd0), dsn_file=shared, **one_engine)
    ctls = [e, p, q, r]
    sides = [
        Side("1 engine", [e], "one"),
        Side("3 engines", [e], "three"),
        Side("1 ctl pg", [p], "default"),
        Side("2 ctl pg", [q, r], "default"),
    ]
    clients = [d.client() for d in daemons]
    destroyed = Destroyed([docker.DockerClient(base_url=d.base_url, timeout=60) for d in daemons])
    dpids = daemon_pids(daemons)
    per_round = [args.jobs // args.rounds + (1 if i < args.jobs % args.rounds else 0) for i in range(args.rounds)]
    started = time.perf_counter()
    cpu_start = {ctl.name: ctl.cpu() for ctl in ctls}
    busy = dict.fromkeys(cpu_start, 0.0)  # CPU each controller spent in its own side's rounds
    busy_wall = dict.fromkeys(cpu_start, 0.0)
    try:
        for rnd in range(-1, args.rounds):
            order = sides if rnd % 2 == 0 else list(reversed(sides))  # warm-up (-1) and rounds 1, 3...: backward
            n = args.warmup_jobs if rnd < 0 else per_round[rnd]
            for side in order:
                prefix = f"tp-{side.name.replace(' ', '')}-{'w' if rnd < 0 else rnd}-{uuid.uuid4().hex[:4]}"
                before = {ctl.name: ctl.cpu() for ctl in side.ctls}
                wall, cpu, dcpu = await side_round(session, side, destroyed, prefix, n, dpids)
                for ctl in side.ctls:
                    busy[ctl.name] += ctl.cpu() - before[ctl.name]
                    busy_wall[ctl.name] += wall
                if rnd < 0:
                    continue
                side.jobs += n
                side.wall_s += wall
                side.cpu_s += cpu
                side.docker_cpu_s += dcpu
                side.rounds.append(n / wall * 60)
            if rnd >= 0:
                figures = ", ".join(f"{s.name} {s.rounds[-1]:.0f}/min" for s in order)
                print(f"  jobs/min round {rnd} ({' -> '.join(s.name for s in order)}): {figures}", flush=True)
        elapsed = time.perf_counter() - started
        idle = {
            ctl.name: (ctl.cpu() - cpu_start[ctl.name] - busy[ctl.name]) / (elapsed - busy_wall[ctl.name]) * 1000
            for ctl in ctls
        }
        left = [f"{d.name}: {n}" for d, cl in zip(daemons, clients, strict=True) for n in _labelled(cl, ctls)]
    finally:
        destroyed.close()
    print(f"cleanup: containers of {', '.join(c.name for c in ctls)} on dd0..dd2 before stopping -> {len(left)}")
    problems = [f"containers left on {x}" for x in left]
    names = {ctl.controller_id: ctl.name for ctl in ctls}
    for side in sides:
        for job in list(side.bad.values())[:5]:
            problems.append(
                f"side {side.name!r}: job {job['job_id']} (sent to {side.sent_to.get(job['job_id'])}, owned by "
                f"{names.get(job['controller_id'], job['controller_id'])}) ended {job['status']}: {job['reason']}"
            )
        if len(side.bad) > 5:
            problems.append(f"side {side.name!r}: {len(side.bad) - 5} more jobs did not succeed")
    for ctl in ctls:
        code = procs.stop(ctl)
        if code not in (None, 0):
            problems.append(f"controller {ctl.name} exited {code} on SIGTERM; see {ctl.directory / 'controller.log'}")
    return sides, idle, problems


def _labelled(client: docker.DockerClient, ctls: Sequence[Ctl]) -> list[str]:
    return [name for ctl in ctls for name in leftovers(client, ctl.controller_id)]


# -- report ------------------------------------------------------------------------------------------------------------


def report_failover(results: list[Failover], cluster: dict[str, Any]) -> None:
    bound = cluster["lease_ttl_s"] + cluster["heartbeat_s"]
    settings = " ".join(f"{k}={v}" for k, v in cluster.items())
    print(
        f"1. failover: [cluster] {settings}; A (max_concurrent 1) runs `sleep 30` with 4 `true` queued behind it, "
        "is SIGKILLed; B (idle, max_concurrent 4) takes over"
    )
    rows: list[list[object]] = [
        [f"run {i}", f.seen_s, f.started_s, f.first_status, f.queued_end, f.running_end] for i, f in enumerate(results)
    ]
    seen, started = [f.seen_s for f in results], [f.started_s for f in results]
    for label, fn in (("median", median), ("min", min), ("max", max)):
        rows.append([label, fn(seen), fn(started), "", "", ""])
    print(
        table(
            [
                "",
                "kill -> seen running on B (s)",
                "kill -> started_at (s)",
                "first seen",
                "queued jobs ended",
                "A's running job ended",
            ],
            rows,
        )
    )
    print(
        f"expected bound: lease_ttl_s + heartbeat_s = {bound:.1f} s after A's last heartbeat (so at most that after "
        f"the kill), plus removing A's container and starting the job: median {median(seen):.2f} s = "
        f"{median(seen) / bound:.2f}x the bound"
    )


def report_throughput(args: argparse.Namespace, sides: list[Side], idle: dict[str, float]) -> None:
    c = args.concurrency
    by = {s.name: s for s in sides}
    print(
        f"2. jobs/min: {args.jobs} jobs `true` per side in {args.rounds} rounds sent at once, C = {c}, "
        f"warm-up {args.warmup_jobs} jobs per side; engines are tests/dockerds.py daemons dd0..dd2; "
        f"PostgreSQL controllers with [cluster] defaults " + " ".join(f"{k}={v}" for k, v in CLUSTER_DEFAULTS.items())
    )
    rows: list[list[object]] = []
    for s in sides:
        rows.append(
            [
                s.name,
                ", ".join(c.name for c in s.ctls),
                s.jobs,
                s.wall_s,
                " / ".join(f"{x:.0f}" for x in s.rounds),
                s.per_min,
                s.cpu_s / s.jobs * 1000,
                s.docker_cpu_s / s.jobs * 1000,
                len(s.bad),
            ]
        )
    print(
        table(
            [
                "side",
                "controllers",
                "jobs",
                "wall s",
                "jobs/min per round",
                "jobs/min",
                "ctl CPU ms/job",
                "dockerds ms/job",
                "not succeeded",
            ],
            rows,
        )
    )
    print(
        "controllers: E = SQLite, pools `one` (dd0 = "
        f"{c}) and `three` ({', '.join(f'dd{i} = {c // 3}' for i in range(3))}); P = PostgreSQL alone on its schema "
        f"(dd0 = {c}); Q, R = PostgreSQL on one schema, each max_concurrent {c} (dd0 = {c})"
    )
    print(
        "idle CPU while other sides ran (heartbeats, engine probes): "
        + ", ".join(f"{k} {v:.1f} ms/s" for k, v in idle.items())
    )

    def ratio(a: str, b: str) -> tuple[float, float]:
        return by[a].per_min / by[b].per_min, (by[a].cpu_s / by[a].jobs - by[b].cpu_s / by[b].jobs) * 1000

    for a, b, what in (
        ("3 engines", "1 engine", "3 engines / 1 engine"),
        ("2 ctl pg", "1 ctl pg", "2 controllers / 1 controller (PostgreSQL)"),
        ("1 ctl pg", "1 engine", "PostgreSQL / SQLite (one controller, one engine)"),
    ):
        x, extra = ratio(a, b)
        print(f"result: {what}: jobs/min {x:.2f}x, controller CPU {extra:+.1f} ms/job")
    print(
        f"note: this machine has {os.cpu_count()} cores, shared by every dockerd, containerd, controller and "
        "PostgreSQL: more engines or controllers here add processes competing for the same cores, so these "
        "ratios show the overhead of spreading the work, not the speed-up separate hosts would give."
    )


# -- driver ------------------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    client = docker.from_env()
    client.images.get(args.image)
    print(machine_line())
    procs = Processes()
    problems: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-", dir=args.tmpdir) as tmp:
        base = Path(tmp)
        schemas = Schemas(args.dsn, base)
        daemons_left: list[int] = []
        failover: tuple[list[Failover], dict[str, Any]] | None = None
        throughput: tuple[list[Side], dict[str, float], list[str]] | None = None
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.jobs)) as session:
                if args.runs:
                    failover = await run_failover(args, session, procs, schemas, base)
                if args.jobs:
                    t0 = time.perf_counter()
                    made: list[Any] = []
                    try:
                        with dockerds.daemons(base / "dd", 3, image=args.image) as made:
                            print(f"  three dockerds up and loaded in {time.perf_counter() - t0:.1f} s", flush=True)
                            throughput = await run_throughput(args, session, procs, schemas, base, made)
                    finally:
                        daemons_left = [pid for d in made for pid in d.processes()]
        finally:
            problems += procs.stop_all()
            for ctl in procs.all:
                if ctl.name == "b" or ctl.name.startswith("a"):  # on the main engine
                    try:
                        check_no_leftovers(client, ctl.controller_id)
                    except AssertionError as exc:
                        problems.append(str(exc))
            left_schemas = schemas.drop_all()
            client.close()
            if problems or (throughput and any(side.bad for side in throughput[0])):
                kept = Path(tempfile.mkdtemp(prefix="bench-cluster-logs-"))
                for ctl in procs.all:
                    shutil.copy(ctl.directory / "controller.log", kept / f"{ctl.name}-{ctl.controller_id}.log")
                print(f"controller logs kept in {kept}")
        alive = procs.alive()
        print(
            f"cleanup: {len(procs.all)} controller processes started, {len(alive)} alive; "
            f"{len(schemas.made)} schemas made, {len(left_schemas)} left; "
            f"harness daemon processes left {len(daemons_left)}"
        )
        problems += [f"controller processes alive: {alive}"] * bool(alive)
        problems += [f"schemas left: {left_schemas}"] * bool(left_schemas)
        problems += [f"daemon processes left: {daemons_left}"] * bool(daemons_left)
    if throughput:
        problems += throughput[2]
    argv = ["--runs", str(args.runs), "--jobs", str(args.jobs), "--rounds", str(args.rounds)]
    argv += ["--warmup-jobs", str(args.warmup_jobs), "--concurrency", str(args.concurrency)]
    argv += ["--heartbeat", str(args.heartbeat), "--lease-ttl", str(args.lease_ttl)]
    print(reproduce_line("bench/bench_cluster.py", argv))
    print(f"at the end, {machine_line()}; whole run {time.perf_counter() - started:.0f} s")
    if failover:
        report_failover(failover[0], failover[1])
    if throughput:
        report_throughput(args, throughput[0], throughput[1])
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="failover runs (0: skip)")
    parser.add_argument("--heartbeat", type=float, default=0.5, help="failover: [cluster] heartbeat_s")
    parser.add_argument("--lease-ttl", type=float, default=3.0, help="failover: [cluster] lease_ttl_s")
    parser.add_argument("--jobs", type=int, default=200, help="jobs per side for jobs/min (0: skip)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds the jobs of a side are split into")
    parser.add_argument("--warmup-jobs", type=int, default=6, help="jobs per side in the unmeasured warm-up round")
    parser.add_argument("--concurrency", type=int, default=6, help="C: max_concurrent per controller (multiple of 3)")
    parser.add_argument("--dsn", default=os.environ.get("ORCHESTRATOR_TEST_POSTGRES_DSN") or DEFAULT_DSN)
    parser.add_argument("--tmpdir", default=None, help="parent of the data dirs (default: $TMPDIR)")
    parser.add_argument("--image", default=TEST_IMAGE)
    args = parser.parse_args()
    if args.concurrency % 3 or args.concurrency < 3:
        parser.error("--concurrency: a multiple of 3 (the `3 engines` side gives each engine C/3)")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
