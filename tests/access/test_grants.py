"""Grants and scopes (orchestrator/access/grants.py) and static tokens with expiry and last use
(orchestrator/access/tokens.py). Pure, or a tmp dir."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.access.grants import Grant, Principal
from orchestrator.access.tokens import TokenUsage, match_token, read_usage, report
from orchestrator.api.auth import Authenticator, AuthRefused
from orchestrator.config import ApiConfig, ApiToken, hash_token


def p(*grants: Grant) -> Principal:
    return Principal("someone", grants)


def test_a_pool_scoped_operator_operates_there_only() -> None:
    gpu_ops = p(Grant("operator", ("gpu",)))
    assert gpu_ops.may("operator", "gpu", "any/repo") and gpu_ops.may("viewer", "gpu", "any/repo")
    assert not gpu_ops.may("operator", "default", "any/repo") and not gpu_ops.may("viewer", "default", "x/y")
    assert gpu_ops.holds("operator") and not gpu_ops.anywhere("operator")


def test_repository_globs_are_case_sensitive_fnmatch() -> None:
    app_viewer = p(Grant("viewer", None, ("org/app*",)))
    assert app_viewer.may("viewer", "default", "org/app") and app_viewer.may("viewer", "gpu", "org/app-web")
    assert not app_viewer.may("viewer", "default", "org/other") and not app_viewer.may("viewer", "default", "Org/app")
    assert not app_viewer.may("operator", "default", "org/app")


def test_pools_and_repositories_together_both_must_match() -> None:
    both = p(Grant("operator", ("gpu",), ("org/*",)))
    assert both.may("operator", "gpu", "org/x")
    assert not both.may("operator", "default", "org/x") and not both.may("operator", "gpu", "evil/x")


def test_several_grants_add_up() -> None:
    mixed = p(Grant("viewer"), Grant("operator", ("gpu",)), Grant("approver", None, ("org/app",)))
    assert mixed.may("viewer", "default", "x/y") and mixed.anywhere("viewer")
    assert mixed.may("operator", "gpu", "x/y") and not mixed.may("operator", "default", "x/y")
    assert mixed.may("approver", "default", "org/app") and not mixed.may("approver", "default", "org/other")
    assert mixed.role == "viewer+operator+approver"


def test_pools_for_lists_the_pools_a_role_reaches() -> None:
    assert p(Grant("viewer", ("b", "zz"))).pools_for("viewer", ["a", "b", "c"]) == ["b", "zz"]
    assert p(Grant("viewer", ("b",)), Grant("auditor")).pools_for("viewer", ["a", "b"]) is None
    assert p(Grant("operator", ("b",))).pools_for("approver", ["a", "b"]) == []


def test_aliases_for_the_self_approval_check() -> None:
    alice = Principal("alice@example.com", (), kind="oidc", aliases=frozenset({"alice-gh", "sub-1"}))
    assert alice.is_one_of(["Alice-GH"]) and alice.is_one_of([None, "ALICE@example.com"])
    assert not alice.is_one_of([None, "bob"])


def token(name: str = "ci", **fields: object) -> ApiToken:
    return ApiToken.model_validate({"name": name, "role": "operator", "sha256": hash_token(name + "-secret"), **fields})


def test_a_token_carries_its_scope_and_expiry() -> None:
    t = token(pools=["gpu"], repositories=["org/*"], expires="2027-01-01T00:00:00Z")
    matched = match_token("ci-secret", [t], now=datetime(2026, 12, 31, tzinfo=UTC).timestamp())
    assert matched is not None and not matched.expired
    assert matched.principal.grants == (Grant("operator", ("gpu",), ("org/*",)),)
    later = match_token("ci-secret", [t], now=datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    assert later is not None and later.expired
    assert match_token("other", [t], now=0) is None


def test_token_config_refuses_a_naive_expiry_and_empty_scopes() -> None:
    with pytest.raises(ValidationError, match="UTC offset"):
        token(expires=datetime(2027, 1, 1))
    with pytest.raises(ValidationError):
        token(pools=[])
    with pytest.raises(ValidationError):
        token(role="root")


async def test_an_expired_token_is_refused_and_says_so() -> None:
    access = ApiConfig(tokens=[token(expires="2020-01-01T00:00:00Z"), token("live")])
    auth = Authenticator(access)
    refusal = await auth.authenticate("Bearer ci-secret")
    assert isinstance(refusal, AuthRefused) and refusal.reason == "expired_token" and "2020-01-01" in refusal.message
    ok = await auth.authenticate("Bearer live-secret")
    assert isinstance(ok, Principal) and ok.name == "live"
    missing = await auth.authenticate(None)
    assert isinstance(missing, AuthRefused) and missing.reason == "missing_token"


async def test_last_use_is_recorded_and_survives_a_restart(tmp_path: Path) -> None:
    now = [1000.0]
    usage = TokenUsage(tmp_path, flush_s=60, clock=lambda: now[0])
    seen: list[tuple[str, list[int]]] = []
    auth = Authenticator(ApiConfig(tokens=[token("live")]), usage=usage, on_token_use=lambda n, h: seen.append((n, h)))
    assert isinstance(await auth.authenticate("Bearer live-secret"), Principal)
    assert seen == [("live", [0] * 24)]  # its uses per UTC hour before this one (for the off-hours alert)
    assert usage.last_used("live") == 1000.0
    assert not (tmp_path / "token-usage.json").exists()  # written at most once a minute
    now[0] = 1061.0
    await auth.authenticate("Bearer live-secret")
    assert read_usage(tmp_path / "token-usage.json") == {"live": 1061.0}
    now[0] = 1070.0
    await auth.authenticate("Bearer live-secret")
    usage.flush()
    assert TokenUsage(tmp_path).last_used("live") == 1070.0
    assert TokenUsage(tmp_path).used("live")[0] == 3  # 1000-1070 s after the epoch: hour 0 UTC, three uses
    assert (tmp_path / "token-usage.json").stat().st_mode & 0o777 == 0o600


def test_an_unreadable_usage_file_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "token-usage.json").write_text("{not json")
    assert read_usage(tmp_path / "token-usage.json") == {}
    (tmp_path / "token-usage.json").write_text(json.dumps({"last_used": {"a": "x", "b": 5}}))
    assert read_usage(tmp_path / "token-usage.json") == {"b": 5.0}


def test_the_report_flags_what_to_act_on() -> None:
    day = 86400.0
    now = datetime(2026, 12, 7, tzinfo=UTC).timestamp()
    tokens = [
        token("fresh"),
        token("stale"),
        token("never"),
        token("gone", expires="2026-12-01T00:00:00Z"),
        token("soon", expires="2026-12-10T00:00:00Z"),
        token("scoped", pools=["gpu"], repositories=["org/*"]),
    ]
    usage = {"fresh": now - day, "stale": now - 45 * day, "gone": now - day, "soon": now - day, "scoped": now}
    rows = {r.name: r for r in report(tokens, usage, now=now, unused_days=30)}
    assert {n: r.status for n, r in rows.items()} == {
        "fresh": "ok", "stale": "unused for 45 days", "never": "never used", "gone": "expired",
        "soon": "expires soon", "scoped": "ok",
    }  # fmt: skip
    assert rows["scoped"].scope == "pools gpu; repositories org/*" and rows["fresh"].scope == "everywhere"
    assert rows["never"].last_used == "never" and rows["gone"].expires == "2026-12-01T00:00:00Z"
