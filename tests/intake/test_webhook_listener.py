"""The webhook-only listener (server.webhook_port) served by real intake worker processes, and by the
controller's own loop when intake_workers = 0: same answers as the main port, refusals counted and audited by
the controller, dead workers started again, nothing left running after a stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.intake.signatures import sign

from conftest import RunningController, job_spec

pytestmark = pytest.mark.docker

IN_PROCESS = {"server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 64 * 1024, "webhook_port": 0}}
WORKERS = {"server": {**IN_PROCESS["server"], "intake_workers": 2}}


def _hook_url(ctl: RunningController) -> str:
    listener = ctl.controller.webhook_listener
    assert listener is not None and listener.port
    return listener.url


def _audit(ctl: RunningController) -> list[dict[str, Any]]:
    ctl.controller.auditor.flush()
    return [json.loads(line) for line in (ctl.config.data_dir / "audit.jsonl").read_text().splitlines()]


def _worker_pids(ctl: RunningController) -> list[int]:
    listener = ctl.controller.webhook_listener
    assert listener is not None
    return [w.process.pid for w in listener.workers.values() if w.process.returncode is None]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_workers_accept_store_and_dedupe_like_the_main_port(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory(settings=WORKERS)
    assert len(_worker_pids(ctl)) == 2
    spec = job_spec(commands=["echo via-worker"])
    status, body = await ctl.post_webhook(spec, url=_hook_url(ctl))
    assert (status, body) == (202, {"job_id": spec["id"], "status": "queued"})
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded" and job["source"] == "test"
    assert b"via-worker" in await ctl.logs(spec["id"])
    status, body = await ctl.post_webhook(spec, url=_hook_url(ctl))
    assert status == 200 and body["duplicate"] is True and body["job_id"] == spec["id"]
    status, body = await ctl.post_webhook(spec)  # the main port knows it too
    assert status == 200 and body["duplicate"] is True
    records = _audit(ctl)
    accepted = [r for r in records if (r["action"], r["outcome"]) == ("webhook.accepted", "accepted")]
    assert [r["target"] for r in accepted] == [spec["id"]]
    assert accepted[0]["remote"] == "127.0.0.1" and accepted[0]["actor"]["delivery"].startswith("msg_")
    outcomes = [r["outcome"] for r in records if r["action"] == "webhook.accepted"]
    assert outcomes == ["accepted", "duplicate", "duplicate"]


async def test_refusals_by_a_worker_are_answered_counted_and_audited(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory(settings=WORKERS)
    url = _hook_url(ctl)
    spec = job_spec()
    body = json.dumps(spec).encode()
    wrong = sign("standard-webhooks", b"wrong-key-wrong-key-wrong", body, msg_id="m1", timestamp=int(time.time()))
    assert (await ctl.post_webhook(body, headers=wrong, url=url))[0] == 401
    stale = int(time.time()) - 3600
    status, answer = await ctl.post_webhook(body, timestamp=stale, url=url)
    assert status == 401 and answer["reason"] == "stale_timestamp"
    status, answer = await ctl.post_webhook(spec, source="nope", url=url)
    assert status == 404 and answer["reason"] == "unknown_source"
    async with ctl.session.post(f"{url}/webhooks/test", data=b"x" * (65 * 1024)) as resp:
        assert resp.status == 413 and resp.headers.get("Connection", "").lower() == "close"
        assert (await resp.json())["reason"] == "body_too_large"
    # refused by the controller after a worker relayed it: invalid spec and unknown pool
    status, answer = await ctl.post_webhook({**spec, "pool": "elsewhere"}, url=url)
    assert status == 422 and answer["reason"] == "unknown_pool"
    status, answer = await ctl.post_webhook(b"{not json", url=url)
    assert status == 400 and answer["reason"] == "invalid_json"
    reasons = ("bad_signature", "stale_timestamp", "unknown_source", "body_too_large", "unknown_pool")
    deadline = time.monotonic() + 5  # a worker reports its refusals after answering them, on its own link
    while True:
        _, page = await ctl.api("GET", "/metrics")
        text = page.decode()
        missing = [r for r in reasons if f'orchestrator_webhook_rejections_total{{reason="{r}"}} 1.0' not in text]
        if not missing:
            break
        assert time.monotonic() < deadline, missing
        await asyncio.sleep(0.05)
    rejected = [r for r in _audit(ctl) if r["action"] == "webhook.rejected"]
    # each worker reports on its own link, so the order across workers is not the order of the requests
    assert sorted((r["details"]["reason"], r["details"]["http_status"]) for r in rejected) == [
        ("bad_signature", 401),
        ("body_too_large", 413),
        ("invalid_json", 400),
        ("stale_timestamp", 401),
        ("unknown_pool", 422),
        ("unknown_source", 404),
    ]
    assert {r["remote"] for r in rejected} == {"127.0.0.1"}
    status, jobs = await ctl.api("GET", "/api/v1/jobs")
    assert jobs["jobs"] == []


@pytest.mark.parametrize("mode", ["workers", "in-process"])
async def test_webhook_port_serves_webhooks_and_healthz_only(controller_factory: Any, mode: str) -> None:
    ctl: RunningController = await controller_factory(settings=WORKERS if mode == "workers" else IN_PROCESS)
    url = _hook_url(ctl)
    headers = {"Authorization": f"Bearer {ctl.token}"}
    for path in ("/api/v1/jobs", "/metrics", "/readyz", "/.well-known/jwks.json"):
        async with ctl.session.get(f"{url}{path}", headers=headers) as resp:
            assert resp.status == 404, path
    async with ctl.session.get(f"{url}/healthz") as resp:
        assert resp.status == 200
    spec = job_spec(commands=["true"])
    assert (await ctl.post_webhook(spec, url=url))[0] == 202
    assert (await ctl.wait_final(spec["id"]))["status"] == "succeeded"
    status, ready = await ctl.api("GET", "/readyz")
    assert status == 200, ready
    assert ready["checks"]["intake_workers" if mode == "workers" else "webhook_listener"] == "ok"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
async def test_a_dead_worker_is_started_again_and_the_port_keeps_serving(controller_factory: Any, sig: int) -> None:
    ctl: RunningController = await controller_factory(settings=WORKERS)
    listener = ctl.controller.webhook_listener
    assert listener is not None
    victim = _worker_pids(ctl)[0]
    os.kill(victim, sig)  # SIGTERM: the worker closes its copy of the shared socket, not the socket
    spec = job_spec(commands=["true"])
    try:
        answer = await ctl.post_webhook(spec, url=_hook_url(ctl))  # the other worker, or the backlog
    except aiohttp.ServerDisconnectedError:
        # The dying worker accepted this connection just before it stopped accepting and hung up without reading
        # it: nothing was taken (a handler in flight is always answered), so the sender may send it again -- and
        # a redelivery is deduplicated anyway. It happens only under load, within the worker's last milliseconds.
        answer = await ctl.post_webhook(spec, url=_hook_url(ctl))
    assert answer[0] == 202
    deadline = time.monotonic() + 20
    while len(_worker_pids(ctl)) < 2 or victim in _worker_pids(ctl):
        assert time.monotonic() < deadline, "the dead worker was not started again"
        await asyncio.sleep(0.05)
    assert listener.restarts == 1
    _, page = await ctl.api("GET", "/metrics")
    assert b"orchestrator_intake_worker_restarts_total 1.0" in page
    for _ in range(6):  # both workers answer (connections are spread over them by the kernel)
        async with aiohttp.ClientSession() as fresh:
            body = json.dumps(job_spec(commands=["true"])).encode()
            headers = sign("standard-webhooks", ctl.webhook_secret, body, msg_id="m", timestamp=int(time.time()))
            async with fresh.post(f"{_hook_url(ctl)}/webhooks/test", data=body, headers=headers) as resp:
                assert resp.status == 202


async def test_while_draining_workers_answer_503_and_after_the_stop_none_is_left(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory(settings=WORKERS)
    pids = _worker_pids(ctl)
    url = _hook_url(ctl)
    ctl.controller.intake.accepting = False  # what drain() does first
    async with ctl.session.post(
        f"{url}/webhooks/test",
        data=(body := json.dumps(job_spec()).encode()),
        headers=sign("standard-webhooks", ctl.webhook_secret, body, msg_id="m2", timestamp=int(time.time())),
    ) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "30"
        assert (await resp.json())["reason"] == "shutting_down"
    listener = ctl.controller.webhook_listener
    assert listener is not None
    await listener.stop()
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as fresh, fresh.get(f"{url}/healthz"):
            pass
    status, ready = await ctl.api("GET", "/readyz")
    assert status == 503 and ready["checks"]["intake_workers"] == "none of 2 running"


async def test_workers_get_neither_the_controllers_environment_nor_its_files(
    controller_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "hvs.must-not-reach-a-worker")
    monkeypatch.setenv("ORCHESTRATOR_LOG_LEVEL", "warning")
    ctl: RunningController = await controller_factory(settings=WORKERS)
    for pid in _worker_pids(ctl):
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
        )
        assert "VAULT_TOKEN" not in environ and environ["ORCHESTRATOR_LOG_LEVEL"] == "warning"
        assert environ["PATH"] == os.environ["PATH"]
        targets = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        assert not any(str(ctl.config.data_dir) in target for target in targets), targets  # no store, audit, logs
        sockets = [t for t in targets if t.startswith("socket:")]
        # the shared listener, the link to the controller and asyncio's self-pipe pair: nothing else
        assert len(sockets) == 4, targets
        listener = ctl.controller.webhook_listener
        assert listener is not None and listener.sock is not None
        assert f"socket:[{os.fstat(listener.sock.fileno()).st_ino}]" in sockets


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-proxy", "untrusted-peer"])
@pytest.mark.parametrize("settings", [IN_PROCESS, WORKERS], ids=["in-process", "workers"])
async def test_the_webhook_port_believes_only_trusted_proxies(
    controller_factory: Any, settings: Any, trusted: bool
) -> None:
    """Behind a trusted proxy, audit records and refusal summaries name the sender the proxy saw, also when a
    worker answered; a sender that is no proxy cannot choose the address it is recorded under."""
    proxies = ["127.0.0.0/8"] if trusted else []
    ctl: RunningController = await controller_factory(
        settings={"server": {**settings["server"], "trusted_proxies": proxies}}
    )
    bad = {"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA", "X-Forwarded-For": "192.0.2.9"}
    assert (await ctl.post_webhook(job_spec(), headers=bad, url=_hook_url(ctl)))[0] == 401
    deadline = time.monotonic() + 10
    while not (rejected := [r for r in _audit(ctl) if r["action"] == "webhook.rejected"]):
        assert time.monotonic() < deadline, "the refusal was never audited"
        await asyncio.sleep(0.05)  # a worker reports its refusal to the controller after answering
    assert [r["remote"] for r in rejected] == ["192.0.2.9" if trusted else "127.0.0.1"]
