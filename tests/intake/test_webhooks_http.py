"""Webhook intake over real HTTP on 127.0.0.1: every refusal is a clear 4xx and leaves no job and no container.
Refusals need no Docker: those controllers run on the in-memory runtime (`fake_controller_factory`)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from orchestrator.intake.signatures import sign

from conftest import RunningController, job_spec


async def _no_trace(ctl: RunningController, job_id: str) -> None:
    status, _ = await ctl.api("GET", f"/api/v1/jobs/{job_id}")
    assert status == 404
    status, body = await ctl.api("GET", "/api/v1/jobs")
    assert body["jobs"] == []
    assert [call for call in ctl.controller.engine.calls if call[0] == "create"] == []  # type: ignore[attr-defined]


async def test_bad_signature_is_401_and_creates_nothing(fake_controller_factory: Any) -> None:
    ctl = await fake_controller_factory()
    spec = job_spec()
    body = json.dumps(spec).encode()
    headers = sign("standard-webhooks", b"wrong-key-wrong-key-wrong", body, msg_id="msg_1", timestamp=int(time.time()))
    status, resp = await ctl.post_webhook(body, headers=headers)
    assert status == 401 and resp["reason"] == "bad_signature"
    await _no_trace(ctl, spec["id"])


async def test_missing_signature_is_401(fake_controller_factory: Any) -> None:
    ctl = await fake_controller_factory()
    spec = job_spec()
    status, resp = await ctl.post_webhook(json.dumps(spec).encode(), headers={"Content-Type": "application/json"})
    assert status == 401
    assert (resp["reason"], resp["error"]) == ("missing_signature", "missing webhook-signature header")
    await _no_trace(ctl, spec["id"])


async def test_tampered_body_is_401(fake_controller_factory: Any) -> None:
    ctl = await fake_controller_factory()
    spec = job_spec()
    body = json.dumps(spec).encode()
    headers = sign("standard-webhooks", ctl.webhook_secret, body, msg_id="msg_2", timestamp=int(time.time()))
    tampered = body.replace(b"echo hello", b"echo pwned")
    status, _ = await ctl.post_webhook(tampered, headers=headers)
    assert status == 401
    await _no_trace(ctl, spec["id"])


@pytest.mark.parametrize("skew", [-3600, -301, 301, 3600])
async def test_stale_timestamp_is_401(fake_controller_factory: Any, skew: int) -> None:
    ctl = await fake_controller_factory()
    spec = job_spec()
    status, resp = await ctl.post_webhook(spec, timestamp=int(time.time()) + skew)
    assert status == 401 and resp["reason"] == "stale_timestamp"
    await _no_trace(ctl, spec["id"])


@pytest.mark.docker
async def test_replayed_delivery_runs_once(controller_factory: Any, docker_client: Any) -> None:
    ctl = await controller_factory()
    spec = job_spec(commands=["echo once"])
    body = json.dumps(spec).encode()
    headers = sign("standard-webhooks", ctl.webhook_secret, body, msg_id="msg_replay", timestamp=int(time.time()))
    first = await ctl.post_webhook(body, headers=headers)
    replays = await asyncio.gather(*(ctl.post_webhook(body, headers=headers) for _ in range(5)))
    assert first[0] == 202
    assert all(status == 200 and resp["duplicate"] for status, resp in replays)
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded" and job["attempt"] == 1
    assert (await ctl.logs(spec["id"])).count(b"\nonce\n") == 1


async def test_oversized_body_is_413_without_reading_it(fake_controller_factory: Any) -> None:
    ctl = await fake_controller_factory()
    cap = ctl.config.server.max_body_bytes
    big = b'{"pad": "' + b"x" * (cap + 10) + b'"}'
    status, resp = await ctl.post_webhook(big, headers={"Content-Type": "application/json"})
    assert status == 413 and resp["reason"] == "body_too_large"

    # A chunked body that never declares its size is cut off at the cap too.
    async def gen() -> Any:
        for _ in range(1000):
            yield b"y" * 4096

    async with ctl.session.post(f"{ctl.url}/webhooks/test", data=gen()) as r:
        assert r.status == 413
    await _no_trace(ctl, "none")


async def test_oversized_declared_length_is_refused_before_the_body_arrives(fake_controller_factory: Any) -> None:
    ctl = await fake_controller_factory()
    host, port = ctl.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /webhooks/test HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1073741824\r\n\r\n{"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    assert b"413" in status_line
    writer.close()


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[" * 30_000 + b"]" * 30_000, 400, "JSON"),
        (b'"a string"', 422, "JSON object"),
        (json.dumps({"id": "x"}).encode(), 422, "pool"),
        (json.dumps(job_spec("bad id!")).encode(), 422, "id"),
        (json.dumps(job_spec(commands=[])).encode(), 422, "commands"),
        (json.dumps(job_spec(version=2)).encode(), 422, "version"),
        (json.dumps(job_spec(pool="nope")).encode(), 422, "unknown pool"),
        (json.dumps(job_spec(timeout_s=100_000)).encode(), 422, "max_timeout_s"),
        (
            json.dumps(job_spec(secrets=[{"path": "ci/x", "key": "k", "name": "TOKEN"}])).encode(),
            422,
            "no credentials backend",
        ),
        ("\udcff".encode("utf-8", "surrogatepass"), 400, "JSON"),
    ],
)
async def test_malformed_bodies_are_refused_with_the_field(
    fake_controller_factory: Any, body: bytes, status: int, needle: str
) -> None:
    ctl = await fake_controller_factory()
    got, resp = await ctl.post_webhook(body)
    assert got == status, resp
    assert needle in json.dumps(resp)
    await _no_trace(ctl, "none")


async def test_unknown_source_is_404(fake_controller_factory: Any) -> None:
    ctl = await fake_controller_factory()
    status, resp = await ctl.post_webhook(job_spec(), source="nope")
    assert status == 404 and "nope" in resp["error"]


async def test_api_requires_a_valid_token(fake_controller_factory: Any) -> None:
    ctl = await fake_controller_factory()
    async with ctl.session.get(f"{ctl.url}/api/v1/jobs") as r:
        assert r.status == 401 and "Bearer" in r.headers["WWW-Authenticate"]
    status, _ = await ctl.api("GET", "/api/v1/jobs", token="not-a-token")
    assert status == 401
    status, body = await ctl.api("GET", "/api/v1/jobs", token=ctl.viewer_token)
    assert status == 200 and body == {"jobs": []}


@pytest.mark.docker
async def test_health_and_readiness(controller_factory: Any) -> None:
    ctl = await controller_factory()
    async with ctl.session.get(f"{ctl.url}/healthz") as r:
        assert r.status == 200
    async with ctl.session.get(f"{ctl.url}/readyz") as r:
        body = await r.json()
        assert r.status == 200, body
        assert body["checks"] == {"docker": "ok", "store": "ok"}


@pytest.mark.docker
async def test_readyz_reports_unreachable_docker(controller_factory: Any, tmp_path: Any) -> None:
    ctl = await controller_factory()
    cfg = ctl.config.model_copy(
        update={"docker": ctl.config.docker.model_copy(update={"base_url": f"unix://{tmp_path}/nope.sock"})}
    )
    ctl2 = await controller_factory(config=cfg.model_copy(update={"data_dir": tmp_path / "d2"}))
    async with aiohttp.ClientSession() as s, s.get(f"{ctl2.url}/readyz") as r:
        body = await r.json()
        assert r.status == 503
        assert body["checks"]["docker"].startswith("unreachable")


async def test_slow_body_gets_408_and_frees_the_handler(fake_controller_factory: Any) -> None:
    ctl = await fake_controller_factory(settings={"server": {"host": "127.0.0.1", "port": 0, "body_timeout_s": 0.5}})
    host, port = ctl.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b'POST /webhooks/test HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"id": ')
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    assert b"408" in status_line
    writer.close()
    await _no_trace(ctl, "none")


async def test_compressed_bodies_are_refused_with_415(fake_controller_factory: Any) -> None:
    ctl = await fake_controller_factory()
    import gzip

    body = gzip.compress(json.dumps(job_spec()).encode())
    headers = sign("standard-webhooks", ctl.webhook_secret, body, msg_id="msg_gz", timestamp=int(time.time()))
    status, resp = await ctl.post_webhook(body, headers={**headers, "Content-Encoding": "gzip"})
    assert status == 415 and resp["reason"] == "unsupported_encoding"
    await _no_trace(ctl, "none")


async def test_a_key_twice_is_400_and_creates_nothing(fake_controller_factory: Any) -> None:
    """Python's json keeps the last "commands", another parser the first: whichever the controller picked, a
    reviewer's tool could show the other one. Refused instead."""
    ctl = await fake_controller_factory()
    spec = job_spec(commands=["echo shown"])
    body = json.dumps(spec).encode()[:-1] + b', "commands": ["echo hidden"]}'
    status, resp = await ctl.post_webhook(body)
    assert status == 400 and resp["reason"] == "duplicate_key"
    assert "'commands' twice" in resp["error"]
    await _no_trace(ctl, spec["id"])
