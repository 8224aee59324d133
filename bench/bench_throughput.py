"""Job throughput on one host: 100 jobs at once through the controller vs a raw docker-SDK loop, same concurrency.

Why: the runtime issue asks that the controller sustain at least 0.8x the jobs/minute of driving Docker directly
with the same concurrency, and asks what the controller itself costs in CPU per job.

The controller runs as its own process, exactly as deployed: `python -m orchestrator.cli serve --config FILE`
(JSON logs at info to a file, SQLite data dir under --tmpdir), pool `max_concurrent = C` and
`max_total_concurrent = C`. Its CPU time is read from /proc/<pid>/stat (utime + stime of all its threads) before
and after each round, so CPU per job is everything the controller process spent, with nothing subtracted.

* controller round: `--jobs` signed webhooks (`commands: ["echo hi"]`) are sent at once; the round ends when the
  API shows every job final. To avoid polling the controller during the round (which would add to its CPU), a
  thread reads Docker's event stream for this run's label and the API is only asked once every container of the
  round has been destroyed (and once a second as a fallback). Every job must be `succeeded`.
* raw round: C threads share the same `--jobs` jobs, each doing what the controller does for a job with the docker
  SDK's low-level API and nothing around it: create with the controller's own options (`build_container_spec`,
  as `ContainerSpec` gives them: create arguments and host config), attach, start, send the same bootstrap stdin
  script for `echo hi`, read the output to EOF, wait, remove. The `managed` label is left out so the controller's
  sweep never touches these containers; the controller-id label stays, for the leftover check.

* warm round (`--sides ... warm ...`): the controller round again, for a second pool `warm` of the same controller
  process that differs from `default` only by `warm = W` (--warm-count, default C; `max_warm` raised to fit): the
  first W jobs claim pre-started containers, and the claims trigger background refills (`warm_refill_concurrency`
  at a time, --refill-concurrency, product default 2) that overlap with the running jobs; jobs that find no warm
  container ready are served cold. Before every round of every side the bench waits, polling /metrics
  (`orchestrator_warm_ready`), until the pool holds W again, so no refill overlaps another side's round -- and so
  each warm round starts with W containers made before its clock starts (the refill topping the pool up after its
  last claims runs after the clock stops). Claimed warm containers carry no job label, so the round's end is
  seen from their `destroy` events (label `warm`) plus the job-labelled ones of jobs served cold. The warm-pool
  issue's goal: warm >= 1.5x the raw loop's jobs/min.

Rounds rotate the order of the sides (controller, raw / raw, controller / ...; with three sides each goes first
in turn) after one unmeasured warm-up round per side. `--sides` picks them (default: controller raw, the original
comparison). Also shown: dockerd + containerd CPU per job for each side (the machine has 2 cores, and Docker
is most of the work), and the raw loop's own CPU per job (this process, `resource.getrusage`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import docker
from _support import (
    SOURCE,
    TEST_IMAGE,
    check_no_leftovers,
    job_spec,
    machine_line,
    median,
    new_controller_id,
    reproduce_line,
    signed,
    table,
    write_serve_config,
)

from orchestrator.config import PoolConfig
from orchestrator.jobs.spec import JobSpec
from orchestrator.runtime.container_spec import (
    LABEL_CONTROLLER,
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_POOL,
    LABEL_WARM,
    build_container_spec,
    job_script,
    stdin_payload,
)

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["echo hi"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}
WARM_POOL = "warm"


# -- CPU accounting ----------------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state); utime is 14, stime 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def find_pids(*names: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def docker_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu_s(pid)
        except OSError:
            continue
    return total


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- Docker events: when every container of a round is gone --------------------------------------------------------


class Destroyed:
    """Counts `destroy` events per job id label for this run's controller id (read by a thread)."""

    def __init__(self, client: docker.DockerClient, controller_id: str) -> None:
        self._stream = client.events(
            decode=True,
            filters={"label": f"{LABEL_CONTROLLER}={controller_id}", "type": "container", "event": "destroy"},
        )
        self.job_ids: set[str] = set()
        self.warm = 0  # destroyed warm containers of the `warm` pool (claimed ones carry no job label)
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="docker-events", daemon=True).start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                attrs = event.get("Actor", {}).get("Attributes", {})
                job_id = attrs.get(LABEL_JOB)
                if job_id:
                    with self._lock:
                        self.job_ids.add(job_id)
                elif attrs.get(LABEL_WARM) == "true" and attrs.get(LABEL_POOL) == WARM_POOL:
                    with self._lock:
                        self.warm += 1
        except Exception:  # closed under us at the end
            return

    def count(self, ids: set[str]) -> int:
        with self._lock:
            return len(ids & self.job_ids)

    def warm_count(self) -> int:
        with self._lock:
            return self.warm

    def close(self) -> None:
        self._stream.close()


