"""Short-lived Vault credentials end to end on a REAL OpenBao server (tests/openbao.py), configured by
config/vault/setup-vault.sh as an operator would: OpenBao verifies the controller's JWTs against the controller's
own discovery document and JWKS, the job reads its secrets from tmpfs files, and the token dies with the job.

What only a real server makes meaningful is checked here: bound claims and policies (another pool's or another
repository's secret is refused, naming the role and the path), audience, expiry and signature checks, the token's
real TTL (token lookup), its revocation (the accessor is gone), and key rotation against Vault's JWKS cache."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import docker
import hvac
import hvac.exceptions
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from orchestrator.credentials.claims import JobIdentity
from orchestrator.credentials.vault import VaultCredentials

from conftest import RunningController, job_spec, managed_containers
from openbao import VaultLayout
from vault_controller import API_KEY, DB_PASSWORD, OTHER_PASSWORD, seed, start_with_openbao

pytestmark = pytest.mark.docker

SECRETS = [
    {"path": "ci/default/db", "key": "password", "name": "DB_PASSWORD"},
    {"path": "ci/default/api", "key": "key", "name": "API_KEY", "deliver": "env"},
]
# OpenBao's and Vault's service and batch token formats (s., hvs., b., hvb.): none may show in a log or file.
TOKEN_PATTERN = re.compile(rb"\b(?:hv)?[sb]\.[A-Za-z0-9_-]{20,}")


@pytest.fixture
def layout(vault_layout: Any) -> VaultLayout:
    made: VaultLayout = vault_layout()
    return made


async def started(controller_factory: Any, layout: VaultLayout, **kw: Any) -> RunningController:
    ctl = await start_with_openbao(controller_factory, layout, **kw)
    await asyncio.to_thread(seed, layout)
    return ctl


def backend(ctl: RunningController) -> VaultCredentials:
    credentials = ctl.controller.credentials
    assert isinstance(credentials, VaultCredentials)
    return credentials


async def login(layout: VaultLayout, token: str, role: str = "ci-default") -> dict[str, Any]:
    client = hvac.Client(url=layout.bao.url, timeout=10)
    return await asyncio.to_thread(client.auth.jwt.jwt_login, role=role, jwt=token, path=layout.jwt_mount)  # type: ignore[no-any-return]


async def test_job_reads_its_secrets_and_the_token_dies_with_the_job(
    controller_factory: Any, layout: VaultLayout, docker_client: docker.DockerClient
) -> None:
    ctl = await started(controller_factory, layout)
    async with ctl.session.get(f"{ctl.url}/.well-known/openid-configuration") as r:
        assert (await r.json())["jwks_uri"] == f"{ctl.url}/.well-known/jwks.json"
    spec = job_spec(
        secrets=SECRETS,
        commands=[
            'P=$(printf %s db-pa55 word-7c1e4f0a9b | tr -d " ")',
            'test "$(cat /run/secrets/DB_PASSWORD)" = "$P" && echo file-ok',
            'test "$API_KEY" = "$(printf %s api-key-0d9c8b7a6 f5e4d3c | tr -d " ")" && echo env-ok',
            "cat /run/secrets/DB_PASSWORD; echo; echo $API_KEY",
            "test ! -e /run/secrets/API_KEY && echo env-not-on-disk",
            "stat -c '%a %U' /run/secrets/DB_PASSWORD",
            "sleep 2",
        ],
    )
    assert (await ctl.post_webhook(spec))[0] == 202
    running = await ctl.wait_status(spec["id"], {"running"})
    # While it runs: one live token from this mount, and nothing about the secret shows in docker inspect.
    inspect = json.dumps(docker_client.api.inspect_container(running["container_id"]))
    assert DB_PASSWORD not in inspect and API_KEY not in inspect
    (live,) = await asyncio.to_thread(layout.job_tokens)
    assert live["policies"] == ["default", f"t{layout.suffix}-ci-default-read"]
    assert live["meta"]["role"] == "ci-default" and live["meta"]["repository"] == "example/app"
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded", (job, await ctl.logs(spec["id"]))
    log = (await ctl.logs(spec["id"])).decode()
    assert "file-ok" in log and "env-ok" in log and "env-not-on-disk" in log
    assert "600 runner" in log
    assert DB_PASSWORD not in log and API_KEY not in log
    assert log.count("[MASKED]") >= 2
    # Revoked: the accessor the store kept is unknown to the server, and no token of this mount is left.
    stored = await ctl.controller.store.get(spec["id"])
    assert stored is not None and stored.credentials_accessor == live["accessor"]
    assert not await asyncio.to_thread(layout.token_exists, live["accessor"])
    assert await asyncio.to_thread(layout.job_tokens) == []
    # No secret or token in the store, the API or on the host's disk under the data dir.
    assert DB_PASSWORD not in json.dumps(await ctl.job(spec["id"]))
    for f in ctl.config.data_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert DB_PASSWORD.encode() not in data and API_KEY.encode() not in data, f
            assert not TOKEN_PATTERN.search(data), f
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_controller_logs_never_contain_secrets_or_tokens(
    controller_factory: Any, layout: VaultLayout, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    ctl = await started(controller_factory, layout)
    spec = job_spec(secrets=SECRETS, commands=["echo $API_KEY"])
    await ctl.post_webhook(spec)
    assert (await ctl.wait_final(spec["id"]))["status"] == "succeeded"
    text = caplog.text + json.dumps([r.__dict__ for r in caplog.records], default=str)
    assert DB_PASSWORD not in text and API_KEY not in text
    assert not TOKEN_PATTERN.search(text.encode()), TOKEN_PATTERN.search(text.encode())
    assert "eyJ" not in text  # no JWT either


async def test_bound_claims_refuse_another_repository_before_any_container(
    controller_factory: Any, layout: VaultLayout, docker_client: docker.DockerClient
) -> None:
    ctl = await started(controller_factory, layout)
    # The operator binds the role to one repository as well as the pool.
    await asyncio.to_thread(layout.tune_role, bound_claims={"pool": "default", "repository": "example/app"})
    spec = job_spec(repository="attacker/fork", secrets=SECRETS[:1], commands=["cat /run/secrets/DB_PASSWORD"])
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "error"
    assert f"role 'ci-default' at auth/{layout.jwt_mount}" in job["reason"], job["reason"]
    assert "claim" in job["reason"] and "repository" in job["reason"], job["reason"]
    assert "eyJ" not in job["reason"]  # never the JWT
    assert job["container_id"] is None
    assert await asyncio.to_thread(layout.job_tokens) == []
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_another_pools_secret_is_forbidden_by_policy(controller_factory: Any, layout: VaultLayout) -> None:
    ctl = await started(controller_factory, layout)
    spec = job_spec(secrets=[{"path": "ci/other/db", "key": "password", "name": "X"}])
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "error"
    assert job["reason"] == (
        f"credentials: Vault denied reading '{layout.kv_mount}/data/ci/other/db': "
        "permission denied for role 'ci-default' (check its policies)"
    )
    assert OTHER_PASSWORD not in json.dumps(job)
    assert job["container_id"] is None
    assert await asyncio.to_thread(layout.job_tokens) == []  # the token that got this far was revoked too


async def test_repository_scope_reads_own_and_pool_wide_secrets_only(
    controller_factory: Any, layout: VaultLayout
) -> None:
    ctl = await started(controller_factory, layout, setup={"ORCH_SCOPE": "repository"})

    def put() -> None:
        layout.put_kv("ci/default/acme/app/token", {"value": "acme-app-token-8c7d6e"})
        layout.put_kv("ci/default/acme/other/token", {"value": "acme-other-token-1f2e3d"})
        layout.put_kv("ci/default/shared", {"value": "pool-wide-value-9a8b7c"})

    await asyncio.to_thread(put)
    own = job_spec(
        repository="acme/app",
        secrets=[
            {"path": "ci/default/acme/app/token", "key": "value", "name": "OWN"},
            {"path": "ci/default/shared", "key": "value", "name": "SHARED"},
        ],
        commands=["test -s /run/secrets/OWN && test -s /run/secrets/SHARED && echo both"],
    )
    foreign = job_spec(
        repository="acme/other", secrets=[{"path": "ci/default/acme/app/token", "key": "value", "name": "X"}]
    )
    parent = job_spec(repository="acme", secrets=[{"path": "ci/default/acme/app/token", "key": "value", "name": "X"}])
    for spec in (own, foreign, parent):
        await ctl.post_webhook(spec)
    done = await ctl.wait_final(own["id"])
    assert done["status"] == "succeeded", done["reason"]
    assert b"both" in await ctl.logs(own["id"])
    for spec in (foreign, parent):
        job = await ctl.wait_final(spec["id"])
        assert job["status"] == "error", job
        assert "permission denied for role 'ci-default'" in job["reason"]
        assert f"'{layout.kv_mount}/data/ci/default/acme/app/token'" in job["reason"]
        assert job["container_id"] is None
    # The pool-wide layout of ORCH_SCOPE=pool no longer applies: a secret of the pool is not every repository's.
    assert await asyncio.to_thread(layout.job_tokens) == []


async def test_missing_path_and_missing_key(controller_factory: Any, layout: VaultLayout) -> None:
    ctl = await started(controller_factory, layout)
    missing = job_spec(secrets=[{"path": "ci/default/nope", "key": "k", "name": "X"}])
    nokey = job_spec(secrets=[{"path": "ci/default/db", "key": "nope", "name": "X"}])
    await ctl.post_webhook(missing)
    await ctl.post_webhook(nokey)
    j1, j2 = await ctl.wait_final(missing["id"]), await ctl.wait_final(nokey["id"])
    assert j1["status"] == j2["status"] == "error"
    assert f"no secret at '{layout.kv_mount}/data/ci/default/nope'" in j1["reason"]
    assert "has no key 'nope'" in j2["reason"] and "password" in j2["reason"]
    assert DB_PASSWORD not in j2["reason"]


async def test_wrong_audience_is_refused(controller_factory: Any, layout: VaultLayout) -> None:
    ctl = await started(controller_factory, layout, pool={"audience": "not-vault"})
    spec = job_spec(secrets=SECRETS[:1])
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "error" and job["container_id"] is None
    assert "Vault refused the login as role 'ci-default'" in job["reason"]
    assert "aud" in job["reason"], job["reason"]


async def test_expired_and_foreign_jwts_are_refused(controller_factory: Any, layout: VaultLayout) -> None:
    """Tokens the controller never issues, presented to the configured server directly: it must refuse them."""
    ctl = await started(controller_factory, layout)
    issuer = backend(ctl).issuer
    identity = JobIdentity(job_id="j1", repository="example/app", ref="refs/heads/main", sha="0" * 40, pool="default")
    # A fresh one is accepted, so the refusals below are about what was changed.
    assert (await login(layout, issuer.mint(identity, "vault")))["auth"]["client_token"]
    # Expired: minted an hour ago (exp = iat + token_lifetime_s, well past Vault's 150 s leeway).
    expired = issuer.mint(identity, "vault", now=int(time.time()) - 3600)
    with pytest.raises(hvac.exceptions.InvalidRequest, match=r"expired|exp"):
        await login(layout, expired)
    # Signed by a key that is not in the JWKS, but claiming the active key's kid.
    claims = jwt.decode(issuer.mint(identity, "vault"), options={"verify_signature": False})
    rogue = ec.generate_private_key(ec.SECP256R1())
    kid = jwt.get_unverified_header(issuer.mint(identity, "vault"))["kid"]
    forged = jwt.encode(claims, rogue, algorithm="ES256", headers={"kid": kid, "typ": "JWT"})
    with pytest.raises(hvac.exceptions.InvalidRequest, match=r"signature|verif"):
        await login(layout, forged)
    # The same with a kid nobody published.
    with pytest.raises(hvac.exceptions.InvalidRequest):
        await login(layout, jwt.encode(claims, rogue, algorithm="ES256", headers={"kid": "not-published"}))


async def test_token_ttl_is_bounded_by_the_job_timeout(controller_factory: Any, layout: VaultLayout) -> None:
    ctl = await started(controller_factory, layout, setup={"TOKEN_TTL": "24h", "TOKEN_MAX_TTL": "48h"}, ttl_grace_s=30)
    spec = job_spec(secrets=SECRETS[:1], commands=["sleep 3"], timeout_s=45)
    await ctl.post_webhook(spec)
    await ctl.wait_status(spec["id"], {"running"})
    (live,) = await asyncio.to_thread(layout.job_tokens)
    assert 0 < live["ttl"] <= 45 + 30, live["ttl"]
    assert (await ctl.wait_final(spec["id"]))["status"] == "succeeded"


async def test_a_short_role_ttl_is_extended_to_the_job_timeout(
    controller_factory: Any, layout: VaultLayout, caplog: pytest.LogCaptureFixture
) -> None:
    """A token that expired mid-job would take its leases (a database user) with it: the TTL is raised to the job's
    timeout plus grace, as far as the role's max TTL allows, and a token capped below that is logged."""
    ctl = await started(controller_factory, layout, setup={"TOKEN_TTL": "1m", "TOKEN_MAX_TTL": "2h"}, ttl_grace_s=30)
    spec = job_spec(secrets=SECRETS[:1], commands=["sleep 3"], timeout_s=240)
    await ctl.post_webhook(spec)
    await ctl.wait_status(spec["id"], {"running"})
    (live,) = await asyncio.to_thread(layout.job_tokens)
    assert 240 < live["ttl"] <= 240 + 30, live["ttl"]
    assert (await ctl.wait_final(spec["id"]))["status"] == "succeeded"
    assert "expires before the job's timeout" not in caplog.text

    await asyncio.to_thread(layout.tune_role, token_max_ttl=120)
    capped = job_spec(secrets=SECRETS[:1], commands=["sleep 3"], timeout_s=240)
    await ctl.post_webhook(capped)
    await ctl.wait_status(capped["id"], {"running"})
    (live,) = await asyncio.to_thread(layout.job_tokens)
    assert 60 < live["ttl"] <= 120, live["ttl"]
    assert (await ctl.wait_final(capped["id"]))["status"] == "succeeded"
    assert "expires before the job's timeout; raise token_max_ttl on the role" in caplog.text


