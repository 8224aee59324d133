"""How every HTTP listener of the controller (and of its intake workers) is served."""

from __future__ import annotations

import ipaddress

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

# Connections the kernel completes before the event loop accepts them. aiohttp's default (128) overflows when a
# forge opens a burst of connections while the loop is busy; the kernel caps it at net.core.somaxconn anyway.
LISTEN_BACKLOG = 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def app_runner(app: web.Application, *, handle_signals: bool = False) -> web.AppRunner:
    """No access log (the audit trail and metrics cover requests). No lingering close: after a refusal that did
    not read the body (408, 413, 415) aiohttp would otherwise keep draining — and decompressing — what a hostile
    client sends for 10 s."""
    return web.AppRunner(app, handle_signals=handle_signals, access_log=None, lingering_time=0)


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
