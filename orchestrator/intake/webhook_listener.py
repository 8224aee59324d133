"""The webhook-only listener (`server.webhook_port`), served by the controller's own event loop or by intake
worker processes (`server.intake_workers`).

Why a second listener: it is the one to expose to forges, while the API, metrics and OIDC documents stay on
`port`. Why workers: the controller's event loop is the intake's bottleneck, and most of its per-webhook work
(HTTP, body limits, HMAC) needs no state. The controller binds the socket once and every worker inherits it, so
a worker that dies or restarts loses no queued connection, and the port is never open to another process.
Workers hand authenticated deliveries to the controller over a socket pair (`relay`); the controller runs the
same `WebhookIntake.accept` as for its own listener, so a job is stored, audited and answered the same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator.config import ServerConfig
from orchestrator.intake import relay
from orchestrator.intake.answers import INTERNAL_ERROR
from orchestrator.intake.webhooks import WebhookIntake, answer
from orchestrator.jobs.refusal import Refusal
from orchestrator.platform.connections import ConnectionGuard, ConnectionLimits
from orchestrator.platform.serving import Network, app_runner, listening_socket, proxy_middlewares, serve_socket

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
_BACKOFF_S = (0.5, 30.0)  # first and longest wait before a dead worker is started again
_STABLE_S = 60.0  # a worker that ran this long starts its replacement's backoff from the beginning


class WorkerStartError(OSError):
    """An intake worker did not come up; the controller does not start without its webhook listener. An OSError,
    so `orchestrator serve` reports it in one line, like a port it cannot bind."""


@dataclass
class _Worker:
    slot: int
    process: asyncio.subprocess.Process
    started: float
    ready: asyncio.Future[None]  # set by the worker's "ready" frame
    link: relay.FrameLink | None = None
    link_closed: asyncio.Event = field(default_factory=asyncio.Event)
    answering: set[asyncio.Task[None]] = field(default_factory=set)


def healthz_app(trusted: tuple[Network, ...] = ()) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=proxy_middlewares(trusted))
    app.router.add_get("/healthz", healthz)
    return app


class WebhookListener:
    def __init__(
        self,
        server: ServerConfig,
        intake: WebhookIntake,
        *,
        limits: ConnectionLimits | None = None,
        guards: dict[str, ConnectionGuard] | None = None,
    ) -> None:
        assert server.webhook_port is not None
        self.limits = limits or ConnectionLimits(
            server.max_connections, server.header_timeout_s, server.keepalive_timeout_s
        )
        self.guards = guards if guards is not None else {}
        self.host = server.webhook_host or server.host
        self.requested_port = server.webhook_port
        self.workers_wanted = server.intake_workers
        self.intake = intake
        self.port = 0
        self.sock: socket.socket | None = None
        self.runner: web.AppRunner | None = None
        self.workers: dict[int, _Worker] = {}
        self.supervisors: list[asyncio.Task[None]] = []
        self.stopping = False
        self.restarts = 0
        self.opened = asyncio.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Binds the port and starts the workers. What they relay waits for `open`."""
        try:
            self.sock = listening_socket(self.host, self.requested_port)
        except OSError as exc:
            where = f"{self.host}:{self.requested_port}"
            raise OSError(exc.errno, f"server.webhook_port: cannot listen on {where}: {exc.strerror}") from None
        self.port = self.sock.getsockname()[1]
        if not self.workers_wanted:
            return
        spawns = (self._spawn(slot) for slot in range(self.workers_wanted))
        first = await asyncio.gather(*spawns, return_exceptions=True)
        failed = [r for r in first if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]
        for worker in first:
            assert isinstance(worker, _Worker)
            self.supervisors.append(asyncio.create_task(self._supervise(worker)))

    async def open(self) -> None:
        """Deliveries are taken from here on: after `start` (where a port in use or a worker that cannot start
        ends the start-up before any job runs) and after the scheduler has reconciled the store."""
        if not self.workers_wanted:
            assert self.sock is not None
            app = healthz_app(self.intake.config.server.trusted_networks)
            app.router.add_post("/webhooks/{source}", self.intake.handle)
            self.runner = app_runner(app, limits=self.limits)
            self.guards["webhook_port"] = self.runner.guard
            await self.runner.setup()
            await serve_socket(self.runner, self.sock)
        self.opened.set()
        log.info("webhook listener serving", extra={"url": self.url, "intake_workers": self.workers_wanted})

    def alive(self) -> int:
        return sum(1 for w in self.workers.values() if w.process.returncode is None)

    def readiness(self) -> tuple[str, str]:
        if not self.workers_wanted:
            return "webhook_listener", "ok"
        alive = self.alive()
        return "intake_workers", "ok" if alive else f"none of {self.workers_wanted} running"

    # -- workers ---------------------------------------------------------------------------------------------------

    def _hello(self) -> dict[str, Any]:
        server = self.intake.config.server
        sources = {
            name: {"scheme": src.scheme, "secrets": [base64.b64encode(s).decode() for s in src.secrets]}
            for name, src in self.intake.sources.items()
        }
        hello = {
            "t": "hello",
            "sources": sources,
            "max_body_bytes": server.max_body_bytes,
            "body_timeout_s": server.body_timeout_s,
            "trusted_proxies": [str(n) for n in server.trusted_networks],
            "max_connections": server.max_connections,
            "header_timeout_s": server.header_timeout_s,
            "keepalive_timeout_s": server.keepalive_timeout_s,
        }
        relay.encode(hello)  # raises here, not in the link's flush, if it cannot be sent
        return hello

    async def _spawn(self, slot: int) -> _Worker:
        assert self.sock is not None
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "orchestrator.intake.worker",
                str(self.sock.fileno()),
                str(theirs.fileno()),
                pass_fds=(self.sock.fileno(), theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                env=worker_environment(os.environ),
            )
        finally:
            theirs.close()
        worker = await self._connect(slot, process, ours)
        assert worker.link is not None
        worker.link.send(self._hello())
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await worker.ready
        except (TimeoutError, relay.RelayError) as exc:
            log.error("intake worker did not start", extra={"slot": slot, "error": f"{type(exc).__name__}: {exc}"})
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            worker.link.close()
            raise WorkerStartError(
                f"intake worker {slot} did not start (exit code {process.returncode}); its log lines are above"
            ) from None
        except BaseException:  # cancelled while it starts: it must not outlive us
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            worker.link.close()
            raise
        self.workers[slot] = worker
        log.info("intake worker started", extra={"slot": slot, "pid": process.pid})
        return worker

    async def _connect(self, slot: int, process: asyncio.subprocess.Process, sock: socket.socket) -> _Worker:
        loop = asyncio.get_running_loop()
        worker = _Worker(slot, process, time.monotonic(), loop.create_future())
        max_body = self.intake.config.server.max_body_bytes
        link = relay.FrameLink(max_body, lambda h, b: self._on_frame(worker, h, b), lambda e: self._closed(worker, e))
        await loop.create_unix_connection(lambda: link, sock=sock)
        worker.link = link
        return worker

    async def _supervise(self, worker: _Worker) -> None:
        """Starts a worker again when it dies, with a growing pause while it keeps dying young."""
        backoff = _BACKOFF_S[0]
        while True:
            code = await worker.process.wait()
            await worker.link_closed.wait()
            ran = time.monotonic() - worker.started
            backoff = _BACKOFF_S[0] if ran >= _STABLE_S else backoff
            # Waiting first also covers `systemctl stop`, which signals every process of the service at once:
            # by the time a worker's exit is looked at, the controller knows it is stopping too.
            await asyncio.sleep(backoff)
            if self.stopping:
                return
            self.restarts += 1
            self.intake.metrics.intake_worker_restarts.inc()
            log.error(
                "intake worker exited; starting it again",
                extra={"slot": worker.slot, "exit_code": code, "ran_s": round(ran, 1), "after_s": backoff},
            )
            backoff = min(backoff * 2, _BACKOFF_S[1])
            while not self.stopping:
                try:
                    worker = await self._spawn(worker.slot)
                    break
                except WorkerStartError as exc:
                    log.error("intake worker restart failed", extra={"slot": worker.slot, "error": str(exc)})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_S[1])
            else:
                return

    def _on_frame(self, worker: _Worker, header: dict[str, Any], body: bytes) -> None:
        assert worker.link is not None
        try:
            if header["t"] == "delivery":
                rid, source = relay.field(header, "id", int), relay.field(header, "source", str)
                delivery, remote = _optional_str(header, "delivery"), _optional_str(header, "remote")
                task = asyncio.create_task(self._answer(worker, rid, source, delivery, remote, body))
                worker.answering.add(task)
                task.add_done_callback(worker.answering.discard)
            elif header["t"] == "rejected":
                self.intake.record_rejection(
                    relay.field(header, "source", str),
                    _optional_str(header, "remote"),
                    relay.field(header, "status", int),
                    relay.field(header, "reason", str),
                )
            elif header["t"] == "ready" and not worker.ready.done():
                worker.ready.set_result(None)
            else:
                raise relay.RelayError(f"unexpected frame {header['t']!r} from a worker")
        except relay.RelayError as exc:
            worker.link.close(exc)

    def _closed(self, worker: _Worker, exc: Exception | None) -> None:
        """A link that broke the protocol takes its worker with it (the supervisor starts another one)."""
        worker.link_closed.set()
        if not worker.ready.done():
            worker.ready.set_exception(relay.RelayError("the worker closed the link before it was ready"))
            worker.ready.exception()  # retrieved here: nobody may be waiting any more (a start that timed out)
        if exc is not None and not self.stopping:
            log.error("intake worker link broken; stopping the worker", extra={"slot": worker.slot, "error": str(exc)})
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()

    async def _answer(
        self, worker: _Worker, rid: int, source: str, delivery: str | None, remote: str | None, body: bytes
    ) -> None:
        """The product's own accept path, answered over the link instead of HTTP: the answer travels as data
        (status, body, retry_after, close), which the worker sends as the same response this port would."""
        intake = self.intake
        if not self.opened.is_set():  # relayed before the scheduler was ready: held, not refused
            await self.opened.wait()
        try:
            if source not in intake.sources:
                raise Refusal("unknown_source", f"unknown webhook source {source!r}")
            if not intake.accepting or self.stopping:
                raise Refusal("shutting_down", "controller is shutting down; retry later")
            reply = answer(await intake.accept(source, delivery, remote, body))
        except Refusal as refusal:
            reply = intake.rejected(source, remote, refusal)
        except Exception:
            log.exception("webhook from an intake worker failed", extra={"source": source, "delivery": delivery})
            reply = INTERNAL_ERROR
        assert worker.link is not None
        worker.link.send(reply.header(rid), reply.body)

    # -- stop ------------------------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Workers stop taking connections, get answers for what they relayed, and exit (killed after
        STOP_TIMEOUT_S). Idempotent."""
        self.stopping = True
        self.opened.set()  # deliveries held for `open` are answered (503) instead of waiting forever
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        workers = list(self.workers.values())
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.terminate()
        await asyncio.gather(*(_end(w.process) for w in workers))
        for worker in workers:  # what they relayed last is stored before the store closes
            if worker.link is not None:
                worker.link.close()
            if worker.answering:
                await asyncio.wait(set(worker.answering))
        for task in self.supervisors:
            task.cancel()
        await asyncio.gather(*self.supervisors, return_exceptions=True)
        self.supervisors.clear()
        self.workers.clear()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


_INHERITED = ("PATH", "LANG", "TZ", "ORCHESTRATOR_LOG_LEVEL")
_INHERITED_PREFIXES = ("LC_", "PYTHON")


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """A worker faces the senders: it gets the socket and the webhook secrets it needs (over the link) and none of
    the controller's other environment (a VAULT_TOKEN, a DSN, proxy credentials...), as it gets none of its
    file descriptors but the two passed."""
    return {k: v for k, v in environ.items() if k in _INHERITED or k.startswith(_INHERITED_PREFIXES)}


async def _end(process: asyncio.subprocess.Process) -> None:
    """Waits for a process told to stop, then kills it."""
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _optional_str(header: dict[str, object], name: str) -> str | None:
    value = header.get(name)
    if value is not None and not isinstance(value, str):
        raise relay.RelayError(f"frame field {name!r} is not a string")
    return value
