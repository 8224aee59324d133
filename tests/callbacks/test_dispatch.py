"""Status callbacks through a whole controller on the in-memory runtime, to real HTTP receivers on 127.0.0.1:
every state in order with valid signatures, a receiver down for a while and then back, deliveries given up,
per-job URLs, and the GitHub, Gitea and GitLab commit-status adapters against a loopback stand-in."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiohttp import web

from orchestrator.callbacks.outbox import CALLBACK, STATUS
from orchestrator.evidence.audit import AUDIT_FILE_NAME

from callback_receiver import Receiver
from conftest import RunningController, job_spec
from ports import free_port

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}
LIFE = ["queued", "starting", "running", "succeeded"]
FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "jitter_s": 0, "poll_interval_s": 0.2}


def callback_secret(tmp_path: Path) -> tuple[str, Path]:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path = tmp_path / "callback.secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret, path


def settings(
    tmp_path: Path, public_url: str | None = None, delivery: dict[str, Any] | None = None, **source: Any
) -> dict[str, Any]:
    server: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "max_body_bytes": 64 * 1024}
    if public_url:
        server["public_url"] = public_url
    return {
        "server": server,
        "sources": {"test": {"scheme": "standard-webhooks", "secret_file": str(tmp_path / "webhook.secret"), **source}},
        "callbacks": {**FAST, **(delivery or {})},
    }


async def run_jobs(ctl: RunningController, count: int = 1, **spec: Any) -> list[str]:
    ids = []
    for _ in range(count):
        body = job_spec(**spec)
        status, answer = await ctl.post_webhook(body)
        assert status == 202, answer
        ids.append(body["id"])
    for job_id in ids:
        await ctl.wait_final(job_id)
    return ids


def metric(ctl: RunningController, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in ctl.controller.metrics.render().decode().splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.split()[-1])
    return 0.0


def audit_actions(ctl: RunningController) -> list[dict[str, Any]]:
    ctl.controller.auditor.flush()
    lines = (ctl.config.data_dir / AUDIT_FILE_NAME).read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def test_every_state_arrives_in_order_signed_and_once(fake_controller_factory: Any, tmp_path: Path) -> None:
    secret, path = callback_secret(tmp_path)
    receiver = Receiver(secret)
    await receiver.start()
    try:
        cfg = settings(tmp_path, "https://ci.example", callbacks={"url": receiver.url, "secret_file": str(path)})
        ctl = await fake_controller_factory(settings=cfg)
        ids = await run_jobs(ctl, 3)
        await receiver.wait_for(lambda: all(receiver.states(j) == LIFE for j in ids))
        await asyncio.sleep(0.3)  # nothing more arrives
        assert receiver.rejected == 0
        assert len(receiver.received) == 12  # each state change once: no retries needed, none sent twice
        for job_id in ids:
            got = receiver.accepted(job_id)
            assert [g.payload["data"]["sequence"] for g in got] == [1, 2, 3, 4]
            final = got[-1].payload
            assert final["type"] == "job.succeeded"
            assert final["data"]["exit_code"] == 0
            assert final["data"]["log_url"] == f"https://ci.example/api/v1/jobs/{job_id}/logs"
            assert final["data"]["attestation_url"] == f"https://ci.example/api/v1/jobs/{job_id}/attestation"
            rows = await ctl.controller.store.deliveries(job_id)
            assert [(r.seq, r.status) for r in rows] == [
                (1, "delivered"),
                (2, "delivered"),
                (3, "delivered"),
                (4, "delivered"),
            ]
            assert {g.webhook_id for g in got} == {r.webhook_id for r in rows}
        assert metric(ctl, "orchestrator_callback_deliveries_total", target=CALLBACK, outcome="delivered") == 12
        ctl.controller.auditor.flush()
        key = base64.b64decode(secret.removeprefix("whsec_"))
        for file in (ctl.config.data_dir / "jobs.sqlite3", ctl.config.data_dir / AUDIT_FILE_NAME):
            assert secret.removeprefix("whsec_").encode() not in file.read_bytes()
            assert key not in file.read_bytes()
        assert metric(ctl, "orchestrator_callbacks_pending", target=CALLBACK) == 0
    finally:
        await receiver.stop()


async def test_a_receiver_down_for_a_while_gets_everything_after(fake_controller_factory: Any, tmp_path: Path) -> None:
    """Down (nothing listening), then answering 503 to the first few, then fine: no state lost, none delivered
    under two ids, each job's states in order."""
    secret, path = callback_secret(tmp_path)
    receiver = Receiver(secret)
    busy = {"left": 3}

    def answer(_: Any) -> int:
        if busy["left"] > 0:
            busy["left"] -= 1
            return 503
        return 200

    receiver.answer = answer
    cfg = settings(tmp_path, callbacks={"url": receiver.url, "secret_file": str(path)})
    ctl = await fake_controller_factory(settings=cfg)
    ids = await run_jobs(ctl, 3)
    store = ctl.controller.store

    async def retried() -> bool:
        pending = await store.pending_deliveries(ctl.controller_id)
        return len(pending) == 12 and all(p.attempts >= 1 for p in pending if p.seq == 1)

    for _ in range(200):
        if await retried():
            break
        await asyncio.sleep(0.05)
    assert await retried()
    assert metric(ctl, "orchestrator_callbacks_pending", target=CALLBACK) == 12
    assert metric(ctl, "orchestrator_callback_attempts_failed_total", target=CALLBACK) >= 3
    await receiver.start()
    try:
        await receiver.wait_for(lambda: all(receiver.states(j) == LIFE for j in ids))
        assert receiver.rejected == 0
        ids_per_state: dict[tuple[str, str], set[str]] = defaultdict(set)
        for got in receiver.received:
            ids_per_state[(got.job_id, got.state)].add(got.webhook_id)
        assert all(len(v) == 1 for v in ids_per_state.values()), ids_per_state  # a retry keeps its id
        for job_id in ids:  # an earlier state never arrives after a later one, retries included
            arrivals = [g.payload["data"]["sequence"] for g in receiver.received if g.job_id == job_id]
            assert arrivals == sorted(arrivals)
    finally:
        await receiver.stop()


