"""Shared fixtures. Integration tests run against the real Docker engine and a real controller on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest
from aiohttp import web

from orchestrator.app import Controller, build_app, build_controller
from orchestrator.config import Config, hash_token
from orchestrator.credentials.base import CredentialsBackend
from orchestrator.intake.signatures import sign
from orchestrator.platform.serving import app_runner
from orchestrator.runtime.container_spec import LABEL_CONTROLLER, LABEL_MANAGED

from fake_clock import FakeClock
from openbao import OpenBao, VaultLayout

TEST_IMAGE = os.environ.get("ORCHESTRATOR_TEST_IMAGE", "runner-orchestrator/test-runner:local")
TEST_CONTROLLER_PREFIX = "test-"
RUN_TAG = f"{os.getpid() % 4096:03x}"  # controllers of this pytest process: test-<RUN_TAG>...
REQUIRE_DOCKER = os.environ.get("ORCHESTRATOR_REQUIRE_DOCKER") == "1"


def pytest_sessionstart(session: pytest.Session) -> None:
    """The header line also under -q (the README's test command), which hides pytest's report header."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.get_verbosity() < 0:
        reporter.write_line(pytest_report_header())


def pytest_report_header() -> str:
    """The Vault-compatible server the credentials tests run against (tests/openbao.py)."""
    import subprocess

    from openbao import bao_binary

    try:
        binary = bao_binary()
        version = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30, check=True)
        return f"vault server: {version.stdout.strip()} ({binary})"
    except Exception as exc:
        return f"vault server: UNAVAILABLE ({exc}); the credentials tests will fail"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop the Docker engine run last, so a slow recovery cannot disturb the others."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


