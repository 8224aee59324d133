"""The entrypoint scripts of the real runner images, run for real on the Docker engine.

images/github-runner (FROM debian, downloads actions/runner) and images/gitea-runner (downloads act_runner) cannot be
built here, so images/build-test-images.sh builds stand-ins (images/test-runner-entrypoints): their UNMODIFIED
entrypoint scripts, copied from those directories at build time, in front of fake runner binaries that check and
report what the scripts promise as `fake-runner: KEY=VALUE` / `fake-act-runner: KEY=VALUE` lines. On a Debian host
/bin/sh is the host's dash and the tools the scripts call are GNU's, as in debian:bookworm-slim.

Each container is started the controller's way: `build_container_spec` (read-only root filesystem, the tmpfs mounts
with their modes and owners, cap_drop ALL, no-new-privileges, uid 10001, network none) and the secret file delivered
over stdin by the fixed bootstrap (`job_script` + `stdin_payload`), through the controller's own `DockerEngine`; and
once per image end to end through a real controller whose forge is the loopback fake (GitHub, Gitea)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.config import PoolConfig
from orchestrator.credentials.base import SecretFile
from orchestrator.jobs.spec import JobSpec
from orchestrator.runtime.container_spec import build_container_spec, job_env, job_script, stdin_payload
from orchestrator.runtime.docker_engine import DockerEngine

from conftest import RUN_TAG, TEST_CONTROLLER_PREFIX, RunningController, local_image, managed_containers

sys.path.insert(0, str(Path(__file__).parent.parent / "forges"))
from fake_gitea import FakeGitea
from fake_github import FakeGitHub

pytestmark = pytest.mark.docker

GITHUB_IMAGE = os.environ.get("GITHUB_RUNNER_TEST_IMAGE", "runner-orchestrator/test-github-runner:local")
GITEA_IMAGE = os.environ.get("GITEA_RUNNER_TEST_IMAGE", "runner-orchestrator/test-gitea-runner:local")
JIT_FILE = "/run/secrets/ACTIONS_RUNNER_INPUT_JITCONFIG"
RUNNER_FILE = "/run/secrets/.runner"
GH_ENTRYPOINT = "/usr/local/bin/runner-entrypoint"
GITEA_ENTRYPOINT = "/usr/local/bin/gitea-runner-entrypoint"
GITEA_ARGS = "daemon --once --config /etc/gitea-runner/config.yaml"
CONTROLLER_ID = f"{TEST_CONTROLLER_PREFIX}{RUN_TAG}img"  # so the session's leftover check covers these containers


@pytest.fixture
def github_image(docker_client: docker.DockerClient) -> str:
    return local_image(docker_client, GITHUB_IMAGE)


@pytest.fixture
def gitea_image(docker_client: docker.DockerClient) -> str:
    return local_image(docker_client, GITEA_IMAGE)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def facts(output: str, prefix: str) -> dict[str, str]:
    """The `PREFIX: KEY=VALUE` lines of a fake (the last value of a key wins)."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith(prefix + ": "):
            key, _, value = line[len(prefix) + 2 :].partition("=")
            found[key] = value
    return found


def shown_by_docker(attrs: dict[str, Any]) -> str:
    """What `docker inspect` tells anyone allowed to ask: env, command line, entrypoint, labels, mounts."""
    return json.dumps([attrs["Config"], attrs["HostConfig"], attrs["Args"], attrs["Path"], attrs.get("Mounts")])


@dataclass
class Ran:
    code: int
    output: str  # stdout and stderr merged, as the controller reads them (the job script does `exec 2>&1`)
    inspected: dict[str, Any]  # `docker inspect` while it ran


