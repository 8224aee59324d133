"""GitHub Actions runners end to end on the real Docker engine: a loopback fake of GitHub's REST API
(tests/forges/fake_github.py) sends signed `workflow_job` webhooks to the controller; the controller's real
GitHub client (App JWT → installation token → JIT config) registers a single-use runner; the busybox test agent
(images/test-forge-agent) in the hardened container reads the JIT config from /run/secrets, goes online at the fake,
runs the job the fake assigns and exits; the fake reports in_progress and completed; the container is gone.

The agent needs to reach the fake on 127.0.0.1, so these pools share the host's network (unsafe.host_network: a
test-only opt-in; a real pool uses an egress-only Docker network)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import RunningController, local_image, managed_containers
from ports import free_port

sys.path.insert(0, str(Path(__file__).parent.parent / "forges"))
from fake_github import FakeGitHub

pytestmark = pytest.mark.docker
FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}

AGENT_IMAGE = os.environ.get("ORCHESTRATOR_FORGE_AGENT_IMAGE", "runner-orchestrator/test-forge-agent:local")
BURST = int(os.environ.get("ORCHESTRATOR_FORGE_BURST", "200"))
REPO = "acme/app"


@pytest.fixture
def agent_image(docker_client: docker.DockerClient) -> str:
    return local_image(docker_client, AGENT_IMAGE)


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    # A generous agent timeout: on a loaded machine a long-polling agent may be silent for seconds, and the fake then
    # fails its job and takes the runner offline, leaving another runner without a job until its bootstrap timeout.
    fake = await FakeGitHub.start(job_seconds=0.2, agent_timeout_s=120)
    fake.add_repository(REPO, installation_id=7001)
    try:
        yield fake
    finally:
        await fake.stop()


async def started(
    controller_factory: Any, github: FakeGitHub, tmp_path: Path, image: str, **runner: Any
) -> RunningController:
    key = tmp_path / "app.pem"
    key.write_text(github.private_key_pem)
    key.chmod(0o600)
    secret = tmp_path / "hook.secret"
    secret.write_text("gh-hook-secret-" + os.urandom(8).hex())
    secret.chmod(0o600)
    reconcile_interval_s = runner.pop("reconcile_interval_s", 3600)
    pool = {
        "image": image,
        "memory": "64m",
        "pids": 64,
        "max_concurrent": runner.pop("max_concurrent", 2),
        "default_timeout_s": 120,
        "unsafe": {"host_network": True},
        "runner": {
            "source": "github",
            "labels": ["linux", "x64"],
            "repositories": ["acme/*"],
            "command": "/usr/local/bin/agent.sh",
            **runner,
        },
    }
    port = free_port()
    settings = {
        "server": {"host": "127.0.0.1", "port": port, "max_body_bytes": 1024 * 1024},
        "sources": {
            "github": {
                "scheme": "hub-sha256",
                "secret_file": str(secret),
                "forge": {
                    "kind": "github",
                    "api_url": github.url,
                    "app_id": github.app_id,
                    "private_key_file": str(key),
                    "reconcile_interval_s": reconcile_interval_s,
                },
            }
        },
        "pools": {"gh": pool},
        "max_total_concurrent": 8,
    }
    ctl: RunningController = await controller_factory(settings=settings)
    github.webhook_url = f"{ctl.url}/webhooks/github"
    github.webhook_secret = secret.read_bytes().strip()
    return ctl


def calls(github: FakeGitHub, fragment: str) -> int:
    return sum(1 for _, path in github.requests if fragment in path)


async def test_a_workflow_job_runs_on_a_single_use_runner(
    controller_factory: Any, github: FakeGitHub, tmp_path: Path, agent_image: str, docker_client: docker.DockerClient
) -> None:
    ctl = await started(controller_factory, github, tmp_path, agent_image)
    forge_job = github.queue_job(REPO, ["self-hosted", "linux"], seconds=1.5)
    job_id = f"github-{forge_job}"
    await github.webhooks_sent()
    running = await ctl.wait_status(job_id, {"running"}, timeout=60)
    # While the agent runs: nothing secret in what Docker shows about the container.
    attrs = docker_client.api.inspect_container(running["container_id"])
    shown = json.dumps([attrs["Config"], attrs["HostConfig"], attrs["Args"], attrs["Path"]])
    assert "JITCONFIG=" not in shown and "eyJ" not in shown  # no JIT config (base64 JSON) in env, argv or labels
    (runner,) = github.runners.values()
    assert runner.name == f"{ctl.controller_id}-{job_id}"
    await github.wait_job(forge_job, "completed", timeout=60)
    job = await ctl.wait_final(job_id, timeout=60)
    log = (await ctl.logs(job_id)).decode()
    assert job["status"] == "succeeded", (job, log)
    assert f"running job {forge_job}" in log and f"job {forge_job} done: exit 0" in log
    (record,) = (await ctl.api("GET", "/api/v1/runners"))[1]["runners"]
    assert (record["trigger_job_id"], record["ran_job_id"], record["conclusion"]) == (forge_job, forge_job, "success")
    # One installation token, one JIT config; GitHub removed the used registration, the controller found it gone.
    assert calls(github, "/access_tokens") == 1 and calls(github, "generate-jitconfig") == 1
    assert github.registered_runners(REPO) == []
    assert [d.status for d in github.deliveries] == [202, 200, 200]  # queued, in_progress, completed
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_a_burst_of_queued_jobs_is_served_in_order_none_refused(
    controller_factory: Any, github: FakeGitHub, tmp_path: Path, agent_image: str
) -> None:
    ctl = await started(controller_factory, github, tmp_path, agent_image, max_concurrent=4)
    # The start-up reconciliation pass first: racing the burst, it would find queued jobs through the API before
    # their webhooks arrive (then answered 200, duplicates) -- right, but not what this test measures.
    runners = ctl.controller.runners
    assert runners is not None
    deadline = time.monotonic() + 30
    while runners.reconciled < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    began = time.monotonic()
    forge_jobs = [github.queue_job(REPO, ["linux"], seconds=0.05) for _ in range(BURST)]
    for forge_job in forge_jobs:
        await github.wait_job(forge_job, "completed", timeout=600)
    jobs = [await ctl.wait_final(f"github-{j}", timeout=120) for j in forge_jobs]
    took = time.monotonic() - began
    assert [j["status"] for j in jobs] == ["succeeded"] * BURST
    await github.webhooks_sent()
    queued = [d for d in github.deliveries if d.action == "queued"]
    assert len(queued) == BURST and {d.status for d in queued} == {202}  # never refused for capacity
    # Runners were started (moved to `starting`, in the audit trail's order) in the order their webhooks came: the
    # pool's FIFO, at most 4 at a time.
    ctl.controller.auditor.flush()
    trail = [json.loads(line) for line in (ctl.config.data_dir / "audit.jsonl").read_text().splitlines()]
    starting = [r["target"] for r in trail if r["action"] == "job.state" and r["outcome"] == "starting"]
    assert starting == [f"github-{j}" for j in forge_jobs]
    spans = sorted((j["started_at"], j["finished_at"]) for j in jobs)
    most = max(sum(1 for s, f in spans if s <= t < f) for t, _ in spans)
    assert most <= 4
    assert calls(github, "generate-jitconfig") == BURST and calls(github, "/access_tokens") == 1
    print(f"\nburst: {BURST} jobs in {took:.1f} s with max_concurrent 4")


@pytest.mark.parametrize("named", [True, False], ids=["named-repository", "glob-never-seen"])
async def test_a_lost_webhook_is_found_by_reconciliation(
    controller_factory: Any, github: FakeGitHub, tmp_path: Path, agent_image: str, named: bool
) -> None:
    """Reconciliation asks the forge about the repositories the pools name, those it has seen runners asked for,
    and -- for a pool allowing `acme/*` -- every repository of every installation of the app that a pool allows:
    here one of another installation whose only webhook was lost. A repository no pool allows is not asked about."""
    repo = REPO if named else "acme/never-seen"
    if not named:
        github.add_repository(repo, installation_id=7002)
        github.add_repository("evil/app", installation_id=7003)
    runner = {"repositories": [REPO]} if named else {}
    ctl = await started(controller_factory, github, tmp_path, agent_image, reconcile_interval_s=5, **runner)
    forge_job = github.queue_job(repo, ["linux"], send_webhook=False, seconds=0.1)
    await github.wait_job(forge_job, "completed", timeout=60)
    job = await ctl.wait_final(f"github-{forge_job}", timeout=60)
    assert job["status"] == "succeeded", job
    assert not [d for d in github.deliveries if d.action == "queued" and not d.suppressed]
    assert calls(github, "/repos/evil/app/") == 0
    if not named:
        assert ("GET", "/app/installations") in github.requests and calls(github, "/installation/repositories") >= 1


async def test_unknown_repositories_and_unmatched_labels_register_nothing(
    controller_factory: Any, github: FakeGitHub, tmp_path: Path, agent_image: str
) -> None:
    ctl = await started(controller_factory, github, tmp_path, agent_image)
    github.add_repository("evil/app", installation_id=7001)
    github.queue_job("evil/app", ["linux"])
    github.queue_job(REPO, ["linux", "gpu"])
    await github.webhooks_sent()
    assert [json.loads(d.answer)["status"] for d in github.deliveries] == ["unmatched", "unmatched"]
    assert calls(github, "generate-jitconfig") == 0 and github.runners == {}
    assert (await ctl.api("GET", "/api/v1/jobs"))[1]["jobs"] == []
    await asyncio.sleep(0)


async def test_sigkill_with_runners_up_leaves_no_orphan_container_or_registration(
    controller_process: Any, github: FakeGitHub, tmp_path: Path, agent_image: str, docker_client: docker.DockerClient
) -> None:
    """The controller process is killed while three runners run their jobs. After the restart: their containers are
    removed and their jobs end in error (start-up reconciliation), and their registrations are deleted at the forge
    (forge reconciliation: ours, with no live job) once GitHub lets go of them -- a runner whose agent vanished goes
    offline and its job fails, then the registration may be deleted."""
    key = tmp_path / "app.pem"
    key.write_text(github.private_key_pem)
    key.chmod(0o600)
    (tmp_path / "gh.secret").write_text("gh-kill-secret-0123456789")
    (tmp_path / "gh.secret").chmod(0o600)
    extra = f"""
