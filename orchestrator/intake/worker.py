"""An intake worker process: serves the webhook listener it inherits from the controller, authenticates each
delivery (size and time limits, signature on the raw body) and relays it to the controller, which parses,
stores, audits and enqueues it and says what to answer. Why: one Python process spends most of a core on HTTP
and HMAC alone; workers spread that over the host's cores while the controller stays the one writer of the
store and the audit trail. A worker holds no job state: if it dies, what it had relayed is stored or not, and
the sender's retry gets the same answer either way (202, or 200 for a duplicate).

Started by the controller as `python -m orchestrator.intake.worker LISTEN_FD LINK_FD`. It ends when the link
closes (the controller is gone) or on SIGTERM, after answering what it already relayed."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import itertools
import logging
import os
import signal
import socket
import sys
from typing import Any

from aiohttp import web

from orchestrator.intake import relay
from orchestrator.intake.answers import Answer, error_response, refusal_answer
from orchestrator.intake.receive import WebhookSource, authenticate
from orchestrator.jobs.refusal import Refusal
from orchestrator.platform import structured_logs
from orchestrator.platform.connections import WORKER_RESERVE, ConnectionLimits, plan_descriptors, raise_descriptor_limit
from orchestrator.platform.serving import Network, app_runner, proxy_middlewares, serve_socket

log = logging.getLogger("orchestrator.intake.worker")  # not __main__: it runs with -m

ACCEPTED_GRACE_S = 0.5  # after SIGTERM: how long connections already accepted have to send their request

_UNAVAILABLE = Refusal("controller_unavailable", "the controller is not reachable; retry later")


class ControllerLink:
    """The worker's end of the link to the controller: numbered deliveries out, answers matched back to them."""

    def __init__(self) -> None:
        self.frames = relay.FrameLink(0, self._on_frame, self._on_close)  # 0 until the hello: it has no body
        self.pending: dict[int, asyncio.Future[web.Response]] = {}
        self.ids = itertools.count()
        self.closed = asyncio.Event()
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def _on_frame(self, header: dict[str, Any], body: bytes) -> None:
        if header["t"] == "answer":
            try:
                rid, response = relay.field(header, "id", int), Answer.from_frame(header, body).response()
            except relay.RelayError as exc:
                self.frames.close(exc)
                return
            future = self.pending.pop(rid, None)
            if future is not None and not future.done():
                future.set_result(response)
        elif header["t"] == "hello" and not self.hello.done():
            max_body = relay.field(header, "max_body_bytes", int)
            self.frames.decoder.max_body_bytes = 2 * max_body + relay.MAX_HEADER_BYTES  # a duplicate's job view
            self.hello.set_result(header)
        else:
            self.frames.close(relay.RelayError(f"unexpected frame {header['t']!r} from the controller"))

    def _on_close(self, exc: Exception | None) -> None:
        """Every delivery still waiting is answered 503 (the sender retries; a stored job is then a duplicate)."""
        if exc is not None:
            log.error("intake worker: link to the controller broken", extra={"error": str(exc)})
        self.closed.set()
        if not self.hello.done():
            self.hello.set_exception(relay.RelayError("the controller closed the link before its hello"))
            self.hello.exception()  # retrieved: serve() reads it if it is still waiting
        for future in self.pending.values():
            if not future.done():
                future.set_result(error_response(_UNAVAILABLE))
        self.pending.clear()

    async def forward(self, source: str, delivery: str | None, remote: str | None, body: bytes) -> web.Response:
        if self.closed.is_set():
            return error_response(_UNAVAILABLE)
        rid = next(self.ids)
        answer: asyncio.Future[web.Response] = asyncio.get_running_loop().create_future()
        self.pending[rid] = answer
        self.frames.send({"t": "delivery", "id": rid, "source": source, "delivery": delivery, "remote": remote}, body)
        return await answer

    def report(self, source: str, remote: str | None, reason: str, status: int) -> None:
        header = {"t": "rejected", "source": source, "remote": remote, "status": status, "reason": reason}
        self.frames.send(header)