async def run_hardened(
    docker_client: docker.DockerClient,
    image: str,
    commands: list[str],
    secret_files: Sequence[SecretFile] = (),
    env: dict[str, str] | None = None,
    *,
    timeout: float = 30,
) -> Ran:
    """One container exactly as the controller makes it for a runner job (build_container_spec, the bootstrap's
    stdin delivery of the job script with the secret files, the controller's DockerEngine)."""
    spec = JobSpec(
        id=f"img-{uuid.uuid4().hex[:10]}",
        pool="runners",
        repository="acme/app",
        ref="refs/heads/main",
        sha="0" * 40,
        commands=commands,
        env={"FAKE_RUNNER_HOLD_S": "0", "FAKE_ACT_RUNNER_HOLD_S": "0", **(env or {})},
    )
    pool = PoolConfig(image=image, memory="64m", pids=64, workspace_size="64m")
    cspec = build_container_spec(spec, pool, controller_id=CONTROLLER_ID)
    assert cspec.host["network_mode"] == "none" and cspec.host["read_only"] and cspec.host["cap_drop"] == ["ALL"]
    engine = DockerEngine()
    chunks: list[bytes] = []
    container_id = await engine.create(cspec)
    try:
        stream = await engine.attach(container_id)
        await engine.start(container_id)
        pump = asyncio.create_task(asyncio.to_thread(stream.pump, chunks.append))
        payload = stdin_payload(job_script(spec.commands, list(secret_files), env=job_env(spec)))
        await asyncio.to_thread(stream.send, payload)
        inspected = await asyncio.to_thread(docker_client.api.inspect_container, container_id)
        code = await engine.wait(container_id, timeout)
        await asyncio.wait_for(pump, timeout)
    finally:
        await engine.remove(container_id)
        await engine.close()
    return Ran(code, b"".join(chunks).decode(errors="replace"), inspected)


# ------------------------------------------------------------------------------------------------------ GitHub


def jit_config(name: str = "ctl-img-1") -> str:
    """A JIT config shaped like GitHub's: base64 of {file name: base64 of the file}, with random credentials."""
    files = {
        ".runner": {"agentId": 4242, "agentName": name, "poolId": 1, "serverUrl": "https://pipelines.invalid/x",
                    "gitHubUrl": "https://github.invalid/acme/app", "workFolder": "_work", "ephemeral": True},
        ".credentials": {"scheme": "OAuthAccessToken", "data": {"clientId": str(uuid.uuid4()),
                                                                "authorizationUrl": "https://token.invalid/x"}},
        ".credentials_rsaparams": {"d": secrets.token_urlsafe(192), "modulus": secrets.token_urlsafe(192)},
    }  # fmt: skip
    encoded = {k: base64.b64encode(json.dumps(v).encode()).decode() for k, v in files.items()}
    return base64.b64encode(json.dumps(encoded).encode()).decode()


def jit_secret(value: str) -> list[SecretFile]:
    return [SecretFile(name="ACTIONS_RUNNER_INPUT_JITCONFIG", value=value, deliver="file")]


