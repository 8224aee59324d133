"""Signed webhooks accepted per second by the real controller vs a bare aiohttp handler (goal: >= 0.5x).

Why: the intake issue asks that authentication and durable storage cost at most half the throughput of the
cheapest possible aiohttp endpoint on the same machine.

Three sides, served on 127.0.0.1 the way `orchestrator serve` serves them (AppRunner, no access log; `--log
json`, the default, also writes the controller's JSON log lines at level info, to a file in the temp dir instead
of journald):

* bare: one aiohttp handler in this process that reads the body and returns 202 JSON.
* controller: `build_controller` + `build_app` in this process, standard-webhooks source, data dir (SQLite WAL,
  synchronous=FULL) in a temp dir, webhooks posted to its main port, served by its event loop. Every request
  takes the full intake path: size cap, HMAC verify, JSON parse, pydantic validation, dedupe, durable insert,
  signed audit record, enqueue, 202.
* workers (`--intake-workers N`, default 2; 0 leaves this side out): the same controller's `webhook_port`,
  served by N intake worker processes (size cap and HMAC there; the rest in the controller, as above). Its
  server CPU includes the workers'.

Jobs must not actually run during the measurement, so the pool has `max_concurrent = 1` and one blocker job
(`sleep 600`) is started first; every benchmark job then waits in the (large) queue. At the end the app is shut
down the way SIGTERM does it (`on_shutdown` -> `scheduler.shutdown(0)`, then the workers): dispatch stops, the
blocker is cancelled and its container removed; queued jobs stay `queued` in the temporary store, which is
deleted. The script then checks that every 202 was durably stored and that no container with this run's
controller id is left.

The load generator is a separate process (multiprocessing, spawn): pre-built, pre-signed HTTP/1.1 requests on
raw keep-alive sockets (`--generator raw`, ~0.05 ms CPU per request), or an aiohttp client (`--generator
aiohttp`, 0.2-0.3 ms per request, which on a 2-core machine takes the bare server's core). Rounds rotate the
order of the sides, and ratios are taken per round, then the median, because the machine may be shared.

Throughput is what a server sustains when it is saturated, so each side is measured at several sender counts
(default 32, 64, 128, 256, interleaved within every round) and the result compares each side's best median
rate. The sides saturate differently: the bare handler keeps its core busy from a few dozen senders on, while
every controller 202 waits for an fsync'ed group commit (~10 ms at 32 senders), so with few senders the
controller idles between commits and the figure measures that latency rather than its capacity. The ratio at
each sender count is printed as well, next to the latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import docker
from _support import (
    SOURCE,
    TEST_IMAGE,
    BenchController,
    check_no_leftovers,
    configure_logging,
    job_spec,
    machine_line,
    median,
    new_controller_id,
    pct,
    proc_cpu_seconds,
    reproduce_line,
    serve,
    signed,
    start_controller,
    table,
)
from aiohttp import web

from orchestrator.config import Config

# -- load generator (runs in the child process) --------------------------------------------------------------


def run_load(url: str, key: bytes, count: int, concurrency: int, id_prefix: str, generator: str) -> dict[str, Any]:
    """Send `count` signed webhooks with `concurrency` senders; returns wall time, statuses, latencies (ms)."""
    requests = [signed(key, job_spec(f"{id_prefix}-{i}", ["true"])) for i in range(count)]
    if generator == "raw":
        return asyncio.run(_load_raw(url, requests, concurrency))
    return asyncio.run(_load(url, requests, concurrency))


class _RawSender(asyncio.Protocol):
    """One keep-alive connection sending pre-built HTTP/1.1 requests one after another. It parses no more of an
    answer than the status and Content-Length, so it costs a fraction of the server's CPU per request; an
    aiohttp client costs more than the bare handler it loads, and on a 2-core machine it would take the core the
    servers need."""

    def __init__(self, work: _RawWork, done: asyncio.Future[None]) -> None:
        self.work, self.done = work, done
        self.buffer = b""
        self.index = -1
        self.waiting = False
        self.started = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send_next()

    def _send_next(self) -> None:
        assert self.transport is not None
        item = next(self.work.order, None)
        if item is None:
            self.transport.close()
            return
        self.index, self.waiting = item, True
        self.started = time.perf_counter()
        self.transport.write(self.work.requests[item])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1").lower()
        if "transfer-encoding:" in head:
            raise RuntimeError("chunked answers are not expected from either server")
        length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0]) if "content-length:" in head else 0
        if len(self.buffer) < end + 4 + length:
            return
        if len(self.buffer) > end + 4 + length:
            raise RuntimeError("an answer arrived before its request was sent")
        self.buffer, self.waiting = b"", False
        self.work.statuses[int(head[9:12])] += 1
        self.work.latencies[self.index] = (time.perf_counter() - self.started) * 1000
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            self.work.statuses[0] += 1  # 0: closed before the answer came; the run is flagged as not valid
        if not self.done.done():
            self.done.set_result(None)


@dataclass
class _RawWork:
    requests: list[bytes]
    order: Iterator[int]
    statuses: Counter[int]
    latencies: list[float]


async def _load_raw(url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int) -> dict[str, Any]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    wire = []
    for body, headers in requests:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{lines}Content-Length: {len(body)}\r\n\r\n"
        wire.append(head.encode() + body)
    work = _RawWork(wire, iter(range(len(wire))), Counter(), [0.0] * len(wire))
    loop = asyncio.get_running_loop()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    done: list[asyncio.Future[None]] = []
    for _ in range(concurrency):
        finished: asyncio.Future[None] = loop.create_future()
        done.append(finished)
        await loop.create_connection(functools.partial(_RawSender, work, finished), parts.hostname, parts.port)
    await asyncio.gather(*done)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {"wall": wall, "statuses": dict(work.statuses), "latencies": work.latencies, "client_cpu": cpu}


async def _load(url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int) -> dict[str, Any]:
    latencies = [0.0] * len(requests)
    statuses: Counter[int] = Counter()
    order = iter(range(len(requests)))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender() -> None:
            for i in order:
                body, headers = requests[i]
                t = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
                latencies[i] = (time.perf_counter() - t) * 1000

        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    return {"wall": wall, "statuses": dict(statuses), "latencies": latencies, "client_cpu": cpu}


# -- servers (this process) ------------------------------------------------------------------------------------


def bare_app() -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"job_id": "bare", "status": "queued"}, status=202)

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/webhooks/{source}", handle)
    return app


async def wait_running(bc: BenchController, job_id: str, timeout: float = 60) -> None:
    headers = {"Authorization": f"Bearer {bc.token}"}
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{bc.url}/api/v1/jobs/{job_id}", headers=headers) as resp:
                job = await resp.json()
            if job["status"] == "running":
                return
            if job["status"] not in {"queued", "starting"} or time.monotonic() > deadline:
                raise RuntimeError(f"blocker job did not start: {job}")
            await asyncio.sleep(0.05)


@dataclass
class Round:
    side: str
    senders: int
    rate: float
    p50: float
    p99: float
    server_cpu_ms: float
    client_cpu_ms: float
    statuses: dict[int, int]
    threads: dict[str, float]


def thread_cpu() -> dict[str, float]:
    """CPU seconds per live thread of this process, by Python thread name (from /proc, user + system)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            cpu = proc_cpu_seconds(task / "stat")
        except OSError:
            continue
        name = names.get(int(task.name), "other")
        name = name.split("_")[0] if name.startswith(("asyncio_", "sqlite_", "docker_")) else name
        out[name] = out.get(name, 0.0) + cpu
    return out


