"""End to end on the real Docker engine: webhook → container → logs → container gone."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from typing import Any

import docker
import pytest

from conftest import RunningController, followed_log, job_spec, managed_containers

pytestmark = pytest.mark.docker


async def test_job_output_arrives_in_order_and_container_is_removed(
    controller_factory: Any, docker_client: docker.DockerClient
) -> None:
    ctl: RunningController = await controller_factory()
    spec = job_spec(commands=["for i in $(seq 1 200); do echo line-$i; done", "echo to-stderr >&2", "echo last"])
    status, body = await ctl.post_webhook(spec)
    assert status == 202, body
    assert body == {"job_id": spec["id"], "status": "queued"}
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded", job
    assert job["exit_code"] == 0
    log = (await ctl.logs(spec["id"])).decode()
    lines = [ln for ln in log.splitlines() if ln.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 201)]
    assert log.index("line-200") < log.index("to-stderr") < log.index("last")
    assert "$ echo last" in log  # commands are echoed like a CI runner does
    assert managed_containers(docker_client, ctl.controller_id) == []


@pytest.mark.parametrize(
    ("commands", "status", "exit_code"),
    [
        (["true", "exit 3", "echo never"], "failed", 3),
        (["false"], "failed", 1),
        (["no-such-command-xyz"], "failed", 127),
        (["echo ok"], "succeeded", 0),
    ],
)
async def test_exit_codes_map_to_states(
    controller_factory: Any, docker_client: docker.DockerClient, commands: list[str], status: str, exit_code: int
) -> None:
    ctl = await controller_factory()
    spec = job_spec(commands=commands)
    assert (await ctl.post_webhook(spec))[0] == 202
    job = await ctl.wait_final(spec["id"])
    assert (job["status"], job["exit_code"]) == (status, exit_code)
    assert b"never" not in await ctl.logs(spec["id"])
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_one_info_line_per_job_carries_its_outcome(
    controller_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ctl = await controller_factory()
    spec = job_spec(commands=["sleep 0.2", "exit 3"])
    with caplog.at_level(logging.INFO, logger="orchestrator"):
        assert (await ctl.post_webhook(spec))[0] == 202
        await ctl.wait_final(spec["id"])
    mine = [r for r in caplog.records if getattr(r, "job_id", None) == spec["id"] and r.levelno >= logging.INFO]
    assert [r.getMessage() for r in mine] == ["job finished"]
    (line,) = mine
    assert (line.state, line.exit_code, line.pool, line.attempt) == ("failed", 3, spec["pool"], 1)  # type: ignore[attr-defined]
    assert 0.2 <= line.ran_s < 30  # type: ignore[attr-defined]


async def test_commands_share_one_shell(controller_factory: Any) -> None:
    ctl = await controller_factory()
    spec = job_spec(commands=["mkdir sub && cd sub", "X=kept", "echo pwd=$(pwd) x=$X"])
    await ctl.post_webhook(spec)
    assert (await ctl.wait_final(spec["id"]))["status"] == "succeeded"
    assert b"pwd=/workspace/sub x=kept" in await ctl.logs(spec["id"])


async def test_timeout_kills_and_removes(controller_factory: Any, docker_client: docker.DockerClient) -> None:
    ctl = await controller_factory()
    spec = job_spec(commands=["echo started", "sleep 600"], timeout_s=2)
    started = time.monotonic()
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"], timeout=30)
    assert job["status"] == "timed_out"
    assert "timed out after 2 s" in job["reason"]
    assert time.monotonic() - started < 15
    assert b"started" in await ctl.logs(spec["id"])
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_sigterm_ignoring_job_is_killed_after_grace(
    controller_factory: Any, docker_client: docker.DockerClient
) -> None:
    ctl = await controller_factory()
    spec = job_spec(commands=["trap '' TERM", "echo armed", "while true; do sleep 1; done"], timeout_s=1)
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"], timeout=30)
    assert job["status"] == "timed_out"
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_cancel_running_job(controller_factory: Any, docker_client: docker.DockerClient) -> None:
    ctl = await controller_factory()
    spec = job_spec(commands=["echo waiting", "sleep 600"])
    await ctl.post_webhook(spec)
    await ctl.wait_status(spec["id"], {"running"})
    status, _ = await ctl.api("POST", f"/api/v1/jobs/{spec['id']}/cancel", token=ctl.viewer_token)
    assert status == 403
    status, body = await ctl.api("POST", f"/api/v1/jobs/{spec['id']}/cancel")
    assert status == 200, body
    assert body["status"] == "cancelled"
    assert body["reason"] == "cancelled by ops"
    assert managed_containers(docker_client, ctl.controller_id) == []
    status, body = await ctl.api("POST", f"/api/v1/jobs/{spec['id']}/cancel")
    assert status == 409


async def test_cancel_queued_job_never_starts_a_container(
    controller_factory: Any, docker_client: docker.DockerClient
) -> None:
    ctl = await controller_factory(max_concurrent=1)
    blocker = job_spec(commands=["sleep 600"])
    queued = job_spec(commands=["echo should-not-run"])
    await ctl.post_webhook(blocker)
    await ctl.wait_status(blocker["id"], {"running"})
    assert (await ctl.post_webhook(queued))[0] == 202
    assert (await ctl.job(queued["id"]))["status"] == "queued"
    status, body = await ctl.api("POST", f"/api/v1/jobs/{queued['id']}/cancel")
    assert (status, body["status"]) == (200, "cancelled")
    assert body["container_id"] is None
    await ctl.api("POST", f"/api/v1/jobs/{blocker['id']}/cancel")
    assert (await ctl.wait_final(blocker["id"]))["status"] == "cancelled"
    assert managed_containers(docker_client, ctl.controller_id) == []


# The host's monotonic clock read inside the container: /proc/uptime ("<s>.<cs> <idle>"; no time namespace under
# runc), in centiseconds -- fine for marks 0.3 s and a container start apart. (Not `adjtimex`: its tv_usec holds
# nanoseconds when the kernel runs in STA_NANO mode, as it does once chrony or ntpd has set it.)
_CONTAINER_CLOCK = "$(cut -d' ' -f1 /proc/uptime | tr . ' ')"
_MARK = re.compile(r"^(begin|end) (\d+) (\d+) (\d+)$", re.MULTILINE)


async def test_pool_concurrency_is_fifo(controller_factory: Any) -> None:
    """A pool of one runs its jobs one at a time, in the order they were accepted, without any overlap: in the
    audit trail (every state change in the order it happened), in the jobs' own times (the next one is `running`
    only after the previous one is final) and in the times each job's script saw, taken inside its container."""
    ctl = await controller_factory(max_concurrent=1)
    specs = [
        job_spec(
            f"fifo-{i}-{time.time_ns()}",
            commands=[f"echo begin {i} {_CONTAINER_CLOCK}", "sleep 0.3", f"echo end {i} {_CONTAINER_CLOCK}"],
        )
        for i in range(4)
    ]
    for spec in specs:
        assert (await ctl.post_webhook(spec))[0] == 202
    jobs = [await ctl.wait_final(s["id"]) for s in specs]
    assert [j["status"] for j in jobs] == ["succeeded"] * 4, jobs
    # The audit trail: job 0 starts, runs and ends, then job 1 starts, ... -- the next job's container is not even
    # created (`starting`) before the previous one's is removed and its final state stored.
    ctl.controller.auditor.flush()
    trail = [json.loads(line) for line in (ctl.config.data_dir / "audit.jsonl").read_text().splitlines()]
    states = [(r["target"], r["outcome"]) for r in trail if r["action"] == "job.state"]
    assert states == [(s["id"], state) for s in specs for state in ("starting", "running", "succeeded")], states
    # The controller's records: [started_at, finished_at] of each job, strictly one after the other, in order.
    spans = [(j["started_at"], j["finished_at"]) for j in jobs]
    for started, finished in spans:
        assert started < finished, spans
    for (_, finished), (started, _) in itertools.pairwise(spans):
        assert finished < started, spans
    # Inside the containers: begin 0 < end 0 < begin 1 < ... -- each script ran strictly after the previous one.
    marks: list[tuple[str, int, int]] = []
    for i, spec in enumerate(specs):
        found = _MARK.findall((await ctl.logs(spec["id"])).decode())
        assert [(what, int(n)) for what, n, _, _ in found] == [("begin", i), ("end", i)], found
        marks += [(what, i, int(sec) * 100 + int(centis)) for what, _, sec, centis in found]
    for (_, _, earlier), (_, _, later) in itertools.pairwise(marks):
        assert earlier < later, marks


