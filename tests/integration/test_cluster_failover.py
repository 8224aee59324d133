"""Two controller processes sharing the CI's PostgreSQL (scheduling/cluster.py): one is SIGKILLed with 5 jobs running
(with Vault tokens) and 20 queued; the other takes over within the lease time -- the running jobs end in error naming
the lost controller (containers removed, tokens revoked), the queued ones run to success, each job reaches one final
state; a controller that was only frozen comes back to find its lease gone and stops without touching the jobs;
queued jobs go to whichever has room, within the pool's limit across both, each run once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
import requests
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orchestrator.config import hash_token
from orchestrator.runtime.container_spec import LABEL_CONTROLLER, LABEL_JOB

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
def controllers(
    tmp_path: Path, shared_dsn_file: Path, docker_client: docker.DockerClient
) -> Iterator[Callable[..., list[ControllerProcess]]]:
    """`controllers(share=True, **settings)`: two controllers on one schema (ControllerProcess settings, each a value
    or a pair of values for a and b); `share`: whether they claim each other's queued jobs."""
    made: list[ControllerProcess] = []

    def make(share: bool = True, **settings: Any) -> list[ControllerProcess]:
        storage = f'[storage]\nbackend = "postgres"\ndsn_file = "{shared_dsn_file}"\n'
        for n, name in enumerate(("a", "b")):
            (tmp_path / name).mkdir()
            mine = {key: value[n] if isinstance(value, tuple) else value for key, value in settings.items()}
            mine.setdefault("max_concurrent", 2)
            extra = storage + LEASE.format(share=str(share).lower())
            made.append(ControllerProcess(tmp_path / name, extra_toml=extra, **mine))
        return made

    yield make
    for cp in made:
        if cp.proc is not None and cp.proc.poll() is None:
            cp.proc.kill()
            cp.proc.wait()
        for c in managed_containers(docker_client, cp.controller_id):
            c.remove(force=True)


@pytest.fixture
def pair(controllers: Callable[..., list[ControllerProcess]]) -> list[ControllerProcess]:
    return controllers()


async def wait_final(cp: ControllerProcess, job_id: str, timeout: float = 60) -> dict[str, Any]:
    job = await asyncio.to_thread(cp.wait, job_id, FINAL, timeout)
    assert job["status"] in FINAL, job
    return job


def final_records(*cps: ControllerProcess) -> Counter[str]:
    """How many final-state records each job has in the controllers' audit trails together."""
    finals: Counter[str] = Counter()
    for cp in cps:
        path = cp.tmp / "data" / "audit.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a SIGKILLed controller's torn last line
            if record["action"] == "job.state" and record["outcome"] in FINAL:
                finals[record["target"]] += 1
    return finals


def container_creations(client: docker.DockerClient, since: float, controller_ids: set[str]) -> Counter[str]:
    """Containers created per job since `since` (the engine's event log): a job run twice shows 2."""
    created: Counter[str] = Counter()
    events = client.events(since=int(since), until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "event": "create"})  # fmt: skip
    for event in events:
        labels = event.get("Actor", {}).get("Attributes", {})
        if labels.get(LABEL_CONTROLLER) in controller_ids and labels.get(LABEL_JOB):
            created[labels[LABEL_JOB]] += 1
    return created


