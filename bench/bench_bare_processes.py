"""The bare aiohttp handler of bench_intake in one process vs two processes sharing the port (SO_REUSEPORT).

Why: an upper bound for moving intake into several processes -- how much of a second core an aiohttp server can
use on this machine, with the same lean load generator and 128 senders. Prints the rates of each run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import bench_intake as b
from _support import free_port, machine_line, median, reproduce_line
from aiohttp import web


def serve_proc(port: int, ready: multiprocessing.synchronize.Event) -> None:
    async def main() -> None:
        app = b.bare_app()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=True)
        await site.start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def measure(port: int, n: int, conc: int) -> float:
    res = b.run_load(f"http://127.0.0.1:{port}/webhooks/x", b"k" * 32, n, conc, f"p{time.time_ns()}", "raw")
    return float(n / res["wall"])


def main() -> None:
    print(machine_line())
    print(reproduce_line("bench/bench_bare_processes.py", []))
    ctx = multiprocessing.get_context("spawn")
    results: dict[int, list[float]] = {1: [], 2: []}
    for procs in (1, 2, 1, 2):  # alternated: the machine's speed drifts
        port = free_port()
        servers = []
        for _ in range(procs):
            ready = ctx.Event()
            server = ctx.Process(target=serve_proc, args=(port, ready))
            server.start()
            ready.wait()
            servers.append(server)
        measure(port, 2000, 128)  # warm-up
        rates = [measure(port, 4000, 128) for _ in range(3)]
        results[procs] += rates
        print(f"{procs} process(es): {', '.join(f'{r:.0f}' for r in rates)} req/s")
        for server in servers:
            server.terminate()
            server.join()
    print(f"result: two processes / one = {median(results[2]) / median(results[1]):.2f}x (medians)")


if __name__ == "__main__":
    main()
