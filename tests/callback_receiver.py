"""A status-callback receiver on 127.0.0.1 for the callback tests: it checks every delivery's Standard Webhooks
signature with two implementations other than the signer's code path -- the `svix` package's verifier and the
intake's own (orchestrator/intake/signatures.py, written without the `standardwebhooks` package) -- and records
what it accepted, in arrival order. It can be down (its port reserved, nothing listening) or answer errors."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from svix.webhooks import Webhook as SvixWebhook

from orchestrator.intake.signatures import STANDARD_WEBHOOKS, verify

from ports import free_port


@dataclass
class Received:
    webhook_id: str
    payload: dict[str, Any]
    answered: int

    @property
    def job_id(self) -> str:
        return str(self.payload["data"]["job_id"])

    @property
    def state(self) -> str:
        return str(self.payload["data"]["state"])


@dataclass
class Receiver:
    secret: str  # whsec_<base64>
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    rejected: int = 0  # deliveries whose signature did not verify
    answer: Callable[[Received], int] = lambda r: 200
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            SvixWebhook(self.secret).verify(body, dict(request.headers))
            key = base64.b64decode(self.secret.removeprefix("whsec_"))
            verify(STANDARD_WEBHOOKS, [key], request.headers, body, now=time.time())
        except Exception:
            self.rejected += 1
            return web.Response(status=401)
        got = Received(request.headers["webhook-id"], json.loads(body), 0)
        got.answered = self.answer(got)
        self.received.append(got)
        return web.Response(status=got.answered)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        app.router.add_post("/hooks/{rest:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def accepted(self, job_id: str | None = None) -> list[Received]:
        """Deliveries answered 2xx, first arrival of each id only, in arrival order."""
        seen: set[str] = set()
        found = []
        for got in self.received:
            if 200 <= got.answered < 300 and got.webhook_id not in seen and job_id in (None, got.job_id):
                seen.add(got.webhook_id)
                found.append(got)
        return found

    def states(self, job_id: str) -> list[str]:
        return [got.state for got in self.accepted(job_id)]

    async def wait_for(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver waited in vain; got {[(g.job_id, g.state) for g in self.received]}")
            await asyncio.sleep(0.02)
