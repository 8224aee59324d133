"""PROTOTYPE, not product code: how fast signed-webhook intake could go with worker processes (option C for the
intake goal in docs/benchmarks.md), measured against the same one-process bare aiohttp handler as bench_intake.

Workers (`--workers` processes sharing one port, SO_REUSEPORT) do what `WebhookIntake` does up to the store: size
cap, HMAC verification, JSON + pydantic, admissibility. Then each passes (source, delivery id, remote, body) over
a Unix socket to the controller process, which runs the product's own `WebhookIntake.accept` on it (it trusts
the worker's signature check, not its objects: parse again, reserve a queue slot, the real SQLite group commit,
the signed audit record, enqueue, answer); the worker answers the sender with that. Everything else is the real
controller, built and checked as in bench_intake (blocker job, every 202 a stored row, no container left).

Left out, because a measurement does not need them: worker supervision and restarts, metrics and audit records
for the rejections a worker answers itself, the API on the workers' port, shutdown draining.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import pickle
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import docker
from _support import (
    SOURCE,
    TEST_IMAGE,
    check_no_leftovers,
    configure_logging,
    free_port,
    job_spec,
    machine_line,
    median,
    new_controller_id,
    proc_cpu_seconds,
    reproduce_line,
    serve,
    signed,
    start_controller,
    table,
)
from aiohttp import web
from bench_intake import bare_app, measure, wait_running

from orchestrator.app import Controller, app_runner
from orchestrator.config import Config
from orchestrator.intake.signatures import SignatureError, verify
from orchestrator.intake.webhooks import Rejected, check_admissible, parse_spec, read_capped

_HEADER = 4  # frame: 4-byte big-endian length, then a pickle


def _frame(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(payload).to_bytes(_HEADER, "big") + payload


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    size = int.from_bytes(await reader.readexactly(_HEADER), "big")
    return pickle.loads(await reader.readexactly(size))


# -- controller side ---------------------------------------------------------------------------------------------


async def _accept(
    controller: Controller, source: str, delivery: str | None, remote: str, body: bytes
) -> tuple[int, bytes]:
    """What the controller does after a worker verified the body: the product's own `WebhookIntake.accept`."""
    intake = controller.intake
    try:
        response = await intake.accept(source, delivery, remote, body)
    except Rejected as rej:
        response = intake.rejected(source, remote, rej)
    answer = response.body
    assert isinstance(answer, bytes)
    return response.status, answer


