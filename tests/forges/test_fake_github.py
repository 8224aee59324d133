"""The fake GitHub (tests/forges/fake_github.py) refuses what GitHub refuses and answers in GitHub's documented
shapes, so tests of the controller against it mean something; and the test agent image runs the whole agent <->
fake loop on real Docker."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import docker
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from orchestrator.forges.protocol import RunnerScope
from orchestrator.intake.signatures import SignatureError, verify

from conftest import local_image
from fake_github import FakeGitHub, decode_jit_config, run_python_agent

FORGE_AGENT_IMAGE = os.environ.get("ORCHESTRATOR_FORGE_AGENT_IMAGE", "runner-orchestrator/test-forge-agent:local")
JITCONFIG_FILE = "/run/secrets/ACTIONS_RUNNER_INPUT_JITCONFIG"
SECRET = b"it's a secret to everybody"
REPO = "octo-org/app"
INSTALLATION = 42


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def message(self) -> str:
        return str(self.body["message"])


@dataclass
class Receiver:
    """A webhook endpoint: records every delivery's headers and raw body."""

    url: str
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    receiver = Receiver("")

    async def hook(request: web.Request) -> web.Response:
        receiver.got.append((dict(request.headers), await request.read()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    yield receiver
    await runner.cleanup()


@pytest.fixture
async def fakes() -> AsyncIterator[Callable[..., Any]]:
    """`await fakes(**options)`: a started FakeGitHub with REPO in INSTALLATION; all stopped at the end."""
    started: list[FakeGitHub] = []

    async def make(**kw: Any) -> FakeGitHub:
        fake = await FakeGitHub.start(**kw)
        started.append(fake)
        fake.add_org("octo-org", installation_id=INSTALLATION)
        fake.add_repository(REPO, installation_id=INSTALLATION)
        return fake

    yield make
    for fake in started:
        await fake.stop()


@pytest.fixture
async def fake(fakes: Callable[..., Any]) -> FakeGitHub:
    return await fakes()  # type: ignore[no-any-return]


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    scheme: str = "Bearer",
    body: Any = None,
    data: bytes | None = None,
) -> Answer:
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    async with session.request(method, url, headers=headers, json=body, data=data) as resp:
        raw = await resp.read()
        return Answer(resp.status, dict(resp.headers), json.loads(raw) if raw else None)


def app_jwt(fake: FakeGitHub, *, key: str | None = None, alg: str = "RS256", **claims: Any) -> str:
    """An app JWT as the docs describe it; signed over raw JSON so that `iss` may be an integer too."""
    now = int(fake.clock())
    payload = {"iat": now - 60, "exp": now + 540, "iss": str(fake.app_id), **claims}
    return jwt.api_jws.PyJWS().encode(json.dumps(payload).encode(), key or fake.private_key_pem, algorithm=alg)


async def installation_token(session: aiohttp.ClientSession, fake: FakeGitHub, **body: Any) -> str:
    answer = await call(
        session,
        "POST",
        f"{fake.url}/app/installations/{INSTALLATION}/access_tokens",
        token=app_jwt(fake),
        body=body or None,
    )
    assert answer.status == 201, answer.body
    return str(answer.body["token"])


async def jit(
    session: aiohttp.ClientSession,
    fake: FakeGitHub,
    name: str,
    labels: list[str] | None = None,
    *,
    scope: str = f"repos/{REPO}",
    token: str | None = None,
    **extra: Any,
) -> Answer:
    body = {"name": name, "runner_group_id": 1, "labels": labels or ["self-hosted", "linux"], "work_folder": "_work"}
    body.update(extra)
    url = f"{fake.url}/{scope}/actions/runners/generate-jitconfig"
    return await call(session, "POST", url, token=token or fake.pat, body=body)


def assert_error_shape(answer: Answer, status: int, message: str) -> None:
    """GitHub's error body and the rate-limit headers that come with every answer."""
    assert answer.status == status, answer.body
    assert message in answer.message, answer.message
    assert answer.body["documentation_url"].startswith("https://docs.github.com/")
    for header in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Used"):
        assert header in answer.headers


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------------------- app auth


async def test_app_jwt_is_exchanged_for_an_installation_token(fake: FakeGitHub, session: aiohttp.ClientSession):
    url = f"{fake.url}/app/installations/{INSTALLATION}/access_tokens"
    answer = await call(session, "POST", url, token=app_jwt(fake))
    assert answer.status == 201
    assert answer.body["token"].startswith("ghs_")
    expires = datetime.strptime(answer.body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    assert abs(expires - (time.time() + 3600)) < 5
    assert answer.body["repository_selection"] == "all" and answer.body["permissions"]
    # iss may be the app id as an integer too; both Authorization schemes carry the token.
    assert (await call(session, "POST", url, token=app_jwt(fake, iss=fake.app_id))).status == 201
    for scheme in ("Bearer", "token"):
        listed = await call(
            session, "GET", f"{fake.url}/repos/{REPO}/actions/runners", token=answer.body["token"], scheme=scheme
        )
        assert listed.status == 200 and listed.body == {"total_count": 0, "runners": []}
    assert fake.request_log[-1].caller == f"installation:{INSTALLATION}"
    assert fake.request_log[-1].api_version == "2022-11-28"


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda f, now: app_jwt(f, iat=now - 700, exp=now - 10), 401, "'Expiration time' claim ('exp') must be"),
        (lambda f, now: app_jwt(f, iat=now + 120, exp=now + 500), 401, "'Issued at' claim ('iat') must be"),
        (lambda f, now: app_jwt(f, iat=now, exp=now + 900), 401, "'Expiration time' claim ('exp') is too far"),
        (lambda f, now: app_jwt(f, iat=now - 120, exp=now + 540), 401, "is too far in the future"),  # exp-iat > 600
        (lambda f, now: app_jwt(f, key=other_key()), 401, "A JSON web token could not be decoded"),
        (
            lambda f, now: app_jwt(f, key="a-shared-secret-of-32-bytes-or-more", alg="HS256"),
            401,
            "A JSON web token could not be decoded",
        ),
        (lambda f, now: "not.a.jwt", 401, "A JSON web token could not be decoded"),
        (lambda f, now: f.pat, 401, "A JSON web token could not be decoded"),
        (lambda f, now: app_jwt(f, iss="my-app"), 401, "'Issuer' claim ('iss') must be an Integer"),
        (lambda f, now: app_jwt(f, iss=str(f.app_id + 1)), 404, "Integration not found"),
        (lambda f, now: None, 401, "Requires authentication"),
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "exp-too-far",
        "lifetime-over-600s",
        "wrong-key",
        "hs256",
        "garbage",
        "pat-instead-of-jwt",
        "iss-not-an-integer",
        "unknown-app",
        "no-auth",
    ],
)
async def test_app_jwt_refusals(
    fake: FakeGitHub, session: aiohttp.ClientSession, make: Callable[..., Any], status: int, message: str
):
    answer = await call(
        session,
        "POST",
        f"{fake.url}/app/installations/{INSTALLATION}/access_tokens",
        token=make(fake, int(time.time())),
    )
    assert_error_shape(answer, status, message)
    assert not [t for t in fake._tokens.values() if t.installation_id is not None]  # no token was issued