# -- the controller as a process -------------------------------------------------------------------------------------


@dataclass
class ControllerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    key: bytes
    token: str
    data_dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def write_config(
    directory: Path,
    controller_id: str,
    concurrency: int,
    image: str,
    extra_toml: str = "",
    *,
    warm: int = 0,
    refill_concurrency: int | None = None,
) -> tuple[Path, bytes, str]:
    """A TOML config for `orchestrator serve` (the shape of _support.make_config); `extra_toml` is appended. The
    controller chooses its port (port = 0) and names it in its `listening` line. `warm` > 0 adds a pool `warm`,
    the default pool with `warm = N` (and `max_warm` raised to fit)."""
    q = json.dumps  # TOML basic strings accept JSON string escapes for these values
    top = f"max_warm = {max(32, warm)}\n" if warm else ""
    if warm and refill_concurrency is not None:
        top += f"warm_refill_concurrency = {refill_concurrency}\n"
    pool_toml = f"""image = {q(image)}
memory = "128m"
cpus = 1.0
pids = 64
max_concurrent = {concurrency}
max_queue = 5000
default_timeout_s = 60
max_timeout_s = 300
"""
    warm_toml = f"\n[pools.{WARM_POOL}]\n{pool_toml}warm = {warm}\n" if warm else ""
    tail = f"\n[pools.default]\n{pool_toml}{warm_toml}" + extra_toml
    return write_serve_config(directory, controller_id, total=concurrency, top=top, tail=tail)


async def start_controller_process(
    directory: Path,
    controller_id: str,
    concurrency: int,
    image: str,
    extra_toml: str = "",
    *,
    warm: int = 0,
    refill_concurrency: int | None = None,
) -> ControllerProcess:
    config, key, token = write_config(
        directory, controller_id, concurrency, image, extra_toml, warm=warm, refill_concurrency=refill_concurrency
    )
    log = (directory / "controller.log").open("ab")
    offset = log.tell()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=log,
        stderr=log,
        env={**os.environ, "ORCHESTRATOR_LOG_LEVEL": "info"},
    )
    log.close()
    deadline = time.monotonic() + 30
    while (url := _listening_url(directory / "controller.log", offset)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"controller did not start listening; see {directory / 'controller.log'}")
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"controller did not become ready; see {directory / 'controller.log'}")
            await asyncio.sleep(0.1)
    return ControllerProcess(proc, url, key, token, directory / "data")


def _listening_url(log: Path, offset: int) -> str | None:
    """The URL in the `listening` line `orchestrator serve` wrote to `log` after `offset`, once it has."""
    with log.open("rb") as f:
        f.seek(offset)
        for line in f.read().split(b"\n")[:-1]:  # whole lines only
            if line.startswith(b"{") and b'"event": "listening"' in line:
                return str(json.loads(line)["url"])
    return None


def stop_controller_process(cp: ControllerProcess) -> int:
    cp.proc.send_signal(signal.SIGTERM)
    try:
        return cp.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        cp.proc.kill()
        cp.proc.wait()
        return -9


# -- one round per side ------------------------------------------------------------------------------------------------


@dataclass
class Round:
    side: str
    jobs: int
    wall_s: float
    own_cpu_s: float  # controller process (controller side) / this process (raw side)
    docker_cpu_s: float
    served: dict[str, int] | None = None  # warm side: jobs served {"warm": n, "cold": n} (from /metrics)

    @property
    def per_min(self) -> float:
        return self.jobs / self.wall_s * 60


