"""Approval gates end to end through the HTTP API, on the in-memory runtime and on the real Docker engine: a job of
a gated pool waits (no container), its sender's approval is refused, a second person's approval runs it, a
rejection ends it, a job nobody approves in time is rejected; every decision is in the audit trail and in the
job's signed attestation (which `orchestrator attest verify --require-approval` checks)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main
from orchestrator.config import hash_token

from conftest import TEST_IMAGE, RunningController, job_spec

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error", "rejected"}
AUTH = {"Authorization": "Bearer ops-token"}
PEOPLE = {"alice": "approver", "bob": "approver", "ops": "operator", "outsider": "approver"}


@pytest.fixture(params=["fake_controller_factory", pytest.param("controller_factory", marks=pytest.mark.docker)])
def factory(request: pytest.FixtureRequest) -> Any:
    """The in-memory runtime, then the real Docker engine."""
    return request.getfixturevalue(request.param)


@pytest.fixture
async def ctl(factory: Any) -> RunningController:
    tokens = [
        {"name": name, "role": role, "sha256": hash_token(f"{name}-token"),
         **({"repositories": ["elsewhere/*"]} if name == "outsider" else {})}
        for name, role in PEOPLE.items()
    ]  # fmt: skip
    pool = {"image": TEST_IMAGE, "memory": "128m", "pids": 64, "max_concurrent": 2}
    settings = {
        "api": {"tokens": tokens},
        "pools": {"default": pool, "deploy": {**pool, "requires_approval": True}},
        "approvals": {"timeout_s": 600},
    }
    controller: RunningController = await factory(settings=settings)
    return controller


async def call(ctl: RunningController, method: str, path: str, who: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {who}-token"}
    async with ctl.session.request(method, f"{ctl.url}{path}", headers=headers, json=body) as resp:
        return resp.status, await resp.json() if resp.content_type == "application/json" else await resp.read()


async def status(ctl: RunningController, job_id: str, wanted: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = (await call(ctl, "GET", f"/api/v1/jobs/{job_id}", "ops"))[1]
        if job["status"] in wanted:
            return dict(job)
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)


def audit(ctl: RunningController) -> list[dict[str, Any]]:
    ctl.controller.auditor.flush()
    return [json.loads(line) for line in (ctl.config.data_dir / "audit.jsonl").read_text().splitlines()]


async def verify(ctl: RunningController, job_id: str, tmp_path: Path, *extra: str) -> int:
    """`orchestrator attest verify` on the job's attestation and key as the API serves them."""
    envelope, pub = tmp_path / f"{job_id}.json", tmp_path / "attest.pub"
    async with ctl.session.get(f"{ctl.url}/api/v1/jobs/{job_id}/attestation", headers=AUTH) as resp:
        assert resp.status == 200
        envelope.write_bytes(await resp.read())
    async with ctl.session.get(f"{ctl.url}/api/v1/attestation-key", headers=AUTH) as resp:
        pub.write_bytes(await resp.read())
    return main(["attest", "verify", str(envelope), "--pubkey", str(pub), *extra])