async def measure(
    pool: ProcessPoolExecutor,
    url: str,
    key: bytes,
    count: int,
    concurrency: int,
    prefix: str,
    side: str,
    generator: str,
    workers: list[int],
) -> Round:
    """One batch of `count` signed webhooks; server CPU is this process plus the intake worker processes."""
    loop = asyncio.get_running_loop()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    threads0 = thread_cpu()
    workers0 = _cpu_of(workers)
    res = await loop.run_in_executor(pool, run_load, url, key, count, concurrency, prefix, generator)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    threads1 = thread_cpu()
    per_thread = {k: (v - threads0.get(k, 0.0)) * 1000 / count for k, v in threads1.items()}
    if workers:
        per_thread["intake workers (processes)"] = (_cpu_of(workers) - workers0) * 1000 / count
    server_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime) + _cpu_of(workers) - workers0
    lat = res["latencies"]
    return Round(
        side=side,
        senders=concurrency,
        rate=count / res["wall"],
        p50=pct(lat, 50),
        p99=pct(lat, 99),
        server_cpu_ms=server_cpu * 1000 / count,
        client_cpu_ms=res["client_cpu"] * 1000 / count,
        statuses={int(k): v for k, v in res["statuses"].items()},
        threads={k: v for k, v in per_thread.items() if v >= 0.005},
    )


