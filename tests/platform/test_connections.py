"""Connection limits and deadlines (orchestrator/platform/connections.py) on a real aiohttp server on 127.0.0.1:
no Docker."""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import requests
import urllib3
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from orchestrator.platform.connections import (
    BASE_RESERVE,
    DOCKER_RESERVE,
    MIN_CONNECTIONS,
    PER_JOB_RESERVE,
    ConnectionLimits,
    GuardedAppRunner,
    controller_reserve,
    plan_descriptors,
)
from orchestrator.platform.serving import app_runner
from orchestrator.runtime.docker_engine import EngineError, _explain, out_of_descriptors

# -- the descriptor budget (pure) ---------------------------------------------------------------------------------


def test_plan_keeps_the_reserve_and_splits_the_rest() -> None:
    plan = plan_descriptors(1024, wanted=1024, listeners=2, reserved=controller_reserve(16))
    assert plan.reserved == BASE_RESERVE + DOCKER_RESERVE + 16 * PER_JOB_RESERVE
    assert plan.per_listener == (1024 - plan.reserved) // 2
    assert plan.warnings and f"raise it to at least {plan.reserved + 2048}" in plan.warnings[0]


def test_plan_gives_what_is_asked_when_the_limit_allows() -> None:
    plan = plan_descriptors(65536, wanted=1024, listeners=2, reserved=400)
    assert (plan.per_listener, plan.warnings) == (1024, ())


def test_plan_never_goes_below_a_minimum_and_says_so() -> None:
    plan = plan_descriptors(256, wanted=1024, listeners=1, reserved=300)
    assert plan.per_listener == MIN_CONNECTIONS
    assert len(plan.warnings) == 2 and "jobs may fail" in plan.warnings[1]


async def test_the_private_parts_of_aiohttp_the_guard_reads_still_exist() -> None:
    """The guard reads these; an aiohttp upgrade that renames them must fail here, not in production."""
    server = web.Server(lambda request: None)  # type: ignore[arg-type,return-value]
    assert isinstance(server._kwargs, dict)
    handler = RequestHandler(server, loop=asyncio.get_running_loop())
    for name in ("_request_count", "_request_in_progress", "_messages", "_loop"):
        assert hasattr(handler, name), name


# -- a guarded server on loopback -----------------------------------------------------------------------------------

