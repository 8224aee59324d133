"""The red team's connection exhaustion, replayed: a controller held to systemd's default of 1,024 open files,
2,000 connections that each send half a request line. Signed webhooks and /healthz must still be answered within
a second, and a job running meanwhile must end with its true result (it used to be stored as `error`, because
the Docker socket could not be opened either)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator.intake.signatures import sign

from conftest import job_spec
from controller_process import ControllerProcess

pytestmark = pytest.mark.docker

FLOOD = 2000
LIMIT = 1024


@pytest.fixture(autouse=True)
def _enough_files_for_the_attacker() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 3 * FLOOD + 1024
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        if hard < want:
            pytest.fail(f"this test needs {want} open files for its own client side; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def _half_open(port: int, count: int) -> list[asyncio.StreamWriter]:
    """`count` connections, each having sent half a request line and nothing more."""

    async def one() -> asyncio.StreamWriter | None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /heal")
            return writer
        except OSError:
            return None

    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, 250):
        made = await asyncio.gather(*(one() for _ in range(min(250, count - start))))
        writers += [w for w in made if w is not None]
    return writers


def _signed_webhook(cp: ControllerProcess, url: str) -> tuple[int, float]:
    body = json.dumps(job_spec(commands=["true"])).encode()
    headers = sign("standard-webhooks", cp.key, body, msg_id=f"m{secrets.token_hex(4)}", timestamp=int(time.time()))
    began = time.monotonic()
    status = requests.post(f"{url}/webhooks/ci", data=body, headers=headers, timeout=10).status_code
    return status, time.monotonic() - began


def _healthz(url: str) -> tuple[int, float]:
    began = time.monotonic()
    status = requests.get(f"{url}/healthz", timeout=10).status_code
    return status, time.monotonic() - began


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _probe(cp: ControllerProcess, url: str) -> None:
    for _ in range(5):
        status, took = _signed_webhook(cp, url)
        assert status == 202 and took < 1.0, (status, took)
        status, took = _healthz(url)
        assert status == 200 and took < 1.0, (status, took)


@pytest.mark.parametrize("listener", ["port", "webhook_port", "workers"])
async def test_two_thousand_half_open_connections_starve_nothing(
    controller_process: Any, docker_client: Any, listener: str, tmp_path: Path
) -> None:
    cp: ControllerProcess = controller_process(
        nofile=LIMIT,
        webhook_port=listener != "port",
        intake_workers=2 if listener == "workers" else 0,
        server_extra="header_timeout_s = 4\n",
    )
    await asyncio.to_thread(cp.start)
    url = cp.hook_url if listener != "port" else cp.url
    port = int(url.rsplit(":", 1)[1])
    job = job_spec(commands=["sleep 4", "echo survived"])
    assert await asyncio.to_thread(cp.send, job) == 202
    await asyncio.to_thread(cp.wait, job["id"], {"running"})
    assert cp.proc is not None
    waves = []
    for _ in range(2):  # a second wave while the first is still held
        waves.append(await _half_open(port, FLOOD))
        await asyncio.to_thread(_probe, cp, url)
        assert _open_files(cp.proc.pid) < LIMIT
    finished = await asyncio.to_thread(cp.wait, job["id"], {"succeeded", "failed", "error", "timed_out"}, 60)
    assert (finished["status"], finished["exit_code"]) == ("succeeded", 0), finished
    assert "survived" in cp.log_text(job["id"])
    deadline = time.monotonic() + 15  # the head deadline closes what is left of the flood
    while _open_files(cp.proc.pid) > 150 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert _open_files(cp.proc.pid) <= 150
    for wave in waves:
        for writer in wave:
            writer.close()
    log = (cp.tmp / "controller.log").read_text()
    assert "open-files limit is low" in log  # said at start-up: 1,024 is below what the caps were asked for
    assert "Too many open files" not in log and "Traceback" not in log
    assert cp.kill(signal.SIGTERM) == 0


def test_the_controller_raises_its_soft_limit_to_the_hard_one(controller_process: Any) -> None:
    """systemd's default is soft 1,024 / hard 524,288: the soft one is raised at start, and then the caps fit."""
    cp: ControllerProcess = controller_process(nofile=(LIMIT, 8192))
    cp.start()
    assert cp.proc is not None
    limits = Path(f"/proc/{cp.proc.pid}/limits").read_text()
    assert re.search(r"^Max open files\s+8192\s+8192\s+files", limits, re.MULTILINE), limits
    assert "open-files limit is low" not in (cp.tmp / "controller.log").read_text()
    assert cp.kill(signal.SIGTERM) == 0


SHORTAGE = """
import asyncio, os, resource
from orchestrator.runtime.docker_engine import DockerEngine, EngineError

async def main():
    engine = DockerEngine(retry_budget_s=0.5, retry_attempts=2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    try:
        await engine.image_id("busybox")  # a call that is retried
    except EngineError as exc:
        print(f"{exc}|{exc.transient}|{engine.outages}|{engine.retries}")

asyncio.run(main())
"""


def test_a_docker_call_without_a_descriptor_left_is_no_engine_outage(docker_client: Any) -> None:
    """A job whose controller ran out of descriptors must not be told its engine restarted (which makes its exit
    code untrustworthy): the real SDK's error is recognised, retried, and not counted as an outage."""
    out = subprocess.run([sys.executable, "-c", SHORTAGE], capture_output=True, text=True, timeout=60, check=True)
    message, transient, outages, retries = out.stdout.strip().split("|")
    assert message == "Docker engine not reached: this process has no file descriptor left"
    assert (transient, outages, retries) == ("True", "0", "1")