def other_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


async def test_unknown_installation_and_token_scope(fake: FakeGitHub, session: aiohttp.ClientSession):
    answer = await call(session, "POST", f"{fake.url}/app/installations/999/access_tokens", token=app_jwt(fake))
    assert_error_shape(answer, 404, "Not Found")

    fake.add_repository("octo-org/other", installation_id=INSTALLATION)
    fake.add_repository("someone/else", installation_id=7)
    token = await installation_token(session, fake, repositories=["app"])
    assert (await call(session, "GET", f"{fake.url}/repos/{REPO}/actions/runners", token=token)).status == 200
    for repo in ("octo-org/other", "someone/else"):  # outside the token's repositories / installation
        answer = await call(session, "GET", f"{fake.url}/repos/{repo}/actions/runners", token=token)
        assert_error_shape(answer, 403, "Resource not accessible by integration")
    answer = await call(
        session,
        "POST",
        f"{fake.url}/app/installations/{INSTALLATION}/access_tokens",
        token=app_jwt(fake),
        body={"repositories": ["nope"]},
    )
    assert_error_shape(answer, 422, "not accessible to the parent installation")


async def test_installations_and_the_repositories_they_reach(fake: FakeGitHub, session: aiohttp.ClientSession):
    fake.add_repository("octo-org/other", installation_id=INSTALLATION)
    fake.add_repository("someone/else", installation_id=7)
    listed = await call(session, "GET", f"{fake.url}/app/installations", token=app_jwt(fake))
    assert listed.status == 200 and sorted(i["id"] for i in listed.body) == sorted([INSTALLATION, 7])
    token = await installation_token(session, fake)
    repos = await call(session, "GET", f"{fake.url}/installation/repositories", token=token)
    assert repos.status == 200 and repos.body["total_count"] == 2
    assert sorted(r["full_name"] for r in repos.body["repositories"]) == sorted([REPO, "octo-org/other"])
    narrow = await installation_token(session, fake, repositories=["app"])
    repos = await call(session, "GET", f"{fake.url}/installation/repositories", token=narrow)
    assert [r["full_name"] for r in repos.body["repositories"]] == [REPO]
    # an installation token is no user, a PAT no installation; the JWT is for /app endpoints only
    assert_error_shape(await call(session, "GET", f"{fake.url}/user/repos", token=token), 403, "not accessible")
    assert_error_shape(
        await call(session, "GET", f"{fake.url}/installation/repositories", token=fake.pat), 403, "installation"
    )
    assert (await call(session, "GET", f"{fake.url}/app/installations", token=token)).status == 401
    mine = await call(session, "GET", f"{fake.url}/user/repos", token=fake.pat)
    assert mine.status == 200 and len(mine.body) == 3


