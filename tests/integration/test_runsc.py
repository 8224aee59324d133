"""Pools with runtime = "runsc": the whole job lifecycle on gVisor, against the real Docker engine.

Skipped when the engine offers no `runsc` runtime, unless ORCHESTRATOR_REQUIRE_RUNSC=1 (as under `.ci/run`, whose
`.ci/setup` installs Debian's runsc and adds it to dockerd's daemon.json), where that is an error.

What gVisor (runsc 0.0~20221219, Debian bookworm) does differently, as these tests found and pin down:

* tmpfs: it applies `noexec`, `size`, `mode`, `uid` and `gid` as runc does, but ignores `nosuid` and `nodev`
  ("ignoring unknown mount option" in its debug log; /proc/mounts does not show them) and has no other mount option
  for them. What they protect against is covered otherwise, and `test_tmpfs_mounts_as_the_job_sees_them` checks it
  on both runtimes: a job cannot make a root-owned set-uid file (no CAP_CHOWN) and runs with no_new_privs, so no
  set-uid bit could raise it anyway; and although gVisor lets a job without CAP_MKNOD create device nodes, opening
  one reaches only gVisor's own emulated devices — a node for the host's disk or memory gives ENXIO.
* pids: the host pids limit covers the whole sandbox, whose own threads count (≈ 57 idle, ≈ 8 more per job
  process on the ptrace platform), so a runsc pool needs a much larger `pids` (these tests use 1024). At the limit
  the job's fork does not fail: gVisor's kernel panics and the job ends with exit code 2 (still contained).
* /proc/self/status has no NoNewPrivs line; `setpriv -d` (prctl) shows no_new_privs: 1.
* network: the runtime runs with `--network=none` (see .ci/setup), so jobs have loopback only.
* the kernel the job sees is gVisor's: /proc/version says Linux 4.4.0 and dmesg starts with "Starting gVisor...".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.config import hash_token

from conftest import (
    RUN_TAG,
    TEST_CONTROLLER_PREFIX,
    TEST_IMAGE,
    RunningController,
    followed_log,
    job_spec,
    make_config,
    managed_containers,
)

pytestmark = pytest.mark.docker

REQUIRE_RUNSC = os.environ.get("ORCHESTRATOR_REQUIRE_RUNSC") == "1"
RUNTIME = "runsc"
# gVisor's own threads count against the host pids limit of the sandbox (see the module docstring).
RUNSC_POOL: dict[str, Any] = {"runtime": RUNTIME, "pids": 1024}
SECRET = "gv1s0r-Pool-Token-3c9d1e"


@pytest.fixture(scope="module")
def runsc(docker_client: docker.DockerClient) -> Iterator[None]:
    offered = docker_client.info().get("Runtimes") or {}
    if RUNTIME not in offered:
        message = f"the Docker engine offers no {RUNTIME!r} runtime (has: {', '.join(sorted(offered))}); run .ci/setup"
        if REQUIRE_RUNSC:
            pytest.fail(message + " (ORCHESTRATOR_REQUIRE_RUNSC=1)")
        pytest.skip(message)
    yield


def _host_root_device() -> str:
    dev = os.stat("/").st_dev
    return f"{os.major(dev)} {os.minor(dev)}"


async def _run(ctl: RunningController, commands: list[str], **spec: Any) -> tuple[dict[str, Any], str]:
    job = job_spec(commands=commands, **spec)
    status, body = await ctl.post_webhook(job)
    assert status == 202, body
    final = await ctl.wait_final(job["id"], timeout=120)
    return final, (await ctl.logs(job["id"])).decode()


async def test_job_runs_on_gvisor_hardened_and_is_removed(
    runsc: None, controller_factory: Any, docker_client: docker.DockerClient
) -> None:
    ctl: RunningController = await controller_factory(**RUNSC_POOL)
    spec = job_spec(
        commands=[
            "cat /proc/version",
            "dmesg | head -1",
            "echo uid=$(id -u) gid=$(id -g)",
            "touch /etc/owned 2>/dev/null && echo ROOTFS-WRITABLE || echo rootfs-read-only",
            "grep CapEff /proc/self/status",
            "setpriv -d 2>&1 | grep no_new_privs",  # gVisor's /proc/self/status has no NoNewPrivs line
            "echo links: $(ip -o link | awk '{print $2}')",
            "wget -q -T 2 -O- http://192.0.2.1/ 2>/dev/null && echo NETWORK || echo no-network",
            "mkdir sub && cd sub",
            "X=kept",
            "echo pwd=$(pwd) x=$X",
            "echo to-stderr >&2",
            "sleep 2",
            "echo last",
        ]
    )
    assert (await ctl.post_webhook(spec))[0] == 202
    running = await ctl.wait_status(spec["id"], {"running"})
    attrs = docker_client.api.inspect_container(running["container_id"])
    host = attrs["HostConfig"]
    assert host["Runtime"] == RUNTIME
    assert attrs["Config"]["User"] == "10001:10001"
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["NetworkMode"] == "none" and host["IpcMode"] == "private"
    assert host["LogConfig"]["Type"] == "none"
    assert set(host["Tmpfs"]) == {"/tmp", "/workspace", "/run/job", "/run/secrets"}
    assert not host.get("Binds") and "docker.sock" not in str(attrs)
    job = await ctl.wait_final(spec["id"])
    assert (job["status"], job["exit_code"]) == ("succeeded", 0), job
    log = (await ctl.logs(spec["id"])).decode()
    assert "Linux version 4.4.0" in log  # gVisor's kernel, not the host's
    assert os.uname().release not in log
    assert "Starting gVisor" in log
    assert "\nuid=10001 gid=10001\n" in log
    assert "\nrootfs-read-only\n" in log and "\nROOTFS-WRITABLE\n" not in log
    assert "CapEff:\t0000000000000000" in log
    assert "no_new_privs: 1" in log
    assert "\nlinks: lo:\n" in log and "\nno-network\n" in log and "\nNETWORK\n" not in log
    assert "pwd=/workspace/sub x=kept" in log
    assert log.index("to-stderr") < log.index("\nlast\n")
    assert "$ echo last" in log
    assert managed_containers(docker_client, ctl.controller_id) == []


@pytest.mark.parametrize(
    ("commands", "status", "exit_code"),
    [(["true", "exit 3", "echo never"], "failed", 3), (["no-such-command-xyz"], "failed", 127)],
)
async def test_exit_codes_map_to_states(
    runsc: None,
    controller_factory: Any,
    docker_client: docker.DockerClient,
    commands: list[str],
    status: str,
    exit_code: int,
) -> None:
    ctl = await controller_factory(**RUNSC_POOL)
    job, log = await _run(ctl, commands)
    assert (job["status"], job["exit_code"]) == (status, exit_code)
    assert "never" not in log.replace("$ echo never", "")
    assert managed_containers(docker_client, ctl.controller_id) == []


# Each tmpfs of build_container_spec: the options the job must see in /proc/mounts on each runtime. runc shows every
# option; gVisor ignores nosuid and nodev (see the module docstring and the behavioural checks below).
_COMMON = {
    "/tmp": {"rw", "noexec"},
    "/workspace": {"rw", "uid=10001", "gid=10001"},
    "/run/job": {"rw", "noexec", "uid=10001", "gid=10001"},
    "/run/secrets": {"rw", "noexec", "uid=10001", "gid=10001"},
}
_SHOWN_BY_RUNC_ONLY = {"nosuid", "nodev"}


@pytest.mark.parametrize("runtime", ["runc", RUNTIME])
async def test_tmpfs_mounts_as_the_job_sees_them(
    request: pytest.FixtureRequest, controller_factory: Any, docker_client: docker.DockerClient, runtime: str
) -> None:
    if runtime == RUNTIME:
        request.getfixturevalue("runsc")
        ctl = await controller_factory(**RUNSC_POOL)
    else:
        ctl = await controller_factory()
    mounts = "|".join(p.replace("/", r"\/") for p in _COMMON)
    job, log = await _run(
        ctl,
        [
            f'awk \'$2 ~ /^({mounts})$/ {{print "MOUNT " $2 " " $4}}\' /proc/mounts',
            "stat -c 'STAT %n %a %u:%g' /tmp /workspace /run/job /run/secrets",
            'df -k /tmp /workspace /run/job /run/secrets | awk \'NR > 1 {print "SIZE " $6 " " $2}\'',
            "for d in /tmp /workspace /run/job /run/secrets; do cp /bin/busybox $d/true"
            ' && { $d/true 2>/dev/null && echo "EXEC $d allowed" || echo "EXEC $d denied"; }; rm -f $d/true; done',
            "head -c 9000000 /dev/zero > /run/job/fill 2>/dev/null && echo 'FILL beyond 8m' || echo 'FILL stopped'",
            "echo FILLED $(wc -c < /run/job/fill); rm -f /run/job/fill",
            # nodev: a node for the host's root disk or for physical memory must lead nowhere
            f"mknod /tmp/disk b {_host_root_device()} 2>/dev/null && echo MKNOD made || echo MKNOD refused",
            "mknod /tmp/mem c 1 1 2>/dev/null; head -c 1 /tmp/disk /tmp/mem >/dev/null 2>&1"
            " && echo DEVICE-READABLE || echo devices-unreachable",
            # nosuid: the job cannot make a set-uid file of root's, and set-uid bits could not raise it anyway
            "cp /bin/busybox /workspace/suid && chmod 4755 /workspace/suid",
            "chown 0:0 /workspace/suid 2>/dev/null && echo CHOWNED-TO-ROOT || echo chown-refused",
            "setpriv -d 2>&1 | grep no_new_privs",
        ],
    )
    assert job["status"] == "succeeded", (job, log)
    seen = {line.split()[1]: set(line.split()[2].split(",")) for line in log.splitlines() if line.startswith("MOUNT ")}
    assert set(seen) == set(_COMMON), log
    for path, expected in _COMMON.items():
        if runtime == "runc":
            expected = expected | _SHOWN_BY_RUNC_ONLY
        assert expected <= seen[path], (path, seen[path])
    assert "noexec" not in seen["/workspace"]  # build tools run what they compile there
    assert seen["/workspace"] & {"mode=700", "mode=0700"} and seen["/run/secrets"] & {"mode=700", "mode=0700"}
    assert "STAT /tmp 1777 0:0" in log
    for path in ("/workspace", "/run/job", "/run/secrets"):
        assert f"STAT {path} 700 10001:10001" in log, log
    sizes = {line.split()[1]: int(line.split()[2]) for line in log.splitlines() if line.startswith("SIZE ")}
    assert sizes == {"/tmp": 256 * 1024, "/workspace": 1024 * 1024, "/run/job": 8 * 1024, "/run/secrets": 8 * 1024}
    (filled,) = [int(line.split()[1]) for line in log.splitlines() if line.startswith("FILLED ")]
    assert "\nFILL stopped\n" in log and 8 * 1024**2 - 64 * 1024 < filled <= 8 * 1024**2  # size=8m is enforced
    for path, verdict in (
        ("/tmp", "denied"),
        ("/workspace", "allowed"),
        ("/run/job", "denied"),
        ("/run/secrets", "denied"),
    ):
        assert f"EXEC {path} {verdict}" in log, log
    assert "\ndevices-unreachable\n" in log and "\nDEVICE-READABLE\n" not in log
    if runtime == "runc":
        assert "\nMKNOD refused\n" in log  # no CAP_MKNOD; gVisor lets the node be made but not used
    assert "\nchown-refused\n" in log and "\nCHOWNED-TO-ROOT\n" not in log
    assert "no_new_privs: 1" in log
    assert managed_containers(docker_client, ctl.controller_id) == []


def _pool_secret(tmp_path: Path) -> Path:
    path = tmp_path / "reg.token"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


async def test_pool_secrets_delivered_privately_and_masked(
    runsc: None, controller_factory: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    env_file = tmp_path / "env.token"
    env_file.write_text("env-" + SECRET)
    env_file.chmod(0o600)
    ctl: RunningController = await controller_factory(
        **RUNSC_POOL,
        secrets={
            "REG_TOKEN": {"file": str(_pool_secret(tmp_path))},
            "ENV_TOKEN": {"file": str(env_file), "deliver": "env"},
        },
    )
    spec = job_spec(
        commands=[
            f'test "$(cat /run/secrets/REG_TOKEN)" = "{SECRET[:4]}""{SECRET[4:]}" && echo file-ok',
            "stat -c 'SECRET %a %u:%g' /run/secrets/REG_TOKEN",
            "cat /run/secrets/REG_TOKEN; echo",
            'printf %s "$(cat /run/secrets/REG_TOKEN)" | base64',
            'echo "env=$ENV_TOKEN"',
            "sleep 1",
        ]
    )
    assert (await ctl.post_webhook(spec))[0] == 202
    running = await ctl.wait_status(spec["id"], {"running"})
    inspected = json.dumps(docker_client.api.inspect_container(running["container_id"]))
    assert SECRET not in inspected  # neither env, labels nor command line
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded", job
    log = (await ctl.logs(spec["id"])).decode()
    assert "file-ok" in log
    assert "SECRET 600 10001:10001" in log
    assert SECRET not in log and "env-" + SECRET not in log
    import base64

    assert base64.b64encode(SECRET.encode()).decode() not in log
    assert log.count("[MASKED]") >= 3
    assert SECRET not in json.dumps(await ctl.job(spec["id"]))
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_logs_stream_live_from_a_gvisor_job(runsc: None, controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory(**RUNSC_POOL)
    spec = job_spec(commands=["echo first", "sleep 1.5", "echo second"])
    await ctl.post_webhook(spec)
    received = await followed_log(ctl, spec["id"])
    text = b"".join(c for _, c in received)
    assert b"\nfirst\n" in text and b"\nsecond\n" in text
    t_first = next(t for t, c in received if b"first\n" in c)
    t_second = next(t for t, c in received if b"second\n" in c)
    assert t_second - t_first > 1.0, "the first line must arrive while the job still runs"
    assert (await ctl.job(spec["id"]))["status"] == "succeeded"


async def test_timeout_stops_and_removes(
    runsc: None, controller_factory: Any, docker_client: docker.DockerClient
) -> None:
    ctl = await controller_factory(**RUNSC_POOL)
    started = time.monotonic()
    job, log = await _run(ctl, ["echo started", "sleep 600"], timeout_s=2)
    assert job["status"] == "timed_out", job
    assert "timed out after 2 s" in job["reason"]
    assert time.monotonic() - started < 20
    assert "started" in log
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_sigterm_ignoring_job_is_killed_after_grace(
    runsc: None, controller_factory: Any, docker_client: docker.DockerClient
) -> None:
    ctl = await controller_factory(**RUNSC_POOL)
    job, _ = await _run(ctl, ["trap '' TERM", "echo armed", "while true; do sleep 1; done"], timeout_s=1)
    assert job["status"] == "timed_out", job
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_pids_limit_still_contains_a_process_storm(
    runsc: None, controller_factory: Any, docker_client: docker.DockerClient
) -> None:
    """The host's pids limit holds the whole sandbox. gVisor does not fail the job's fork at the limit: its
    kernel panics ("error initializing first thread: resource temporarily unavailable") and the job ends, exit 2."""
    ctl = await controller_factory(**{**RUNSC_POOL, "pids": 256})
    started = time.monotonic()
    job, log = await _run(ctl, ["echo storm", "i=0; while [ $i -lt 300 ]; do sleep 60 & i=$((i+1)); done; wait"])
    assert (job["status"], job["exit_code"]) == ("failed", 2), job
    assert time.monotonic() - started < 30
    assert "storm" in log
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_memory_limit_kill_is_reported(runsc: None, controller_factory: Any) -> None:
    """The memory cgroup holds the sandbox, gVisor's own memory included; its OOM kill is reported as on runc."""
    ctl = await controller_factory(**{**RUNSC_POOL, "memory": "64m"})
    job, _ = await _run(ctl, ["x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"], timeout_s=60)
    assert (job["status"], job["exit_code"]) == ("failed", 137), job
    assert "memory" in job["reason"]


