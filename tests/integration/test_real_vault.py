"""Opt-in: the same credentials flow against a REAL Vault. Runs only when VAULT_ADDR and VAULT_TOKEN are set
(e.g. `vault server -dev` on this machine). Vault must reach the controller's discovery URL: by default the test
serves it on 127.0.0.1; set ORCHESTRATOR_TEST_PUBLIC_HOST when Vault runs elsewhere.

It configures Vault with config/vault/setup-vault.sh on fresh, uniquely named mounts and removes them after."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest

from conftest import RunningController, job_spec
from ports import free_port

pytestmark = [
    pytest.mark.docker,
    pytest.mark.vault_real,
    pytest.mark.skipif(
        not (os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN")),
        reason="set VAULT_ADDR and VAULT_TOKEN to run against a real Vault",
    ),
]

SCRIPT = Path(__file__).parent.parent.parent / "config" / "vault" / "setup-vault.sh"


async def test_real_vault_end_to_end(controller_factory: Any, docker_client: Any) -> None:
    addr, root = os.environ["VAULT_ADDR"], os.environ["VAULT_TOKEN"]
    suffix = secrets.token_hex(4)
    jwt_mount, kv_mount = f"jwt-orch-test-{suffix}", f"kv-orch-test-{suffix}"
    port = free_port()
    host = os.environ.get("ORCHESTRATOR_TEST_PUBLIC_HOST", "127.0.0.1")
    public = f"http://{host}:{port}"
    ctl: RunningController = await controller_factory(
        settings={
            "server": {"host": "127.0.0.1" if host == "127.0.0.1" else "0.0.0.0", "port": port, "public_url": public},
            "credentials": {"vault": {"address": addr, "auth_mount": jwt_mount, "kv_mount": kv_mount}},
        }
    )
    admin = hvac.Client(url=addr, token=root)
    env = {
        **os.environ,
        "ORCH_DISCOVERY_URL": public,
        "ORCH_POOLS": "default",
        "JWT_MOUNT": jwt_mount,
        "KV_MOUNT": kv_mount,
        "TOKEN_TTL": "10m",
    }
    try:
        setup = await asyncio.to_thread(
            subprocess.run, ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
        )
        assert setup.returncode == 0, setup.stderr[-2000:]
        value = f"real-vault-{secrets.token_hex(8)}"
        await asyncio.to_thread(
            admin.secrets.kv.v2.create_or_update_secret,
            path="ci/default/app",
            secret={"token": value},
            mount_point=kv_mount,
        )
        spec = job_spec(
            secrets=[{"path": "ci/default/app", "key": "token", "name": "APP_TOKEN"}],
            commands=["test -s /run/secrets/APP_TOKEN && echo got-it", "cat /run/secrets/APP_TOKEN"],
        )
        await ctl.post_webhook(spec)
        job = await ctl.wait_final(spec["id"], timeout=120)
        assert job["status"] == "succeeded", job
        log = await ctl.logs(spec["id"])
        assert b"got-it" in log and value.encode() not in log
        stored = await ctl.controller.store.get(spec["id"])
        assert stored is not None and stored.credentials_accessor
        with pytest.raises(hvac.exceptions.VaultError):
            await asyncio.to_thread(admin.auth.token.lookup_accessor, stored.credentials_accessor)
        other = job_spec(repository="x/y", pool="default", secrets=[{"path": "ci/other/x", "key": "k", "name": "K"}])
        await ctl.post_webhook(other)
        assert (await ctl.wait_final(other["id"]))["status"] == "error"
    finally:
        for mount in (jwt_mount,):
            await asyncio.to_thread(admin.sys.disable_auth_method, path=mount)
        await asyncio.to_thread(admin.sys.disable_secrets_engine, path=kv_mount)
