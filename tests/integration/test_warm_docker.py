"""Warm containers on the real Docker engine: a pool keeps pre-started hardened containers whose bootstrap waits on
stdin; a job claims one (its data arrives only then), the pool refills, stale ones are replaced, and a controller
killed with warm containers up leaves none after its restart."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import docker
import pytest

from orchestrator.runtime.container_spec import LABEL_JOB, LABEL_WARM

from conftest import RunningController, job_spec, managed_containers

pytestmark = pytest.mark.docker


def warm_ids(client: docker.DockerClient, controller_id: str) -> set[str]:
    return {
        c.id
        for c in managed_containers(client, controller_id)
        if c.labels.get(LABEL_WARM) == "true" and c.status == "running"
    }


async def wait_ready(ctl: RunningController, n: int, timeout: float = 60) -> None:
    assert ctl.controller.warm is not None
    deadline = time.monotonic() + timeout
    while ctl.controller.warm.ready("default") < n:
        assert time.monotonic() < deadline, ctl.controller.warm.stats()
        await asyncio.sleep(0.05)


async def test_a_job_runs_in_a_warm_container_that_held_nothing_of_it(
    controller_factory: Any, docker_client: docker.DockerClient
) -> None:
    ctl: RunningController = await controller_factory(warm=2)
    await wait_ready(ctl, 2)
    before = warm_ids(docker_client, ctl.controller_id)
    assert len(before) == 2
    spec = job_spec(commands=["echo job=$CI_JOB_ID repo=$CI_REPOSITORY greeting=$GREETING", "id -u"],
                    env={"GREETING": "hello-warm"})  # fmt: skip
    for cid in before:  # an unclaimed warm container: no job id, repository, env, command anywhere
        inspected = json.dumps(docker_client.api.inspect_container(cid))
        for job_data in (spec["id"], spec["repository"], "hello-warm", "GREETING", "echo job"):
            assert job_data not in inspected
        attrs = docker_client.api.inspect_container(cid)
        assert LABEL_JOB not in attrs["Config"]["Labels"] and attrs["HostConfig"]["ReadonlyRootfs"] is True
        assert attrs["HostConfig"]["CapDrop"] == ["ALL"] and attrs["Config"]["User"] == "10001:10001"
    assert (await ctl.post_webhook(spec))[0] == 202
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded", job
    assert job["container_id"] in before
    log = (await ctl.logs(spec["id"])).decode()
    assert f"job={spec['id']} repo=example/app greeting=hello-warm" in log and "10001" in log
    await wait_ready(ctl, 2)  # refilled, with a new one
    after = warm_ids(docker_client, ctl.controller_id)
    assert job["container_id"] not in after and len(after) == 2
    assert ctl.controller.warm is not None and ctl.controller.warm.claims["warm"] == 1
    status, body = await ctl.api("GET", "/metrics", token=ctl.viewer_token)
    assert status == 200
    text = body.decode() if isinstance(body, bytes) else str(body)
    assert 'orchestrator_warm_claims_total{how="warm",pool="default"} 1.0' in text
    assert 'orchestrator_warm_ready{pool="default"} 2.0' in text


async def test_stale_warm_containers_are_replaced(controller_factory: Any, docker_client: docker.DockerClient) -> None:
    ctl: RunningController = await controller_factory(warm=1)
    await wait_ready(ctl, 1)
    warm = ctl.controller.warm
    assert warm is not None
    (first,) = warm_ids(docker_client, ctl.controller_id)
    real = warm.clock
    warm.clock = lambda: real() + 10_000  # older than warm_max_age_s
    await warm.upkeep()
    warm.clock = real
    await warm.settle()
    await wait_ready(ctl, 1)
    (second,) = warm_ids(docker_client, ctl.controller_id)
    assert second != first and first not in {c.id for c in managed_containers(docker_client, ctl.controller_id)}
    docker_client.api.kill(second)  # one that dies is replaced too
    await asyncio.sleep(0.2)
    await warm.upkeep()
    await warm.settle()
    await wait_ready(ctl, 1)
    assert warm_ids(docker_client, ctl.controller_id) - {second}
    # the sweep leaves ready warm containers alone
    assert await ctl.controller.scheduler.sweep() == 0
    assert len(warm_ids(docker_client, ctl.controller_id)) == 1


async def test_sigkill_with_warm_containers_leaves_none_after_restart(
    controller_process: Any, docker_client: docker.DockerClient
) -> None:
    cp = controller_process(extra_toml="warm = 3\n")
    cp.start()
    deadline = time.monotonic() + 60
    while len(warm_ids(docker_client, cp.controller_id)) < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    spec = job_spec(commands=["sleep 30"])
    assert await asyncio.to_thread(cp.send, spec) == 202
    await asyncio.to_thread(cp.wait, spec["id"], {"running"})
    claimed = (await asyncio.to_thread(cp.job, spec["id"]))["container_id"]
    cp.kill(signal.SIGKILL)
    left = {c.id for c in managed_containers(docker_client, cp.controller_id)}
    assert claimed in left and len(left) >= 3  # the claimed one and the unclaimed ones
    cp.start()
    job = await asyncio.to_thread(cp.wait, spec["id"], {"error", "succeeded", "failed", "timed_out", "cancelled"})
    assert job["status"] == "error" and "restarted" in job["reason"], job
    remaining = {c.id for c in managed_containers(docker_client, cp.controller_id)}
    assert not (remaining & left), "every container of the killed process is gone (claimed and unclaimed)"
    cp.kill(signal.SIGTERM)
