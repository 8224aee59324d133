"""The harness of extra Docker engines (tests/dockerds.py): independent daemons that run the product's hardened
job containers, and one of them lost mid-job (SIGKILL of dockerd, containerd, shims and containers) while the other
keeps working, with nothing of the lost one left behind. Needs root, dockerd and containerd on the host, and the
main daemon with the test image (images are copied from it); skipped otherwise, unless ORCHESTRATOR_REQUIRE_DOCKER=1,
where that is a failure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from orchestrator.config import PoolConfig
from orchestrator.jobs.spec import JobSpec
from orchestrator.runtime.container_spec import build_container_spec, job_script, stdin_payload
from orchestrator.runtime.docker_engine import AttachedStream, DockerEngine
from orchestrator.runtime.protocol import EngineError

from conftest import REQUIRE_DOCKER, RUN_TAG, TEST_CONTROLLER_PREFIX, TEST_IMAGE
from dockerds import DockerDaemon, daemons, mount_points

pytestmark = pytest.mark.docker

LOST_WITHIN_S = 5.0  # an engine that is gone must be reported in seconds, not after the API timeout


@pytest.fixture
def harness_host() -> Iterator[None]:
    """Root, the dockerd and containerd binaries, and the main daemon with the test image."""
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [b for b in ("dockerd", "containerd", "containerd-shim-runc-v2") if shutil.which(b) is None]
    if not missing:
        try:
            main = docker.from_env(timeout=30)
            try:
                main.images.get(TEST_IMAGE)
            finally:
                main.close()
        except Exception as exc:
            missing.append(f"the main Docker engine with {TEST_IMAGE} ({exc})")
    if missing:
        if REQUIRE_DOCKER:
            pytest.fail(f"extra dockerd instances need: {', '.join(missing)}")
        pytest.skip(f"extra dockerd instances need: {', '.join(missing)}")
    yield


@dataclass
class Job:
    """One job container on one engine, as the job runner drives it: create, attach, start, script over stdin."""

    engine: DockerEngine
    container_id: str
    stream: AttachedStream
    output: bytearray = field(default_factory=bytearray)
    pump: asyncio.Future[None] | None = None

    @classmethod
    async def start(cls, engine: DockerEngine, controller_id: str, commands: list[str], **pool: object) -> Job:
        spec = JobSpec(
            id=f"job-{uuid.uuid4().hex[:10]}",
            pool="default",
            repository="example/app",
            ref="refs/heads/main",
            sha="0" * 40,
            commands=commands,
        )
        cspec = build_container_spec(spec, PoolConfig(image=TEST_IMAGE, **pool), controller_id=controller_id)
        container_id = await engine.create(cspec)
        job = cls(engine, container_id, await engine.attach(container_id))
        await engine.start(container_id)
        job.stream.send(stdin_payload(job_script(commands)))
        job.pump = asyncio.ensure_future(asyncio.to_thread(job.stream.pump, job.output.extend))
        return job

    async def until_output(self, text: bytes, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} in {bytes(self.output)!r}"
            await asyncio.sleep(0.02)

    async def finish(self, timeout_s: float = 60) -> int:
        code = await self.engine.wait(self.container_id, timeout_s)
        assert self.pump is not None
        await self.pump
        await self.engine.remove(self.container_id)
        return code


def controller_id() -> str:
    return f"{TEST_CONTROLLER_PREFIX}{RUN_TAG}dd{uuid.uuid4().hex[:6]}"


def leftovers(d: DockerDaemon) -> tuple[list[str], list[str]]:
    """Processes (from /proc, by command line and cgroup) and mount points (/proc/self/mountinfo) that still
    belong to `d`, found independently of the harness's own bookkeeping."""
    marks = (str(d.root) + "/", str(d.exec_root) + "/", str(d.containerd_socket))
    procs = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] in "ZX":
            continue
        if any(m in cmdline for m in marks) or d.cgroup_parent + "/" in cgroup:
            procs.append(f"{pid} {cmdline[:100]}")
    mounts = [m for m in mount_points() if m.startswith(marks[:2]) or m in (str(d.root), str(d.exec_root))]
    return procs, mounts