def _docker_client() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        client.images.get(TEST_IMAGE)
        return client
    except Exception as exc:
        if REQUIRE_DOCKER:
            raise RuntimeError(f"Docker engine or test image {TEST_IMAGE} unavailable: {exc}") from exc
        return None


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """One real OpenBao dev server for the session (tests/openbao.py); never a silent fallback to the double."""
    server = OpenBao.start(tmp_path_factory.mktemp("openbao"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def vault_layout(openbao: OpenBao) -> Iterator[Callable[..., VaultLayout]]:
    """`vault_layout(pools=("default",))`: fresh mounts and policies on the session's OpenBao, for one test's
    controller to configure with setup-vault.sh (`layout.configure(url)`); removed after the test."""
    made: list[VaultLayout] = []

    def make(pools: tuple[str, ...] = ("default",)) -> VaultLayout:
        made.append(VaultLayout(openbao, pools=pools))
        return made[-1]

    yield make
    for layout in made:
        layout.remove()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = _docker_client()
    if client is None:
        pytest.skip("no Docker engine or test image (run images/build-test-images.sh); CI requires it")
    yield client
    # Low-level listing: no per-container inspect, so containers of a concurrently running suite that vanish
    # between listing and reading cannot break this check. Only this process's controllers count.
    leftovers = [
        row["Names"][0].lstrip("/")
        for row in client.api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=true"})
        if (row.get("Labels") or {}).get(LABEL_CONTROLLER, "").startswith(TEST_CONTROLLER_PREFIX + RUN_TAG)
    ]
    client.close()
    assert not leftovers, f"containers left behind by the test suite: {leftovers}"


def local_image(client: docker.DockerClient, name: str) -> str:
    """`name` if the engine has it (images are built locally: images/build-test-images.sh); else the test is skipped,
    or fails where CI requires Docker."""
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        if REQUIRE_DOCKER:
            raise
        pytest.skip(f"{name} missing (run images/build-test-images.sh)")
    return name


def managed_containers(client: docker.DockerClient, controller_id: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{LABEL_CONTROLLER}={controller_id}"})


def job_spec(job_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "version": 1,
        "id": job_id or f"job-{uuid.uuid4().hex[:12]}",
        "pool": "default",
        "repository": "example/app",
        "ref": "refs/heads/main",
        "sha": "3f786850e387550fdab836ed7e6dc881de23001b",
        "commands": ["echo hello"],
    }
    spec.update(overrides)
    return spec


@dataclass
class RunningController:
    url: str
    controller: Controller
    token: str
    viewer_token: str
    webhook_secret: bytes
    config: Config
    session: aiohttp.ClientSession
    sent: list[str] = field(default_factory=list)

    @property
    def controller_id(self) -> str:
        return self.config.controller_id

    async def post_webhook(
        self,
        spec: dict[str, Any] | bytes,
        *,
        source: str = "test",
        headers: dict[str, str] | None = None,
        timestamp: int | None = None,
        url: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """`url`: another listener of this controller (the webhook port); default the main one."""
        body = spec if isinstance(spec, bytes) else json.dumps(spec).encode()
        if headers is None:
            headers = sign(
                "standard-webhooks",
                self.webhook_secret,
                body,
                msg_id=f"msg_{secrets.token_hex(6)}",
                timestamp=timestamp or int(time.time()),
            )
        async with self.session.post(f"{url or self.url}/webhooks/{source}", data=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def api(self, method: str, path: str, *, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        async with self.session.request(method, f"{self.url}{path}", headers=headers) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.read()

    async def job(self, job_id: str) -> dict[str, Any]:
        status, body = await self.api("GET", f"/api/v1/jobs/{job_id}")
        assert status == 200, body
        return dict(body)

    async def wait_status(self, job_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} stayed {job['status']}, expected {statuses}")
            await asyncio.sleep(0.05)

    async def wait_final(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        final = {"succeeded", "failed", "timed_out", "cancelled", "error"}
        return await self.wait_status(job_id, final, timeout)

    async def logs(self, job_id: str) -> bytes:
        status, body = await self.api("GET", f"/api/v1/jobs/{job_id}/logs")
        assert status == 200
        return bytes(body)


ControllerFactory = Callable[..., Any]


@pytest.fixture
def clock() -> FakeClock:
    """A clock that stands still at the time the test began until the test advances it."""
    return FakeClock()


async def followed_log(ctl: RunningController, job_id: str) -> list[tuple[float, bytes]]:
    """The job's log as `?follow=true` delivers it, each chunk with the time it arrived, until the job ends."""
    received: list[tuple[float, bytes]] = []
    url = f"{ctl.url}/api/v1/jobs/{job_id}/logs?follow=true"
    async with ctl.session.get(url, headers={"Authorization": f"Bearer {ctl.viewer_token}"}) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_any():
            received.append((time.monotonic(), chunk))
    return received


def make_config(
    tmp_path: Path,
    *,
    controller_id: str,
    secret_file: Path,
    token: str,
    viewer: str,
    settings: dict[str, Any] | None = None,
    **pool: Any,
) -> Config:
    pool_cfg: dict[str, Any] = {
        "image": TEST_IMAGE,
        "memory": "128m",
        "cpus": 1.0,
        "pids": 64,
        "max_concurrent": 4,
        "default_timeout_s": 60,
        "max_timeout_s": 300,
    }
    pool_cfg.update(pool)
    raw = {
        "controller_id": controller_id,
        "data_dir": str(tmp_path / "data"),
        "server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 64 * 1024},
        "docker": {"stop_grace_s": 1},
        "sources": {"test": {"scheme": "standard-webhooks", "secret_file": str(secret_file)}},
        "api": {
            "tokens": [
                {"name": "ops", "role": "operator", "sha256": hash_token(token)},
                {"name": "dash", "role": "viewer", "sha256": hash_token(viewer)},
            ]
        },
        "pools": {"default": pool_cfg},
        "max_total_concurrent": 8,
    }
    raw.update(settings or {})
    return Config.model_validate(raw)


@asynccontextmanager
async def _controllers(tmp_path: Path, runtime: Callable[[], Any] | None) -> AsyncIterator[Callable[..., Any]]:
    """Starts controllers on 127.0.0.1 with a fresh data dir (on the Docker engine, or on `runtime()`); all are
    stopped when the block ends. Yields the controllers' shared controller id too, through `start.controller_id`."""
    started: list[tuple[web.AppRunner, aiohttp.ClientSession]] = []
    key = secrets.token_bytes(24)
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_text("whsec_" + base64.b64encode(key).decode())
    secret_file.chmod(0o600)
    controller_id = f"{TEST_CONTROLLER_PREFIX}{RUN_TAG}{uuid.uuid4().hex[:7]}"

    async def start(
        *,
        credentials: CredentialsBackend | None = None,
        config: Config | None = None,
        settings: dict[str, Any] | None = None,
        forges: dict[str, Any] | None = None,
        **pool: Any,
    ) -> RunningController:
        token, viewer = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        cfg = config or make_config(
            tmp_path,
            controller_id=controller_id,
            secret_file=secret_file,
            token=token,
            viewer=viewer,
            settings=settings,
            **pool,
        )
        controller = build_controller(
            cfg, credentials=credentials, runtime=runtime() if runtime else None, forges=forges
        )
        app = build_app(controller)
        runner = app_runner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", cfg.server.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        session = aiohttp.ClientSession()
        started.append((runner, session))
        return RunningController(
            url=f"http://127.0.0.1:{port}",
            controller=controller,
            token=token,
            viewer_token=viewer,
            webhook_secret=key,
            config=cfg,
            session=session,
        )

    start.controller_id = controller_id  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for runner, session in reversed(started):
            await session.close()
            await runner.cleanup()


@pytest.fixture
async def controller_factory(tmp_path: Path, docker_client: docker.DockerClient) -> AsyncIterator[Callable[..., Any]]:
    """Controllers on the real Docker engine; none may leave a container behind."""
    async with _controllers(tmp_path, None) as start:
        yield start
    controller_id = start.controller_id  # type: ignore[attr-defined]
    leftovers = managed_containers(docker_client, controller_id)
    for c in leftovers:
        c.remove(force=True)
    assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"


@pytest.fixture
async def fake_controller_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Controllers on an in-memory container runtime (tests/fakes.py): for what needs HTTP but no Docker, such as
    the intake's refusals. `ctl.controller.engine` is the FakeRuntime."""
    from fakes import FakeRuntime

    async with _controllers(tmp_path, FakeRuntime) as start:
        yield start


@pytest.fixture
def controller_process(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Callable[..., Any]]:
    """Controllers as their own processes (`orchestrator serve`); each is killed and checked for leftover
    containers at the end of the test."""
    from controller_process import ControllerProcess

    made: list[ControllerProcess] = []

    def make(**kw: Any) -> ControllerProcess:
        made.append(ControllerProcess(tmp_path, **kw))
        return made[-1]

    yield make
    for cp in made:
        if cp.proc and cp.proc.poll() is None:
            cp.proc.kill()
            cp.proc.wait()
        leftovers = managed_containers(docker_client, cp.controller_id)
        for c in leftovers:
            c.remove(force=True)
        assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"
