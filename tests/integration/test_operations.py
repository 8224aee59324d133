"""Operating the controller: metrics, back-pressure, draining, sweeping leftovers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import docker
import pytest

from orchestrator.app import drain
from orchestrator.runtime.container_spec import LABEL_CONTROLLER, LABEL_JOB, LABEL_MANAGED

from conftest import TEST_IMAGE, RunningController, job_spec, managed_containers

pytestmark = pytest.mark.docker


async def test_metrics_count_jobs_rejections_and_latency(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory()
    ok, bad = job_spec(commands=["true"]), job_spec(commands=["exit 2"])
    await ctl.post_webhook(ok)
    await ctl.post_webhook(bad)
    await ctl.post_webhook(job_spec(pool="nope"))
    await ctl.post_webhook(b"{}", headers={})
    await ctl.wait_final(ok["id"])
    await ctl.wait_final(bad["id"])
    async with ctl.session.get(f"{ctl.url}/metrics") as r:
        assert r.status == 401  # not public unless configured
    status, body = await ctl.api("GET", "/metrics", token=ctl.viewer_token)
    text = body.decode()
    assert status == 200
    assert 'orchestrator_jobs_finished_total{pool="default",state="succeeded"} 1.0' in text
    assert 'orchestrator_jobs_finished_total{pool="default",state="failed"} 1.0' in text
    assert 'orchestrator_webhook_rejections_total{reason="unknown_pool"} 1.0' in text
    assert 'orchestrator_webhook_rejections_total{reason="missing_signature"} 1.0' in text
    assert 'orchestrator_webhooks_accepted_total{source="test"} 2.0' in text
    assert 'orchestrator_job_start_seconds_count{pool="default"} 2.0' in text
    assert "orchestrator_container_teardown_seconds_count 2.0" in text
    assert 'orchestrator_queue_depth{pool="default"} 0.0' in text
    assert "orchestrator_docker_errors_total 0.0" in text


async def test_full_queue_answers_429_and_stores_nothing(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory(max_concurrent=1, max_queue=1)
    blocker, queued, refused = job_spec(commands=["sleep 600"]), job_spec(), job_spec()
    await ctl.post_webhook(blocker)
    await ctl.wait_status(blocker["id"], {"running"})
    assert (await ctl.post_webhook(queued))[0] == 202
    async with ctl.session.post(f"{ctl.url}/webhooks/test", data=b"x") as r:
        assert r.status == 401  # signature first, capacity later
    status, body = await ctl.post_webhook(refused)
    assert status == 429 and body["reason"] == "queue_full"
    assert (await ctl.api("GET", f"/api/v1/jobs/{refused['id']}"))[0] == 404
    # a duplicate of an accepted job is still answered while the queue is full
    assert (await ctl.post_webhook(queued))[0] == 200
    await ctl.api("POST", f"/api/v1/jobs/{queued['id']}/cancel")
    await ctl.api("POST", f"/api/v1/jobs/{blocker['id']}/cancel")


async def test_draining_refuses_new_work_and_lets_running_jobs_finish(
    controller_factory: Any, docker_client: docker.DockerClient
) -> None:
    ctl: RunningController = await controller_factory()
    spec = job_spec(commands=["sleep 1.5", "echo finished"])
    await ctl.post_webhook(spec)
    await ctl.wait_status(spec["id"], {"running"})
    draining = asyncio.create_task(drain(ctl.controller, 30))
    await asyncio.sleep(0.1)
    status, body = await ctl.post_webhook(job_spec())
    assert status == 503 and body["reason"] == "shutting_down"
    async with ctl.session.get(f"{ctl.url}/readyz") as r:
        assert r.status == 503
        assert "draining" in (await r.json())["checks"]["controller"]
    await asyncio.wait_for(draining, 30)
    job = await ctl.job(spec["id"])
    assert job["status"] == "succeeded"
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_sweep_removes_leftover_containers_of_this_controller_only(
    controller_factory: Any, docker_client: docker.DockerClient
) -> None:
    ctl: RunningController = await controller_factory()
    ours = docker_client.containers.create(
        TEST_IMAGE,
        ["sleep", "600"],
        labels={LABEL_MANAGED: "true", LABEL_CONTROLLER: ctl.controller_id, LABEL_JOB: "ghost"},
        network_mode="none",
    )
    theirs = docker_client.containers.create(
        TEST_IMAGE,
        ["sleep", "600"],
        labels={LABEL_MANAGED: "true", LABEL_CONTROLLER: "someone-else", LABEL_JOB: "ghost"},
        network_mode="none",
    )
    try:
        assert await ctl.controller.scheduler.sweep() == 1
        assert managed_containers(docker_client, ctl.controller_id) == []
        theirs.reload()
    finally:
        theirs.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            ours.remove(force=True)


async def test_queue_limit_holds_under_concurrent_webhooks(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory(max_concurrent=1, max_queue=5)
    blocker = job_spec(commands=["sleep 600"])
    await ctl.post_webhook(blocker)
    await ctl.wait_status(blocker["id"], {"running"})
    results = await asyncio.gather(*(ctl.post_webhook(job_spec()) for _ in range(32)))
    statuses = sorted(status for status, _ in results)
    assert statuses.count(202) == 5 and statuses.count(429) == 27
    assert ctl.controller.scheduler.queue_depth("default") == 5
    _, body = await ctl.api("GET", "/api/v1/jobs?status=queued")
    assert len(body["jobs"]) == 5
    for job in body["jobs"]:
        await ctl.api("POST", f"/api/v1/jobs/{job['job_id']}/cancel")
    await ctl.api("POST", f"/api/v1/jobs/{blocker['id']}/cancel")