def assert_runner_started_as_promised(output: str, jit: str) -> dict[str, str]:
    """Everything images/github-runner/entrypoint.sh (and its README) promises, as the fake release saw it."""
    got = facts(output, "fake-runner")
    assert "runner-entrypoint: NOTE: this runner has no Docker daemon" in output, output
    assert jit not in output  # the entrypoint and the runner never print the config
    # The runner root was built in the /workspace tmpfs, and run.sh and the listener run from there, not from /opt.
    assert got["root"] == got["cwd"] == got["listener_root"] == "/workspace/runner", got
    assert got["root_mode"] == "700:10001" and got["uid"] == "10001:10001"
    assert got["listener_args"] == "run"
    # The JIT config: in run.sh's environment, exactly what was delivered; the file gone; on no command line, and in
    # no environment but the runner's own processes' (run.sh and the listener, the same process after exec).
    assert got["jit_env"] == "set" and got["jit_sha256"] == sha256(jit), got
    assert got["jit_file"] == "gone" and got["secrets_dir"] == ""
    assert int(got["procs_scanned"]) >= 2 and got["jit_in_cmdline"] == "none", got
    for entry in got["jit_in_environ"].rstrip(",").split(","):
        pid, _, comm = entry.partition(":")
        assert pid != "1" and comm in {"run.sh", "sh", "dash"}, got["jit_in_environ"]
    assert got["pid1"].startswith("/sbin/docker-init") or got["pid1"].startswith("docker-init"), got["pid1"]
    # Read-only root filesystem and release; the root's entries: copies of the scripts and of bin/Runner.*, links
    # to the rest of the release.
    assert got["rootfs"] == "read-only" and got["install_dir"] == "read-only" and got["install_owner"] == "0"
    entries = {k.removeprefix("entry:"): v for k, v in got.items() if k.startswith("entry:")}
    assert entries == {
        "_diag": "dir",
        "_work": "dir",
        "bin": "dir",
        "bin/Runner.Listener": "file",
        "bin/Runner.Listener.dll": "file",
        "bin/Runner.PluginHost": "file",
        "bin/Runner.Worker": "file",
        "bin/Runner.Worker.dll": "file",
        "bin/System.Private.CoreLib.dll": "link:/opt/actions-runner/bin/System.Private.CoreLib.dll",
        "bin/de": "dir",
        "bin/de/Runner.Listener.resources.dll": "link:/opt/actions-runner/bin/de/Runner.Listener.resources.dll",
        "bin/libcoreclr.so": "link:/opt/actions-runner/bin/libcoreclr.so",
        "config.sh": "file",
        "env.sh": "file",
        "externals": "link:/opt/actions-runner/externals",
        "run-helper.sh.template": "file",
        "run.sh": "file",
    }, entries
    # The runner can write its config files, logs and work into the root, and delete the config files again.
    assert got["wrote"] == ".runner,.credentials,.credentials_rsaparams,", got
    assert got["deleted_config"] == "ok" and got["diag"] == "writable" and got["work"] == "writable"
    assert got["listener_env_after_unset"] == "unset"
    # The image's environment reaches the runner; `docker` explains and fails.
    assert got["home"] == "/workspace" and got["trap_sig"] == "1" and got["umask"] == "0077"
    assert got["docker_rc"] == "1" and got["docker_says"] == "no-daemon"
    return got


async def test_github_entrypoint_starts_the_runner_with_the_delivered_jit_config(
    docker_client: docker.DockerClient, github_image: str
) -> None:
    jit = jit_config()
    ran = await run_hardened(
        docker_client,
        github_image,
        [f"exec {GH_ENTRYPOINT}"],
        jit_secret(jit),
        {"FAKE_RUNNER_EXIT": "3", "FAKE_RUNNER_HOLD_S": "1"},
    )
    assert ran.code == 3, ran.output  # the listener's exit code, through run-helper.sh, run.sh and the entrypoint
    got = assert_runner_started_as_promised(ran.output, jit)
    assert got["run_sh_exit"] == "3"
    assert ran.inspected["State"]["Running"], ran.inspected["State"]
    shown = shown_by_docker(ran.inspected)
    assert jit not in shown and jit[20:60] not in shown and "JITCONFIG=" not in shown
    host = ran.inspected["HostConfig"]
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and host["NetworkMode"] == "none"
    assert host["SecurityOpt"] == ["no-new-privileges:true"] and ran.inspected["Config"]["User"] == "10001:10001"
    assert "uid=10001" in host["Tmpfs"]["/run/secrets"] and "mode=0700" in host["Tmpfs"]["/run/secrets"]


async def test_github_entrypoint_without_a_jit_config_exits_2(
    docker_client: docker.DockerClient, github_image: str
) -> None:
    began = time.monotonic()
    ran = await run_hardened(
        docker_client, github_image, [f"exec {GH_ENTRYPOINT}"], [], {"RUNNER_JITCONFIG_WAIT_S": "1"}
    )
    assert ran.code == 2, ran.output
    assert f"runner-entrypoint: no JIT config at {JIT_FILE} after 1 s" in ran.output
    assert "runner-entrypoint: NOTE: this runner has no Docker daemon" in ran.output
    assert "fake-runner:" not in ran.output and time.monotonic() - began < 20


