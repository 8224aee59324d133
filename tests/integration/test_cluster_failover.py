"""Two controller processes sharing the CI's PostgreSQL (scheduling/cluster.py): one is SIGKILLed with jobs running
and queued; the other takes over within the lease time -- the running jobs end in error naming the lost controller
(their containers removed), the queued ones run to success, each job reaches one final state -- and a controller
that was only frozen comes back to find its lease gone and stops without touching the jobs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
import requests
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orchestrator.config import hash_token

from conftest import job_spec, managed_containers
from controller_process import ControllerProcess

pytestmark = pytest.mark.docker
DSN = os.environ.get("ORCHESTRATOR_TEST_POSTGRES_DSN", "")
FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}
LEASE = "[cluster]\nheartbeat_s = 0.5\nlease_ttl_s = 3\nshare_queued = {share}\n"


@pytest.fixture
def shared_dsn_file(tmp_path: Path) -> Iterator[Path]:
    if not DSN:
        if os.environ.get("ORCHESTRATOR_REQUIRE_POSTGRES") == "1":
            pytest.fail("ORCHESTRATOR_REQUIRE_POSTGRES=1 but ORCHESTRATOR_TEST_POSTGRES_DSN is not set")
        pytest.skip("set ORCHESTRATOR_TEST_POSTGRES_DSN to run the shared-PostgreSQL tests")
    schema = f"orch_cluster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    options = conninfo_to_dict(DSN).get("options") or ""
    path = tmp_path / "pg.dsn"
    path.write_text(make_conninfo(DSN, options=f"{options} -c search_path={schema}".strip()) + "\n")
    path.chmod(0o600)
    try:
        yield path
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, shared_dsn_file: Path, docker_client: docker.DockerClient
) -> Iterator[list[ControllerProcess]]:
    """Two controllers on one schema; `indirect` parameter: whether they share queued jobs (default true)."""
    share = str(getattr(request, "param", True)).lower()
    made = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        storage = f'[storage]\nbackend = "postgres"\ndsn_file = "{shared_dsn_file}"\n'
        lease = LEASE.format(share=share)
        made.append(ControllerProcess(tmp_path / name, max_concurrent=2, extra_toml=storage + lease))
    yield made
    for cp in made:
        if cp.proc is not None and cp.proc.poll() is None:
            cp.proc.kill()
            cp.proc.wait()
        for c in managed_containers(docker_client, cp.controller_id):
            c.remove(force=True)


async def wait_final(cp: ControllerProcess, job_id: str, timeout: float = 60) -> dict[str, Any]:
    job = await asyncio.to_thread(cp.wait, job_id, FINAL, timeout)
    assert job["status"] in FINAL, job
    return job


@pytest.mark.parametrize("pair", [False], indirect=True)  # A's queued jobs wait for A: taken over, not claimed
async def test_a_killed_controllers_jobs_are_taken_over(
    pair: list[ControllerProcess], docker_client: docker.DockerClient
) -> None:
    a, b = pair
    a.start()
    b.start()
    running = [job_spec(commands=["sleep 60"]) for _ in range(2)]
    queued = [job_spec(commands=["echo ran-after-takeover"]) for _ in range(4)]
    for spec in running + queued:
        assert await asyncio.to_thread(a.send, spec) == 202
    for spec in running:
        assert (await asyncio.to_thread(a.wait, spec["id"], {"running"}))["status"] == "running"
    assert {(await asyncio.to_thread(b.job, s["id"]))["status"] for s in queued} == {"queued"}  # any controller
    assert len(managed_containers(docker_client, a.controller_id)) == 2

    a.kill(signal.SIGKILL)
    killed = time.monotonic()
    ended = [await wait_final(b, spec["id"]) for spec in running]
    took = time.monotonic() - killed
    for job in ended:
        assert job["status"] == "error", job
        assert job["reason"] == f"controller {a.controller_id} lost its lease while the job was running"
    assert took < 3 + 0.5 + 10, took  # lease_ttl_s + heartbeat_s, and removing two containers
    for spec in queued:
        job = await wait_final(b, spec["id"])
        assert job["status"] == "succeeded", job
        assert "ran-after-takeover" in await asyncio.to_thread(b.log_text, spec["id"])
    assert managed_containers(docker_client, a.controller_id) == []  # the lost controller's containers are gone
    b.kill(signal.SIGTERM)


async def test_a_frozen_controller_that_lost_its_lease_stops_without_touching_the_jobs(
    pair: list[ControllerProcess],
) -> None:
    a, b = pair
    a.start()
    b.start()
    spec = job_spec(commands=["sleep 60"])
    assert await asyncio.to_thread(a.send, spec) == 202
    await asyncio.to_thread(a.wait, spec["id"], {"running"})
    assert a.proc is not None
    os.killpg(a.proc.pid, signal.SIGSTOP)  # frozen (or cut off): it cannot renew its lease
    try:
        job = await wait_final(b, spec["id"])
    finally:
        os.killpg(a.proc.pid, signal.SIGCONT)
    assert job["status"] == "error" and a.controller_id in job["reason"]
    deadline = time.monotonic() + 30
    while a.proc.poll() is None:  # its next heartbeat fails: it stops on its own
        assert time.monotonic() < deadline, "the controller whose lease was taken over kept running"
        await asyncio.sleep(0.1)
    later = await asyncio.to_thread(b.job, spec["id"])
    assert (later["status"], later["reason"]) == (job["status"], job["reason"])  # it wrote nothing over them
    assert "lease was taken over" in (a.tmp / "controller.log").read_text()
    b.kill(signal.SIGTERM)


async def test_queued_jobs_go_to_whichever_controller_has_room(pair: list[ControllerProcess]) -> None:
    """A takes 8 jobs but runs 2 at a time; B, idle, claims the waiting ones: every job runs once, some on each."""
    a, b = pair
    a.start()
    b.start()
    specs = [job_spec(commands=["sleep 1", "echo done-$CI_JOB_ID"]) for _ in range(8)]
    for spec in specs:
        assert await asyncio.to_thread(a.send, spec) == 202
    owners = []
    for spec in specs:
        job = await wait_final(a, spec["id"])
        assert job["status"] == "succeeded", job
        owners.append(job["controller_id"])
        log = await asyncio.to_thread((a if job["controller_id"] == a.controller_id else b).log_text, spec["id"])
        assert log.count(f"done-{spec['id']}") == 1  # its output once: it ran once
    assert set(owners) == {a.controller_id, b.controller_id}, owners
    for cp in pair:
        cp.kill(signal.SIGTERM)


async def test_a_jobs_log_is_followed_through_any_controller(pair: list[ControllerProcess]) -> None:
    """The job runs on A; its log is followed live through B, which forwards to A (the same API token works on
    every controller sharing the store)."""
    a, b = pair
    config = b.config.read_text().replace(hash_token(b.token), hash_token(a.token))
    b.config.write_text(config)
    b.token = a.token
    a.start()
    b.start()
    spec = job_spec(commands=["for i in 1 2 3 4 5; do echo line-$i; sleep 0.3; done"])
    assert await asyncio.to_thread(a.send, spec) == 202
    await asyncio.to_thread(a.wait, spec["id"], {"running"})

    def follow() -> tuple[str, str]:
        r = requests.get(f"{b.url}/api/v1/jobs/{spec['id']}/logs", params={"follow": "true"},
                         headers={"Authorization": f"Bearer {b.token}"}, timeout=30, stream=True)  # fmt: skip
        assert r.status_code == 200, r.text
        return r.headers.get("X-Served-By", ""), r.content.decode()

    served_by, text = await asyncio.to_thread(follow)
    assert served_by == a.controller_id
    assert [line for line in text.splitlines() if line.startswith("line-")] == [f"line-{i}" for i in range(1, 6)]
    for cp in pair:
        cp.kill(signal.SIGTERM)