async def test_role_whose_ttl_cannot_be_shortened_is_an_error(controller_factory: Any, layout: VaultLayout) -> None:
    """Renewal can only extend up to the role's max TTL; here it is the TTL itself and too long for the job."""
    ctl = await started(controller_factory, layout, setup={"TOKEN_TTL": "24h", "TOKEN_MAX_TTL": "24h"})
    await asyncio.to_thread(layout.tune_role, token_period=86400)  # periodic: renew-self resets to the period
    spec = job_spec(secrets=SECRETS[:1], timeout_s=45)
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "error" and job["container_id"] is None
    assert "cannot be shortened" in job["reason"] and "'ci-default'" in job["reason"], job["reason"]
    assert await asyncio.to_thread(layout.job_tokens) == []


@pytest.mark.parametrize("ending", ["timeout", "cancel", "failure"])
async def test_token_is_revoked_however_the_job_ends(controller_factory: Any, layout: VaultLayout, ending: str) -> None:
    ctl = await started(controller_factory, layout)
    commands = {"timeout": ["sleep 600"], "cancel": ["sleep 600"], "failure": ["exit 4"]}[ending]
    spec = job_spec(secrets=SECRETS[:1], commands=commands, timeout_s=2 if ending == "timeout" else 60)
    await ctl.post_webhook(spec)
    if ending == "cancel":
        await ctl.wait_status(spec["id"], {"running"})
        assert len(await asyncio.to_thread(layout.job_tokens)) == 1
        await ctl.api("POST", f"/api/v1/jobs/{spec['id']}/cancel")
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == {"timeout": "timed_out", "cancel": "cancelled", "failure": "failed"}[ending]
    assert await asyncio.to_thread(layout.job_tokens) == []