async def _non_final(session: aiohttp.ClientSession, cp: ControllerProcess, ids: set[str]) -> int:
    auth = {"Authorization": f"Bearer {cp.token}"}
    async with session.get(f"{cp.url}/api/v1/jobs", params={"limit": "1000"}, headers=auth) as resp:
        jobs = (await resp.json())["jobs"]
    views = {j["job_id"]: j for j in jobs if j["job_id"] in ids}
    bad = [v for v in views.values() if v["status"] in FINAL and v["status"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs did not succeed, e.g. {bad[0]}")
    return len(ids) - sum(1 for v in views.values() if v["status"] in FINAL)


async def metrics_values(session: aiohttp.ClientSession, cp: ControllerProcess, *names: str) -> dict[str, float]:
    """Samples of /metrics whose name (with labels, as exposed) starts with one of `names`."""
    auth = {"Authorization": f"Bearer {cp.token}"}
    async with session.get(f"{cp.url}/metrics", headers=auth) as resp:
        if resp.status != 200:
            raise RuntimeError(f"/metrics answered {resp.status}")
        text = await resp.text()
    found = {}
    for line in text.splitlines():
        if line.startswith(names):
            sample, _, value = line.rpartition(" ")
            found[sample] = float(value)
    return found


READY = f'orchestrator_warm_ready{{pool="{WARM_POOL}"}}'


def _claims(values: dict[str, float]) -> dict[str, int]:
    """{"warm": n, "cold": n} of the warm pool from `orchestrator_warm_claims_total` samples (any label order)."""
    found = {"warm": 0, "cold": 0}
    for sample, value in values.items():
        if sample.startswith("orchestrator_warm_claims_total{") and f'pool="{WARM_POOL}"' in sample:
            for how in found:
                if f'how="{how}"' in sample:
                    found[how] += int(value)
    return found


async def wait_warm_full(session: aiohttp.ClientSession, cp: ControllerProcess, wanted: int) -> None:
    """Until the warm pool holds `wanted` ready containers (polling /metrics), then a moment for the event stream."""
    deadline = time.monotonic() + 120
    while (await metrics_values(session, cp, READY)).get(READY, 0.0) < wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the warm pool did not refill to {wanted} within 120 s")
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)


async def controller_round(
    session: aiohttp.ClientSession,
    cp: ControllerProcess,
    destroyed: Destroyed,
    prefix: str,
    n: int,
    dpids: list[int],
    pool: str = "default",
) -> Round:
    ids = [f"{prefix}-{i:03d}" for i in range(n)]
    bodies = [signed(cp.key, job_spec(job_id, COMMANDS, pool=pool)) for job_id in ids]
    wanted = set(ids)
    warm = pool == WARM_POOL
    claims0 = _claims(await metrics_values(session, cp, "orchestrator_warm_claims_total")) if warm else {}
    warm0 = destroyed.warm_count()

    async def post(body: bytes, headers: dict[str, str]) -> None:
        async with session.post(f"{cp.url}/webhooks/{SOURCE}", data=body, headers=headers) as resp:
            if resp.status != 202:
                raise RuntimeError(f"webhook answered {resp.status}: {await resp.text()}")
            await resp.read()

    cpu0, dcpu0 = proc_cpu_s(cp.pid), docker_cpu_s(dpids)
    t0 = time.perf_counter()
    await asyncio.gather(*(post(b, h) for b, h in bodies))
    last_poll = time.perf_counter()
    while True:
        gone = destroyed.count(wanted) + (destroyed.warm_count() - warm0 if warm else 0) >= n
        if gone or time.perf_counter() - last_poll > 1.0:
            last_poll = time.perf_counter()
            if await _non_final(session, cp, wanted) == 0:
                break
        await asyncio.sleep(0.005 if gone else 0.02)
    wall = time.perf_counter() - t0
    done = Round("warm" if warm else "controller", n, wall, proc_cpu_s(cp.pid) - cpu0, docker_cpu_s(dpids) - dcpu0)
    if warm:
        claims = _claims(await metrics_values(session, cp, "orchestrator_warm_claims_total"))
        done.served = {how: claims[how] - claims0[how] for how in claims}
    return done


def _raw_args(controller_id: str, pool: PoolConfig, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = JobSpec(
        id=job_id,
        pool="default",
        repository="example/app",
        ref="refs/heads/main",
        sha="3f786850e387550fdab836ed7e6dc881de23001b",
        commands=COMMANDS,
    )
    cspec = build_container_spec(spec, pool, controller_id=controller_id)
    kw: dict[str, Any] = dict(cspec.create)  # exactly as DockerEngine.create passes it
    kw["labels"] = {k: v for k, v in kw["labels"].items() if k != LABEL_MANAGED}
    return dict(cspec.host), {"name": cspec.name, **kw}


def raw_job(api: Any, controller_id: str, pool: PoolConfig, job_id: str) -> None:
    host_kw, kw = _raw_args(controller_id, pool, job_id)
    payload = stdin_payload(job_script(COMMANDS))
    cid = api.create_container(host_config=api.create_host_config(**host_kw), **kw)["Id"]
    try:
        sock = api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        raw_sock = getattr(sock, "_sock", sock)
        api.start(cid)
        raw_sock.sendall(payload)
        out = bytearray()
        while chunk := raw_sock.recv(65536):
            out += chunk
        code = api.wait(cid, timeout=60)["StatusCode"]
        sock.close()
        if code != 0 or b"hi\n" not in out:
            raise RuntimeError(f"raw job {job_id} exited {code}: {bytes(out)[-200:]!r}")
    finally:
        api.remove_container(cid, force=True, v=True)


def raw_round(apis: list[Any], controller_id: str, pool: PoolConfig, prefix: str, n: int, dpids: list[int]) -> Round:
    ids = [f"{prefix}-{i:03d}" for i in range(n)]
    slots = threading.local()
    free = list(apis)
    free_lock = threading.Lock()

    def one(job_id: str) -> None:
        if not hasattr(slots, "api"):
            with free_lock:
                slots.api = free.pop()
        raw_job(slots.api, controller_id, pool, job_id)

    cpu0, dcpu0 = self_cpu_s(), docker_cpu_s(dpids)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(apis), thread_name_prefix="raw") as pool_exec:
        for fut in [pool_exec.submit(one, job_id) for job_id in ids]:
            fut.result()
    wall = time.perf_counter() - t0
    return Round("raw", n, wall, self_cpu_s() - cpu0, docker_cpu_s(dpids) - dcpu0)


# -- driver ------------------------------------------------------------------------------------------------------------


async def run_concurrency(
    args: argparse.Namespace,
    c: int,
    controller_id: str,
    client: docker.DockerClient,
    destroyed: Destroyed,
    base: Path,
    dpids: list[int],
) -> tuple[list[tuple[dict[str, Round], str]], float]:
    directory = base / f"c{c}"
    directory.mkdir()
    warm = (args.warm_count or c) if "warm" in args.sides else 0
    cp = await start_controller_process(
        directory, controller_id, c, args.image, warm=warm, refill_concurrency=args.refill_concurrency
    )
    pool = PoolConfig(image=args.image, memory="128m", cpus=1.0, pids=64, max_concurrent=c)
    apis = [docker.APIClient(timeout=60) for _ in range(c)]  # one connection per raw worker, like the engine's pool
    rounds: list[tuple[dict[str, Round], str]] = []
    sides = list(args.sides)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.jobs)) as session:
            for r in range(-1, args.rounds):  # round -1: warm-up, not reported
                n = args.warmup_jobs if r < 0 else args.jobs
                tag = "w" if r < 0 else str(r)
                shift = r % len(sides)
                order = tuple(sides[shift:] + sides[:shift])
                got: dict[str, Round] = {}
                for side in order:
                    prefix = f"tp{c}-{side[:3]}-{tag}"
                    if warm:  # the pool full again: no refill overlaps this round (or a warm round starts full)
                        await wait_warm_full(session, cp, warm)
                    if side == "raw":
                        got[side] = await asyncio.to_thread(raw_round, apis, controller_id, pool, prefix, n, dpids)
                    else:
                        job_pool = WARM_POOL if side == "warm" else "default"
                        got[side] = await controller_round(session, cp, destroyed, prefix, n, dpids, job_pool)
                if r >= 0:
                    rounds.append((got, " -> ".join(order)))
                    figures = ", ".join(f"{side} {got[side].per_min:.0f}/min" for side in sides)
                    served = got["warm"].served if "warm" in got else None
                    print(
                        f"  C={c} round {r} ({' -> '.join(order)}): {figures}"
                        + (f" (warm side served {served['warm']} warm, {served['cold']} cold)" if served else ""),
                        flush=True,
                    )
        rss_kib = _rss_kib(cp.pid)
    finally:
        code = stop_controller_process(cp)
        for api in apis:
            api.close()
    if code != 0:
        raise RuntimeError(f"controller exited {code} on SIGTERM; see {directory / 'controller.log'}")
    return rounds, rss_kib / 1024