async def test_bad_missing_and_expired_tokens(fakes: Callable[..., Any], session: aiohttp.ClientSession):
    clock = Clock()
    fake = await fakes(clock=clock, token_lifetime_s=60)
    url = f"{fake.url}/repos/{REPO}/actions/runners"
    assert_error_shape(await call(session, "GET", url, token="ghs_madeup"), 401, "Bad credentials")
    assert_error_shape(await call(session, "GET", url), 401, "Requires authentication")
    token = await installation_token(session, fake)
    assert (await call(session, "GET", url, token=token)).status == 200
    clock.now += 61
    assert_error_shape(await call(session, "GET", url, token=token), 401, "Bad credentials")
    assert (await call(session, "GET", url, token=fake.pat)).status == 200  # the PAT does not expire
    token = await installation_token(session, fake)
    fake.expire_tokens()
    assert_error_shape(await call(session, "GET", url, token=token), 401, "Bad credentials")


async def test_unknown_repository_and_organization(fake: FakeGitHub, session: aiohttp.ClientSession):
    for path in ("repos/octo-org/nope/actions/runners", "orgs/nope/actions/runners"):
        assert_error_shape(await call(session, "GET", f"{fake.url}/{path}", token=fake.pat), 404, "Not Found")
    assert_error_shape(await jit(session, fake, "r1", scope="repos/octo-org/nope"), 404, "Not Found")
    assert_error_shape(await jit(session, fake, "r1", scope="orgs/nope"), 404, "Not Found")
    assert_error_shape(await call(session, "GET", f"{fake.url}/no/such/route", token=fake.pat), 404, "Not Found")
    assert fake.runners == {}


# ---------------------------------------------------------------------------------------------------- runners


async def test_jit_config_repo_and_org(fake: FakeGitHub, session: aiohttp.ClientSession):
    answer = await jit(session, fake, "ctl-1", ["self-hosted", "linux", "gpu"])
    assert answer.status == 201
    runner = answer.body["runner"]
    assert runner["name"] == "ctl-1" and runner["status"] == "offline" and runner["busy"] is False
    assert runner["os"] == "unknown" and isinstance(runner["id"], int)
    assert [(label["name"], label["type"]) for label in runner["labels"]] == [
        ("self-hosted", "read-only"),
        ("linux", "read-only"),
        ("gpu", "custom"),
    ]
    files = decode_jit_config(answer.body["encoded_jit_config"])
    assert set(files) == {".runner", ".credentials", ".credentials_rsaparams"}
    assert files[".runner"]["agentId"] == runner["id"]
    assert files[".runner"]["agentName"] == "ctl-1"
    assert files[".runner"]["serverUrl"] == fake.url
    assert files[".runner"]["workFolder"] == "_work"

    org = await jit(session, fake, "ctl-1", scope="orgs/octo-org")  # same name, other scope: fine
    assert org.status == 201
    assert [r.name for r in fake.registered_runners(RunnerScope("org", "octo-org"))] == ["ctl-1"]
    assert [r.name for r in fake.registered_runners(REPO)] == ["ctl-1"]
    token = await installation_token(session, fake)
    assert (await jit(session, fake, "ctl-2", scope="orgs/octo-org", token=token)).status == 201
    assert sum(1 for m, p in fake.requests if m == "POST" and p.endswith("/generate-jitconfig")) == 3


