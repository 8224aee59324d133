"""Where alerts go: a metric (`orchestrator_access_alerts_total{kind}`), a signed audit record (`alert.<kind>`), a
warning in the log, and -- with `[alerts] webhook_url` -- a Standard Webhooks delivery signed like the status
callbacks (the `standardwebhooks` signer, its secret from `webhook_secret_file`), retried with the callbacks'
backoff for an hour. The audit record is the durable copy: a delivery still being retried when the controller
stops is not sent after the restart (its alert is in the trail)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from datetime import UTC, datetime

import aiohttp
from standardwebhooks.webhooks import Webhook
from tenacity import AsyncRetrying, retry_if_exception_type

from orchestrator.access.alerts import AccessAlerts, Alert
from orchestrator.callbacks.backoff import RetryPolicy, stop_at_deadline
from orchestrator.callbacks.senders import RetryableDelivery, outcome_of
from orchestrator.config import AlertsConfig, read_callback_secret
from orchestrator.evidence.auditor import Auditor
from orchestrator.jobs.states import Job
from orchestrator.platform.metrics import Metrics

log = logging.getLogger(__name__)

_MAX_PENDING = 100  # deliveries in flight; beyond that an alert is only counted, audited and logged


class AlertSink:
    def __init__(self, config: AlertsConfig, metrics: Metrics, auditor: Auditor, *, controller_id: str) -> None:
        self.metrics = metrics
        self.auditor = auditor
        self.controller_id = controller_id
        self.url = config.webhook_url
        secret = read_callback_secret(config.webhook_secret_file) if config.webhook_secret_file else None
        self._webhook = Webhook(secret) if secret is not None else None
        self.policy = RetryPolicy()
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0

    def __repr__(self) -> str:
        return f"AlertSink(url={self.url!r}, secret=***)"

    def raise_all(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.metrics.access_alerts.labels(alert.kind).inc()
            self.auditor.alert(alert.kind, alert.subject, alert.message, alert.details)
            log.warning("unusual access: %s", alert.message, extra={"alert": alert.kind, "subject": alert.subject})
            if self._webhook is not None and self.url is not None and len(self._tasks) < _MAX_PENDING:
                task = asyncio.get_running_loop().create_task(self._deliver(alert))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def body(self, alert: Alert, at: float) -> bytes:
        payload = {
            "type": "access.alert",
            "timestamp": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z"),
            "data": {"kind": alert.kind, "subject": alert.subject, "message": alert.message,
                     "details": alert.details, "controller_id": self.controller_id},
        }  # fmt: skip
        return json.dumps(payload, sort_keys=True).encode()

    async def _deliver(self, alert: Alert) -> None:
        assert self._webhook is not None and self.url is not None
        msg_id, first = f"alert_{secrets.token_hex(12)}", time.time()
        body = self.body(alert, first)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                async for attempt in AsyncRetrying(
                    wait=self.policy.wait(), stop=stop_at_deadline(self.policy.deadline(first), time.time),
                    retry=retry_if_exception_type((RetryableDelivery, aiohttp.ClientError, TimeoutError)),
                    reraise=True,
                ):  # fmt: skip
                    with attempt:
                        now = int(time.time())
                        signature = self._webhook.sign(msg_id, datetime.fromtimestamp(now, UTC), body.decode())
                        headers = {"content-type": "application/json", "webhook-id": msg_id,
                                   "webhook-timestamp": str(now), "webhook-signature": signature}  # fmt: skip
                        async with session.post(self.url, data=body, headers=headers) as resp:
                            error = outcome_of(resp.status)
                        if error is not None:
                            raise error
            self.delivered += 1
        except Exception as exc:
            self.failed += 1
            log.error("alert webhook not delivered", extra={"alert": alert.kind, "error": type(exc).__name__})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class AccessWatch:
    """The detector and the sink together, as the API and the job runner call them."""

    def __init__(self, alerts: AccessAlerts, sink: AlertSink) -> None:
        self.alerts = alerts
        self.sink = sink

    def auth_failed(self, address: str, identity: str | None = None) -> None:
        self.sink.raise_all(self.alerts.auth_failed(address, identity))

    def read(self, identity: str, job_id: str) -> None:
        self.sink.raise_all(self.alerts.read(identity, job_id))

    def token_used(self, name: str, hours: list[int]) -> None:
        self.sink.raise_all(self.alerts.token_used(name, hours))

    def secrets_issued(self, job: Job) -> None:
        self.sink.raise_all(self.alerts.secrets_issued(job.spec.sender or f"source:{job.source}", job.id))