async def test_github_entrypoint_runs_one_runner_once(docker_client: docker.DockerClient, github_image: str) -> None:
    """A runner root that exists already (a second start in the same container) is refused, and the JIT config
    file is gone all the same."""
    ran = await run_hardened(
        docker_client,
        github_image,
        ["mkdir /workspace/runner", f"{GH_ENTRYPOINT} || echo exit=$?", "ls -A /run/secrets | wc -l"],
        jit_secret(jit_config()),
    )
    assert ran.code == 0, ran.output
    assert "runner-entrypoint: /workspace/runner exists already: a runner container runs one runner, once" in ran.output
    assert "exit=2" in ran.output and ran.output.rstrip().endswith("0"), ran.output
    assert "fake-runner:" not in ran.output


@pytest.mark.parametrize(
    "value",
    ["not base64 at all!", "eyJhIjoiYiJ9\nZm9v", "ey$(id)J9", ""],
    ids=["punctuation", "newline", "command-substitution", "empty"],
)
async def test_github_entrypoint_refuses_a_config_that_is_not_base64(
    docker_client: docker.DockerClient, github_image: str, value: str
) -> None:
    ran = await run_hardened(docker_client, github_image, [f"exec {GH_ENTRYPOINT}"], jit_secret(value))
    assert ran.code == 2, ran.output
    assert f"runner-entrypoint: {JIT_FILE} does not hold a base64 JIT config" in ran.output
    assert "fake-runner:" not in ran.output and "uid=" not in ran.output


async def test_github_image_docker_says_why_there_is_none(
    docker_client: docker.DockerClient, github_image: str
) -> None:
    ran = await run_hardened(docker_client, github_image, ["docker run --rm alpine true"])
    assert ran.code == 1, ran.output
    assert "docker: this GitHub Actions runner has no Docker daemon" in ran.output
    assert "never hands it a Docker socket" in ran.output


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    fake = await FakeGitHub.start(job_seconds=0.2, agent_timeout_s=120)
    fake.add_repository("acme/app", installation_id=7001)
    try:
        yield fake
    finally:
        await fake.stop()


async def test_github_entrypoint_through_the_controller(
    controller_factory: Any, github: FakeGitHub, tmp_path: Path, github_image: str, docker_client: docker.DockerClient
) -> None:
    """A signed `workflow_job` webhook → the controller's GitHub client gets a JIT config from the fake → the pool's
    default runner.command (the entrypoint) in the hardened container (network none) gets exactly that config."""
    key = tmp_path / "app.pem"
    key.write_text(github.private_key_pem)
    key.chmod(0o600)
    secret = tmp_path / "hook.secret"
    secret.write_text("gh-hook-secret-" + os.urandom(8).hex())
    secret.chmod(0o600)
    settings = {
        "server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 1024 * 1024},
        "sources": {
            "github": {
                "scheme": "hub-sha256",
                "secret_file": str(secret),
                "forge": {"kind": "github", "api_url": github.url, "app_id": github.app_id,
                          "private_key_file": str(key), "reconcile_interval_s": 3600},
            }
        },
        "pools": {
            "gh": {"image": github_image, "memory": "64m", "pids": 64, "default_timeout_s": 60,
                   "runner": {"source": "github", "labels": ["linux", "x64"], "repositories": ["acme/*"]}}
        },
    }  # fmt: skip
    ctl: RunningController = await controller_factory(settings=settings)
    github.webhook_url = f"{ctl.url}/webhooks/github"
    github.webhook_secret = secret.read_bytes().strip()
    forge_job = github.queue_job("acme/app", ["self-hosted", "linux"])
    job_id = f"github-{forge_job}"
    await github.webhooks_sent()
    running = await ctl.wait_status(job_id, {"running", "succeeded", "failed", "error"}, timeout=60)
    (runner,) = github.runners.values()
    jit = runner.encoded_jit_config
    if running["status"] == "running":  # the fake listener holds for 2 s: inspect while it runs
        with_secret = shown_by_docker(docker_client.api.inspect_container(running["container_id"]))
        assert jit not in with_secret and jit[20:60] not in with_secret and "JITCONFIG=" not in with_secret
    job = await ctl.wait_final(job_id, timeout=60)
    log = (await ctl.logs(job_id)).decode()
    assert job["status"] == "succeeded", (job, log)
    assert f"$ exec {GH_ENTRYPOINT}" in log  # the pool's default command
    assert_runner_started_as_promised(log, jit)
    assert managed_containers(docker_client, ctl.controller_id) == []