async def test_two_engines_are_independent_and_one_is_lost_mid_job(harness_host: None, tmp_path: Path) -> None:
    cid = controller_id()
    started = time.monotonic()
    with daemons(tmp_path, 2) as (a, b):
        ready_s = time.monotonic() - started
        assert a.base_url != b.base_url and a.startup_s is not None and b.startup_s is not None
        print(
            f"\n2 daemons up with the image loaded in {ready_s:.2f} s (dockerd answering after {a.startup_s:.2f} s"
            f" and {b.startup_s:.2f} s)"
        )
        ea, eb = (DockerEngine(d.base_url, retry_budget_s=1.0, api_timeout_s=30) for d in (a, b))
        main = DockerEngine(retry_budget_s=1.0)
        main_driver = docker.from_env().info()["Driver"]
        try:
            # A hardened job to completion on each engine, its output over the attach stream.
            for engine, d in ((ea, a), (eb, b)):
                job = await Job.start(engine, cid, ["echo hello from $(id -u)", "test ! -w /"])
                assert await job.finish() == 0, bytes(job.output)
                assert b"hello from 10001" in job.output, bytes(job.output)
                assert d.client().info()["Driver"] == main_driver

            # Long jobs on both: each engine lists its own container only, the main engine neither.
            ja = await Job.start(ea, cid, ["echo started", "sleep 30"])
            jb = await Job.start(eb, cid, ["echo started", "sleep 30"])
            await asyncio.gather(ja.until_output(b"started"), jb.until_output(b"started"))
            assert [c.id for c in await ea.list_managed(cid)] == [ja.container_id]
            assert [c.id for c in await eb.list_managed(cid)] == [jb.container_id]
            assert await main.list_managed(cid) == []
            assert len(a.processes()) >= 5  # dockerd, containerd, shim, docker-init, the job's shell (and sleep)

            # Lose engine a mid-job.
            waiting = asyncio.ensure_future(ja.engine.wait(ja.container_id, 600))
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            await asyncio.to_thread(a.kill)
            killed_s = time.monotonic() - t0
            assert a.processes() == []
            with pytest.raises(EngineError) as lost:
                await waiting
            wait_failed_s = time.monotonic() - t0
            t1 = time.monotonic()
            with pytest.raises(EngineError) as listing:
                await ea.list_managed(cid)
            list_failed_s = time.monotonic() - t1
            t1 = time.monotonic()
            with pytest.raises(EngineError):
                await ea.ping()
            ping_failed_s = time.monotonic() - t1
            assert ja.pump is not None
            with contextlib.suppress(OSError):  # the attach stream ends: EOF, or a reset
                await asyncio.wait_for(ja.pump, 5)
            print(
                f"kill(): {killed_s * 1000:.0f} ms; pending wait() failed {wait_failed_s:.2f} s after the kill "
                f"({lost.value}); list_managed {list_failed_s:.2f} s, ping {ping_failed_s * 1000:.0f} ms "
                f"with retry_budget_s=1 ({listing.value})"
            )
            # The pending wait() sees its answer cut off (requests' ChunkedEncodingError), new calls are refused: both
            # are the engine being unreachable (transient, counted as an outage).
            assert lost.value.transient and "unreachable" in str(lost.value)
            assert listing.value.transient and "unreachable" in str(listing.value)
            assert ea.outages > 0
            assert wait_failed_s < LOST_WITHIN_S and list_failed_s < LOST_WITHIN_S

            # The other engine did not notice.
            assert [(c.id, c.status) for c in await eb.list_managed(cid)] == [(jb.container_id, "running")]
            assert jb.stream.alive()
            await eb.stop(jb.container_id, grace_s=1)
            assert await jb.finish() in (137, 143)
            assert await eb.list_managed(cid) == []

            # Nothing of the lost engine survives: no process, and no mount once stop() has cleaned up.
            assert leftovers(a)[0] == []
            await asyncio.to_thread(a.stop)
            assert leftovers(a) == ([], [])
            assert not a.exec_root.exists() and not a.data_root.exists()
        finally:
            for engine in (ea, eb, main):
                await engine.close()
    assert leftovers(a) == ([], []) and leftovers(b) == ([], [])
    assert not [p for p in Path("/sys/fs/cgroup").glob("*/orch-dd-*") if a.cgroup_parent in str(p)]


async def test_runsc_of_the_main_engine_is_offered_too(harness_host: None, tmp_path: Path) -> None:
    main = DockerEngine(retry_budget_s=1.0)
    try:
        offered = await main.runtimes()
    finally:
        await main.close()
    if "runsc" not in offered:
        if os.environ.get("ORCHESTRATOR_REQUIRE_RUNSC") == "1":
            pytest.fail("the main Docker engine offers no runsc runtime; run .ci/setup")
        pytest.skip("the main Docker engine offers no runsc runtime")
    with daemons(tmp_path, 1) as (d,):
        engine = DockerEngine(d.base_url, retry_budget_s=1.0)
        try:
            assert (await engine.runtimes())["runsc"] == offered["runsc"]
            job = await Job.start(engine, controller_id(), ["dmesg | head -1"], runtime="runsc", pids=1024)
            assert await job.finish() == 0, bytes(job.output)
            assert b"gVisor" in job.output, bytes(job.output)
        finally:
            await engine.close()
    assert leftovers(d) == ([], [])
