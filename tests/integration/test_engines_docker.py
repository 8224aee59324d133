"""Several Docker engines with the real controller: three extra dockerd instances on this machine
(tests/dockerds.py); jobs spread over them by free capacity, an engine killed mid-job fails its job at once naming
it while the others carry on, and a drained engine gets no new job while its running one finishes; where the pool
retries, a job lost with its engine runs again on another."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.runtime.container_spec import LABEL_CONTROLLER

from conftest import RunningController, job_spec
from dockerds import daemons

pytestmark = pytest.mark.docker
FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}


def containers(daemon: Any, controller_id: str) -> list[Any]:
    return daemon.client().containers.list(all=True, filters={"label": f"{LABEL_CONTROLLER}={controller_id}"})


async def until(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_placement_loss_and_drain_across_three_engines(controller_factory: Any, tmp_path: Path) -> None:
    with daemons(tmp_path / "dd", 3) as engines:
        settings = {"engines": {d.name: {"base_url": d.base_url, "probe_interval_s": 0.5} for d in engines},
                    "docker": {"stop_grace_s": 1, "retry_budget_s": 2}}  # fmt: skip
        ctl: RunningController = await controller_factory(
            settings=settings, max_concurrent=6, engines={d.name: 2 for d in engines}
        )
        cid = ctl.controller_id
        long = [job_spec(commands=["echo started", "sleep 60"]) for _ in range(3)]
        for spec in long:
            assert (await ctl.post_webhook(spec))[0] == 202
            await ctl.wait_status(spec["id"], {"running"})
        # Spread: one job per engine (each had 2 free; the first in config order wins ties).
        await until(lambda: [len(containers(d, cid)) for d in engines] == [1, 1, 1])

        # An engine is lost mid-job: its job ends in error naming it, within seconds; the others run on.
        lost = engines[0]
        (victim,) = [s for s in long if any(c.labels.get("io.runner-orchestrator.job-id") == s["id"]
                                             for c in containers(lost, cid))]  # fmt: skip
        await asyncio.to_thread(lost.kill)
        began = time.monotonic()
        job = await ctl.wait_final(victim["id"], timeout=60)
        took = time.monotonic() - began
        assert job["status"] == "error" and lost.name in job["reason"], job
        assert took < 30, took
        others = [s for s in long if s is not victim]
        for spec in others:
            assert (await ctl.job(spec["id"]))["status"] == "running"
        status, body = await ctl.api("GET", "/readyz")
        assert status == 200 and {e["name"]: e["state"] for e in body["engines"]}[lost.name] == "unhealthy"

        # Drain the second engine: a new job goes to the third; the running job on the second finishes.
        drained = engines[1]
        status, body = await ctl.api("POST", f"/api/v1/engines/{drained.name}/drain")
        assert status == 200, body
        fresh = job_spec(commands=["echo on-the-third"])
        assert (await ctl.post_webhook(fresh))[0] == 202
        fresh_job = await ctl.wait_final(fresh["id"])
        assert fresh_job["status"] == "succeeded", fresh_job
        assert len(containers(drained, cid)) == 1  # only its running job's
        for spec in others:
            await ctl.api("POST", f"/api/v1/jobs/{spec['id']}/cancel")
            assert (await ctl.wait_final(spec["id"]))["status"] == "cancelled"
        await until(lambda: [len(containers(d, cid)) for d in engines[1:]] == [0, 0])
        listed = {e["name"]: e for e in (await ctl.api("GET", "/api/v1/engines"))[1]["engines"]}
        assert listed[drained.name]["state"] == "draining" and listed[engines[2].name]["state"] == "healthy"


async def test_a_job_lost_with_its_engine_runs_again_on_another(controller_factory: Any, tmp_path: Path) -> None:
    """Pool engine_loss_retries = 1: the engine running the job is killed; the job is queued again and its second
    attempt succeeds on the other engine, its log telling both attempts apart."""
    with daemons(tmp_path / "dd", 2) as engines:
        settings = {"engines": {d.name: {"base_url": d.base_url, "probe_interval_s": 0.5} for d in engines},
                    "docker": {"stop_grace_s": 1, "retry_budget_s": 2}}  # fmt: skip
        ctl: RunningController = await controller_factory(
            settings=settings, max_concurrent=2, engines={d.name: 1 for d in engines}, engine_loss_retries=1
        )
        spec = job_spec(commands=['echo "attempt on $(hostname)"', "sleep 3", "echo finished"])
        assert (await ctl.post_webhook(spec))[0] == 202
        await ctl.wait_status(spec["id"], {"running"})
        (first,) = [d for d in engines if containers(d, ctl.controller_id)]
        await asyncio.to_thread(first.kill)
        job = await ctl.wait_final(spec["id"], timeout=90)
        assert (job["status"], job["attempt"]) == ("succeeded", 2), (job["reason"], job)
        (other,) = [d for d in engines if d is not first]
        assert containers(other, ctl.controller_id) == []  # removed after its attempt
        status, log = await ctl.api("GET", f"/api/v1/jobs/{spec['id']}/logs")
        text = log.decode()
        assert status == 200 and f"engine {first.name}" in text and "queued again as attempt 2" in text, text
        assert text.count("\nfinished\n") == 1