# ------------------------------------------------------------------------------------------------------- Gitea


def runner_file(**overrides: Any) -> dict[str, Any]:
    """Like GiteaForge.register writes it (json.dumps(..., indent=2))."""
    document: dict[str, Any] = {
        "WARNING": "Written by runner-orchestrator for one ephemeral act_runner. It holds this runner's credential.",
        "id": 31,
        "uuid": str(uuid.uuid4()),
        "name": "ctl-img-gitea-1",
        "token": secrets.token_hex(20),
        "address": "https://gitea.invalid",
        "labels": ["linux:host"],
        "ephemeral": True,
    }
    document.update(overrides)
    return {k: v for k, v in document.items() if v is not None}


def runner_secret(document: dict[str, Any]) -> list[SecretFile]:
    return [SecretFile(name=".runner", value=json.dumps(document, indent=2) + "\n", deliver="file")]


def assert_act_runner_started_as_promised(output: str, document: dict[str, Any]) -> dict[str, str]:
    got = facts(output, "fake-act-runner")
    assert document["token"] not in output and document["uuid"] not in output
    assert (
        f"gitea-runner: act_runner v0.2.13-fake, runner {document['name']} for {document['address']}, one job "
        "(ephemeral, --once), uid 10001" in output
    ), output
    assert "gitea-runner: NOTE: no Docker daemon is available to this runner." in output
    assert "a Docker socket or DOCKER_HOST is visible" not in output
    assert got["args"] == GITEA_ARGS and got["own_cmdline"].endswith(f"/act_runner {GITEA_ARGS} "), got
    assert got["runner_file"] == RUNNER_FILE and got["capacity"] == "1" and got["workdir_parent"] == "/workspace/act"
    assert got["runner_file_mode"] == "600" and got["runner_file_owner"] == "10001:10001", got
    assert got["ephemeral"] == "true"
    assert got["token_sha256"] == sha256(document["token"]) and got["uuid_sha256"] == sha256(document["uuid"])
    assert int(got["procs_scanned"]) >= 2 and got["secret_in_cmdline"] == got["secret_in_environ"] == "none", got
    assert got["uid"] == "10001:10001" and got["rootfs"] == "read-only" and got["docker"] == "absent"
    assert got["home"] == "/workspace" and got["tmpdir"] == "/workspace/tmp" and got["umask"] == "0077"
    assert got["writable:/workspace/act"] == got["writable:/workspace/tmp"] == "yes"
    return got


async def test_gitea_entrypoint_runs_act_runner_once_with_the_delivered_runner_file(
    docker_client: docker.DockerClient, gitea_image: str
) -> None:
    document = runner_file()
    ran = await run_hardened(
        docker_client,
        gitea_image,
        [f"exec {GITEA_ENTRYPOINT}"],
        runner_secret(document),
        {"FAKE_ACT_RUNNER_HOLD_S": "1"},
    )
    assert ran.code == 0, ran.output
    assert_act_runner_started_as_promised(ran.output, document)
    shown = shown_by_docker(ran.inspected)
    assert document["token"] not in shown and document["uuid"] not in shown
    assert ran.inspected["HostConfig"]["ReadonlyRootfs"] and ran.inspected["HostConfig"]["NetworkMode"] == "none"


async def test_gitea_entrypoint_passes_on_act_runners_exit_code(
    docker_client: docker.DockerClient, gitea_image: str
) -> None:
    ran = await run_hardened(
        docker_client, gitea_image, [f"exec {GITEA_ENTRYPOINT}"], runner_secret(runner_file()),
        {"FAKE_ACT_RUNNER_EXIT": "5"},
    )  # fmt: skip
    assert ran.code == 5, ran.output


