"""Vault misbehaving, on the double (tests/vault_double.py): the failures a real server cannot be made to show on
demand -- sealed or gone before and in the middle of a job, 5xx answers, answers slower than the request timeout,
malformed JSON. Every credentials check a real server can make runs on OpenBao (test_vault_docker.py).

Each case must fail closed (no container without its credentials, a reason naming Vault and what failed), lose no
job, and never hide a failed revocation."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest
from aiohttp import web

from conftest import RunningController, job_spec, managed_containers
from ports import free_port

sys.path.insert(0, str(Path(__file__).parent.parent))
from orchestrator.credentials.vault import VaultCredentials

from vault_double import VaultDouble

pytestmark = pytest.mark.docker

PASSWORD = "outage-pa55word-3e2d1c"
SECRET = [{"path": "ci/default/db", "key": "password", "name": "DB_PASSWORD"}]


@pytest.fixture
async def vault() -> AsyncIterator[VaultDouble]:
    double = VaultDouble()
    double.clock_skew_leeway = 0
    await double.start()
    double.put_policy("ci-default-read", {"secret/data/ci/default/*": ["read"]})
    double.put_kv("secret", "ci/default/db", {"password": PASSWORD})
    yield double
    await double.stop()


async def start(controller_factory: Any, vault: VaultDouble, **vault_cfg: Any) -> RunningController:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    vault.configure_jwt("jwt", oidc_discovery_url=public, bound_issuer=public)
    vault.add_role(
        "jwt",
        "ci-default",
        bound_audiences=["vault"],
        bound_claims={"pool": "default"},
        token_policies=["ci-default-read"],
        token_ttl=600,
    )
    settings = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": public, "max_body_bytes": 65536},
        "credentials": {"vault": {"address": vault.url, "retry_budget_s": 1.0, **vault_cfg}},
    }
    ctl: RunningController = await controller_factory(settings=settings)
    return ctl


def stats(ctl: RunningController) -> dict[str, int]:
    credentials = ctl.controller.credentials
    assert isinstance(credentials, VaultCredentials)
    return credentials.stats()


async def test_vault_sealed_or_gone_fails_closed(
    controller_factory: Any, vault: VaultDouble, docker_client: docker.DockerClient
) -> None:
    ctl = await start(controller_factory, vault)
    vault.down = True
    sealed = job_spec(secrets=SECRET)
    plain = job_spec(commands=["echo no secrets needed"])
    await ctl.post_webhook(sealed)
    await ctl.post_webhook(plain)
    job = await ctl.wait_final(sealed["id"])
    assert job["status"] == "error" and "unavailable after retrying" in job["reason"], job["reason"]
    assert vault.url in job["reason"]
    assert job["container_id"] is None
    assert (await ctl.wait_final(plain["id"]))["status"] == "succeeded"
    await vault.stop()  # unreachable, not just sealed
    unreachable = job_spec(secrets=SECRET)
    await ctl.post_webhook(unreachable)
    job = await ctl.wait_final(unreachable["id"])
    assert job["status"] == "error" and "unavailable" in job["reason"]
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_vault_gone_mid_job_keeps_the_jobs_result_and_records_the_failed_revocation(
    controller_factory: Any, vault: VaultDouble
) -> None:
    ctl = await start(controller_factory, vault)
    spec = job_spec(secrets=SECRET, commands=["sleep 2", "echo done"])
    await ctl.post_webhook(spec)
    await ctl.wait_status(spec["id"], {"running"})
    (token,) = vault.live_tokens()
    vault.down = True
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded" and job["exit_code"] == 0  # the job's own result stands
    vault.down = False
    # Not revoked (Vault said 503 throughout the retry budget): recorded as such, and the token's TTL bounds it.
    assert not token.revoked and token.ttl(vault.clock()) <= 600
    ctl.controller.auditor.flush()
    lines = (ctl.config.data_dir / "audit.jsonl").read_text().splitlines()
    revoked = [r for r in map(json.loads, lines) if r["action"] == "credentials.revoked" and r["target"] == spec["id"]]
    assert [r["outcome"] for r in revoked] == ["error"], revoked
    assert stats(ctl)["errors"] >= 1


async def test_transient_5xx_answers_are_retried(controller_factory: Any, vault: VaultDouble) -> None:
    ctl = await start(controller_factory, vault, retry_budget_s=10.0)
    failures = {"left": 2}

    async def flaky(request: web.Request) -> web.Response | None:
        if request.path.endswith("/login") and failures["left"] > 0:
            failures["left"] -= 1
            return web.json_response({"errors": ["upstream connect error"]}, status=502)
        return None

    vault.fault = flaky
    spec = job_spec(secrets=SECRET, commands=["test -s /run/secrets/DB_PASSWORD && echo got-it"])
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded", job
    assert failures["left"] == 0 and stats(ctl)["retries"] >= 2
    assert vault.live_tokens() == []


async def test_answers_slower_than_the_request_timeout_fail_closed(controller_factory: Any, vault: VaultDouble) -> None:
    ctl = await start(controller_factory, vault, request_timeout_s=1.0, retry_budget_s=2.0)

    async def stall(request: web.Request) -> web.Response | None:
        if "/data/" in request.path:
            await asyncio.sleep(5)
        return None

    vault.fault = stall
    spec = job_spec(secrets=SECRET)
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"], timeout=60)
    assert job["status"] == "error" and job["container_id"] is None
    assert "unavailable after retrying for 2 s" in job["reason"] and "Timeout" in job["reason"], job["reason"]
    vault.fault = None
    await asyncio.sleep(0.1)
    assert vault.live_tokens() == []  # the token that logged in was revoked


@pytest.mark.parametrize("where", ["/login", "/data/"])
async def test_malformed_json_is_a_clear_error(controller_factory: Any, vault: VaultDouble, where: str) -> None:
    ctl = await start(controller_factory, vault)

    async def garbage(request: web.Request) -> web.Response | None:
        if where in request.path:
            return web.Response(status=200, body=b'{"auth": {"client_token": ', content_type="application/json")
        return None

    vault.fault = garbage
    spec = job_spec(secrets=SECRET)
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "error" and job["container_id"] is None
    assert "malformed" in job["reason"] and vault.url in job["reason"], job["reason"]
    vault.fault = None
    assert vault.live_tokens() == []