async def test_given_up_deliveries_are_audited_and_do_not_block_later_states(
    fake_controller_factory: Any, tmp_path: Path
) -> None:
    secret, path = callback_secret(tmp_path)
    receiver = Receiver(secret)
    receiver.answer = lambda got: 410 if got.state == "queued" else 503 if got.state == "running" else 200
    await receiver.start()
    try:
        cfg = settings(
            tmp_path, delivery={"retry_for_s": 0.5}, callbacks={"url": receiver.url, "secret_file": str(path)}
        )
        ctl = await fake_controller_factory(settings=cfg)
        (job_id,) = await run_jobs(ctl)
        await receiver.wait_for(lambda: receiver.states(job_id) == ["starting", "succeeded"])
        rows = await ctl.controller.store.deliveries(job_id)
        assert [(r.state.value, r.status, r.last_error) for r in rows] == [
            ("queued", "failed", "HTTP 410"),  # refused for good: given up at once
            ("starting", "delivered", None),
            ("running", "failed", "HTTP 503"),  # retried until retry_for_s ran out
            ("succeeded", "delivered", None),
        ]
        arrivals = [g.state for g in receiver.received]
        assert arrivals.index("succeeded") > max(i for i, s in enumerate(arrivals) if s == "running")
        assert metric(ctl, "orchestrator_callback_deliveries_total", target=CALLBACK, outcome="failed") == 2
        given_up = [r for r in audit_actions(ctl) if r.get("action") == "callback.given_up"]
        assert [(r["target"], r["details"]["state"]) for r in given_up] == [(job_id, "queued"), (job_id, "running")]
        assert secret not in json.dumps(given_up)
    finally:
        await receiver.stop()


async def test_a_job_names_its_own_callback_url_within_the_allow_list(
    fake_controller_factory: Any, tmp_path: Path
) -> None:
    secret, path = callback_secret(tmp_path)
    receiver = Receiver(secret)
    await receiver.start()
    try:
        callbacks = {"secret_file": str(path), "allowed_url_prefixes": [f"http://127.0.0.1:{receiver.port}/hooks/"]}
        ctl = await fake_controller_factory(settings=settings(tmp_path, callbacks=callbacks))
        (job_id,) = await run_jobs(ctl, callback_url=f"{receiver.url}/job-42")
        await receiver.wait_for(lambda: receiver.states(job_id) == LIFE)
        for url in (f"http://127.0.0.1:{receiver.port}/elsewhere", f"http://127.0.0.1:{free_port()}/hooks/x"):
            status, answer = await ctl.post_webhook(job_spec(callback_url=url))
            assert status == 422, answer
            assert answer["reason"] == "invalid_spec"
            assert "callback_url" in json.dumps(answer)
        (quiet,) = await run_jobs(ctl)  # no URL of its own and none for the source: no callbacks at all
        assert await ctl.controller.store.deliveries(quiet) == []
    finally:
        await receiver.stop()