def sources_from_hello(hello: dict[str, Any]) -> dict[str, WebhookSource]:
    raw = relay.field(hello, "sources", dict)
    return {
        name: WebhookSource(name, spec["scheme"], tuple(base64.b64decode(s) for s in spec["secrets"]))
        for name, spec in raw.items()
    }


def build_worker_app(
    link: ControllerLink,
    sources: dict[str, WebhookSource],
    max_body: int,
    body_timeout_s: float,
    trusted: tuple[Network, ...] = (),
) -> web.Application:
    async def webhook(request: web.Request) -> web.StreamResponse:
        name = request.match_info["source"]
        try:
            delivery, body = await authenticate(request, sources, name, max_body, body_timeout_s)
        except Refusal as refusal:
            answer = refusal_answer(refusal)
            link.report(name, request.remote, refusal.reason, answer.status)
            return answer.response()
        return await link.forward(name, delivery, request.remote, body)

    async def healthz(request: web.Request) -> web.Response:
        if link.closed.is_set():
            return web.json_response({"status": "controller unreachable"}, status=503)
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=max_body, middlewares=proxy_middlewares(trusted))
    app.router.add_post("/webhooks/{source}", webhook)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(listen_fd: int, link_fd: int) -> int:
    loop = asyncio.get_running_loop()
    link = ControllerLink()
    await loop.create_unix_connection(lambda: link.frames, sock=socket.socket(fileno=link_fd))
    try:
        hello = await link.hello
        sources = sources_from_hello(hello)
        max_body = relay.field(hello, "max_body_bytes", int)
        body_timeout_s = float(relay.field(hello, "body_timeout_s", (int, float)))
        trusted = tuple(ipaddress.ip_network(n) for n in relay.field(hello, "trusted_proxies", list))
        plan = plan_descriptors(
            raise_descriptor_limit(),
            wanted=relay.field(hello, "max_connections", int),
            listeners=1,
            reserved=WORKER_RESERVE,
        )
        limits = ConnectionLimits(
            plan.per_listener,
            float(relay.field(hello, "header_timeout_s", (int, float))),
            float(relay.field(hello, "keepalive_timeout_s", (int, float))),
        )
    except (relay.RelayError, KeyError, TypeError, ValueError) as exc:
        log.error("intake worker: no usable hello from the controller", extra={"error": f"{type(exc).__name__}"})
        return 1
    for warning in plan.warnings:
        log.warning("open-files limit is low", extra={"warning": warning})
    runner = app_runner(build_worker_app(link, sources, max_body, body_timeout_s, trusted), limits=limits)
    await runner.setup()
    listener = socket.socket(fileno=listen_fd)
    listener.setblocking(False)
    await serve_socket(runner, listener)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    link.frames.send({"t": "ready", "pid": os.getpid()})
    log.info("intake worker serving", extra={"pid": os.getpid()})
    waiting = [asyncio.create_task(stop.wait()), asyncio.create_task(link.closed.wait())]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    for task in waiting:
        task.cancel()
    # Stopping already: a second SIGTERM (`systemctl stop` signals the whole group, then the controller signals
    # each worker) is ignored. Left to asyncio it could land while the loop closes, after its wake-up pipe is gone
    # and before its handler is removed, and Python prints a BrokenPipeError traceback.
    loop.remove_signal_handler(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Stop taking connections; give the ones just accepted a moment for their request to arrive (a connection
    # closed before it was read would be a delivery the sender sees refused, though nothing took it); let the
    # handlers in flight get their answers, then hang up.
    for site in list(runner.sites):
        await site.stop()
    await asyncio.sleep(ACCEPTED_GRACE_S)
    await runner.cleanup()
    link.frames.close()
    return 0 if stop.is_set() else 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(a.isdigit() for a in args):
        usage = "usage: python -m orchestrator.intake.worker LISTEN_FD LINK_FD (the controller starts it)"
        print(usage, file=sys.stderr)
        return 2
    structured_logs.configure(os.environ.get("ORCHESTRATOR_LOG_LEVEL", "info"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the controller stops us
    return asyncio.run(serve(int(args[0]), int(args[1])))


if __name__ == "__main__":
    sys.exit(main())