async def test_jit_config_refusals(fake: FakeGitHub, session: aiohttp.ClientSession):
    assert (await jit(session, fake, "ctl-1")).status == 201
    assert_error_shape(await jit(session, fake, "ctl-1"), 409, "A runner with the name ctl-1 already exists")
    assert_error_shape(await jit(session, fake, "CTL-1"), 409, "already exists")
    url = f"{fake.url}/repos/{REPO}/actions/runners/generate-jitconfig"
    missing = await call(session, "POST", url, token=fake.pat, body={"name": "x", "labels": ["linux"]})
    assert_error_shape(missing, 422, "missing required key: runner_group_id")
    no_labels = await call(session, "POST", url, token=fake.pat, body={"name": "x", "runner_group_id": 1, "labels": []})
    assert_error_shape(no_labels, 422, "between 1 and 100")
    assert_error_shape(await jit(session, fake, "ctl-3", runner_group_id="1"), 422, "runner_group_id")
    assert_error_shape(await jit(session, fake, "ctl-4", runner_group_id=7), 404, "Not Found")
    assert_error_shape(await call(session, "POST", url, token=fake.pat, data=b"{nope"), 400, "Problems parsing JSON")
    assert [r.name for r in fake.registered_runners(REPO)] == ["ctl-1"]


async def test_runner_list_pagination(fake: FakeGitHub, session: aiohttp.ClientSession):
    ids = [(await jit(session, fake, f"ctl-{i}")).body["runner"]["id"] for i in range(7)]
    url: str | None = f"{fake.url}/repos/{REPO}/actions/runners?per_page=3"
    pages = []
    while url:
        answer = await call(session, "GET", url, token=fake.pat)
        assert answer.status == 200 and answer.body["total_count"] == 7
        pages.append([r["id"] for r in answer.body["runners"]])
        links = dict(
            (part.split(";")[1].strip(), part.split(";")[0].strip(" <>"))
            for part in answer.headers.get("Link", "").split(",")
            if part
        )
        if len(pages) == 1:
            assert links['rel="last"'].endswith("page=3") and 'rel="prev"' not in links
        url = links.get('rel="next"')
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]

    capped = await call(session, "GET", f"{fake.url}/repos/{REPO}/actions/runners?per_page=500", token=fake.pat)
    assert len(capped.body["runners"]) == 7 and "Link" not in capped.headers  # per_page is at most 100
    named = await call(session, "GET", f"{fake.url}/repos/{REPO}/actions/runners?name=ctl-4", token=fake.pat)
    assert [r["id"] for r in named.body["runners"]] == [ids[4]]
    beyond = await call(session, "GET", f"{fake.url}/repos/{REPO}/actions/runners?per_page=3&page=9", token=fake.pat)
    assert beyond.body["runners"] == [] and beyond.body["total_count"] == 7


async def test_delete_runner(fakes: Callable[..., Any], session: aiohttp.ClientSession):
    fake = await fakes(poll_wait_s=0.2)
    first = (await jit(session, fake, "ctl-1")).body
    url = f"{fake.url}/repos/{REPO}/actions/runners/{first['runner']['id']}"
    assert (await call(session, "GET", url, token=fake.pat)).body["name"] == "ctl-1"
    answer = await call(session, "DELETE", url, token=fake.pat)
    assert answer.status == 204 and answer.body is None and "X-RateLimit-Remaining" in answer.headers
    assert_error_shape(await call(session, "DELETE", url, token=fake.pat), 404, "Not Found")
    # A runner of the repository is not one of the organization's.
    other = (await jit(session, fake, "ctl-2")).body["runner"]["id"]
    answer = await call(session, "DELETE", f"{fake.url}/orgs/octo-org/actions/runners/{other}", token=fake.pat)
    assert_error_shape(answer, 404, "Not Found")

    # Busy: 422 until the job is done; then GitHub has deleted the JIT runner itself.
    busy = (await jit(session, fake, "ctl-3")).body
    job = fake.queue_job(REPO, ["linux"], seconds=1.0)
    agent = asyncio.create_task(run_python_agent(busy["encoded_jit_config"]))
    await fake.wait_job(job, "in_progress")
    url = f"{fake.url}/repos/{REPO}/actions/runners/{busy['runner']['id']}"
    assert_error_shape(await call(session, "DELETE", url, token=fake.pat), 422, "is still running a job")
    assert (await agent).exit_code == 0
    assert_error_shape(await call(session, "DELETE", url, token=fake.pat), 404, "Not Found")