async def test_cancel_running_job(runsc: None, controller_factory: Any, docker_client: docker.DockerClient) -> None:
    ctl = await controller_factory(**RUNSC_POOL)
    spec = job_spec(commands=["echo waiting", "sleep 600"])
    await ctl.post_webhook(spec)
    await ctl.wait_status(spec["id"], {"running"})
    status, body = await ctl.api("POST", f"/api/v1/jobs/{spec['id']}/cancel")
    assert status == 200, body
    assert (body["status"], body["reason"]) == ("cancelled", "cancelled by ops")
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_runsc_pool_with_a_docker_network_does_not_start(runsc: None, tmp_path: Path) -> None:
    """The engine runs runsc with --network=none (.ci/setup): a pool network would silently never arrive."""
    from orchestrator.app import build_app, build_controller
    from orchestrator.platform.serving import app_runner
    from orchestrator.runtime.runtimes import RuntimeUnavailableError

    secret = tmp_path / "hook.secret"
    secret.write_text("whsec_" + "A" * 32)
    secret.chmod(0o600)
    config = make_config(
        tmp_path,
        controller_id=f"{TEST_CONTROLLER_PREFIX}{RUN_TAG}net",
        secret_file=secret,
        token="t" * 16,
        viewer="v" * 16,
        **RUNSC_POOL,
        network="ci-egress",
    )
    controller = build_controller(config)
    runner = app_runner(build_app(controller))
    try:
        with pytest.raises(RuntimeUnavailableError, match=r"^pools\.default\.network: .*'runsc' with --network=none"):
            await runner.setup()
        assert controller.scheduler.pool_stats()["default"] == (0, 0)
    finally:
        await controller.engine.close()
        controller.auditor.close()


