"""The controller as a real process: crash (SIGKILL) and restart, graceful SIGTERM, the CLI against it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import job_spec, managed_containers

pytestmark = pytest.mark.docker


FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}


def test_sigkill_then_restart_leaves_nothing_running(controller_process: Any, docker_client: Any) -> None:
    cp = controller_process()
    cp.start()
    specs = [job_spec(commands=["echo up", "sleep 600"]) for _ in range(4)]
    for s in specs:
        assert cp.send(s) == 202
    for s in specs:
        assert cp.wait(s["id"], {"running"})["status"] == "running"
    cp.kill(signal.SIGKILL)
    assert len(managed_containers(docker_client, cp.controller_id)) == 4  # orphans exist now
    cp.start()
    for s in specs:
        job = cp.wait(s["id"], FINAL, timeout=10)
        assert job["status"] == "error"
        assert job["reason"] == "controller restarted while the job was running"
        attested = cp.attested(s["id"])  # signed like any other ending, so a deploy gate sees why
        assert (attested.state, attested.reason, attested.sha) == ("error", job["reason"], s["sha"])
        assert "[orchestrator] job ended (error): controller restarted while the job was running" in cp.log_text(
            s["id"]
        )
    assert managed_containers(docker_client, cp.controller_id) == []
    assert cp.kill(signal.SIGTERM) == 0


@pytest.mark.parametrize("retry_on_restart", [True, False])
def test_a_job_found_running_past_its_timeout_after_a_restart_times_out(
    controller_process: Any, docker_client: Any, retry_on_restart: bool
) -> None:
    """While the controller is down nothing enforces timeouts; the restart does, and does not retry a job that
    has had its time even where the pool retries interrupted jobs. A job still within its time is treated as
    before (re-queued or error)."""
    cp = controller_process(retry_on_restart=retry_on_restart)
    cp.start()
    late = job_spec(commands=["sleep 600"], timeout_s=2)
    in_time = job_spec(commands=["sleep 1", "echo in-time"], timeout_s=300)
    for spec in (late, in_time):
        assert cp.send(spec) == 202
        cp.wait(spec["id"], {"running"})
    cp.kill(signal.SIGKILL)
    time.sleep(2.5)
    cp.start()
    job = cp.wait(late["id"], FINAL, timeout=10)
    assert job["status"] == "timed_out" and job["attempt"] == 1, job
    assert job["reason"].startswith("timed out after 2 s") and "restarted" in job["reason"]
    assert cp.attested(late["id"]).state == "timed_out"
    other = cp.wait(in_time["id"], FINAL, timeout=60)
    if retry_on_restart:
        assert (other["status"], other["attempt"]) == ("succeeded", 2), other
    else:
        assert other["status"] == "error" and other["reason"] == "controller restarted while the job was running"
    assert managed_containers(docker_client, cp.controller_id) == []
    assert cp.kill(signal.SIGTERM) == 0


def test_restart_requeues_when_the_pool_allows(controller_process: Any, docker_client: Any) -> None:
    cp = controller_process(retry_on_restart=True)
    cp.start()
    spec = job_spec(commands=["echo attempt-$CI_JOB_ID", "test -e /tmp/never || sleep 3"])
    assert cp.send(spec) == 202
    cp.wait(spec["id"], {"running"})
    cp.kill(signal.SIGKILL)
    cp.start()
    job = cp.wait(spec["id"], FINAL, timeout=60)
    assert job["status"] == "succeeded"
    assert job["attempt"] == 2
    assert managed_containers(docker_client, cp.controller_id) == []
    cp.kill(signal.SIGTERM)


def test_accepted_but_unstarted_jobs_start_after_restart(controller_process: Any, docker_client: Any) -> None:
    cp = controller_process()
    cp.start()
    blockers = [job_spec(commands=["sleep 600"]) for _ in range(4)]
    waiting = job_spec(commands=["echo finally"])
    for s in blockers:
        cp.send(s)
    for s in blockers:
        cp.wait(s["id"], {"running"})
    assert cp.send(waiting) == 202
    assert cp.job(waiting["id"])["status"] == "queued"
    cp.kill(signal.SIGKILL)
    cp.start()
    assert cp.wait(waiting["id"], FINAL)["status"] == "succeeded"
    cp.kill(signal.SIGTERM)
    assert managed_containers(docker_client, cp.controller_id) == []


def test_sigterm_cancels_running_jobs_and_exits_zero(controller_process: Any, docker_client: Any) -> None:
    cp = controller_process(drain_s=1.0)
    cp.start()
    quick, slow = job_spec(commands=["sleep 0.3", "echo quick"]), job_spec(commands=["sleep 600"])
    cp.send(quick)
    cp.send(slow)
    cp.wait(slow["id"], {"running"})
    assert cp.kill(signal.SIGTERM) == 0
    assert managed_containers(docker_client, cp.controller_id) == []
    cp.start()
    assert cp.job(quick["id"])["status"] == "succeeded"
    job = cp.job(slow["id"])
    assert job["status"] == "cancelled"
    assert "shut down" in job["reason"]
    cp.kill(signal.SIGTERM)


def test_cli_against_a_running_controller(controller_process: Any) -> None:
    cp = controller_process()
    cp.start()
    spec = job_spec(commands=["echo cli-line-1", "sleep 1", "echo cli-line-2"])
    assert cp.send(spec) == 202
    env = {**os.environ, "ORCHESTRATOR_URL": cp.url, "ORCHESTRATOR_TOKEN": cp.token}
    cli = [sys.executable, "-m", "orchestrator.cli"]
    follow = subprocess.run([*cli, "jobs", "logs", spec["id"], "-f"], env=env, capture_output=True, timeout=60)
    assert follow.returncode == 0, follow.stderr
    assert b"cli-line-1" in follow.stdout and b"cli-line-2" in follow.stdout
    listing = subprocess.run([*cli, "jobs", "list"], env=env, capture_output=True, text=True, timeout=30)
    assert spec["id"] in listing.stdout and "succeeded" in listing.stdout
    show = subprocess.run([*cli, "jobs", "show", spec["id"]], env=env, capture_output=True, text=True, timeout=30)
    assert json.loads(show.stdout)["status"] == "succeeded"
    cancel = subprocess.run([*cli, "jobs", "cancel", spec["id"]], env=env, capture_output=True, text=True, timeout=30)
    assert cancel.returncode == 1 and "409" in cancel.stderr and "already ended" in cancel.stderr
    bad = subprocess.run(
        [*cli, "jobs", "list"], env={**env, "ORCHESTRATOR_TOKEN": "wrong"}, capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 1 and "401" in bad.stderr
    cp.kill(signal.SIGTERM)


async def test_sigkill_with_20_vault_jobs_revokes_every_token_on_restart(
    controller_process: Any, docker_client: Any, vault_layout: Any
) -> None:
    """On OpenBao: the restarted controller revokes the 20 tokens of the jobs it lost, by accessor, with the
    revoke-only token setup-vault.sh's policy allows."""
    layout = vault_layout()
    cp = controller_process(max_concurrent=20, vault=layout.controller_settings(), revoker_token="pending")
    await asyncio.to_thread(cp.start)
    await asyncio.to_thread(layout.configure, cp.url, TOKEN_TTL="1h")
    await asyncio.to_thread(layout.create_revoker_token, cp.tmp / "revoker.token")
    await asyncio.to_thread(layout.put_kv, "ci/default/db", {"password": "crash-test-pa55word"})
    secret = [{"path": "ci/default/db", "key": "password", "name": "DB"}]
    specs = [job_spec(commands=["sleep 600"], secrets=secret) for _ in range(20)]
    for s in specs:
        assert await asyncio.to_thread(cp.send, s) == 202
    for s in specs:
        job = await asyncio.to_thread(cp.wait, s["id"], {"running"}, 120)
        assert job["status"] == "running", job
    assert len(await asyncio.to_thread(layout.job_tokens)) == 20
    await asyncio.to_thread(cp.kill, signal.SIGKILL)
    assert len(managed_containers(docker_client, cp.controller_id)) == 20
    assert len(await asyncio.to_thread(layout.job_tokens)) == 20  # nobody revoked them yet
    await asyncio.to_thread(cp.start)
    finals = [await asyncio.to_thread(cp.wait, s["id"], FINAL, 60) for s in specs]
    assert [j["status"] for j in finals] == ["error"] * 20
    assert managed_containers(docker_client, cp.controller_id) == []
    assert await asyncio.to_thread(layout.job_tokens) == []
    assert await asyncio.to_thread(cp.kill, signal.SIGTERM) == 0