# ----------------------------------------------------------------------------------------------- runs and jobs


async def test_queued_runs_and_their_jobs(fake: FakeGitHub, session: aiohttp.ClientSession):
    first = fake.queue_job(REPO, ["self-hosted", "linux", "arm64"], name="test", send_webhook=False, head_branch="dev")
    second = fake.queue_job(REPO, ["linux", "gpu"], name="gpu")
    runs = await call(session, "GET", f"{fake.url}/repos/{REPO}/actions/runs?status=queued", token=fake.pat)
    assert runs.status == 200 and runs.body["total_count"] == 2
    assert [r["id"] for r in runs.body["workflow_runs"]] == [fake.jobs[second].run_id, fake.jobs[first].run_id]
    assert all(r["status"] == "queued" for r in runs.body["workflow_runs"])
    run_id = fake.jobs[first].run_id
    jobs = await call(session, "GET", f"{fake.url}/repos/{REPO}/actions/runs/{run_id}/jobs", token=fake.pat)
    assert jobs.status == 200 and jobs.body["total_count"] == 1
    (job,) = jobs.body["jobs"]
    assert job["id"] == first and job["run_id"] == run_id and job["status"] == "queued"
    assert job["labels"] == ["self-hosted", "linux", "arm64"] and job["name"] == "test" and job["head_branch"] == "dev"
    assert len(job["head_sha"]) == 40 and job["runner_id"] is None and job["conclusion"] is None
    single = await call(session, "GET", f"{fake.url}/repos/{REPO}/actions/jobs/{first}", token=fake.pat)
    assert single.body == job

    # A job queued next to one that started is in an in_progress run: ?status=queued no longer lists it.
    fake.queue_job(REPO, ["linux", "gpu"], run_id=fake.jobs[second].run_id)
    agent = (await jit(session, fake, "gpu-1", ["linux", "gpu"])).body["encoded_jit_config"]
    task = asyncio.create_task(run_python_agent(agent))
    await fake.wait_job(second, "completed")
    await task
    runs = await call(session, "GET", f"{fake.url}/repos/{REPO}/actions/runs?status=queued", token=fake.pat)
    assert [r["id"] for r in runs.body["workflow_runs"]] == [run_id]
    progress = await call(session, "GET", f"{fake.url}/repos/{REPO}/actions/runs?status=in_progress", token=fake.pat)
    assert [r["id"] for r in progress.body["workflow_runs"]] == [fake.jobs[second].run_id]
    assert_error_shape(
        await call(session, "GET", f"{fake.url}/repos/{REPO}/actions/runs/1/jobs", token=fake.pat), 404, "Not Found"
    )


# ------------------------------------------------------------------------------------------------ rate limits


@pytest.mark.parametrize("status", [403, 429])
async def test_primary_rate_limit(fakes: Callable[..., Any], session: aiohttp.ClientSession, status: int):
    clock = Clock()
    fake = await fakes(rate_limit=3, rate_window_s=600, rate_limit_status=status, clock=clock)
    url = f"{fake.url}/repos/{REPO}/actions/runners"
    seen = [await call(session, "GET", url, token=fake.pat) for _ in range(3)]
    assert [a.status for a in seen] == [200, 200, 200]
    assert [a.headers["X-RateLimit-Remaining"] for a in seen] == ["2", "1", "0"]
    assert [a.headers["X-RateLimit-Used"] for a in seen] == ["1", "2", "3"]
    assert {a.headers["X-RateLimit-Limit"] for a in seen} == {"3"}
    assert {a.headers["X-RateLimit-Resource"] for a in seen} == {"core"}
    reset = int(seen[0].headers["X-RateLimit-Reset"])
    assert clock.now < reset <= clock.now + 601

    refused = await call(session, "GET", url, token=fake.pat)
    assert_error_shape(refused, status, "API rate limit exceeded")
    assert refused.headers["X-RateLimit-Remaining"] == "0" and int(refused.headers["X-RateLimit-Reset"]) == reset
    assert fake.over_limit_requests == [("GET", f"/repos/{REPO}/actions/runners")]
    # GET /rate_limit does not count against the primary budget.
    status_now = await call(session, "GET", f"{fake.url}/rate_limit", token=fake.pat)
    assert status_now.status == 200 and status_now.body["resources"]["core"]["remaining"] == 0

    # An installation has its own budget.
    token = await installation_token(session, fake)
    assert (await call(session, "GET", url, token=token)).headers["X-RateLimit-Remaining"] == "2"

    clock.now = reset + 1  # the window is over
    again = await call(session, "GET", url, token=fake.pat)
    assert again.status == 200 and again.headers["X-RateLimit-Remaining"] == "2"
    assert len(fake.over_limit_requests) == 1