async def test_a_controller_sigkilled_with_5_running_and_20_queued_jobs_is_taken_over(
    controllers: Callable[..., list[ControllerProcess]], docker_client: docker.DockerClient, vault_layout: Any
) -> None:
    """A runs 5 jobs holding Vault tokens and has 20 queued (B does not claim them: share_queued = false); A is
    SIGKILLed. B takes over within the lease time: the 5 end in `error` naming A, their containers removed and
    tokens revoked by accessor; the 20 run on B within the pool's limit. Every job has exactly one final state
    over both audit trails and one container; no container and no token is left."""
    layouts = vault_layout(), vault_layout()  # each controller is its own OIDC issuer: a JWT mount each
    a, b = controllers(share=False, max_concurrent=5, vault=tuple(v.controller_settings() for v in layouts),
                       revoker_token="pending")  # fmt: skip
    since = time.time()
    for cp, layout in zip((a, b), layouts, strict=True):
        await asyncio.to_thread(cp.start)
        await asyncio.to_thread(layout.configure, cp.url, TOKEN_TTL="1h")
        await asyncio.to_thread(layout.create_revoker_token, cp.tmp / "revoker.token")
        await asyncio.to_thread(layout.put_kv, "ci/default/db", {"password": "failover-pa55word"})
    secret = [{"path": "ci/default/db", "key": "password", "name": "DB"}]
    running = [job_spec(commands=["sleep 600"], secrets=secret) for _ in range(5)]
    queued = [job_spec(commands=['echo "ran-$CI_JOB_ID"'], secrets=secret) for _ in range(20)]
    for spec in running + queued:
        assert await asyncio.to_thread(a.send, spec) == 202
    for spec in running:
        assert (await asyncio.to_thread(a.wait, spec["id"], {"running"}, 120))["status"] == "running"
    assert {(await asyncio.to_thread(b.job, s["id"]))["status"] for s in queued} == {"queued"}  # any controller
    assert len(managed_containers(docker_client, a.controller_id)) == 5
    assert len(await asyncio.to_thread(layouts[0].job_tokens)) == 5

    a.kill(signal.SIGKILL)
    killed = time.monotonic()
    ended = [await wait_final(b, spec["id"]) for spec in running]
    took = time.monotonic() - killed
    for job in ended:
        assert job["status"] == "error", job
        assert job["reason"] == f"controller {a.controller_id} lost its lease while the job was running"
    assert took < 3 + 0.5 + 15, took  # lease_ttl_s + heartbeat_s, and removing five containers
    for spec in queued:
        job = await wait_final(b, spec["id"], timeout=120)
        assert (job["status"], job["controller_id"]) == ("succeeded", b.controller_id), job
        assert (await asyncio.to_thread(b.log_text, spec["id"])).count(f"ran-{spec['id']}") == 1
    ids = [spec["id"] for spec in running + queued]
    assert final_records(a, b) == dict.fromkeys(ids, 1)  # one final state each, over both trails
    assert container_creations(docker_client, since, {a.controller_id, b.controller_id}) == dict.fromkeys(ids, 1)
    assert managed_containers(docker_client, a.controller_id) == []
    assert managed_containers(docker_client, b.controller_id) == []
    assert [await asyncio.to_thread(layout.job_tokens) for layout in layouts] == [[], []]
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


async def test_queued_jobs_go_to_whichever_controller_has_room_within_the_pool_limit(
    controllers: Callable[..., list[ControllerProcess]], docker_client: docker.DockerClient
) -> None:
    """Pool limit 3 across the cluster, each controller runs at most 2 jobs: A takes 10 jobs, B 2, and each could
    run 2 of its own at once; the pool's limit holds over both (never more than 3 at a time, from the engine's event
    log), and B claims A's waiting jobs as the pool has room. Every job runs once (one container each)."""
    a, b = controllers(max_concurrent=3, max_total=2)
    a.start()
    b.start()
    since = time.time()
    specs = [job_spec(commands=["sleep 1", "echo done-$CI_JOB_ID"]) for _ in range(12)]
    for n, spec in enumerate(specs):
        assert await asyncio.to_thread((b if n in (0, 1) else a).send, spec) == 202
    owners = []
    for spec in specs:
        job = await wait_final(a, spec["id"], timeout=120)
        assert job["status"] == "succeeded", job
        owners.append(job["controller_id"])
        log = await asyncio.to_thread((a if job["controller_id"] == a.controller_id else b).log_text, spec["id"])
        assert log.count(f"done-{spec['id']}") == 1  # its output once: it ran once
    assert owners.count(b.controller_id) > 2, owners  # some of A's were claimed by B
    ids = {a.controller_id, b.controller_id}
    assert container_creations(docker_client, since, ids) == {spec["id"]: 1 for spec in specs}
    assert 2 < most_at_once(docker_client, since, ids) <= 3
    for cp in (a, b):
        cp.kill(signal.SIGTERM)


def most_at_once(client: docker.DockerClient, since: float, controller_ids: set[str]) -> int:
    """The most job containers of these controllers running at the same time (engine events start / die)."""
    running, most = 0, 0
    events = client.events(since=int(since), until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "event": ["start", "die"]})  # fmt: skip
    for event in events:
        if event.get("Actor", {}).get("Attributes", {}).get(LABEL_CONTROLLER) in controller_ids:
            running += 1 if event["status"] == "start" else -1
            most = max(most, running)
    return most


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