def _serve_workers(controller: Controller) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def one(rid: int, source: str, delivery: str | None, remote: str, body: bytes) -> None:
            status, answer = await _accept(controller, source, delivery, remote, body)
            writer.write(_frame((rid, status, answer)))

        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                task = asyncio.create_task(one(*await _read_frame(reader)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    return connection


# -- worker side (its own process) -------------------------------------------------------------------------------


def worker_main(port: int, sock_path: str, config: Config, sources: dict[str, tuple[str, tuple[bytes, ...]]]) -> None:
    asyncio.run(_worker(port, sock_path, config, sources))


async def _worker(port: int, sock_path: str, config: Config, sources: dict[str, tuple[str, tuple[bytes, ...]]]) -> None:
    reader, writer = await asyncio.open_unix_connection(sock_path)
    loop = asyncio.get_running_loop()
    pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
    ids = itertools.count()

    async def replies() -> None:
        while True:
            rid, status, body = await _read_frame(reader)
            pending.pop(rid).set_result((status, body))

    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.match_info["source"]
        try:
            if name not in sources:
                raise Rejected(404, "unknown_source", f"unknown webhook source {name!r}")
            scheme, secrets = sources[name]
            body = await read_capped(request, config.server.max_body_bytes)
            try:
                delivery = verify(scheme, secrets, request.headers, body, time.time())
            except SignatureError as exc:
                raise Rejected(401, exc.reason, exc.message) from None
            check_admissible(parse_spec(body), config, credentials_configured=False)
        except Rejected as rej:
            return web.json_response({"error": rej.message, "reason": rej.reason, **rej.extra}, status=rej.status)
        rid = next(ids)
        answer = pending[rid] = loop.create_future()
        writer.write(_frame((rid, name, delivery, request.remote or "", body)))
        status, reply = await answer
        return web.Response(body=reply, status=status, content_type="application/json", charset="utf-8")

    reading = asyncio.create_task(replies())
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app.router.add_post("/webhooks/{source}", handle)
    runner = app_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
    await reading


def _cpu_s(pid: int) -> float:
    return proc_cpu_seconds(Path(f"/proc/{pid}/stat"))


async def run(args: argparse.Namespace) -> int:
    controller_id = new_controller_id()
    client = docker.from_env()
    print(machine_line())
    print(reproduce_line("bench/prototype_intake_workers.py", sys.argv[1:]))
    ctx = multiprocessing.get_context("spawn")
    rows: list[list[float]] = []
    accepted = 0
    rates: dict[str, dict[int, list[tuple[float, float, float]]]] = {"bare": {}, "workers": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
            directory = Path(tmp)
            configure_logging("json", directory)
            total = 2 * args.warmup + args.rounds * len(args.concurrency) * args.requests + 1
            bc = await start_controller(
                directory,
                controller_id,
                top={"max_queued_total": total + 1},
                image=args.image,
                max_concurrent=1,
                max_queue=total + 1,
                default_timeout_s=300,
            )
            bare = await serve(bare_app())
            blocker = f"blocker-{controller_id}"
            async with aiohttp.ClientSession() as session:
                body, headers = signed(bc.key, job_spec(blocker, ["sleep 600"]))
                async with session.post(f"{bc.url}/webhooks/{SOURCE}", data=body, headers=headers) as resp:
                    assert resp.status == 202, await resp.text()
            await wait_running(bc, blocker)
            sock_path = str(directory / "intake.sock")
            server = await asyncio.start_unix_server(_serve_workers(bc.controller), path=sock_path)
            port = free_port()
            sources = {n: (s.scheme, s.secrets) for n, s in bc.controller.intake.sources.items()}
            workers = [
                ctx.Process(target=worker_main, args=(port, sock_path, bc.controller.config, sources))
                for _ in range(args.workers)
            ]
            for worker in workers:
                worker.start()
            await asyncio.sleep(3)  # spawn + imports; a worker not listening yet would only get fewer requests
            targets = {"bare": f"{bare.url}/webhooks/{SOURCE}", "workers": f"http://127.0.0.1:{port}/webhooks/{SOURCE}"}
            try:
                with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                    for side, url in targets.items():
                        for senders in (min(args.concurrency), max(args.concurrency)):
                            warm = await measure(
                                pool, url, bc.key, args.warmup, senders, f"w{senders}-{side}", side, "raw"
                            )
                            accepted += warm.statuses.get(202, 0) if side == "workers" else 0
                    for r in range(args.rounds):
                        for senders in args.concurrency:
                            for side in ["bare", "workers"] if r % 2 == 0 else ["workers", "bare"]:
                                cpu0 = sum(_cpu_s(w.pid) for w in workers if w.pid) + time.process_time()
                                res = await measure(
                                    pool,
                                    targets[side],
                                    bc.key,
                                    args.requests,
                                    senders,
                                    f"c{senders}-r{r}-{side}",
                                    side,
                                    "raw",
                                )
                                cpu = sum(_cpu_s(w.pid) for w in workers if w.pid) + time.process_time() - cpu0
                                if side == "workers":
                                    accepted += res.statuses.get(202, 0)
                                bad = {k: v for k, v in res.statuses.items() if k != 202}
                                if bad:
                                    print(f"WARNING: {side} answered {bad}")
                                rates[side].setdefault(senders, []).append(
                                    (res.rate, res.p50, cpu * 1000 / args.requests)
                                )
            finally:
                for worker in workers:
                    worker.terminate()
                    worker.join()
                server.close()
                await bare.runner.cleanup()
                await bc.served.runner.cleanup()
            with sqlite3.connect(directory / "data" / "jobs.sqlite3") as db:
                queued = db.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
    finally:
        check_no_leftovers(client, controller_id)
        client.close()
    for senders in args.concurrency:
        b, w = rates["bare"][senders], rates["workers"][senders]
        rows.append(
            [
                senders,
                median([x[0] for x in b]),
                median([x[0] for x in w]),
                median([x[0] for x in w]) / median([x[0] for x in b]),
                median([x[1] for x in b]),
                median([x[1] for x in w]),
                median([x[2] for x in w]),
            ]
        )
    print(f"{args.workers} workers, {args.rounds} rounds x {args.requests} requests per side and sender count")
    print(
        table(
            ["senders", "bare req/s", "workers req/s", "ratio", "bare p50", "workers p50", "ctl+workers cpu ms"], rows
        )
    )
    peak_bare = max(r[1] for r in rows)
    peak_workers = max(r[2] for r in rows)
    verdict = "ok" if queued == accepted else "FAILED"
    print(f"store check: {accepted} x 202 from the workers, {queued} queued rows -> {verdict}")
    ratio = peak_workers / peak_bare
    print(f"PROTOTYPE result: peak rates, workers {peak_workers:.0f} / bare {peak_bare:.0f} req/s = {ratio:.2f}x")
    return 0 if queued == accepted else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--concurrency", type=lambda text: sorted({int(n) for n in text.split(",") if n}), default=[32, 64, 128]
    )
    parser.add_argument("--image", default=TEST_IMAGE)
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