async def test_secondary_rate_limit(fake: FakeGitHub, session: aiohttp.ClientSession):
    url = f"{fake.url}/repos/{REPO}/actions/runners"
    fake.secondary_limit(2, retry_after_s=7)
    for _ in range(2):
        refused = await call(session, "GET", url, token=fake.pat)
        assert_error_shape(refused, 403, "You have exceeded a secondary rate limit")
        assert refused.headers["Retry-After"] == "7"
    assert (await call(session, "GET", url, token=fake.pat)).status == 200
    assert fake.secondary_limited_requests == [("GET", f"/repos/{REPO}/actions/runners")] * 2

    fake.secondary_limit(1, retry_after_s=30, with_retry_after=False)  # the other documented shape
    refused = await call(session, "GET", url, token=fake.pat)
    assert_error_shape(refused, 403, "secondary rate limit")
    assert "Retry-After" not in refused.headers and refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["X-RateLimit-Reset"]) >= time.time() + 29


# ------------------------------------------------------------------------------------- webhooks and the agent


def verified(headers: dict[str, str], body: bytes) -> str | None:
    return verify("hub-sha256", [SECRET], headers, body, time.time())


async def test_workflow_job_webhooks_are_signed_and_shaped_like_githubs(
    fakes: Callable[..., Any], hooks: Receiver, session: aiohttp.ClientSession
):
    fake = await fakes(webhook_url=hooks.url, webhook_secret=SECRET, poll_wait_s=0.2)
    job = fake.queue_job(REPO, ["self-hosted", "Linux"], name="unit")
    lost = fake.queue_job(REPO, ["linux"], name="lost", send_webhook=False, exit_code=3)
    await fake.webhooks_sent()
    assert len(hooks.got) == 1
    headers, body = hooks.got[0]
    assert verified(headers, body) == headers["X-GitHub-Delivery"]
    uuid.UUID(headers["X-GitHub-Delivery"])
    assert headers["X-GitHub-Event"] == "workflow_job" and headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("GitHub-Hookshot/")
    with pytest.raises(SignatureError):
        verified(headers, body.replace(b'"queued"', b'"completed"', 1))
    payload = json.loads(body)
    assert payload["action"] == "queued"
    wj = payload["workflow_job"]
    assert (wj["id"], wj["run_id"], wj["status"]) == (job, fake.jobs[job].run_id, "queued")
    assert wj["labels"] == ["self-hosted", "Linux"] and wj["runner_id"] is None and wj["runner_name"] is None
    assert payload["repository"]["full_name"] == REPO and payload["repository"]["name"] == "app"
    assert payload["repository"]["owner"]["login"] == "octo-org"
    assert payload["installation"]["id"] == INSTALLATION and payload["organization"]["login"] == "octo-org"
    assert [d.suppressed for d in fake.deliveries] == [False, True]  # the lost one is recorded, not sent

    # A JIT runner comes online and takes the oldest job whose labels it has (case-insensitive).
    first = (await jit(session, fake, "ctl-1", ["self-hosted", "linux", "x64"])).body
    result = await run_python_agent(first["encoded_jit_config"])
    assert (result.exit_code, result.job_id) == (0, job)
    await fake.webhooks_sent()
    assert [(p["action"], p["workflow_job"]["id"]) for p in hooks.payloads()] == [
        ("queued", job),
        ("in_progress", job),
        ("completed", job),
    ]
    in_progress, completed = hooks.payloads()[1:]
    assert in_progress["workflow_job"]["runner_id"] == first["runner"]["id"]
    assert in_progress["workflow_job"]["runner_name"] == "ctl-1"
    assert completed["workflow_job"]["conclusion"] == "success"
    assert completed["workflow_job"]["completed_at"] is not None
    assert all(verified(h, b) for h, b in hooks.got)
    assert fake.registered_runners(REPO) == []  # GitHub deletes a JIT runner after its job
    assert fake.job_state(lost) == "queued"

    # The job whose webhook was lost is found by the next runner; it fails.
    second = (await jit(session, fake, "ctl-2", ["linux"])).body
    result = await run_python_agent(second["encoded_jit_config"])
    assert (result.exit_code, result.job_id) == (3, lost)
    await fake.webhooks_sent()
    assert hooks.payloads()[-1]["action"] == "completed"
    assert hooks.payloads()[-1]["workflow_job"]["conclusion"] == "failure"
    assert [d.status for d in fake.sent()] == [200] * 5
    assert sum(1 for m, p in fake.requests if p.endswith("/generate-jitconfig")) == 2  # one JIT call per runner