def test_serve_refuses_a_runtime_the_engine_lacks_in_one_line(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """Needs only Docker: a runtime no engine has. `orchestrator serve` exits 1 with one line, nothing started."""
    controller_id = f"{TEST_CONTROLLER_PREFIX}{RUN_TAG}rt{os.getpid() % 1000}"
    config = tmp_path / "orchestrator.toml"
    config.write_text(
        f"""
controller_id = "{controller_id}"
data_dir = "data"
[server]
host = "127.0.0.1"
port = 0
[[api.tokens]]
name = "ops"
role = "operator"
sha256 = "{hash_token("unused")}"
[pools.default]
image = "{TEST_IMAGE}"
[pools.sandboxed]
image = "{TEST_IMAGE}"
runtime = "no-such-runtime"
"""
    )
    command = [sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(config)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    offered = ", ".join(sorted(docker_client.info()["Runtimes"]))
    assert out.returncode == 1, out.stderr
    expected = (
        "orchestrator: pools.sandboxed.runtime: the Docker engine offers no runtime 'no-such-runtime' "
        f'(it has: {offered}); add it to dockerd\'s daemon.json "runtimes"\n'
    )
    assert out.stderr.endswith(expected), out.stderr
    assert "Traceback" not in out.stderr and '"listening"' not in out.stderr
