"""How many connections a listener holds and how long it waits for them, and the file descriptors that costs.

Why: an unauthenticated client that opened ~1,100 connections and sent half a request line on each filled a
controller running with systemd's default soft limit of 1,024 descriptors. `/healthz` and signed webhooks timed
out, and the Docker socket could not be opened either, so a job that exited 0 was stored as `error`. aiohttp gives
a connection that never completes a request an hour (its keep-alive default), and caps nothing. Here, on every
listener (the controller's port, the webhook port, each intake worker):

* a request's head (request line and headers) must arrive within `header_timeout_s` of the connection opening,
  or of the head's first byte on a kept-alive connection: else 408 and the connection is closed;
* a kept-alive connection waiting for its next request is closed after `keepalive_timeout_s`;
* at most `max_connections` are open; one more closes the oldest idle connection (waiting for a head or between
  requests) to make room, or, when every one is busy with a request, is itself answered 503 and closed;
* `max_connections` is lowered at start-up so that every listener at its cap still leaves the descriptors the
  process needs for its jobs: the Docker socket's connections, attach streams, logs, the store.

The guard hooks into aiohttp's RequestHandler (a documented class of aiohttp.web) and reads three of its private
attributes, named in `_Guarded`; aiohttp is pinned and tests/platform/test_connections.py fails if they change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

# Descriptors a controller needs besides its listeners' connections: the interpreter, the event loop, SQLite (+WAL),
# the audit trail, keys, signal and worker pipes (BASE); Docker API calls in flight (the adapter's 32 threads) and
# the connections its client keeps (64) (DOCKER); per running job its attach stream, log file, a long-poll `wait`
# connection and one to Vault (PER_JOB).
BASE_RESERVE = 128 + 4 * 32  # and a few accept batches (serving.ACCEPT_BATCH) not yet seen by the guard
DOCKER_RESERVE = 32 + 64
PER_JOB_RESERVE = 4
WORKER_RESERVE = 64 + 4 * 32  # an intake worker: the interpreter, its loop, the listener, its link, accepts
MIN_CONNECTIONS = 16


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1024
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0


@dataclass(frozen=True)
class DescriptorPlan:
    """What a process may spend on connections under its descriptor limit (pure: see `plan_descriptors`)."""

    soft_limit: int
    reserved: int
    per_listener: int  # the cap each listener gets (never more than asked for)
    warnings: tuple[str, ...]


def plan_descriptors(soft_limit: int, *, wanted: int, listeners: int, reserved: int) -> DescriptorPlan:
    """Splits what the soft limit leaves after `reserved` between `listeners`, each at most `wanted`."""
    spare = max(soft_limit - reserved, 0)
    share = spare // max(listeners, 1)
    cap = max(min(wanted, share), MIN_CONNECTIONS)
    warnings = []
    needed = reserved + wanted * listeners
    if share < wanted:
        warnings.append(
            f"the soft limit on open files is {soft_limit}: each of {listeners} listener(s) is held to {cap} "
            f"connections instead of server.max_connections = {wanted}; raise it to at least {needed} "
            "(LimitNOFILE= in the systemd unit, `ulimit -n` in a shell)"
        )
    if share < MIN_CONNECTIONS:
        warnings.append(
            f"the soft limit on open files ({soft_limit}) leaves almost nothing for connections after the "
            f"{reserved} this process keeps for its jobs; under a flood of connections jobs may fail"
        )
    return DescriptorPlan(soft_limit, reserved, cap, tuple(warnings))


def controller_reserve(max_total_concurrent: int) -> int:
    return BASE_RESERVE + DOCKER_RESERVE + PER_JOB_RESERVE * max_total_concurrent


def raise_descriptor_limit() -> int:
    """Raises the soft limit on open files to the hard limit (as Go and nginx do at start) and returns it. The
    soft limit only exists to protect programs that use select(); this one uses epoll."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _answer(status: int, reason: str, message: str, extra_headers: str = "") -> bytes:
    """A complete HTTP/1.1 answer for a connection about to be closed, written straight to the transport: there
    is no request object (the head never arrived) to answer through aiohttp."""
    body = json.dumps({"error": message, "reason": reason}).encode()
    head = (
        f"HTTP/1.1 {status} {'Request Timeout' if status == 408 else 'Service Unavailable'}\r\n"
        f"Content-Type: application/json; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        f"{extra_headers}Connection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard:
    """One listener's open connections, oldest first, and what was done to them (for metrics)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._open: dict[_Guarded, None] = {}  # insertion-ordered: the oldest first
        self.shed = 0
        self.refused = 0
        self.head_timeouts = 0

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, conn: _Guarded) -> bool:
        """Admits a new connection, closing the oldest idle one when the cap is reached; False when every open
        connection is busy, so this one must go."""
        self._open[conn] = None
        if len(self._open) <= self.limits.max_connections:
            return True
        victim = next((c for c in self._open if c is not conn and c.idle), None)
        if victim is None:
            del self._open[conn]
            self.refused += 1
            return False
        del self._open[victim]  # now, not when its close completes: the next connection must not pick it again
        self.shed += 1
        victim.close_now()
        return True

    def closed(self, conn: _Guarded) -> None:
        self._open.pop(conn, None)

    def stats(self) -> dict[str, int]:
        return {
            "open": len(self._open),
            "shed": self.shed,
            "refused": self.refused,
            "head_timeout": self.head_timeouts,
        }


class _Guarded(RequestHandler):
    """RequestHandler with a head deadline and a place in its listener's guard. Private attributes of aiohttp's
    RequestHandler read here: `_request_count` (heads parsed on this connection), `_request_in_progress` (a
    handler is running) and `_messages` (parsed heads waiting for the handler)."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._heads_seen = 0
        self._head_deadline: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        """Waiting for a request's head, or between requests: nothing would be lost by closing it."""
        return not self._request_in_progress and not self._messages

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._guard.opened(self):
            message = "too many connections are busy on this listener; retry shortly"
            assert self.transport is not None
            self.transport.write(_answer(503, "too_many_connections", message, "Retry-After: 1\r\n"))
            self.force_close()
            return
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_count != self._heads_seen:  # one or more heads are complete
            self._heads_seen = self._request_count
            self._disarm_head_deadline()
        elif data and self.idle and self._head_deadline is None:  # the next head's first bytes (kept alive)
            self._arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_deadline()
        self._guard.closed(self)
        super().connection_lost(exc)

    def close_now(self) -> None:
        self._disarm_head_deadline()
        self.force_close()

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self._loop.call_later(self._guard.limits.header_timeout_s, self._head_overdue)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_overdue(self) -> None:
        self._head_deadline = None
        if self._request_count != self._heads_seen or not self.idle or self.transport is None:
            return
        self._guard.head_timeouts += 1
        message = f"request line and headers not received within {self._guard.limits.header_timeout_s:g} s"
        self.transport.write(_answer(408, "header_timeout", message))
        self._guard.closed(self)
        self.force_close()


class _GuardedServer(web.Server):
    """aiohttp's low-level server, making guarded request handlers."""

    def __init__(self, handler: Any, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return _Guarded(self, self.guard, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose connections are limited and timed as this module describes."""

    def __init__(self, app: web.Application, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        kwargs["keepalive_timeout"] = guard.limits.keepalive_timeout_s
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        """The server the application made (after its start-up hooks ran), as a guarded one: same handler,
        request factory and handler arguments (`_kwargs`, which the application filled in)."""
        server = await super()._make_server()
        return _GuardedServer(
            server.request_handler,
            guard=self.guard,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )


def watch(guards: dict[str, ConnectionGuard]) -> Callable[[], dict[str, dict[str, int]]]:
    """What metrics read at scrape time."""
    return lambda: {name: guard.stats() for name, guard in guards.items()}
