"""Where alerts go: a metric (`orchestrator_access_alerts_total{kind}`), a signed audit record (`alert.<kind>`), a
warning in the log, and -- with `[alerts] webhook_url` -- a Standard Webhooks delivery signed like the status
callbacks (the `standardwebhooks` signer, its secret from `webhook_secret_file`).

The outbox of those deliveries is the audit trail itself: signed, append-only and durable. The deliverer reads the
`alert.*` records after its cursor (`<data_dir>/alert-webhook.json`, moved past a record once it was delivered or
given up, after an hour of the callbacks' backoff), in order, so an alert raised while the receiver is down, or
just before a crash, is delivered once the controller runs again. The webhook id is derived from the record's hash:
every attempt, before and after a restart, carries the same id, and the receiver can drop repeats. A deployment
that turns the webhook on starts at the trail's end (old alerts are not sent)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from standardwebhooks.webhooks import Webhook
from tenacity import AsyncRetrying, retry_if_exception_type

from orchestrator.access.alerts import AccessAlerts, Alert
from orchestrator.callbacks.backoff import RetryPolicy, stop_at_deadline
from orchestrator.callbacks.senders import RetryableDelivery, outcome_of
from orchestrator.config import AlertsConfig, read_callback_secret
from orchestrator.evidence.audit_search import AuditHit, AuditQuery, search
from orchestrator.evidence.auditor import Auditor
from orchestrator.jobs.states import Job
from orchestrator.platform.files import write_atomic
from orchestrator.platform.metrics import Metrics

log = logging.getLogger(__name__)

CURSOR_FILE = "alert-webhook.json"
_ALERTS = AuditQuery(action="alert.*")


class AlertSink:
    def __init__(self, config: AlertsConfig, metrics: Metrics, auditor: Auditor, *, controller_id: str) -> None:
        self.metrics = metrics
        self.auditor = auditor
        self.controller_id = controller_id

    def raise_all(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.metrics.access_alerts.labels(alert.kind).inc()
            self.auditor.alert(alert.kind, alert.subject, alert.message, alert.details)
            log.warning("unusual access: %s", alert.message, extra={"alert": alert.kind, "subject": alert.subject})


class AlertWebhook:
    """Delivers the trail's alert records to `webhook_url`, in order, at least once (see the module docstring)."""

    def __init__(
        self,
        config: AlertsConfig,
        audit_path: Path,
        data_dir: Path,
        *,
        flush: Callable[[], None],
        next_seq: Callable[[], int],
        controller_id: str,
        policy: RetryPolicy | None = None,
        poll_s: float = 1.0,
    ) -> None:
        assert config.webhook_url is not None and config.webhook_secret_file is not None
        self.url = config.webhook_url
        self._webhook = Webhook(read_callback_secret(config.webhook_secret_file))
        self.audit_path = audit_path
        self.cursor_path = data_dir / CURSOR_FILE
        self.flush = flush  # the auditor's: what was just raised is in the file
        self.controller_id = controller_id
        self.policy = policy or RetryPolicy()
        self.poll_s = poll_s
        self.delivered = 0
        self.failed = 0
        self.cursor = self._read_cursor(next_seq)

    def __repr__(self) -> str:
        return f"AlertWebhook(url={self.url!r}, secret=***)"

    def _read_cursor(self, next_seq: Callable[[], int]) -> int | None:
        try:
            data = json.loads(self.cursor_path.read_bytes())
            after = data["after"]
            return int(after) if after is not None else None
        except FileNotFoundError:
            start = next_seq() - 1  # turned on now: from the trail's end
            after = start if start >= 0 else None
            self._write_cursor(after)
            return after
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = f"{self.cursor_path} is unreadable ({exc}); remove it to start at the trail's end"
            raise ValueError(problem) from None

    def _write_cursor(self, after: int | None) -> None:
        write_atomic(self.cursor_path, json.dumps({"version": 1, "after": after}).encode(), mode=0o600)

    def body(self, hit: AuditHit) -> bytes:
        record = hit.record
        details = dict(record.get("details") or {})
        payload = {
            "type": "access.alert",
            "timestamp": record.get("time"),
            "data": {"kind": str(record.get("action", "")).removeprefix("alert."), "subject": record.get("target"),
                     "message": details.pop("message", ""), "details": details, "controller_id": self.controller_id,
                     "audit": {"seq": hit.seq, "hash": hit.hash}},
        }  # fmt: skip
        return json.dumps(payload, sort_keys=True).encode()

    async def pending(self) -> list[AuditHit]:
        await asyncio.to_thread(self.flush)
        page = await asyncio.to_thread(search, self.audit_path, _ALERTS, after=self.cursor, limit=100)
        return page.hits

    async def deliver_pending(self, session: aiohttp.ClientSession) -> int:
        """Sends what is owed, in order; returns how many records it moved past."""
        moved = 0
        for hit in await self.pending():
            if await self._deliver(session, hit):
                self.delivered += 1
            else:
                self.failed += 1
            self.cursor = hit.seq
            await asyncio.to_thread(self._write_cursor, hit.seq)
            moved += 1
        return moved

    async def _deliver(self, session: aiohttp.ClientSession, hit: AuditHit) -> bool:
        msg_id, body, first = f"alert_{hit.hash[:32]}", self.body(hit), time.time()
        try:
            async for attempt in AsyncRetrying(
                wait=self.policy.wait(), stop=stop_at_deadline(self.policy.deadline(first), time.time),
                retry=retry_if_exception_type((RetryableDelivery, aiohttp.ClientError, TimeoutError)), reraise=True,
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
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("alert webhook given up", extra={"seq": hit.seq, "error": type(exc).__name__})
            return False

    async def run_forever(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                try:
                    await self.deliver_pending(session)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("alert webhook pass failed; retrying")
                await asyncio.sleep(self.poll_s)


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