Serve = Callable[..., Any]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[GuardedAppRunner] = []

    async def start(limits: ConnectionLimits, *, slow_s: float = 0.0) -> tuple[int, GuardedAppRunner]:
        async def hello(request: web.Request) -> web.Response:
            if slow_s:
                await asyncio.sleep(slow_s)
            return web.Response(text="hello")

        app = web.Application()
        app.router.add_get("/", hello)
        runner = app_runner(app, limits=limits)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return site._server.sockets[0].getsockname()[1], runner  # type: ignore[union-attr]

    yield start
    for runner in runners:
        await runner.cleanup()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed."""
    began = time.monotonic()
    data = await asyncio.wait_for(reader.read(), seconds)
    return data, time.monotonic() - began


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_half_a_request_line_is_answered_408_and_closed(serve: Serve) -> None:
    port, runner = await serve(ConnectionLimits(header_timeout_s=0.3))
    reader, writer = await _connect(port)
    writer.write(b"GET /health")
    data, took = await _closed_within(reader, 5)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b'"reason": "header_timeout"' in data
    assert 0.25 < took < 2
    assert runner.guard.head_timeouts == 1 and len(runner.guard) == 0


async def test_a_connection_that_sends_nothing_is_closed(serve: Serve) -> None:
    port, _ = await serve(ConnectionLimits(header_timeout_s=0.3))
    reader, _ = await _connect(port)
    data, took = await _closed_within(reader, 5)
    assert data.startswith(b"HTTP/1.1 408") and took < 2


async def test_one_header_line_at_a_time_does_not_keep_a_connection(serve: Serve) -> None:
    """The slowloris the red team used: a header line every 2 s kept the connection forever."""
    port, _ = await serve(ConnectionLimits(header_timeout_s=0.6, keepalive_timeout_s=60))
    reader, writer = await _connect(port)
    writer.write(b"GET / HTTP/1.1\r\n")
    began = time.monotonic()
    closed = asyncio.ensure_future(reader.read())
    for n in range(40):
        if closed.done():
            break
        try:
            writer.write(b"X-Slow-%d: 1\r\n" % n)
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0.1)
    data = await asyncio.wait_for(closed, 5)
    assert data.startswith(b"HTTP/1.1 408") and time.monotonic() - began < 2


async def test_a_complete_request_is_served_and_kept_alive_until_idle(serve: Serve) -> None:
    port, runner = await serve(ConnectionLimits(header_timeout_s=0.3, keepalive_timeout_s=0.8))
    reader, writer = await _connect(port)
    for _ in range(3):  # slower than the head deadline in total, each head complete at once
        writer.write(GET)
        assert (await reader.readuntil(b"hello")).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.2)
    data, took = await _closed_within(reader, 5)  # then idle: closed after the keep-alive time, no answer
    assert data == b"" and 0.4 < took < 2
    assert runner.guard.head_timeouts == 0


async def test_a_kept_alive_connection_gets_the_head_deadline_from_its_next_first_byte(serve: Serve) -> None:
    port, _ = await serve(ConnectionLimits(header_timeout_s=0.4, keepalive_timeout_s=30))
    reader, writer = await _connect(port)
    writer.write(GET)
    await reader.readuntil(b"hello")
    await asyncio.sleep(0.6)  # idle longer than the head deadline: fine, it is kept alive
    writer.write(b"GET / HT")
    data, took = await _closed_within(reader, 5)
    assert data.startswith(b"HTTP/1.1 408") and 0.35 < took < 2


async def test_at_the_cap_the_oldest_idle_connection_makes_room(serve: Serve) -> None:
    port, runner = await serve(ConnectionLimits(max_connections=16, header_timeout_s=30))
    idle = []
    for _ in range(40):
        reader, writer = await _connect(port)
        writer.write(b"GET /")
        idle.append((reader, writer))
    await asyncio.sleep(0.2)
    assert len(runner.guard) <= 16 and runner.guard.shed >= 24
    began = time.monotonic()
    reader, writer = await _connect(port)
    writer.write(GET)
    assert (await asyncio.wait_for(reader.readuntil(b"hello"), 2)).startswith(b"HTTP/1.1 200")
    assert time.monotonic() - began < 1
    assert await asyncio.wait_for(idle[0][0].read(), 2) == b""  # the oldest went first
    assert not idle[-1][0].at_eof()  # the newest are still open


async def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused_with_503(serve: Serve) -> None:
    port, runner = await serve(ConnectionLimits(max_connections=16), slow_s=3)
    busy = []
    for _ in range(16):
        reader, writer = await _connect(port)
        writer.write(GET)
        busy.append((reader, writer))
    await asyncio.sleep(0.3)
    reader, _ = await _connect(port)
    data = await asyncio.wait_for(reader.read(), 2)
    assert data.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in data and b"too_many_connections" in data
    assert runner.guard.refused == 1
    for reader, _ in busy:  # nobody busy was cut off
        assert (await asyncio.wait_for(reader.readuntil(b"hello"), 10)).startswith(b"HTTP/1.1 200")


# -- the Docker adapter tells our shortage from the engine's --------------------------------------------------------


def _wrapped_like_requests() -> BaseException:
    cause = OSError(errno.EMFILE, "Too many open files")
    inner = urllib3.exceptions.ProtocolError("Connection aborted.", cause)
    outer = requests.exceptions.ConnectionError(inner)
    outer.__cause__ = inner
    return outer


def test_out_of_descriptors_is_found_however_it_is_wrapped() -> None:
    assert out_of_descriptors(_wrapped_like_requests())
    assert out_of_descriptors(OSError(errno.ENFILE, "file table overflow"))
    assert not out_of_descriptors(requests.exceptions.ConnectionError("connection refused"))
    assert not out_of_descriptors(OSError(errno.ECONNREFUSED, "refused"))


def test_running_out_of_descriptors_is_retried_and_not_blamed_on_the_engine() -> None:
    explained = _explain(_wrapped_like_requests())
    assert isinstance(explained, EngineError) and explained.transient
    assert "no file descriptor left" in str(explained)