class ForgeStandIn:
    """Answers commit-status requests as the forges do (201) and records them."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path_qs, dict(request.headers), await request.json()))
        return web.json_response({"id": len(self.requests)}, status=201)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def of(self, prefix: str) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
        return [r for r in self.requests if r[0].startswith(prefix)]


async def test_commit_statuses_on_github_gitea_and_gitlab(fake_controller_factory: Any, tmp_path: Path) -> None:
    forge = ForgeStandIn()
    await forge.start()
    token = "tok_" + secrets.token_hex(16)
    (tmp_path / "forge.token").write_text(token + "\n")
    (tmp_path / "forge.token").chmod(0o600)
    base = f"http://127.0.0.1:{forge.port}"
    hook = {"scheme": "standard-webhooks", "secret_file": str(tmp_path / "webhook.secret")}

    def source(kind: str, api_url: str) -> dict[str, Any]:
        status = {"kind": kind, "api_url": api_url, "token_file": str(tmp_path / "forge.token"), "context": "ci/x"}
        return {**hook, "commit_status": status}

    cfg = settings(tmp_path, "https://ci.example")
    cfg["sources"] = {
        "test": source("github", f"{base}/gh"),
        "gitea": source("gitea", f"{base}/gt"),
        "gitlab": source("gitlab", f"{base}/gl"),
    }
    try:
        ctl = await fake_controller_factory(settings=cfg)
        sha = "3f786850e387550fdab836ed7e6dc881de23001b"
        jobs = {}
        for name in ("test", "gitea", "gitlab"):
            spec = job_spec(repository="acme/app", commands=["exit 1"] if name == "gitlab" else ["true"])
            status, _ = await ctl.post_webhook(spec, source=name)
            assert status == 202
            jobs[name] = spec["id"]
        for job_id in jobs.values():
            await ctl.wait_final(job_id)
        deadline = asyncio.get_running_loop().time() + 20
        while len(forge.requests) < 9 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        github = forge.of("/gh/")
        assert [r[0] for r in github] == [f"/gh/repos/acme/app/statuses/{sha}"] * 3
        assert [r[2]["state"] for r in github] == ["pending", "pending", "success"]
        assert github[-1][2] == {
            "state": "success",
            "context": "ci/x",
            "description": "succeeded",
            "target_url": f"https://ci.example/api/v1/jobs/{jobs['test']}/logs",
        }
        assert github[0][1]["Authorization"] == f"Bearer {token}"
        gitea = forge.of("/gt/")
        assert [r[0] for r in gitea] == [f"/gt/api/v1/repos/acme/app/statuses/{sha}"] * 3
        assert gitea[0][1]["Authorization"] == f"token {token}"
        gitlab = forge.of("/gl/")
        assert [r[0] for r in gitlab] == [f"/gl/api/v4/projects/acme%2Fapp/statuses/{sha}"] * 3
        assert [r[2]["state"] for r in gitlab] == ["pending", "running", "success"]
        assert gitlab[0][1]["PRIVATE-TOKEN"] == token and gitlab[0][2]["name"] == "ci/x"
        for job_id in jobs.values():
            assert [r.target for r in await ctl.controller.store.deliveries(job_id)] == [STATUS] * 3
        # the token is in no store, audit record or API answer
        ctl.controller.auditor.flush()
        for file in (ctl.config.data_dir / "jobs.sqlite3", ctl.config.data_dir / AUDIT_FILE_NAME):
            assert token.encode() not in file.read_bytes()
        status, body = await ctl.api("GET", f"/api/v1/jobs/{jobs['test']}")
        assert status == 200 and token not in json.dumps(body)
    finally:
        await forge.stop()