async def test_num_uses_bounded_role_still_works(controller_factory: Any, layout: VaultLayout) -> None:
    ctl = await started(controller_factory, layout)
    await asyncio.to_thread(layout.tune_role, token_num_uses=3)  # two reads and the revocation
    spec = job_spec(secrets=SECRETS, commands=["echo ok"])
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded", job
    assert await asyncio.to_thread(layout.job_tokens) == []


async def test_key_rotation_new_jobs_log_in_with_the_new_key(controller_factory: Any, layout: VaultLayout) -> None:
    """Vault caches the JWKS it fetched through discovery; a token signed by a key it has not seen makes it
    fetch again, so a job started after rotation logs in, and a token of the retired key still verifies."""
    ctl = await started(controller_factory, layout)
    keys = backend(ctl).issuer._keys
    first = job_spec(secrets=SECRETS[:1], commands=["echo before"])
    await ctl.post_webhook(first)
    assert (await ctl.wait_final(first["id"]))["status"] == "succeeded"
    old_kid = keys.active_kid
    old_token = backend(ctl).issuer.mint(
        JobIdentity(job_id="j", repository="example/app", ref="refs/heads/main", sha="0" * 40, pool="default"),
        "vault",
    )
    await asyncio.to_thread(keys.rotate)
    assert keys.active_kid != old_kid
    second = job_spec(secrets=SECRETS[:1], commands=["echo after"])
    await ctl.post_webhook(second)
    job = await ctl.wait_final(second["id"])
    assert job["status"] == "succeeded", job
    async with ctl.session.get(f"{ctl.url}/.well-known/jwks.json") as r:
        assert {k["kid"] for k in (await r.json())["keys"]} == {old_kid, keys.active_kid}
    assert (await login(layout, old_token))["auth"]["client_token"]  # inside the overlap: still trusted