async def test_container_is_hardened(controller_factory: Any, docker_client: docker.DockerClient) -> None:
    ctl = await controller_factory(memory="96m", cpus=0.5, pids=48)
    spec = job_spec(commands=["sleep 30"])
    await ctl.post_webhook(spec)
    job = await ctl.wait_status(spec["id"], {"running"})
    attrs = docker_client.api.inspect_container(job["container_id"])
    host, cfg = attrs["HostConfig"], attrs["Config"]
    assert cfg["User"] == "10001:10001"
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True
    assert host["Privileged"] is False
    assert host["NetworkMode"] == "none"
    assert host["PidsLimit"] == 48
    assert host["Memory"] == 96 * 1024 * 1024
    assert host["MemorySwap"] == 96 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert set(host["Tmpfs"]) == {"/tmp", "/workspace", "/run/job", "/run/secrets"}
    assert not host.get("Binds")
    assert attrs["Mounts"] == [] or all(m["Type"] == "tmpfs" for m in attrs["Mounts"])
    assert "docker.sock" not in str(attrs)
    assert host["PidMode"] in ("", "private") and host["IpcMode"] == "private"
    assert host["LogConfig"]["Type"] == "none"
    assert cfg["Labels"]["io.runner-orchestrator.job-id"] == spec["id"]
    assert cfg["Labels"]["io.runner-orchestrator.controller-id"] == ctl.controller_id
    await ctl.api("POST", f"/api/v1/jobs/{spec['id']}/cancel")


