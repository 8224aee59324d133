"""Short-lived Vault credentials end to end: the controller's JWT is verified by the Vault double against the
controller's real JWKS endpoint; the job reads its secret from a tmpfs file; the token dies with the job."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest
from vault_controller import start_with_vault, started_vault

from conftest import job_spec, managed_containers

sys.path.insert(0, str(Path(__file__).parent.parent))
from vault_double import VaultDouble

pytestmark = pytest.mark.docker

DB_PASSWORD = "db-pa55word-7c1e4f0a9b"
API_KEY = "api-key-0d9c8b7a6f5e4d3c"


@pytest.fixture
async def vault() -> AsyncIterator[VaultDouble]:
    double = await started_vault(db_password=DB_PASSWORD, api_key=API_KEY, other_password="other-pool-password")
    double.put_policy("orchestrator-revoker", {"auth/token/revoke-accessor": ["update"]})
    yield double
    await double.stop()


SECRETS = [
    {"path": "ci/default/db", "key": "password", "name": "DB_PASSWORD"},
    {"path": "ci/default/api", "key": "key", "name": "API_KEY", "deliver": "env"},
]


async def test_job_reads_its_secrets_and_the_token_dies_with_the_job(
    controller_factory: Any, vault: VaultDouble, docker_client: docker.DockerClient
) -> None:
    ctl = await start_with_vault(controller_factory, vault)
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
    # While it runs: the token is live and nothing about the secret shows in docker inspect.
    inspect = json.dumps(docker_client.api.inspect_container(running["container_id"]))
    assert DB_PASSWORD not in inspect and API_KEY not in inspect
    assert len(vault.live_tokens()) == 1
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded", (job, await ctl.logs(spec["id"]))
    log = (await ctl.logs(spec["id"])).decode()
    assert "file-ok" in log and "env-ok" in log and "env-not-on-disk" in log
    assert "600 runner" in log
    assert DB_PASSWORD not in log and API_KEY not in log
    assert log.count("[MASKED]") >= 2
    # The token is revoked: the double reports it dead; the store kept only its accessor.
    assert vault.live_tokens() == []
    stored = await ctl.controller.store.get(spec["id"])
    assert stored is not None and stored.credentials_accessor
    token = vault.token_by_accessor(stored.credentials_accessor)
    assert token is not None and token.revoked
    # No secret in the store, the API or on the host's disk under the data dir.
    assert DB_PASSWORD not in json.dumps(await ctl.job(spec["id"]))
    for f in ctl.config.data_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert DB_PASSWORD.encode() not in data and API_KEY.encode() not in data, f
            assert token.id.encode() not in data, f
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_controller_logs_never_contain_secrets_or_tokens(
    controller_factory: Any, vault: VaultDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    ctl = await start_with_vault(controller_factory, vault)
    spec = job_spec(secrets=SECRETS, commands=["echo $API_KEY"])
    await ctl.post_webhook(spec)
    await ctl.wait_final(spec["id"])
    text = caplog.text + json.dumps([r.__dict__ for r in caplog.records], default=str)
    assert DB_PASSWORD not in text and API_KEY not in text
    for tok in vault._tokens.values():
        assert tok.id not in text
    assert "hvs." not in text


async def test_other_repository_is_refused_by_bound_claims(
    controller_factory: Any, vault: VaultDouble, docker_client: docker.DockerClient
) -> None:
    ctl = await start_with_vault(controller_factory, vault)
    spec = job_spec(repository="attacker/fork", secrets=SECRETS[:1], commands=["cat /run/secrets/DB_PASSWORD"])
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "error"
    assert "role 'ci-default'" in job["reason"] and "error validating claims" in job["reason"]
    assert "eyJ" not in job["reason"]  # never the JWT
    assert job["container_id"] is None
    assert vault.live_tokens() == []
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_other_pool_path_is_forbidden_by_policy(controller_factory: Any, vault: VaultDouble) -> None:
    ctl = await start_with_vault(controller_factory, vault)
    spec = job_spec(secrets=[{"path": "ci/other/db", "key": "password", "name": "X"}])
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "error"
    assert "permission denied" in job["reason"] and "ci/other/db" in job["reason"]
    assert job["container_id"] is None
    assert vault.live_tokens() == []  # the token that got this far was revoked too


async def test_missing_path_and_missing_key(controller_factory: Any, vault: VaultDouble) -> None:
    ctl = await start_with_vault(controller_factory, vault)
    missing = job_spec(secrets=[{"path": "ci/default/nope", "key": "k", "name": "X"}])
    nokey = job_spec(secrets=[{"path": "ci/default/db", "key": "nope", "name": "X"}])
    await ctl.post_webhook(missing)
    await ctl.post_webhook(nokey)
    j1, j2 = await ctl.wait_final(missing["id"]), await ctl.wait_final(nokey["id"])
    assert j1["status"] == j2["status"] == "error"
    assert "no secret at 'secret/data/ci/default/nope'" in j1["reason"]
    assert "has no key 'nope'" in j2["reason"] and "password" in j2["reason"]
    assert DB_PASSWORD not in j2["reason"]


async def test_expired_jwt_is_refused(controller_factory: Any, vault: VaultDouble) -> None:
    ctl = await start_with_vault(controller_factory, vault)
    vault.clock = lambda: __import__("time").time() + 3600  # Vault's clock is an hour ahead: the JWT is stale
    spec = job_spec(secrets=SECRETS[:1])
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "error"
    assert "token is expired" in job["reason"]
    assert job["container_id"] is None


async def test_vault_down_fails_closed(
    controller_factory: Any, vault: VaultDouble, docker_client: docker.DockerClient
) -> None:
    ctl = await start_with_vault(controller_factory, vault)
    vault.down = True
    sealed = job_spec(secrets=SECRETS[:1])
    plain = job_spec(commands=["echo no secrets needed"])
    await ctl.post_webhook(sealed)
    await ctl.post_webhook(plain)
    job = await ctl.wait_final(sealed["id"])
    assert job["status"] == "error" and "unavailable after retrying" in job["reason"]
    assert job["container_id"] is None
    assert (await ctl.wait_final(plain["id"]))["status"] == "succeeded"
    await vault.stop()  # unreachable, not just sealed
    unreachable = job_spec(secrets=SECRETS[:1])
    await ctl.post_webhook(unreachable)
    job = await ctl.wait_final(unreachable["id"])
    assert job["status"] == "error" and "unavailable" in job["reason"]
    assert managed_containers(docker_client, ctl.controller_id) == []


@pytest.mark.parametrize("ending", ["timeout", "cancel", "failure"])
async def test_token_is_revoked_however_the_job_ends(controller_factory: Any, vault: VaultDouble, ending: str) -> None:
    ctl = await start_with_vault(controller_factory, vault)
    commands = {"timeout": ["sleep 600"], "cancel": ["sleep 600"], "failure": ["exit 4"]}[ending]
    spec = job_spec(secrets=SECRETS[:1], commands=commands, timeout_s=2 if ending == "timeout" else 60)
    await ctl.post_webhook(spec)
    if ending == "cancel":
        await ctl.wait_status(spec["id"], {"running"})
        assert len(vault.live_tokens()) == 1
        await ctl.api("POST", f"/api/v1/jobs/{spec['id']}/cancel")
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == {"timeout": "timed_out", "cancel": "cancelled", "failure": "failed"}[ending]
    assert vault.live_tokens() == []


async def test_token_ttl_is_bounded_by_the_job_timeout(controller_factory: Any, vault: VaultDouble) -> None:
    ctl = await start_with_vault(controller_factory, vault, role={"token_ttl": 86400}, ttl_grace_s=30)
    spec = job_spec(secrets=SECRETS[:1], commands=["sleep 3"], timeout_s=45)
    await ctl.post_webhook(spec)
    await ctl.wait_status(spec["id"], {"running"})
    (token,) = vault.live_tokens()
    assert token.ttl(vault.clock()) <= 45 + 30
    await ctl.wait_final(spec["id"])


async def test_num_uses_bounded_role_still_works(controller_factory: Any, vault: VaultDouble) -> None:
    ctl = await start_with_vault(controller_factory, vault, role={"token_num_uses": 3})
    spec = job_spec(secrets=SECRETS, commands=["echo ok"])
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded", job
    assert vault.live_tokens() == []


async def test_dynamic_secret_lease_is_revoked_with_the_token(controller_factory: Any, vault: VaultDouble) -> None:
    vault.put_policy("ci-default-read", {"secret/data/ci/default/*": ["read"], "database/creds/ci": ["read"]})
    vault.put_dynamic("database/creds/ci", {"username": "v-ci-123", "password": "dyn-pass-5a4b3c2d1e"})
    ctl = await start_with_vault(controller_factory, vault)
    spec = job_spec(
        secrets=[{"path": "database/creds/ci", "key": "password", "name": "DB", "engine": "generic"}],
        commands=["test -s /run/secrets/DB && echo got-it", "cat /run/secrets/DB"],
    )
    await ctl.post_webhook(spec)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded", job
    log = await ctl.logs(spec["id"])
    assert b"got-it" in log and b"dyn-pass-5a4b3c2d1e" not in log
    assert vault.live_leases() == []
    await asyncio.sleep(0)


async def test_revoker_token_is_renewed_and_never_needed_for_normal_jobs(
    controller_factory: Any, vault: VaultDouble, tmp_path: Path
) -> None:
    revoker = vault.create_token(policies=["orchestrator-revoker"], ttl=0, period=600)
    token_file = tmp_path / "revoker.token"
    token_file.write_text(revoker.id + "\n")
    token_file.chmod(0o600)
    ctl = await start_with_vault(controller_factory, vault, revoker_token_file=str(token_file))
    backend = ctl.controller.credentials
    assert await backend.renew_revoker() is True  # type: ignore[union-attr]
    spec = job_spec(secrets=SECRETS[:1], commands=["echo ok"])
    await ctl.post_webhook(spec)
    assert (await ctl.wait_final(spec["id"]))["status"] == "succeeded"
    assert [t.id for t in vault.live_tokens()] == [revoker.id]