async def test_labels_must_cover_the_job(fakes: Callable[..., Any], session: aiohttp.ClientSession):
    fake = await fakes(poll_wait_s=0.1)
    gpu_job = fake.queue_job(REPO, ["linux", "gpu"])
    plain_job = fake.queue_job(REPO, ["self-hosted", "LINUX"])
    other_repo = fake.add_repository("octo-org/other", installation_id=INSTALLATION)
    elsewhere = fake.queue_job(other_repo.full_name, ["linux"])
    config = (await jit(session, fake, "ctl-1", ["linux"])).body["encoded_jit_config"]  # self-hosted implied
    assert (await run_python_agent(config)).job_id == plain_job
    assert fake.job_state(gpu_job) == "queued" and fake.job_state(elsewhere) == "queued"
    org_config = (await jit(session, fake, "org-1", ["linux"], scope="orgs/octo-org")).body["encoded_jit_config"]
    assert (await run_python_agent(org_config)).job_id == elsewhere  # an org runner serves the org's repositories


async def test_jit_config_is_single_use_and_deleted_registrations_stop_the_agent(
    fakes: Callable[..., Any], session: aiohttp.ClientSession
):
    fake = await fakes(poll_wait_s=0.2)
    body = (await jit(session, fake, "ctl-1")).body
    agent = f"{fake.url}/_fake/agent/{body['runner']['id']}"
    assert (await call(session, "POST", f"{agent}/online")).status == 200
    assert (await call(session, "POST", f"{agent}/online")).status == 409
    assert (await call(session, "GET", f"{agent}/assignment")).status == 204
    runners = await call(session, "GET", f"{fake.url}/repos/{REPO}/actions/runners", token=fake.pat)
    assert runners.body["runners"][0]["status"] == "online" and runners.body["runners"][0]["os"] == "Linux"
    poll = asyncio.create_task(call(session, "GET", f"{agent}/assignment"))
    await asyncio.sleep(0.05)
    url = f"{fake.url}/repos/{REPO}/actions/runners/{body['runner']['id']}"
    assert (await call(session, "DELETE", url, token=fake.pat)).status == 204
    assert (await poll).status == 410  # the waiting agent learns at once
    assert (await call(session, "POST", f"{agent}/done", data=b"0")).status == 410
    assert (await call(session, "POST", f"{fake.url}/_fake/agent/999999/online")).status == 404
    assert ("POST", f"/_fake/agent/{body['runner']['id']}/online", 409) in fake.agent_requests
    assert not any(p.startswith("/_fake/") for _, p in fake.requests)  # not counted as REST calls


async def test_an_agent_that_goes_silent_fails_its_job(fakes: Callable[..., Any], session: aiohttp.ClientSession):
    fake = await fakes(agent_timeout_s=0.3, poll_wait_s=0.1)
    job = fake.queue_job(REPO, ["linux"], seconds=60)
    body = (await jit(session, fake, "ctl-1")).body
    agent = f"{fake.url}/_fake/agent/{body['runner']['id']}"
    assert (await call(session, "POST", f"{agent}/online")).status == 200
    assignment = await call(session, "GET", f"{agent}/assignment")
    assert assignment.status == 200 and assignment.body == {"job_id": job, "seconds": 60, "exit": 0}
    # No heartbeat: after agent_timeout_s the runner is offline and the job failed; the registration stays.
    finished = await fake.wait_job(job, "completed", timeout=5)
    assert finished.conclusion == "failure"
    (runner,) = fake.registered_runners(REPO)
    assert runner.status == "offline" and not runner.busy


