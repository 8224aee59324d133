"""The console tests' controller: static tokens of several roles, `[api.oidc]` against the loopback identity
provider (tests/oidc_provider.py) with a group per role, a plain pool and a gated one, on the in-memory runtime.
(Not a conftest.py: tests/conftest.py is imported as `conftest`, which a second one would shadow.)"""

from __future__ import annotations

from typing import Any

from orchestrator.config import hash_token

from conftest import TEST_IMAGE, RunningController
from oidc_provider import OidcProvider

TOKENS = {
    "ops": "operator",
    "dash": "viewer",
    "boss": "admin",
    "app-viewer": "viewer",
}
USERS: dict[str, dict[str, Any]] = {
    "alice": {"sub": "u-alice", "email": "alice@example.com", "email_verified": True, "groups": ["ci-approvers"],
              "preferred_username": "alice"},
    "bob": {"sub": "u-bob", "email": "bob@example.com", "email_verified": True, "groups": ["ci-viewers"],
            "preferred_username": "bob"},
}  # fmt: skip


def token_of(name: str) -> str:
    """The secret of static token `name` (made up per name: the tests type it into the login form)."""
    return f"tok-{name}-0123456789abcdef"


async def start_console(fake_controller_factory: Any, idp: OidcProvider, **pool_settings: Any) -> RunningController:
    """alice approves and operates (group ci-approvers), bob only views; the pool "gated" needs an approval."""
    tokens: list[dict[str, Any]] = [
        {"name": name, "role": role, "sha256": hash_token(token_of(name))} for name, role in TOKENS.items()
    ]
    tokens[-1]["repositories"] = ["org/app*"]  # app-viewer sees only org/app's jobs
    oidc = {
        "issuer": idp.issuer,
        "audience": idp.audience,
        "grants": [
            {"group": "ci-approvers", "role": "approver"},
            {"group": "ci-approvers", "role": "operator"},
            {"group": "ci-approvers", "role": "auditor"},
            {"group": "ci-viewers", "role": "viewer"},
        ],
    }
    pool = {"image": TEST_IMAGE, "memory": "128m", "pids": 64, "max_concurrent": 4, **pool_settings}
    settings = {
        "api": {"tokens": tokens, "oidc": oidc},
        "pools": {"default": pool, "gated": {**pool, "requires_approval": True}},
    }
    ctl: RunningController = await fake_controller_factory(settings=settings)
    return ctl
