"""How every HTTP listener of the controller (and of its intake workers) is served."""

from __future__ import annotations

from aiohttp import web

# Connections the kernel completes before the event loop accepts them. aiohttp's default (128) overflows when a
# forge opens a burst of connections while the loop is busy; the kernel caps it at net.core.somaxconn anyway.
LISTEN_BACKLOG = 1024


def app_runner(app: web.Application, *, handle_signals: bool = False) -> web.AppRunner:
    """No access log (the audit trail and metrics cover requests). No lingering close: after a refusal that did
    not read the body (408, 413, 415) aiohttp would otherwise keep draining — and decompressing — what a hostile
    client sends for 10 s."""
    return web.AppRunner(app, handle_signals=handle_signals, access_log=None, lingering_time=0)