[sources.github]
scheme = "hub-sha256"
secret_file = "gh.secret"
[sources.github.forge]
kind = "github"
api_url = "{github.url}"
app_id = {github.app_id}
private_key_file = "app.pem"
reconcile_interval_s = 5
[pools.gh]
image = "{agent_image}"
memory = "64m"
pids = 64
max_concurrent = 4
[pools.gh.unsafe]
host_network = true
[pools.gh.runner]
source = "github"
labels = ["linux"]
repositories = ["{REPO}"]
command = "/usr/local/bin/agent.sh"
"""
    github.agent_timeout_s = 5  # a killed agent's runner goes offline soon, so its registration can be deleted
    cp = controller_process(extra_toml=extra)
    await asyncio.to_thread(cp.start)
    github.webhook_url = f"{cp.hook_url}/webhooks/github"
    github.webhook_secret = b"gh-kill-secret-0123456789"
    forge_jobs = [github.queue_job(REPO, ["linux"], seconds=600) for _ in range(3)]
    for forge_job in forge_jobs:
        await github.wait_job(forge_job, "in_progress", timeout=60)
    assert len(github.registered_runners(REPO)) == 3
    await asyncio.to_thread(cp.kill, signal.SIGKILL)
    assert len(managed_containers(docker_client, cp.controller_id)) == 3
    await asyncio.to_thread(cp.start)
    for forge_job in forge_jobs:
        job = await asyncio.to_thread(cp.wait, f"github-{forge_job}", FINAL, 60)
        assert job["status"] == "error", job
    assert managed_containers(docker_client, cp.controller_id) == []
    deadline = time.monotonic() + 60
    while github.registered_runners(REPO) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert github.registered_runners(REPO) == [], github.registered_runners(REPO)
    assert await asyncio.to_thread(cp.kill, signal.SIGTERM) == 0
