"""A Vault double seeded with the CI secrets, and a controller it trusts as its OIDC issuer: shared by the Vault
integration tests and the soak, so both exercise the same wiring."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from conftest import RunningController
from ports import free_port

sys.path.insert(0, str(Path(__file__).parent.parent))
from vault_double import VaultDouble

CI_ROLE: dict[str, Any] = {
    "bound_audiences": ["vault"],
    "bound_claims": {"pool": "default", "repository": "example/app"},
    "token_policies": ["ci-default-read"],
    "token_ttl": 600,
}


async def started_vault(*, db_password: str, api_key: str, other_password: str) -> VaultDouble:
    """A running double holding the default pool's secrets (readable by `ci-default-read`) and another pool's."""
    double = VaultDouble()
    double.clock_skew_leeway = 0
    await double.start()
    double.put_policy("ci-default-read", {"secret/data/ci/default/*": ["read"]})
    double.put_kv("secret", "ci/default/db", {"password": db_password, "user": "ci"})
    double.put_kv("secret", "ci/default/api", {"key": api_key})
    double.put_kv("secret", "ci/other/db", {"password": other_password})
    return double


async def start_with_vault(
    controller_factory: Any,
    vault: VaultDouble,
    *,
    role: dict[str, Any] | None = None,
    top: dict[str, Any] | None = None,
    pool: dict[str, Any] | None = None,
    **vault_cfg: Any,
) -> RunningController:
    """A controller whose JWTs the double's `ci-default` role accepts. ``role`` overrides fields of `CI_ROLE`,
    ``vault_cfg`` the controller's [credentials.vault], ``top`` adds top-level settings, ``pool`` pool fields."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    vault.configure_jwt("jwt", oidc_discovery_url=public, bound_issuer=public)
    vault.add_role("jwt", "ci-default", **{**CI_ROLE, **(role or {})})
    settings = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": public, "max_body_bytes": 65536},
        "credentials": {"vault": {"address": vault.url, "retry_budget_s": 1.0, **vault_cfg}},
        **(top or {}),
    }
    return await controller_factory(settings=settings, **(pool or {}))  # type: ignore[no-any-return]
