"""Single sign-on through the HTTP API: a controller with [api.oidc] against the loopback identity provider. A
person's groups become grants (several add up), refused tokens get a 401 naming what was wrong and are audited,
an unreachable provider is a 503, and static tokens keep working next to it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from orchestrator.config import hash_token

from conftest import TEST_IMAGE, RunningController, job_spec
from oidc_provider import OidcProvider

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}


@pytest.fixture
async def idp() -> AsyncIterator[OidcProvider]:
    provider = await OidcProvider().start()
    yield provider
    await provider.stop()


@pytest.fixture
async def ctl(fake_controller_factory: Any, idp: OidcProvider) -> RunningController:
    pool = {"image": TEST_IMAGE, "memory": "128m", "pids": 64, "max_concurrent": 4}
    oidc = {
        "issuer": idp.issuer,
        "audience": idp.audience,
        "grants": [
            {"group": "ci-everyone", "role": "viewer"},
            {"group": "ci-gpu-ops", "role": "operator", "pools": ["gpu"]},
            {"email": "root@example.com", "role": "admin"},
        ],
    }
    tokens = [{"name": "robot", "role": "admin", "sha256": hash_token("robot-token")}]
    settings = {"api": {"tokens": tokens, "oidc": oidc}, "pools": {"default": pool, "gpu": pool}}
    controller: RunningController = await fake_controller_factory(settings=settings)
    return controller


async def call(ctl: RunningController, method: str, path: str, token: str) -> tuple[int, Any]:
    return await ctl.api(method, path, token=token)


async def finished(ctl: RunningController, job_id: str) -> None:
    for _ in range(200):
        if (await call(ctl, "GET", f"/api/v1/jobs/{job_id}", "robot-token"))[1]["status"] in FINAL:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(job_id)


async def test_a_persons_groups_become_grants_that_add_up(ctl: RunningController, idp: OidcProvider) -> None:
    jobs = {pool: job_spec(pool=pool) for pool in ("default", "gpu")}
    for spec in jobs.values():
        assert (await ctl.post_webhook(spec))[0] == 202
        await finished(ctl, spec["id"])
    token = idp.mint(groups=["ci-everyone", "ci-gpu-ops"])
    status, me = await call(ctl, "GET", "/api/v1/whoami", token)
    assert status == 200 and me["name"] == "alice@example.com" and me["kind"] == "oidc"
    assert [g["role"] for g in me["grants"]] == ["viewer", "operator"]
    listed = (await call(ctl, "GET", "/api/v1/jobs", token))[1]["jobs"]
    assert {j["job_id"] for j in listed} == {s["id"] for s in jobs.values()}
    # She sees the default pool's job but operates only in gpu: 403 naming her grants, vs 409 (allowed, ended).
    status, body = await call(ctl, "POST", f"/api/v1/jobs/{jobs['default']['id']}/cancel", token)
    assert status == 403 and "no operator grant for pool 'default'" in body["error"], body
    assert "alice@example.com holds viewer (everywhere); operator (pools gpu)" in body["error"]
    assert (await call(ctl, "POST", f"/api/v1/jobs/{jobs['gpu']['id']}/cancel", token))[0] == 409
    # Only the email grant needs a verified email.
    admin = idp.mint(email="root@example.com", groups=[])
    assert (await call(ctl, "GET", "/api/v1/audit/head", admin))[0] == 200
    unverified = idp.mint(email="root@example.com", email_verified=False, groups=[])
    assert (await call(ctl, "GET", "/api/v1/whoami", unverified))[1]["grants"] == []
    assert (await call(ctl, "GET", "/api/v1/jobs", unverified))[0] == 403


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"aud": "another-app"}, "the JWT is not for audience 'runner-orchestrator'"),
        ({"exp": 1_000_000}, "the JWT has expired"),
        ({"iss": "http://127.0.0.1:1"}, "the JWT is not from issuer"),
    ],
)
async def test_refused_tokens_say_why_and_are_audited(
    ctl: RunningController, idp: OidcProvider, claims: dict[str, Any], message: str
) -> None:
    status, body = await call(ctl, "GET", "/api/v1/jobs", idp.mint(groups=["ci-everyone"], **claims))
    assert status == 401 and body["error"].startswith(message), body
    await asyncio.to_thread(ctl.controller.auditor.flush)
    records = [json.loads(line) for line in (ctl.config.data_dir / "audit.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["action"] == "auth.failed"]
    assert failed and failed[-1]["details"]["reason"] in {"wrong_audience", "expired_token", "wrong_issuer"}


async def test_static_tokens_work_next_to_sso_and_an_unreachable_provider_is_a_503(
    ctl: RunningController, idp: OidcProvider
) -> None:
    token = idp.mint(groups=["ci-everyone"])
    await idp.stop()
    status, body = await call(ctl, "GET", "/api/v1/jobs", token)
    assert status == 503 and "identity provider cannot be reached" in body["error"]
    assert (await call(ctl, "GET", "/api/v1/jobs", "robot-token"))[0] == 200
    assert (await call(ctl, "GET", "/api/v1/jobs", "eyJnot.a.jwt"))[0] == 401


async def test_an_api_action_by_a_person_is_audited_under_their_name(ctl: RunningController, idp: OidcProvider) -> None:
    spec = job_spec(pool="gpu")
    assert (await ctl.post_webhook(spec))[0] == 202
    await finished(ctl, spec["id"])
    token = idp.mint(groups=["ci-everyone"], email="bob@example.com")
    assert (await call(ctl, "GET", f"/api/v1/jobs/{spec['id']}/logs", token))[0] == 200
    await asyncio.to_thread(ctl.controller.auditor.flush)
    records = [json.loads(line) for line in (ctl.config.data_dir / "audit.jsonl").read_text().splitlines()]
    (read,) = [r for r in records if r["action"] == "api.logs_read"]
    assert read["actor"] == {"type": "api", "name": "bob@example.com", "kind": "oidc", "role": "viewer"}
