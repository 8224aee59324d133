"""The audit trail and access control as a user of the API meets them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.app import summarise_refusals
from orchestrator.config import hash_token
from orchestrator.evidence.attestation import verify_envelope
from orchestrator.evidence.audit import verify_file
from orchestrator.evidence.keys import load_public

from conftest import RunningController, job_spec

pytestmark = pytest.mark.docker

SERVER = {"host": "127.0.0.1", "port": 0, "max_body_bytes": 64 * 1024}


def _records(ctl: RunningController) -> list[dict[str, Any]]:
    ctl.controller.auditor.flush()
    path = ctl.config.data_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_audit_trail_covers_a_job_and_verifies(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory(unsafe={"add_capabilities": ["NET_RAW"]})
    spec = job_spec(commands=["echo audited"])
    await ctl.post_webhook(spec)
    await ctl.post_webhook(job_spec(), headers={"webhook-id": "x"})
    await ctl.wait_final(spec["id"])
    await ctl.logs(spec["id"])
    await ctl.api("POST", f"/api/v1/jobs/{spec['id']}/cancel")
    await ctl.api("GET", "/api/v1/jobs", token="wrong")
    ctl.controller.auditor.flush()
    records = _records(ctl)
    actions = [(r["action"], r["outcome"]) for r in records]
    assert ("config.loaded", "ok") in actions
    assert ("config.unsafe_opt_in", "warning") in actions
    assert ("webhook.accepted", "accepted") in actions
    assert ("webhook.rejected", "rejected") in actions
    states = [r["outcome"] for r in records if r["action"] == "job.state" and r["target"] == spec["id"]]
    assert states == ["starting", "running", "succeeded"]
    assert ("api.logs_read", "ok") in actions
    assert ("api.cancel", "refused") in actions
    assert ("auth.failed", "denied") in actions
    accepted = next(r for r in records if r["action"] == "webhook.accepted")
    assert accepted["actor"]["source"] == "test" and accepted["remote"] == "127.0.0.1"
    result = verify_file(
        ctl.config.data_dir / "audit.jsonl", load_public((ctl.config.data_dir / "audit.pub").read_bytes())
    )
    assert result.ok, result.problem
    assert result.records == len(records)
    # the CLI agrees, and catches an edit
    cli = [sys.executable, "-m", "orchestrator.cli", "audit", "verify", str(ctl.config.data_dir / "audit.jsonl")]
    assert subprocess.run(cli, capture_output=True).returncode == 0
    path = ctl.config.data_dir / "audit.jsonl"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace('"ok"', '"denied"', 1) if '"ok"' in lines[3] else lines[3][:-2] + " }"
    tampered = path.with_name("tampered.jsonl")
    tampered.write_text("\n".join(lines) + "\n")
    out = subprocess.run([*cli[:-1], str(tampered), "--pubkey", str(path.with_name("audit.pub"))], capture_output=True)
    assert out.returncode == 1 and b"TAMPERED" in out.stdout + out.stderr


async def test_attestation_is_signed_for_each_finished_job(controller_factory: Any, tmp_path: Path) -> None:
    ctl: RunningController = await controller_factory()
    spec = job_spec(commands=["echo attest-me"])
    await ctl.post_webhook(spec)
    await ctl.wait_final(spec["id"])
    status, envelope = await ctl.api("GET", f"/api/v1/jobs/{spec['id']}/attestation", token=ctl.viewer_token)
    assert status == 200
    status, pem = await ctl.api("GET", "/api/v1/attestation-key", token=ctl.viewer_token)
    assert status == 200
    statement = verify_envelope(envelope, load_public(pem))
    params = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert params["repository"] == spec["repository"] and params["sha"] == spec["sha"]
    log_digest = next(s for s in statement["subject"] if s["name"] == f"log/{spec['id']}")["digest"]["sha256"]
    import hashlib

    assert log_digest == hashlib.sha256(await ctl.logs(spec["id"])).hexdigest()
    env_file, key_file = tmp_path / "env.json", tmp_path / "att.pub"
    env_file.write_text(json.dumps(envelope))
    key_file.write_bytes(pem)
    cli = [sys.executable, "-m", "orchestrator.cli", "attest", "verify", str(env_file), "--pubkey", str(key_file)]
    ok = subprocess.run([*cli, "--expect-sha", spec["sha"]], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*cli, "--expect-sha", "0" * 40], capture_output=True, text=True)
    assert bad.returncode == 1


ROUTES = [
    ("GET", "/api/v1/jobs", "viewer"),
    ("GET", "/api/v1/jobs/{id}", "viewer"),
    ("GET", "/api/v1/jobs/{id}/logs", "viewer"),
    ("GET", "/api/v1/jobs/{id}/attestation", "viewer"),
    ("GET", "/api/v1/attestation-key", "viewer"),
    ("GET", "/metrics", "viewer"),
    ("POST", "/api/v1/jobs/{id}/cancel", "operator"),
    ("GET", "/api/v1/audit/head", "admin"),
]


async def test_every_route_refuses_roles_below_it(controller_factory: Any) -> None:
    admin = "admin-token-for-test"
    ctl: RunningController = await controller_factory()
    tokens = {"viewer": ctl.viewer_token, "operator": ctl.token}
    admin_token = type(ctl.config.api.tokens[0])(name="root", role="admin", sha256=hash_token(admin))
    ctl.controller.api.authenticator.access = ctl.config.api.model_copy(
        update={"tokens": [*ctl.config.api.tokens, admin_token]}
    )
    tokens["admin"] = admin
    spec = job_spec(commands=["sleep 30"])
    await ctl.post_webhook(spec)
    await ctl.wait_status(spec["id"], {"running"})
    rank = ["viewer", "operator", "admin"]
    for method, route, needed in ROUTES:
        path = route.replace("{id}", spec["id"])
        for role in rank:
            allowed = rank.index(role) >= rank.index(needed)
            if allowed and method == "POST":
                continue  # allowed writes are exercised elsewhere (cancel tests)
            status, _ = await ctl.api(method, path, token=tokens[role])
            assert status in ((200, 404) if allowed else (403,)), (method, path, role, status)
        async with ctl.session.request(method, f"{ctl.url}{path}") as r:
            assert r.status == 401, (method, path)
    status, body = await ctl.api("GET", "/api/v1/audit/head", token=admin)
    assert status == 200 and body["head"] and body["next_seq"] > 0
    await ctl.api("POST", f"/api/v1/jobs/{spec['id']}/cancel")


async def test_failed_authentications_are_rate_limited_but_a_valid_token_is_served(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory()
    for _ in range(10):
        assert (await ctl.api("GET", "/api/v1/jobs", token="guess"))[0] == 401
    async with ctl.session.get(f"{ctl.url}/api/v1/jobs", headers={"Authorization": "Bearer guess-11"}) as r:
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    for token in (ctl.token, ctl.viewer_token):  # a guesser at the same address locks nobody out
        assert (await ctl.api("GET", "/api/v1/jobs", token=token))[0] == 200
    records = _records(ctl)
    assert sum(1 for r in records if r["action"] == "auth.failed") == 10
    page = (await ctl.api("GET", "/metrics"))[1].decode()
    assert 'orchestrator_api_auth_failures_total{reason="invalid_token"} 10.0' in page
    assert 'orchestrator_api_auth_failures_total{reason="rate_limited"} 1.0' in page


async def test_metrics_scrapes_without_a_token_are_not_failures(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory()
    for _ in range(30):
        async with ctl.session.get(f"{ctl.url}/metrics") as r:
            assert r.status == 401
    assert (await ctl.api("GET", "/api/v1/jobs", token="guess"))[0] == 401  # not 429: nothing counted so far
    assert not any(r["action"] == "auth.failed" and r["target"] == "/metrics" for r in _records(ctl))
    page = (await ctl.api("GET", "/metrics"))[1].decode()
    assert 'orchestrator_api_auth_failures_total{reason="metrics_scrape_without_token"} 30.0' in page


async def _get(ctl: RunningController, path: str, token: str, forwarded: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    async with ctl.session.get(f"{ctl.url}{path}", headers=headers) as r:
        return r.status


async def test_behind_a_trusted_proxy_limits_follow_the_forwarded_address(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory(settings={"server": {**SERVER, "trusted_proxies": ["127.0.0.1"]}})
    for _ in range(10):
        assert await _get(ctl, "/api/v1/jobs", "guess", "203.0.113.9") == 401
    assert await _get(ctl, "/api/v1/jobs", "guess", "203.0.113.9") == 429
    assert await _get(ctl, "/api/v1/jobs", "guess", "198.51.100.4") == 401  # another client of the same proxy
    assert await _get(ctl, "/api/v1/jobs", "guess", "spoofed, 203.0.113.9") == 429  # left of the proxy: the client
    failed = [r for r in _records(ctl) if r["action"] == "auth.failed"]
    assert {r["remote"] for r in failed} == {"203.0.113.9", "198.51.100.4"}


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory()  # no trusted proxies
    for n in range(10):
        assert await _get(ctl, "/api/v1/jobs", "guess", f"203.0.113.{n}") == 401
    assert await _get(ctl, "/api/v1/jobs", "guess", "198.51.100.77") == 429  # its own address is what counts
    assert {r["remote"] for r in _records(ctl) if r["action"] == "auth.failed"} == {"127.0.0.1"}


async def test_rejected_webhooks_beyond_an_address_allowance_become_one_summary(controller_factory: Any) -> None:
    """One client sending refused deliveries writes a bounded number of records, however many it sends; the
    metrics still count each one."""
    ctl: RunningController = await controller_factory()
    spec = job_spec()
    headers = {"webhook-id": "msg_x", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"}
    for _ in range(300):
        status, _ = await ctl.post_webhook(spec, headers=headers)
        assert status == 401
    records = _records(ctl)
    assert sum(1 for r in records if r["action"] == "webhook.rejected") == 10
    summarise_refusals(ctl.controller, final=True)
    (summary,) = [r for r in _records(ctl) if r["action"] == "webhook.rejected_summary"]
    details = summary["details"]
    assert details["suppressed"] == 290 and details["addresses"] == 1
    assert details["top"] == [{"remote": "127.0.0.1", "count": 290, "reasons": {"stale_timestamp": 290}}]
    assert details["first"] <= details["last"]
    page = (await ctl.api("GET", "/metrics"))[1].decode()
    assert 'orchestrator_webhook_rejections_total{reason="stale_timestamp"} 300.0' in page
    ctl.controller.auditor.flush()
    result = verify_file(
        ctl.config.data_dir / "audit.jsonl", load_public((ctl.config.data_dir / "audit.pub").read_bytes())
    )
    assert result.ok, result.problem