async def test_a_job_waits_its_sender_cannot_approve_it_and_a_second_person_can(
    ctl: RunningController, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = job_spec(pool="deploy", repository="org/app", sender="alice", commands=["echo deployed"])
    assert (await ctl.post_webhook(spec))[0] == 202
    job = await status(ctl, spec["id"], {"awaiting_approval"})
    assert job["reason"] == "waiting for approval: pool 'deploy' requires it" and job["approval"] is None
    await asyncio.sleep(0.3)
    assert (await status(ctl, spec["id"], {"awaiting_approval"}))["started_at"] is None  # no container meanwhile

    refused = await call(ctl, "POST", f"/api/v1/jobs/{spec['id']}/approve", "alice", {"comment": "mine"})
    assert refused[0] == 403 and "alice sent job" in refused[1]["error"]
    outside = await call(ctl, "POST", f"/api/v1/jobs/{spec['id']}/approve", "outsider")
    assert outside[0] == 404  # not in the outsider's scope: not even visible
    operator = await call(ctl, "POST", f"/api/v1/jobs/{spec['id']}/approve", "ops")
    assert operator[0] == 403 and "needs an approver grant" in operator[1]["error"]

    approved = await call(ctl, "POST", f"/api/v1/jobs/{spec['id']}/approve", "bob", {"comment": "ship it"})
    assert approved[0] == 200 and approved[1]["approval"]["by"] == "bob", approved
    assert approved[1]["approval"]["comment"] == "ship it" and approved[1]["attempt"] == 1
    done = await status(ctl, spec["id"], FINAL)
    assert done["status"] == "succeeded", done
    again = await call(ctl, "POST", f"/api/v1/jobs/{spec['id']}/approve", "bob")
    assert again[0] == 409 and "not awaiting approval" in again[1]["error"]

    records = audit(ctl)
    decisions = [(r["actor"].get("token_name"), r["action"], r["outcome"]) for r in records if r["target"] == spec["id"]
                 and r["action"] in ("api.approve", "api.reject")]  # fmt: skip
    assert decisions == [
        ("alice", "api.approve", "refused"),
        ("bob", "api.approve", "ok"),
        ("bob", "api.approve", "refused"),
    ]
    (queued,) = [
        r for r in records if r["target"] == spec["id"] and r["action"] == "job.state" and r["outcome"] == "queued"
    ]
    assert queued["details"]["approval"]["by"] == "bob" and queued["details"]["approval"]["comment"] == "ship it"

    assert await verify(ctl, spec["id"], tmp_path, "--require-approval") == 0
    assert "OK: approved by bob at " in capsys.readouterr().out


async def test_a_rejected_job_ends_without_running_and_says_who_rejected_it(
    ctl: RunningController, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = job_spec(pool="deploy", repository="org/app", sender="alice", commands=["echo never"])
    assert (await ctl.post_webhook(spec))[0] == 202
    await status(ctl, spec["id"], {"awaiting_approval"})
    bad = await call(ctl, "POST", f"/api/v1/jobs/{spec['id']}/reject", "bob", {"comment": 7})
    assert bad[0] == 400 and "comment" in bad[1]["error"]
    rejected = await call(ctl, "POST", f"/api/v1/jobs/{spec['id']}/reject", "alice", {"comment": "wrong branch"})
    assert rejected[0] == 200 and rejected[1]["status"] == "rejected"  # a sender may withdraw their own job
    assert rejected[1]["reason"] == "rejected by alice: wrong branch" and rejected[1]["started_at"] is None
    log = (await call(ctl, "GET", f"/api/v1/jobs/{spec['id']}/logs", "ops"))[1]
    assert b"job ended (rejected): rejected by alice: wrong branch" in log and b"never\n" not in log
    assert await verify(ctl, spec["id"], tmp_path, "--allow-failed") == 0
    assert "OK: rejected by alice" in capsys.readouterr().out
    assert await verify(ctl, spec["id"], tmp_path, "--allow-failed", "--require-approval") == 1


async def test_a_job_nobody_approves_in_time_is_rejected(ctl: RunningController) -> None:
    spec = job_spec(pool="deploy", repository="org/app")
    assert (await ctl.post_webhook(spec))[0] == 202
    await status(ctl, spec["id"], {"awaiting_approval"})
    approvals = ctl.controller.approvals
    assert approvals is not None
    assert await approvals.sweep() == 0  # not yet
    approvals.clock = lambda: time.time() + 601
    late = await call(ctl, "POST", f"/api/v1/jobs/{spec['id']}/approve", "bob")
    assert late[0] == 409 and "waited longer than approvals.timeout_s" in late[1]["error"]
    job = await status(ctl, spec["id"], FINAL)
    assert job["status"] == "rejected" and job["approval"]["decision"] == "expired"
    assert job["reason"] == "rejected: nobody approved it within approvals.timeout_s (600 s)"
    other = job_spec(pool="deploy", repository="org/app")
    assert (await ctl.post_webhook(other))[0] == 202
    await status(ctl, other["id"], {"awaiting_approval"})
    approvals.clock = lambda: time.time() + 601
    assert await approvals.sweep() == 1  # the periodic sweep rejects it too
    assert (await status(ctl, other["id"], FINAL))["status"] == "rejected"


async def test_ungated_pools_and_the_listing_of_waiting_jobs(ctl: RunningController) -> None:
    free = job_spec(pool="default", commands=["echo free"])
    gated = job_spec(pool="deploy", repository="org/app")
    for spec in (free, gated):
        assert (await ctl.post_webhook(spec))[0] == 202
    assert (await status(ctl, free["id"], FINAL))["status"] == "succeeded"
    waiting = (await call(ctl, "GET", "/api/v1/jobs?status=awaiting_approval", "bob"))[1]["jobs"]
    assert [j["job_id"] for j in waiting] == [gated["id"]]