async def test_revoker_token_is_renewed_and_never_needed_for_normal_jobs(
    controller_factory: Any, layout: VaultLayout, tmp_path: Path
) -> None:
    token_file = tmp_path / "revoker.token"
    token_file.write_text("created once the layout exists\n")  # the controller reads it when it renews
    token_file.chmod(0o600)
    ctl = await started(controller_factory, layout, revoker_token_file=str(token_file))
    revoker = await asyncio.to_thread(layout.create_revoker_token, token_file)
    assert await backend(ctl).renew_revoker() is True
    spec = job_spec(secrets=SECRETS[:1], commands=["echo ok"])
    await ctl.post_webhook(spec)
    assert (await ctl.wait_final(spec["id"]))["status"] == "succeeded"
    assert await asyncio.to_thread(layout.job_tokens) == []
    # The revoker lives on, and can do nothing but revoke by accessor.
    client = layout.bao.client(revoker)
    assert (await asyncio.to_thread(client.auth.token.lookup_self))["data"]["policies"] == [
        "default",
        f"t{layout.suffix}-orchestrator-revoker",
    ]
    with pytest.raises(hvac.exceptions.Forbidden):
        await asyncio.to_thread(
            client.secrets.kv.v2.read_secret_version,
            path="ci/default/db",
            mount_point=layout.kv_mount,
            raise_on_deleted_version=True,
        )
