"""A controller that a real OpenBao (tests/openbao.py) trusts as its OIDC issuer, configured the way an operator
would with config/vault/setup-vault.sh: shared by the credentials integration tests, the crash test and the soak,
so all exercise the same wiring."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import RunningController
from openbao import VaultLayout
from ports import free_port

DB_PASSWORD = "db-pa55word-7c1e4f0a9b"
API_KEY = "api-key-0d9c8b7a6f5e4d3c"
OTHER_PASSWORD = "other-pool-pa55word-e4d5"


def seed(layout: VaultLayout) -> None:
    """The default pool's secrets (readable by its policy) and another pool's (not readable)."""
    layout.put_kv("ci/default/db", {"password": DB_PASSWORD, "user": "ci"})
    layout.put_kv("ci/default/api", {"key": API_KEY})
    layout.put_kv("ci/other/db", {"password": OTHER_PASSWORD})


async def start_with_openbao(
    controller_factory: Any,
    layout: VaultLayout,
    *,
    setup: dict[str, str] | None = None,
    top: dict[str, Any] | None = None,
    pool: dict[str, Any] | None = None,
    **vault_cfg: Any,
) -> RunningController:
    """A controller on a reserved port, then setup-vault.sh pointed at its discovery document. ``setup`` adds
    environment for the script (TOKEN_TTL, ORCH_SCOPE, ...), ``vault_cfg`` the controller's [credentials.vault],
    ``top`` top-level settings, ``pool`` pool fields."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    settings = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": public, "max_body_bytes": 65536},
        "credentials": {"vault": {**layout.controller_settings(), "retry_budget_s": 1.0, **vault_cfg}},
        **(top or {}),
    }
    ctl: RunningController = await controller_factory(settings=settings, **(pool or {}))
    await asyncio.to_thread(layout.configure, public, **(setup or {}))
    return ctl