def _rss_kib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    return float("nan")


def report(c: int, pairs: list[tuple[Round, Round, str]], rss_mib: float, jobs: int, side: str = "ctl") -> float:
    rows = []
    for i, (ctl, raw, order) in enumerate(pairs):
        rows.append(
            [
                f"round {i}",
                order,
                raw.per_min,
                ctl.per_min,
                ctl.per_min / raw.per_min,
                ctl.own_cpu_s / ctl.jobs * 1000,
                raw.own_cpu_s / raw.jobs * 1000,
                raw.docker_cpu_s / raw.jobs * 1000,
                ctl.docker_cpu_s / ctl.jobs * 1000,
            ]
        )
    ratio = median([ctl.per_min / raw.per_min for ctl, raw, _ in pairs])
    rows.append(
        [
            "median",
            "",
            median([raw.per_min for _, raw, _ in pairs]),
            median([ctl.per_min for ctl, _, _ in pairs]),
            ratio,
            median([ctl.own_cpu_s / ctl.jobs * 1000 for ctl, _, _ in pairs]),
            median([raw.own_cpu_s / raw.jobs * 1000 for _, raw, _ in pairs]),
            median([raw.docker_cpu_s / raw.jobs * 1000 for _, raw, _ in pairs]),
            median([ctl.docker_cpu_s / ctl.jobs * 1000 for ctl, _, _ in pairs]),
        ]
    )
    print(
        f"C={c}, side {side}: {jobs} jobs at once per round, `echo hi`; jobs/min from first webhook (first create) to "
        "last final"
    )
    print(
        table(
            [
                "",
                "order",
                "raw jobs/min",
                f"{side} jobs/min",
                "ratio",
                f"{side} CPU ms/job",
                "raw loop CPU ms/job",
                "dockerd+containerd ms/job raw",
                f"... {side}",
            ],
            rows,
        )
    )
    print(f"C={c}: controller process RSS at the end {rss_mib:.1f} MiB")
    return ratio