async def test_job_cannot_escalate_inside_container(controller_factory: Any) -> None:
    ctl = await controller_factory()
    spec = job_spec(
        commands=[
            "id -u",
            "touch /etc/owned 2>/dev/null && echo ROOTFS-WRITABLE || echo rootfs-read-only",
            "touch /workspace/ok && echo workspace-writable",
            "ls -ld /run/secrets /run/job /workspace",
            "grep CapEff /proc/self/status",
            "grep NoNewPrivs /proc/self/status",
            "ip link 2>/dev/null | grep -c 'state UP' || true",
        ]
    )
    await ctl.post_webhook(spec)
    assert (await ctl.wait_final(spec["id"]))["status"] == "succeeded"
    log = (await ctl.logs(spec["id"])).decode()
    assert "\n10001\n" in log
    assert "\nrootfs-read-only\n" in log and "\nROOTFS-WRITABLE\n" not in log
    assert "workspace-writable" in log
    assert "CapEff:\t0000000000000000" in log
    assert "NoNewPrivs:\t1" in log
    assert log.count("drwx------") == 3


async def test_memory_limit_kill_is_reported(controller_factory: Any) -> None:
    ctl = await controller_factory(memory="32m")
    # busybox: grow a shell variable until the cgroup limit kills the job
    spec = job_spec(commands=["x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"], timeout_s=60)
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "failed"
    assert job["exit_code"] == 137
    assert "memory" in job["reason"]


async def test_duplicate_delivery_starts_no_second_container(controller_factory: Any) -> None:
    ctl = await controller_factory()
    spec = job_spec(commands=["echo once"])
    assert (await ctl.post_webhook(spec))[0] == 202
    status, body = await ctl.post_webhook(spec)
    assert status == 200 and body["duplicate"] is True and body["job_id"] == spec["id"]
    await ctl.wait_final(spec["id"])
    status, body = await ctl.post_webhook(spec)
    assert status == 200 and body["status"] == "succeeded"
    assert (await ctl.logs(spec["id"])).count(b"\nonce\n") == 1
    assert (await ctl.job(spec["id"]))["attempt"] == 1


async def test_follow_streams_live_until_job_ends(controller_factory: Any) -> None:
    ctl = await controller_factory()
    spec = job_spec(commands=["echo first", "sleep 1.5", "echo second"])
    await ctl.post_webhook(spec)
    received = await followed_log(ctl, spec["id"])
    text = b"".join(c for _, c in received)
    assert b"first" in text and b"second" in text
    t_first = next(t for t, c in received if b"first" in c)
    t_second = next(t for t, c in received if b"second" in c)
    assert t_second - t_first > 1.0, "first line must arrive before the job ends"
    assert (await ctl.job(spec["id"]))["status"] == "succeeded"


async def test_follow_resumes_from_offset(controller_factory: Any) -> None:
    ctl = await controller_factory()
    spec = job_spec(commands=["echo 0123456789"])
    await ctl.post_webhook(spec)
    await ctl.wait_final(spec["id"])
    full = await ctl.logs(spec["id"])
    status, tail = await ctl.api("GET", f"/api/v1/jobs/{spec['id']}/logs?offset=5&follow=true")
    assert status == 200 and tail == full[5:]


async def test_missing_image_ends_in_error_with_reason(controller_factory: Any) -> None:
    ctl = await controller_factory(image="runner-orchestrator/does-not-exist:never")
    spec = job_spec()
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "error"
    assert "image" in job["reason"] and "not found" in job["reason"].lower()


async def test_many_jobs_at_once(controller_factory: Any, docker_client: docker.DockerClient) -> None:
    ctl = await controller_factory(max_concurrent=4)
    specs = [job_spec(commands=[f"echo job-{i}"]) for i in range(12)]
    results = await asyncio.gather(*(ctl.post_webhook(s) for s in specs))
    assert all(status == 202 for status, _ in results)
    jobs = await asyncio.gather(*(ctl.wait_final(s["id"], timeout=120) for s in specs))
    assert [j["status"] for j in jobs] == ["succeeded"] * 12
    for i, s in enumerate(specs):
        assert f"job-{i}".encode() in await ctl.logs(s["id"])
    assert managed_containers(docker_client, ctl.controller_id) == []