def _cpu_of(pids: list[int]) -> float:
    return sum(proc_cpu_seconds(Path(f"/proc/{pid}/stat")) for pid in pids)


def _worker_pids(bc: BenchController) -> list[int]:
    listener = bc.controller.webhook_listener
    return [] if listener is None else [w.process.pid for w in listener.workers.values()]


async def run(args: argparse.Namespace) -> int:
    controller_id = new_controller_id()
    client = docker.from_env()
    client.images.get(args.image)
    print(machine_line())
    print(f"controller_id={controller_id} image={args.image} data dir under {args.tmpdir or tempfile.gettempdir()}")
    accepted = 0
    blocker_id = f"blocker-{controller_id}"
    rounds: list[Round] = []
    sides = ["bare", "controller"] + (["workers"] if args.intake_workers else [])
    try:
        with tempfile.TemporaryDirectory(prefix="bench-intake-", dir=args.tmpdir) as tmp:
            directory = Path(tmp)
            configure_logging(args.log, directory)
            # Every measured request must be a 202: lift the queue caps (per pool, and the controller-wide one
            # where this version has it) above what the run sends.
            total = (2 * args.warmup + args.rounds * len(args.concurrency) * args.requests) * (len(sides) - 1) + 1
            top: dict[str, Any] = {"max_queued_total": total + 1} if "max_queued_total" in Config.model_fields else {}
            if args.intake_workers:
                server = {"host": "127.0.0.1", "port": 0, "max_body_bytes": 64 * 1024, "webhook_port": 0}
                top["server"] = {**server, "intake_workers": args.intake_workers}
            bc = await start_controller(
                directory,
                controller_id,
                top=top,
                image=args.image,
                max_concurrent=1,
                max_queue=total + 1,
                default_timeout_s=300,
            )
            bare = await serve(bare_app())
            try:
                async with aiohttp.ClientSession() as session:
                    body, headers = signed(bc.key, job_spec(blocker_id, ["sleep 600"]))
                    async with session.post(f"{bc.url}/webhooks/{SOURCE}", data=body, headers=headers) as resp:
                        assert resp.status == 202, await resp.text()
                await wait_running(bc, blocker_id)
                skip_parts(bc, args.skip)
                workers = _worker_pids(bc)
                targets = {"bare": f"{bare.url}/webhooks/{SOURCE}", "controller": f"{bc.url}/webhooks/{SOURCE}"}
                if bc.controller.webhook_listener is not None:
                    targets["workers"] = f"{bc.controller.webhook_listener.url}/webhooks/{SOURCE}"
                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                    for side in sides:  # warm-up: imports, connections, SQLite pages
                        for senders in (min(args.concurrency), max(args.concurrency)):
                            prefix = f"warm{senders}-{side}"
                            gen = args.generator
                            warm = await measure(
                                pool, targets[side], bc.key, args.warmup, senders, prefix, side, gen, workers
                            )
                            if side != "bare":
                                accepted += warm.statuses.get(202, 0)
                    # Rounds outermost: every sender count is measured across the whole run, so a change in the
                    # machine's speed during the run touches all of them alike. The sides take turns going first.
                    for r in range(args.rounds):
                        for senders in args.concurrency:
                            for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
                                prefix = f"c{senders}-r{r}-{side}"
                                n, gen = args.requests, args.generator
                                res = await measure(pool, targets[side], bc.key, n, senders, prefix, side, gen, workers)
                                rounds.append(res)
                                if side != "bare":
                                    accepted += res.statuses.get(202, 0)
                queued = bc.controller.scheduler.queue_depth()
                blocker_alive = bc.controller.scheduler.is_running(blocker_id)
                restarts = 0 if bc.controller.webhook_listener is None else bc.controller.webhook_listener.restarts
            finally:
                await bare.runner.cleanup()
                # The SIGTERM path: stop dispatching, cancel the blocker, remove its container, stop the intake
                # workers, close the store.
                await bc.served.runner.cleanup()
            with sqlite3.connect(directory / "data" / "jobs.sqlite3") as db:
                states = dict(db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
                blocker_state, blocker_reason = db.execute(
                    "SELECT state, reason FROM jobs WHERE id = ?", (blocker_id,)
                ).fetchone()
    finally:
        try:
            check_no_leftovers(client, controller_id)
        finally:
            client.close()

    levels = ",".join(str(n) for n in args.concurrency)
    argv = ["--requests", str(args.requests), "--concurrency", levels, "--rounds", str(args.rounds)]
    argv += ["--warmup", str(args.warmup), "--log", args.log, "--generator", args.generator]
    argv += ["--intake-workers", str(args.intake_workers)]
    if args.skip:
        argv += ["--skip", ",".join(args.skip)]
    if args.tmpdir:
        argv += ["--tmpdir", args.tmpdir]
    print(reproduce_line("bench/bench_intake.py", argv))
    bad = {side: dict(c) for side, c in _non_202(rounds).items() if c}
    # Every 202 must be a durable row (queued: dispatch was stopped before the blocker ended).
    stored_ok = blocker_alive and queued == accepted == states.get("queued", 0) and blocker_state == "cancelled"
    if "store" in args.skip:  # nothing was stored on purpose; only the blocker's row is there
        stored_ok = blocker_alive and queued == accepted and blocker_state == "cancelled"
    print(
        f"store check {'ok' if stored_ok else 'FAILED'}: {accepted} x 202 from the controller, {queued} queued in "
        f"memory, rows by state {states}, blocker {'running' if blocker_alive else 'NOT running'} until the "
        f"end, then {blocker_state} ({blocker_reason}); intake worker restarts: {restarts}"
    )
    rows = []
    peak: dict[str, tuple[float, int]] = {}
    same: dict[str, dict[int, float]] = {side: {} for side in sides[1:]}
    for senders in args.concurrency:
        by_side = {side: [x for x in rounds if x.senders == senders and x.side == side] for side in sides}
        for side, side_rounds in by_side.items():
            rate = median([x.rate for x in side_rounds])
            if rate > peak.get(side, (0.0, 0))[0]:
                peak[side] = (rate, senders)
            ratios = [x.rate / b.rate for x, b in zip(side_rounds, by_side["bare"], strict=True)]
            if side != "bare":
                same[side][senders] = median(ratios)
            rows.append(
                [
                    senders,
                    side,
                    rate,
                    "" if side == "bare" else f"{median(ratios):.2f}",
                    "" if side == "bare" else " ".join(f"{r:.2f}" for r in ratios),
                    median([x.p50 for x in side_rounds]),
                    median([x.p99 for x in side_rounds]),
                    median([x.server_cpu_ms for x in side_rounds]),
                    median([x.client_cpu_ms for x in side_rounds]),
                ]
            )
    print(
        f"{args.rounds} rounds x {len(args.concurrency)} sender counts x {args.requests} requests per side, "
        f"generator={args.generator}, log={args.log}, intake_workers={args.intake_workers}; medians per sender "
        "count; ratio = side / bare in the same round; latencies in ms; CPU in ms per request"
    )
    headers = ["senders", "side", "req/s", "ratio", "ratio per round", "p50", "p99", "server cpu", "gen cpu"]
    print(table(headers, rows))
    print(
        "(bare: the bare aiohttp handler; controller: POST /webhooks on the controller's port, served by its "
        "event loop; workers: the same on webhook_port, served by the intake worker processes; server cpu: "
        "this process, all threads, plus the intake workers; gen cpu: the load generator process)"
    )
    for side in sides[1:]:
        side_rounds = [x for x in rounds if x.side == side]
        names = {n for x in side_rounds for n in x.threads}
        by_thread = {n: median([x.threads.get(n, 0.0) for x in side_rounds]) for n in names}
        print(
            table(
                [f"{side}: CPU ms per request by thread (median)", "ms"],
                [[n, ms] for n, ms in sorted(by_thread.items(), key=lambda item: -item[1])],
            )
        )
    bare_rate, bare_at = peak["bare"]
    results = {side: peak[side][0] / bare_rate for side in sides[1:]}
    if args.skip:
        text = ", ".join(f"{side}/bare = {ratio:.2f}x" for side, ratio in results.items())
        print(f"DIAGNOSTIC run without {', '.join(args.skip)}: {text} -- not a result")
        return 1 if bad or not stored_ok else 0
    for side in sides[1:]:
        same_text = ", ".join(f"{n} senders {r:.2f}x" for n, r in same[side].items())
        print(f"{side}, same number of senders: {same_text}")
    for side, ratio in results.items():
        rate, at = peak[side]
        print(
            f"result {side}: peak rates, {side} {rate:.0f} req/s ({at} senders) / bare {bare_rate:.0f} req/s "
            f"({bare_at} senders) = {ratio:.2f}x (goal >= 0.5x: {'met' if ratio >= 0.5 else 'NOT met'})"
        )
    if bad:
        print(f"WARNING: non-202 answers {bad}; the run is not valid")
        return 1
    if not stored_ok:
        print("WARNING: the store does not hold exactly the accepted jobs; the run is not valid")
        return 1
    return 0


def skip_parts(bc: BenchController, parts: list[str]) -> None:
    """Diagnostic only (`--skip`): replaces parts of the accept path with no-ops after the blocker job started,
    to show what each part costs. A run with anything skipped is never a benchmark result."""
    controller = bc.controller
    if "audit" in parts:
        controller.auditor._record = lambda *args, **kwargs: None  # type: ignore[method-assign]
    if "store" in parts:

        async def create_nothing(job: Any) -> tuple[Any, bool]:
            return job, True

        controller.intake.store.create = create_nothing  # type: ignore[method-assign]


def _non_202(rounds: list[Round]) -> dict[str, Counter[int]]:
    bad: dict[str, Counter[int]] = {}
    for r in rounds:
        counts = Counter({k: v for k, v in r.statuses.items() if k != 202})
        bad.setdefault(r.side, Counter()).update(counts)
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per side per round")
    parser.add_argument(
        "--concurrency",
        type=lambda text: sorted({int(n) for n in text.split(",") if n}),
        default=[32, 64, 128, 256],
        help="comma list of sender counts; each side's peak rate over them is compared (default 32,64,128,256)",
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=300, help="requests per side before measuring")
    parser.add_argument(
        "--generator",
        choices=["raw", "aiohttp"],
        default="raw",
        help="load generator: pre-built requests on raw keep-alive sockets (default), or an aiohttp client",
    )
    parser.add_argument("--log", choices=["json", "none"], default="json", help="controller log lines at info")
    parser.add_argument(
        "--tmpdir", default=None, help="parent of the data dir (default: $TMPDIR); /dev/shm shows the no-fsync ceiling"
    )
    parser.add_argument("--image", default=TEST_IMAGE, help="runner image for the blocker job")
    parser.add_argument(
        "--intake-workers",
        type=int,
        default=2,
        help="also measure webhook_port served by this many intake worker processes (0: only the main port)",
    )
    parser.add_argument(
        "--skip",
        type=lambda text: [p for p in text.split(",") if p],
        default=[],
        help="DIAGNOSTIC: comma list of accept-path parts to replace by no-ops (audit, store) to see their cost",
    )
    args = parser.parse_args()
    if unknown := set(args.skip) - {"audit", "store"}:
        parser.error(f"--skip takes audit and/or store, not {', '.join(sorted(unknown))}")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
