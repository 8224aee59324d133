"""The Gitea fake refuses what Gitea refuses and answers in Gitea's shapes (see fake_gitea.py for the sources)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.intake.signatures import GITEA_SHA256, HUB_SHA256, verify

from fake_gitea import NOT_FOUND, FakeGitea

RPC = "/api/actions/runner.v1.RunnerService"


@pytest.fixture
async def gitea() -> AsyncIterator[FakeGitea]:
    async with FakeGitea() as fake:
        fake.add_repo("alice/app")
        fake.add_org("acme", owners={"bob"})
        fake.add_repo("acme/lib", admins={"bob"})
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None = None, **kwargs: Any
) -> tuple[int, Any, Mapping[str, str]]:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"token {token}"
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        raw = await resp.read()
        return resp.status, (json.loads(raw) if raw else None), resp.headers


async def rpc(http: aiohttp.ClientSession, gitea: FakeGitea, method: str, body: dict[str, Any], **headers: str) -> Any:
    headers = {"Content-Type": "application/json", **headers}
    async with http.post(f"{gitea.url}{RPC}/{method}", data=json.dumps(body), headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_no_or_unknown_token_is_401_like_reqtoken(gitea: FakeGitea, http: aiohttp.ClientSession) -> None:
    url = f"{gitea.url}/api/v1/repos/alice/app/actions/runners"
    for token in (None, "0" * 40):
        status, body, _ = await call(http, "GET", url, token)
        assert status == 401
        assert body == {"message": "token is required", "url": f"{gitea.url}/api/swagger"}


async def test_unknown_repository_is_gitea_404(gitea: FakeGitea, http: aiohttp.ClientSession) -> None:
    token = gitea.add_token("alice", "write:repository")
    status, body, _ = await call(
        http, "POST", f"{gitea.url}/api/v1/repos/alice/nope/actions/runners/registration-token", token
    )
    assert status == 404
    assert body == {"message": NOT_FOUND, "url": f"{gitea.url}/api/swagger", "errors": []}
    # a private repository of someone else looks the same
    status, _, _ = await call(http, "GET", f"{gitea.url}/api/v1/repos/acme/lib", token)
    assert status == 404


async def test_scopes_and_roles(gitea: FakeGitea, http: aiohttp.ClientSession) -> None:
    read_only = gitea.add_token("alice", "read:repository")
    status, body, _ = await call(
        http, "POST", f"{gitea.url}/api/v1/repos/alice/app/actions/runners/registration-token", read_only
    )
    assert status == 403 and "required=[write:repository]" in body["message"]
    status, _, _ = await call(http, "GET", f"{gitea.url}/api/v1/repos/alice/app", read_only)
    assert status == 200
    repo_token = gitea.add_token("alice", "write:repository")
    status, body, _ = await call(http, "GET", f"{gitea.url}/api/v1/orgs/acme/actions/runners", repo_token)
    assert status == 403 and "organization" in body["message"]
    not_owner = gitea.add_token("alice", "write:organization")
    status, body, _ = await call(http, "GET", f"{gitea.url}/api/v1/orgs/acme/actions/runners", not_owner)
    assert (status, body["message"]) == (403, "Must be an organization owner")
    status, body, _ = await call(
        http, "POST", f"{gitea.url}/api/v1/admin/actions/runners/registration-token", gitea.add_token("alice")
    )
    assert (status, body["message"]) == (403, "user should be the site admin")


async def test_registration_token_is_the_scopes_latest_until_reset(
    gitea: FakeGitea, http: aiohttp.ClientSession
) -> None:
    token = gitea.add_token("alice", "write:repository")
    url = f"{gitea.url}/api/v1/repos/alice/app/actions/runners/registration-token"
    first = (await call(http, "POST", url, token))[1]["token"]
    assert (await call(http, "POST", url, token))[1]["token"] == first
    assert (await call(http, "GET", url, token))[1]["token"] == first  # deprecated GET, same token
    gitea.reset_registration_token("repo", "alice/app")
    assert (await call(http, "POST", url, token))[1]["token"] != first
    status, body = await rpc(http, gitea, "Register", {"name": "r", "token": first})
    assert (status, body["code"]) == (400, "invalid_argument")
    assert body["message"] == "runner registration token has been invalidated, please use the latest one"
    gitea.legacy_get = False
    assert (await call(http, "GET", url, token))[0] == 405


async def test_register_rpc_shapes(gitea: FakeGitea, http: aiohttp.ClientSession) -> None:
    token = gitea.add_token("alice", "write:repository")
    url = f"{gitea.url}/api/v1/repos/alice/app/actions/runners/registration-token"
    registration = (await call(http, "POST", url, token))[1]["token"]
    assert await rpc(http, gitea, "Register", {"name": "", "token": registration}) == (
        400,
        {"code": "invalid_argument", "message": "missing runner token, name"},
    )
    assert (await rpc(http, gitea, "Register", {"name": "x", "token": "nope"}))[1]["message"] == (
        "runner registration token not found"
    )
    status, body = await rpc(
        http, gitea, "Register", {"name": "r1", "token": registration, "labels": ["linux"], "ephemeral": True}
    )
    assert status == 200
    runner = body["runner"]
    assert isinstance(runner["id"], str) and runner["id"].isdigit()  # int64 as a JSON string
    assert runner["ephemeral"] is True and runner["labels"] == ["linux"] and runner["name"] == "r1"
    status, body = await rpc(http, gitea, "Register", {"name": "r2", "token": registration})
    assert "ephemeral" not in body["runner"]  # proto3 JSON leaves out false
    async with http.post(
        f"{gitea.url}{RPC}/Register", data=b"\x0a\x01x", headers={"Content-Type": "application/proto"}
    ) as resp:
        assert resp.status == 415  # this fake speaks JSON only (Gitea takes both)


async def test_runner_list_pagination_get_delete(gitea: FakeGitea, http: aiohttp.ClientSession) -> None:
    token = gitea.add_token("alice", "write:repository")
    base = f"{gitea.url}/api/v1/repos/alice/app/actions/runners"
    registration = (await call(http, "POST", f"{base}/registration-token", token))[1]["token"]
    for i in range(55):
        await rpc(http, gitea, "Register", {"name": f"r{i}", "token": registration, "labels": ["linux"]})
    status, body, _ = await call(http, "GET", base, token, params={"limit": 100})
    assert status == 200 and body["total_count"] == 55 and len(body["runners"]) == 50  # limit capped at 50
    assert len((await call(http, "GET", base, token))[1]["runners"]) == 30  # default page size
    second = (await call(http, "GET", base, token, params={"page": 2, "limit": 50}))[1]
    assert len(second["runners"]) == 5
    entry = second["runners"][0]
    assert set(entry) == {"id", "name", "status", "busy", "disabled", "ephemeral", "labels"}
    assert entry["labels"] == [{"id": 0, "name": "linux", "type": "custom"}] and entry["status"] == "offline"
    runner_id = entry["id"]
    assert (await call(http, "DELETE", f"{base}/{runner_id}", token))[0] == 204
    status, body, _ = await call(http, "DELETE", f"{base}/{runner_id}", token)
    assert (status, body["message"]) == (404, "Runner not found")
    # another scope's runner: not found in this one
    org_token = gitea.add_token("bob", "write:organization")
    other = next(iter(gitea.runners))
    status, body, _ = await call(http, "GET", f"{gitea.url}/api/v1/orgs/acme/actions/runners/{other}", org_token)
    assert (status, body["message"]) == (404, "No permission to access this runner")


async def test_jobs_api_lists_queued_jobs_or_is_missing(gitea: FakeGitea, http: aiohttp.ClientSession) -> None:
    token = gitea.add_token("alice", "read:repository")
    gitea.queue_job("alice/app", ["linux"], name="build")
    gitea.queue_job("alice/app", ["linux"], name="later", waiting=True)
    url = f"{gitea.url}/api/v1/repos/alice/app/actions/jobs"
    status, body, headers = await call(http, "GET", url, token, params={"status": "queued"})
    assert status == 200 and body["total_count"] == 1 and headers["X-Total-Count"] == "1"
    job = body["workflow_jobs"][0]
    assert job["status"] == "queued" and job["labels"] == ["linux"] and job["name"] == "build"
    assert job["completed_at"] == "0001-01-01T00:00:00Z" and "conclusion" not in job and "runner_id" not in job
    assert (await call(http, "GET", url, token, params={"status": "bogus"}))[0] == 400
    gitea.jobs_api = False
    status, body, _ = await call(http, "GET", url, token, params={"status": "queued"})
    assert status == 404 and body["message"] == NOT_FOUND


async def test_ephemeral_runner_lifecycle_and_webhooks() -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    secret = "s3cret-webhook"
    try:
        async with (
            FakeGitea(webhook_url=f"http://127.0.0.1:{port}/hook", webhook_secret=secret) as gitea,
            aiohttp.ClientSession() as http,
        ):
            gitea.add_org("acme", owners={"bob"})
            gitea.add_repo("acme/lib", admins={"bob"})
            token = gitea.add_token("bob", "write:organization")
            registration = (
                await call(http, "POST", f"{gitea.url}/api/v1/orgs/acme/actions/runners/registration-token", token)
            )[1]["token"]
            reg = (
                await rpc(
                    http,
                    gitea,
                    "Register",
                    {"name": "eph", "token": registration, "labels": ["linux"], "ephemeral": True},
                )
            )[1]["runner"]
            auth = {"x-runner-uuid": reg["uuid"], "x-runner-token": reg["token"]}
            assert (await rpc(http, gitea, "FetchTask", {}, **{"x-runner-uuid": reg["uuid"], "x-runner-token": "bad"}))[
                1
            ] == {
                "code": "unauthenticated",
                "message": "unregistered runner",
            }
            assert (await rpc(http, gitea, "Declare", {"labels": ["linux"], "version": "v0.2.13"}, **auth))[0] == 200
            assert "task" not in (await rpc(http, gitea, "FetchTask", {}, **auth))[1]
            job = gitea.queue_job("acme/lib", ["linux"])
            gitea.queue_job("acme/lib", ["linux"], name="second")
            task = (await rpc(http, gitea, "FetchTask", {}, **auth))[1]["task"]
            assert task["id"] == str(job.id)
            assert "task" not in (await rpc(http, gitea, "FetchTask", {}, **auth))[1]  # one task per ephemeral runner
            done = await rpc(
                http, gitea, "UpdateTask", {"state": {"id": task["id"], "result": "RESULT_SUCCESS"}}, **auth
            )
            assert done == (200, {"state": {"id": task["id"], "result": "RESULT_SUCCESS"}})
            assert int(reg["id"]) not in gitea.runners  # deleted with its task's result
            assert (await rpc(http, gitea, "FetchTask", {}, **auth))[0] == 401
            await gitea.drain()
    finally:
        await runner.cleanup()
    actions = [json.loads(body)["action"] for _, body in received]
    assert actions == ["queued", "queued", "in_progress", "completed"]
    headers, body = received[2]
    payload = json.loads(body)
    assert payload["workflow_job"]["runner_name"] == "eph" and payload["organization"]["username"] == "acme"
    assert payload["repository"]["full_name"] == "acme/lib"
    assert headers["X-Gitea-Event"] == headers["X-GitHub-Event"] == "workflow_job"
    assert headers["X-Gitea-Delivery"] == headers["X-GitHub-Delivery"]
    assert headers["X-Gitea-Signature"] == hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert json.loads(received[3][1])["workflow_job"]["conclusion"] == "success"
    # the controller's own verifier accepts both of Gitea's signature headers
    assert verify(GITEA_SHA256, [secret.encode()], headers, body, now=0) == headers["X-Gitea-Delivery"]
    assert verify(HUB_SHA256, [secret.encode()], headers, body, now=0) == headers["X-GitHub-Delivery"]


async def test_faults_answer_with_status_and_retry_after(gitea: FakeGitea, http: aiohttp.ClientSession) -> None:
    token = gitea.add_token("alice")
    gitea.fail("GET", "/api/v1/repos/alice/app/actions/runners", 429, retry_after=2)
    status, body, headers = await call(http, "GET", f"{gitea.url}/api/v1/repos/alice/app/actions/runners", token)
    assert status == 429 and headers["Retry-After"] == "2" and "message" in body
    assert (await call(http, "GET", f"{gitea.url}/api/v1/repos/alice/app/actions/runners", token))[0] == 200
    assert gitea.count("GET", "/api/v1/repos/alice/app/actions/runners") == 2
