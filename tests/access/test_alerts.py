"""Unusual access (orchestrator/access/alerts.py, pure, on a fake clock), and the alerts of a real controller over
HTTP: a failed-auth burst, one identity reading many jobs' logs, a token at an unusual hour -- each a metric, an
audit record and a signed webhook that two independent verifiers accept."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.access.alert_sink import AlertSink, AlertWebhook
from orchestrator.access.alerts import AccessAlerts
from orchestrator.callbacks.backoff import RetryPolicy
from orchestrator.config import AlertsConfig, hash_token
from orchestrator.evidence.audit import AuditLog
from orchestrator.evidence.auditor import Auditor
from orchestrator.platform.metrics import Metrics

from callback_receiver import Receiver
from conftest import TEST_IMAGE, RunningController, job_spec

NOON = datetime(2026, 12, 7, 12, 30, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def detector(**settings: Any) -> tuple[AccessAlerts, Clock]:
    clock = Clock()
    return AccessAlerts(AlertsConfig(**settings), clock=clock), clock


def test_a_failed_auth_burst_from_an_address_is_one_alert() -> None:
    alerts, clock = detector(failed_auth_count=5, failed_auth_window_s=60)
    raised = []
    for _ in range(12):
        raised += alerts.auth_failed("203.0.113.9")
        clock.now += 1
    assert [(a.kind, a.subject, a.details["failures"]) for a in raised] == [("failed_auth", "address:203.0.113.9", 5)]
    clock.now += 61  # a new window, a new burst: alerted again
    for _ in range(5):
        raised += alerts.auth_failed("203.0.113.9")
    assert len(raised) == 2


def test_failures_spread_out_or_over_addresses_are_no_burst() -> None:
    alerts, clock = detector(failed_auth_count=5, failed_auth_window_s=60)
    raised = []
    for n in range(20):
        raised += alerts.auth_failed(f"198.51.100.{n}")  # 20 addresses, one failure each
        raised += alerts.auth_failed("192.0.2.1")
        clock.now += 20  # one every 20 s from 192.0.2.1: never 5 within a minute
    assert raised == []


def test_an_expired_tokens_tries_are_counted_per_identity_across_addresses() -> None:
    alerts, _ = detector(failed_auth_count=3)
    raised = [a for n in range(3) for a in alerts.auth_failed(f"10.0.0.{n}", "token:ci")]
    assert [a.subject for a in raised] == ["identity:token:ci"]


def test_reading_many_jobs_logs_alerts_once_per_window() -> None:
    alerts, clock = detector(log_reads_jobs=4, log_reads_window_s=100)
    assert [a for _ in range(10) for a in alerts.read("bob", "job-1")] == []  # one job, read often: fine
    raised = [a for n in range(2, 9) for a in alerts.read("bob", f"job-{n}")]
    assert [(a.kind, a.subject, a.details["jobs"]) for a in raised] == [("log_reads", "bob", 4)]
    assert alerts.read("carol", "job-1") == []
    clock.now += 101
    assert alerts.read("bob", "job-9") == []  # the old reads left the window


def test_one_sender_starting_many_jobs_with_secrets() -> None:
    alerts, _ = detector(secret_jobs=3)
    raised = [a for n in range(3) for a in alerts.secrets_issued("mallory", f"j{n}")]
    assert [(a.kind, a.subject) for a in raised] == [("secret_jobs", "mallory")]


def test_a_token_used_at_an_unusual_hour() -> None:
    alerts, clock = detector(off_hours_min_uses=50, off_hours_max_share=0.05)
    office = [0] * 24
    for hour in range(8, 18):
        office[hour] = 10  # 100 uses between 08:00 and 18:00 UTC
    assert alerts.token_used("deploy-bot", office) == []  # 12:30: its usual hours
    clock.now = datetime(2026, 12, 7, 3, 10, tzinfo=UTC).timestamp()
    (alert,) = alerts.token_used("deploy-bot", office)
    assert alert.kind == "off_hours" and alert.details == {"hour_utc": 3, "uses_that_hour": 0, "uses": 100}
    assert alerts.token_used("deploy-bot", office) == []  # once per hour
    assert alerts.token_used("new-bot", [0] * 3 + [1] + [0] * 20) == []  # too few uses to know its hours


async def test_a_controller_raises_metrics_audit_records_and_signed_webhooks(
    fake_controller_factory: Any, tmp_path: Path
) -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    secret_file = tmp_path / "alerts.secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    receiver = Receiver(secret)
    await receiver.start()
    try:
        tokens = [{"name": "reader", "role": "viewer", "sha256": hash_token("reader-token")}]
        pool = {"image": TEST_IMAGE, "memory": "128m", "pids": 64}
        alerts = {"failed_auth_count": 3, "log_reads_jobs": 3, "webhook_url": receiver.url,
                  "webhook_secret_file": str(secret_file)}  # fmt: skip
        ctl: RunningController = await fake_controller_factory(
            settings={"api": {"tokens": tokens}, "pools": {"default": pool}, "alerts": alerts}
        )
        for _ in range(3):
            assert (await ctl.api("GET", "/api/v1/jobs", token="guessed-wrong"))[0] == 401
        ids = []
        for _ in range(3):
            spec = job_spec()
            assert (await ctl.post_webhook(spec))[0] == 202
            ids.append(spec["id"])
        for job_id in ids:
            assert (await ctl.api("GET", f"/api/v1/jobs/{job_id}/logs", token="reader-token"))[0] == 200
        await receiver.wait_for(lambda: len(receiver.received) >= 2)
        kinds = sorted(r.payload["data"]["kind"] for r in receiver.received)
        assert kinds == ["failed_auth", "log_reads"] and receiver.rejected == 0
        reads = next(r.payload["data"] for r in receiver.received if r.payload["data"]["kind"] == "log_reads")
        assert reads["subject"] == "reader" and reads["details"]["jobs"] == 3
        assert "reader-token" not in json.dumps([r.payload for r in receiver.received])
        metrics = (await ctl.api("GET", "/metrics", token="reader-token"))[1].decode()
        assert 'orchestrator_access_alerts_total{kind="failed_auth"} 1.0' in metrics
        assert 'orchestrator_access_alerts_total{kind="log_reads"} 1.0' in metrics
        await asyncio.to_thread(ctl.controller.auditor.flush)
        records = [json.loads(line) for line in (ctl.config.data_dir / "audit.jsonl").read_text().splitlines()]
        alerted = [(r["action"], r["target"]) for r in records if r["action"].startswith("alert.")]
        assert ("alert.failed_auth", "address:127.0.0.1") in alerted and ("alert.log_reads", "reader") in alerted
    finally:
        await receiver.stop()


async def test_the_alert_webhook_delivers_from_the_trail_after_a_crash_once(tmp_path: Path) -> None:
    """The audit trail is the outbox: an alert raised while the receiver is down, its deliverer killed mid-retry,
    is delivered by the next process once the receiver is up -- once, with an id derived from the record."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    secret_file = tmp_path / "alerts.secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    receiver = Receiver(secret)  # its port reserved, nothing listening yet
    config = AlertsConfig(webhook_url=receiver.url, webhook_secret_file=secret_file)
    log = AuditLog(tmp_path / "audit.jsonl", Ed25519PrivateKey.generate()).open()
    auditor = Auditor(log)
    auditor.config_loaded("d" * 64, "ctl", [])  # an older record: the webhook starts after it
    auditor.flush()

    policy = RetryPolicy(retry_for_s=600, initial_s=0.05, max_s=0.2)

    def deliverer() -> AlertWebhook:
        return AlertWebhook(config, log.path, tmp_path, flush=auditor.flush, next_seq=lambda: log.next_seq,
                            controller_id="ctl", policy=policy)  # fmt: skip

    first = deliverer()
    watch = AccessAlerts(AlertsConfig(failed_auth_count=2))
    raised = [alert for _ in range(2) for alert in watch.auth_failed("203.0.113.7")]
    assert len(raised) == 1
    AlertSink(config, Metrics(), auditor, controller_id="ctl").raise_all(raised)
    async with aiohttp.ClientSession() as session:
        trying = asyncio.ensure_future(first.deliver_pending(session))
        await asyncio.sleep(0.5)  # retrying against the closed port...
        trying.cancel()  # ...when the process dies
        with contextlib.suppress(asyncio.CancelledError):
            await trying
        assert first.delivered == 0
        await receiver.start()
        try:
            second = deliverer()
            assert await second.deliver_pending(session) == 1
            (got,) = receiver.received
            assert (
                got.payload["data"]["kind"] == "failed_auth" and got.payload["data"]["subject"] == "address:203.0.113.7"
            )
            assert got.webhook_id == f"alert_{got.payload['data']['audit']['hash'][:32]}" and receiver.rejected == 0
            assert await deliverer().deliver_pending(session) == 0  # a third process owes nothing
        finally:
            await receiver.stop()
    log.close()