async def run(args: argparse.Namespace) -> int:
    controller_id = new_controller_id()
    client = docker.from_env()
    client.images.get(args.image)
    dpids = find_pids("dockerd", "containerd")
    print(machine_line())
    print(
        f"controller_id={controller_id} image={args.image} data dir under {args.tmpdir or tempfile.gettempdir()} "
        f"dockerd/containerd pids={dpids}"
    )
    events_client = docker.from_env()
    destroyed = Destroyed(events_client, controller_id)
    results: dict[int, tuple[list[tuple[dict[str, Round], str]], float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-throughput-", dir=args.tmpdir) as tmp:
            for c in args.concurrency:
                results[c] = await run_concurrency(args, c, controller_id, client, destroyed, Path(tmp), dpids)
    finally:
        destroyed.close()
        try:
            check_no_leftovers(client, controller_id)
        finally:
            events_client.close()
            client.close()
    argv = ["--jobs", str(args.jobs), "--rounds", str(args.rounds), "--warmup-jobs", str(args.warmup_jobs)]
    argv += ["--concurrency", *map(str, args.concurrency), "--sides", *args.sides]
    if args.warm_count:
        argv += ["--warm-count", str(args.warm_count)]
    if args.refill_concurrency:
        argv += ["--refill-concurrency", str(args.refill_concurrency)]
    if args.tmpdir:
        argv += ["--tmpdir", args.tmpdir]
    print(reproduce_line("bench/bench_throughput.py", argv))
    print(f"at the end, {machine_line()}")  # the load others put on the machine during the run
    for c, (rounds, rss) in results.items():
        if "controller" in args.sides:
            pairs = [(got["controller"], got["raw"], order) for got, order in rounds]
            ratio = report(c, pairs, rss, args.jobs)
            verdict = "met" if ratio >= 0.8 else "NOT met"
            print(f"result C={c}: controller/raw = {ratio:.2f}x (goal >= 0.8x: {verdict})")
        if "warm" in args.sides:
            pairs = [(got["warm"], got["raw"], order) for got, order in rounds]
            ratio = report(c, pairs, rss, args.jobs, side="warm")
            served = [got["warm"].served or {} for got, _ in rounds]
            warm_n = sum(x.get("warm", 0) for x in served)
            cold_n = sum(x.get("cold", 0) for x in served)
            print(
                f"C={c}, warm = {args.warm_count or c}: measured warm rounds served {warm_n} jobs warm, {cold_n} cold "
                f"(of {args.jobs * len(rounds)})"
            )
            verdict = "met" if ratio >= 1.5 else "NOT met"
            print(f"result C={c}: warm/raw = {ratio:.2f}x (warm-pool goal >= 1.5x: {verdict})")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100, help="jobs sent at once per round and side")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per side and concurrency")
    parser.add_argument("--warmup-jobs", type=int, default=16, help="jobs in the unmeasured warm-up round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16], help="C: pool max_concurrent")
    parser.add_argument(
        "--sides",
        nargs="+",
        choices=["controller", "warm", "raw"],
        default=["controller", "raw"],
        help="sides to run, in this order in round 0 (raw is the baseline and must be one of them)",
    )
    parser.add_argument("--warm-count", type=int, default=None, help="warm side: the pool's `warm` (default: C)")
    parser.add_argument(
        "--refill-concurrency", type=int, default=None, help="warm side: warm_refill_concurrency (default: product's)"
    )
    parser.add_argument("--tmpdir", default=None, help="parent of the data dir (default: $TMPDIR)")
    parser.add_argument("--image", default=TEST_IMAGE)
    args = parser.parse_args()
    if "raw" not in args.sides or len(set(args.sides)) != len(args.sides):
        parser.error("--sides: each side at most once, raw (the baseline) among them")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