@pytest.mark.parametrize(
    ("document", "before", "message"),
    [
        (None, [], f"no registration at {RUNNER_FILE}"),
        ({}, [f"chmod 644 {RUNNER_FILE}"], f"{RUNNER_FILE} is readable by others (mode 644); it must be 0600"),
        ({"ephemeral": False}, [], f"the registration in {RUNNER_FILE} is not ephemeral"),
        ({"uuid": None, "token": None}, [], f"{RUNNER_FILE} is not an act_runner registration (no uuid/token)"),
        ({"token": None}, [], f"{RUNNER_FILE} is not an act_runner registration (no uuid/token)"),
    ],
    ids=["missing", "mode-0644", "not-ephemeral", "no-uuid-or-token", "no-token"],
)
async def test_gitea_entrypoint_refuses_an_unusable_runner_file(
    docker_client: docker.DockerClient,
    gitea_image: str,
    document: dict[str, Any] | None,
    before: list[str],
    message: str,
) -> None:
    delivered = [] if document is None else runner_secret(runner_file(**document))
    ran = await run_hardened(docker_client, gitea_image, [*before, f"exec {GITEA_ENTRYPOINT}"], delivered)
    assert ran.code == 78, ran.output
    assert f"gitea-runner: ERROR: {message}" in ran.output
    assert "fake-act-runner:" not in ran.output


@pytest.fixture
async def gitea() -> AsyncIterator[FakeGitea]:
    async with FakeGitea(webhook_secret=secrets.token_hex(16)) as fake:
        fake.add_repo("alice/app")
        yield fake


async def test_gitea_entrypoint_through_the_controller(
    controller_factory: Any, gitea: FakeGitea, tmp_path: Path, gitea_image: str, docker_client: docker.DockerClient
) -> None:
    """A Gitea `workflow_job` webhook → the controller registers an ephemeral runner at the fake and delivers only
    the `.runner` file → the entrypoint in the hardened container hands act_runner exactly that registration."""
    (tmp_path / "gitea.secret").write_text(gitea.webhook_secret)
    (tmp_path / "gitea.secret").chmod(0o600)
    (tmp_path / "gitea.token").write_text(gitea.add_token("alice", "write:repository") + "\n")
    (tmp_path / "gitea.token").chmod(0o600)
    settings = {
        "sources": {
            "gitea": {
                "scheme": "gitea-sha256",
                "secret_file": str(tmp_path / "gitea.secret"),
                "forge": {"kind": "gitea", "api_url": gitea.url, "token_file": str(tmp_path / "gitea.token"),
                          "reconcile_interval_s": 3600},
            }
        },
        "pools": {
            "gt": {"image": gitea_image, "memory": "64m", "pids": 64, "default_timeout_s": 60,
                   "runner": {"source": "gitea", "labels": ["linux"], "repositories": ["alice/*"],
                              "command": GITEA_ENTRYPOINT}}
        },
    }  # fmt: skip
    ctl: RunningController = await controller_factory(settings=settings)
    gitea.webhook_url = f"{ctl.url}/webhooks/gitea"
    forge_job = gitea.queue_job("alice/app", ["linux"])
    job_id = f"gitea-{forge_job.id}"
    await gitea.drain()  # the webhook delivered and answered
    running = await ctl.wait_status(job_id, {"running", "succeeded", "failed", "error"}, timeout=60)
    (at_gitea,) = gitea.runners.values()
    registration_tokens = list(gitea.registration_tokens.values())
    if running["status"] == "running":  # the fake act_runner holds for 2 s: inspect while it runs
        shown = shown_by_docker(docker_client.api.inspect_container(running["container_id"]))
        assert at_gitea.token not in shown and at_gitea.uuid not in shown
        assert all(token not in shown for token in registration_tokens)
    job = await ctl.wait_final(job_id, timeout=60)
    log = (await ctl.logs(job_id)).decode()
    assert job["status"] == "succeeded", (job, log)
    document = {"name": at_gitea.name, "address": gitea.url, "token": at_gitea.token, "uuid": at_gitea.uuid}
    assert_act_runner_started_as_promised(log, document)
    assert all(token not in log for token in registration_tokens)
    assert managed_containers(docker_client, ctl.controller_id) == []