async def test_a_failing_webhook_receiver_is_recorded_and_does_not_block(
    fakes: Callable[..., Any], session: aiohttp.ClientSession
):
    probe = web.Application()
    runner = web.AppRunner(probe)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()  # nothing listens there any more
    fake = await fakes(webhook_url=f"http://127.0.0.1:{port}/hook", webhook_secret=SECRET)
    started = time.monotonic()
    job = fake.queue_job(REPO, ["linux"])
    assert time.monotonic() - started < 0.1
    await fake.webhooks_sent()
    (delivery,) = fake.sent(job_id=job)
    assert delivery.status is None and delivery.error and "Connect" in delivery.error
    again = await fake.redeliver(delivery.delivery_id)
    assert again.headers["X-GitHub-Delivery"] == delivery.delivery_id and again.error


# -------------------------------------------------------------------------------------------- real Docker


@pytest.fixture
def forge_agent_image(docker_client: docker.DockerClient) -> str:
    return local_image(docker_client, FORGE_AGENT_IMAGE)


async def run_agent_container(image: str, stdin: bytes | None, *, timeout: float = 60) -> tuple[int, str, str]:
    """The agent as the controller starts it: read-only rootfs, private tmpfs for the secret, no capabilities;
    the JIT config arrives on stdin and is written to the tmpfs by the container's own command."""
    name = f"fake-gh-agent-{uuid.uuid4().hex[:10]}"
    script = (
        f"cat > {JITCONFIG_FILE} && exec /usr/local/bin/agent.sh"
        if stdin is not None
        else "exec /usr/local/bin/agent.sh"
    )
    args = [
        "docker", "run", "-i", "--rm", "--name", name, "--network", "host", "--read-only",
        "--tmpfs", "/run/secrets:uid=10001,gid=10001,mode=0700", "--tmpfs", "/tmp",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--pids-limit", "64", "--memory", "64m",
        image, "sh", "-c", script,
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin or b""), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            rm = await asyncio.create_subprocess_exec("docker", "rm", "-f", name, stdout=-3, stderr=-3)
            await rm.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.docker
async def test_agent_container_runs_a_job_against_the_fake(
    forge_agent_image: str, fakes: Callable[..., Any], hooks: Receiver, session: aiohttp.ClientSession
):
    fake = await fakes(webhook_url=hooks.url, webhook_secret=SECRET)
    job = fake.queue_job(REPO, ["self-hosted", "linux"], seconds=1.5, exit_code=3)
    body = (await jit(session, fake, "ctl-docker-1", ["self-hosted", "linux", "x64"])).body
    runner_id = body["runner"]["id"]
    code, out, err = await run_agent_container(forge_agent_image, body["encoded_jit_config"].encode())
    assert code == 3, (out, err)
    assert out.splitlines() == [
        f"agent ctl-docker-1 online at {fake.url}",
        f"running job {job}",
        f"job {job} done: exit 3",
    ], err
    await fake.webhooks_sent()
    assert [(p["action"], p["workflow_job"]["id"]) for p in hooks.payloads()] == [
        ("queued", job),
        ("in_progress", job),
        ("completed", job),
    ]
    assert hooks.payloads()[1]["workflow_job"]["runner_id"] == runner_id
    assert hooks.payloads()[2]["workflow_job"]["conclusion"] == "failure"
    assert all(verified(h, b) for h, b in hooks.got)
    assert ("POST", f"/_fake/agent/{runner_id}/heartbeat", 204) in fake.agent_requests  # alive while it ran
    assert fake.registered_runners(REPO) == []

    # The same JIT config again: its registration is gone with its job.
    code, out, err = await run_agent_container(forge_agent_image, body["encoded_jit_config"].encode())
    assert code == 3 and f"runner registration {runner_id} does not exist" in err, (out, err)


@pytest.mark.docker
@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (None, f"no JIT config at {JITCONFIG_FILE}"),
        (b"", "is empty"),
        (b"not base64 at all!", "is not valid base64"),
        (base64.b64encode(b'{"hello": "world"}'), "has no .runner file"),
        (base64.b64encode(json.dumps({".runner": "%%%"}).encode()), "is not base64"),
    ],
    ids=["missing", "empty", "not-base64", "not-a-jit-config", "bad-runner-file"],
)
async def test_agent_container_refuses_a_missing_or_undecodable_config(
    forge_agent_image: str, stdin: bytes | None, message: str
):
    code, out, err = await run_agent_container(forge_agent_image, stdin)
    assert code == 2, (out, err)
    assert message in err and out == "", (out, err)
