"""How every HTTP listener of the controller (and of its intake workers) is served."""

from __future__ import annotations

import ipaddress
import socket

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from orchestrator.platform.connections import ConnectionGuard, ConnectionLimits, GuardedAppRunner

# Connections the kernel completes before the event loop accepts them. aiohttp's default (128) overflows when a
# forge opens a burst of connections while the loop is busy; the kernel caps it at net.core.somaxconn anyway.
LISTEN_BACKLOG = 1024
# How many connections asyncio accepts per wake-up. It takes the listen backlog for this as well, so with 1,024 a
# burst of connections was accepted -- 1,024 descriptors taken -- before any of them reached the connection
# guard, which is where the descriptor budget is kept: under a flood the accept itself ran out of descriptors.
ACCEPT_BATCH = 32

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def app_runner(
    app: web.Application, *, limits: ConnectionLimits | None = None, handle_signals: bool = False
) -> GuardedAppRunner:
    """Connections limited and timed (see `connections`). No access log (the audit trail and metrics cover
    requests). No lingering close: after a refusal that did not read the body (408, 413, 415) aiohttp would
    otherwise keep draining — and decompressing — what a hostile client sends for 10 s."""
    guard = ConnectionGuard(limits or ConnectionLimits())
    return GuardedAppRunner(app, guard=guard, handle_signals=handle_signals, access_log=None, lingering_time=0)


def _within(address: str | None, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str | None:
    """Who sent a request: the connection's peer, unless the peer is a trusted proxy; then the nearest address in
    X-Forwarded-For that is not one, walking from the right. Entries left of an untrusted hop are whatever the
    client chose to write, so they are never believed; an unreadable entry ends the walk at the hop before it."""
    hop = peer
    if not forwarded_for or not _within(peer, trusted):
        return hop
    for entry in reversed(forwarded_for.split(",")):
        if not _within(hop, trusted):
            break
        candidate = entry.strip()
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            break
        hop = candidate
    return hop


def forwarded_for(trusted: tuple[Network, ...]) -> Middleware:
    """Middleware: `request.remote` becomes the client's address when a trusted proxy forwarded the request, so
    audit records, limits and refusal summaries name the sender rather than the proxy."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote
        if _within(peer, trusted):
            client = client_address(peer, ", ".join(request.headers.getall("X-Forwarded-For", [])), trusted)
            if client is not None and client != peer:
                request = request.clone(remote=client)
        return await handler(request)

    return middleware


def proxy_middlewares(trusted: tuple[Network, ...]) -> list[Middleware]:
    """The middlewares of every listener: none at all unless proxies are trusted (nothing on the hot path)."""
    return [forwarded_for(trusted)] if trusted else []


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket listening with the long backlog; IPv6 when the host is an IPv6 address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


async def serve_socket(runner: web.BaseRunner, sock: socket.socket) -> web.SockSite:
    """Serves `runner` on a listening socket, accepting `ACCEPT_BATCH` connections per wake-up while the kernel
    keeps queueing up to `LISTEN_BACKLOG` (asyncio listens with its batch size; the socket listens again after)."""
    site = web.SockSite(runner, sock, backlog=ACCEPT_BATCH)
    await site.start()
    sock.listen(LISTEN_BACKLOG)
    return site
