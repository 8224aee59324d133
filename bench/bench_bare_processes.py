"""The bare aiohttp handler of bench_intake in one process vs two processes sharing the port (SO_REUSEPORT).

Why: an upper bound for moving intake into several processes -- how much of a second core an aiohttp server can
use on this machine, with the same lean load generator and 128 senders. Prints the rates of each run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.sharedctypes
import time

import bench_intake as b
from _support import machine_line, median, reproduce_line
from aiohttp import web


def serve_proc(port: multiprocessing.sharedctypes.Synchronized[int], ready: multiprocessing.synchronize.Event) -> None:
    """Serves on `port`; the first server finds it 0, binds a port the kernel chooses and sets it for the next."""

    async def main() -> None:
        app = b.bare_app()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port.value, reuse_port=True)
        await site.start()
        port.value = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
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
        shared = ctx.Value("i", 0)
        servers = []
        for _ in range(procs):  # one after the other: the first chooses the port, the others share it
            ready = ctx.Event()
            server = ctx.Process(target=serve_proc, args=(shared, ready))
            server.start()
            ready.wait()
            servers.append(server)
        port = shared.value
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