def test_cli_follow_reconnects_across_a_controller_restart(controller_process: Any) -> None:
    cp = controller_process()
    cp.start()
    spec = job_spec(commands=["i=0; while [ $i -lt 40 ]; do echo tick-$i; i=$((i+1)); sleep 0.1; done", "sleep 600"])
    assert cp.send(spec) == 202
    cp.wait(spec["id"], {"running"})
    env = {**os.environ, "ORCHESTRATOR_URL": cp.url, "ORCHESTRATOR_TOKEN": cp.token}
    follow = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "jobs", "logs", spec["id"], "-f"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)
    cp.kill(signal.SIGKILL)
    time.sleep(1.0)
    cp.start()
    out, err = follow.communicate(timeout=60)
    assert follow.returncode == 0, err
    stored = requests.get(
        f"{cp.url}/api/v1/jobs/{spec['id']}/logs", headers={"Authorization": f"Bearer {cp.token}"}, timeout=10
    ).content
    assert out == stored  # no gap, no duplicate across the reconnect
    assert b"tick-0" in out
    assert cp.job(spec["id"])["status"] == "error"
    cp.kill(signal.SIGTERM)


def _gone(pids: list[int], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0]
    except (FileNotFoundError, IndexError):
        return "zombie"


def test_intake_workers_end_with_the_controller_sigkill_or_sigterm(controller_process: Any, docker_client: Any) -> None:
    cp = controller_process(intake_workers=2)

    def log() -> str:
        return str((cp.tmp / "controller.log").read_text())

    cp.start()
    assert cp.hook_url != cp.url
    workers = cp.children()
    assert len(workers) == 2, (workers, log())
    spec = job_spec(commands=["echo through-a-worker"])
    assert cp.send(spec) == 202, log()
    assert cp.wait(spec["id"], FINAL)["status"] == "succeeded", log()
    listening = next(json.loads(line) for line in log().splitlines() if '"listening"' in line)
    assert listening["webhook_url"] == cp.hook_url
    cp.kill(signal.SIGKILL)  # no goodbye: the workers see their link close and exit on their own
    assert _gone(workers), ("intake workers outlived a killed controller", log())
    cp.start()
    workers = cp.children()
    assert len(workers) == 2, (workers, log())
    assert cp.send(spec) == 200, log()  # the job survived the crash; the new workers dedupe against it
    assert cp.kill(signal.SIGTERM) == 0, log()
    assert _gone(workers, timeout=1), log()
    cp.start()
    workers = cp.children()
    assert cp.proc is not None
    os.killpg(cp.proc.pid, signal.SIGTERM)  # what `systemctl stop` does: every process of the service at once
    assert cp.proc.wait(timeout=60) == 0, log()
    assert _gone(workers, timeout=1), log()
    assert "starting it again" not in log() and "Traceback" not in log(), log()


def test_a_webhook_port_in_use_stops_the_start_with_one_clear_line(controller_process: Any) -> None:
    import socket

    cp = controller_process(intake_workers=2)
    port = int(cp.hook_url.rsplit(":", 1)[1])
    with socket.create_server(("127.0.0.1", port)):
        command = [sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(cp.config)]
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert f"server.webhook_port: cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_port_0_lets_the_kernel_choose_and_the_listening_line_names_the_ports(controller_process: Any) -> None:
    """What a supervisor (or bench/bench_throughput.py) relies on to find a controller given port = 0."""
    cp = controller_process(webhook_port=True)
    config = cp.config.read_text()
    for key in ("port", "webhook_port"):
        config, replaced = re.subn(rf"^{key} = \d+$", f"{key} = 0", config, flags=re.MULTILINE)
        assert replaced == 1, config
    cp.config.write_text(config)
    command = [sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(cp.config)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        listening = next(json.loads(line) for line in proc.stderr if '"event": "listening"' in line)
        urls = (listening["url"], listening["webhook_url"])
        assert all(re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*", url) for url in urls), listening
        assert urls[0] != urls[1]
        for url in urls:
            assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
