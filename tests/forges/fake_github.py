"""A loopback fake of the part of GitHub's REST API that ephemeral runners use, plus the agent side of a JIT
runner, so the controller's GitHub adapter and the whole runner lifecycle can be tested without github.com.

Written from GitHub's published REST documentation (docs.github.com, the REST API description in
github/rest-api-description, `api.github.com.2022-11-28.yaml`); where a behaviour is not in the docs but observed
on github.com and reported by users, the comment says so. What it serves:

* GitHub App auth: `POST /app/installations/{id}/access_tokens` with an RS256 JWT checked against the app's public
  key ("Generating a JSON Web Token (JWT) for a GitHub App"); installation tokens with `expires_at`; a fixed
  personal access token (the "token file" alternative); `Authorization: Bearer <t>` or `token <t>`.
* `GET /app/installations` (JWT), `GET /installation/repositories` (installation token), `GET /user/repos` (the
  token file's owner): which repositories the controller reaches, for reconciliation of globbed pools.
* Self-hosted runners ("REST API endpoints for self-hosted runners"), repository and organization scope:
  generate-jitconfig, list (paginated, `Link` header), get, delete.
* Workflow runs and jobs: `GET .../actions/runs?status=queued`, `GET .../actions/runs/{run_id}/jobs`,
  `GET .../actions/jobs/{job_id}`.
* Rate limits ("Rate limits for the REST API"): `x-ratelimit-*` headers on every answer, a primary budget per
  window, an injectable secondary limit with `retry-after`.
* `workflow_job` webhooks (queued, in_progress, completed) signed like GitHub's ("Validating webhook deliveries"),
  sent from a background task, every delivery and its answer recorded.

And, ours only (GitHub's real runner protocol is not public API): endpoints under `/_fake/agent/{agent_id}/` that
images/test-forge-agent/agent.sh (or `run_python_agent` below) calls after decoding the JIT config:

    POST /_fake/agent/{id}/online      200 {"runner_id", "name"}; 409 if this JIT config was already used
                                       (single use); 410 if the registration was deleted; 404 unknown id
    GET  /_fake/agent/{id}/assignment  long poll (up to `poll_wait_s`): 204 nothing yet, 200 {"job_id", "seconds",
                                       "exit"}, 410 registration deleted (the agent exits), 409 not online
    POST /_fake/agent/{id}/heartbeat   204 (the agent sends one a second while it "runs" a job); 410 deleted
    POST /_fake/agent/{id}/done        body: the exit code as text; 200 {"job_id", "conclusion"}; 409 no job

An agent unheard of for `agent_timeout_s` goes offline; a job it held fails (conclusion "failure", as GitHub fails a
job whose runner lost communication) and its registration stays, offline, for reconciliation to delete.

Usage::

    fake = await FakeGitHub.start(webhook_url=..., webhook_secret=b"...")
    fake.add_repository("octo-org/app", installation_id=42)
    job_id = fake.queue_job("octo-org/app", ["self-hosted", "linux"])
    ...
    await fake.stop()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from orchestrator.forges.protocol import RunnerScope

# GitHub's published example payloads, next to the repository (as tests/forges/test_events.py reads them).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "github-webhooks"  # copies of ../shared/fixtures
QUEUED_FIXTURE = FIXTURES / "workflow_job.queued.payload.json"

DOCS = "https://docs.github.com/rest"
DOCS_RATE_LIMITS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
DOCS_SECONDARY = DOCS_RATE_LIMITS + "#about-secondary-rate-limits"
API_VERSION = "2022-11-28"

# The labels GitHub gives a self-hosted runner itself ("read-only" in the API); any other is "custom". The JIT
# example response in the REST docs lists self-hosted/X64/macOS as read-only and no-gpu as custom.
DEFAULT_LABELS = frozenset({"self-hosted", "linux", "windows", "macos", "x64", "arm", "arm64"})

# The fields of a real runner's .credentials_rsaparams file (its RSA key); random filler here.
_FAKE_RSA_FIELDS = ("d", "dp", "dq", "exponent", "inverseQ", "modulus", "p", "q")

Json = dict[str, Any]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64json(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()


def labels_match(runner_labels: Iterable[str], job_labels: Iterable[str]) -> bool:
    """GitHub routes a job to a self-hosted runner that has every label of the job ("Using labels with self-hosted
    runners"): compared case-insensitively; `self-hosted` is implied for the runners this fake registers."""
    have = {label.lower() for label in runner_labels} | {"self-hosted"}
    return all(label.lower() in have for label in job_labels)


# --------------------------------------------------------------------------------------------------------------
# State


@dataclass
class Installation:
    id: int
    account: str


@dataclass
class Organization:
    login: str
    id: int
    installation_id: int | None
    runner_groups: dict[int, str]


@dataclass
class Repository:
    full_name: str
    id: int
    installation_id: int | None
    private: bool
    runner_groups: dict[int, str]

    @property
    def owner(self) -> str:
        return self.full_name.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.full_name.split("/", 1)[1]


@dataclass
class Runner:
    """A runner registration. `agent_*` fields are the fake's view of the agent process behind it."""

    id: int
    name: str
    scope: RunnerScope
    labels: list[tuple[int, str]]  # (label id, name)
    runner_group_id: int
    runner_group_name: str
    work_folder: str
    encoded_jit_config: str = field(repr=False)
    status: Literal["online", "offline"] = "offline"
    os: str = "unknown"
    busy: bool = False
    ephemeral: bool = True
    deleted: bool = False
    went_online: bool = False  # a JIT config is single use
    job_id: int | None = None
    ran_jobs: list[int] = field(default_factory=list)
    last_seen: float = 0.0  # time.monotonic() of the agent's last request
    polling: int = 0  # long polls in flight (a waiting agent is alive)
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def label_names(self) -> list[str]:
        return [name for _, name in self.labels]

    def to_json(self) -> Json:
        """The `runner` schema of the REST API description."""
        return {
            "id": self.id,
            "runner_group_id": self.runner_group_id,
            "name": self.name,
            "os": self.os,
            "status": self.status,
            "busy": self.busy,
            "ephemeral": self.ephemeral,
            "labels": [
                {"id": lid, "name": name, "type": "read-only" if name.lower() in DEFAULT_LABELS else "custom"}
                for lid, name in self.labels
            ],
        }


@dataclass
class WorkflowJob:
    id: int
    run_id: int
    repository: str
    labels: list[str]
    name: str
    head_sha: str
    head_branch: str
    workflow_name: str
    seconds: float
    exit_code: int
    created_at: float
    status: Literal["queued", "in_progress", "completed"] = "queued"
    conclusion: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    runner_id: int | None = None
    runner_name: str | None = None
    runner_group_id: int | None = None
    runner_group_name: str | None = None


@dataclass
class WorkflowRun:
    id: int
    repository: str
    name: str
    head_sha: str
    head_branch: str
    created_at: float
    run_number: int
    job_ids: list[int] = field(default_factory=list)
    updated_at: float = 0.0


@dataclass
class Delivery:
    """One webhook delivery: what was (or, `suppressed`, was not) sent and what the receiver answered."""

    delivery_id: str
    event: str
    action: str
    job_id: int | None
    headers: dict[str, str]
    body: bytes = field(repr=False)
    suppressed: bool = False
    status: int | None = None
    answer: bytes = b""
    error: str | None = None
    seconds: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def payload(self) -> Json:
        return dict(json.loads(self.body))


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    status: int
    caller: str  # "installation:<id>", "pat", "app", "anonymous"
    accept: str
    api_version: str


@dataclass
class _Token:
    value: str = field(repr=False)
    installation_id: int | None  # None: the personal access token
    expires_at: float
    repositories: frozenset[str] | None  # lower-case full names the token is limited to; None: all


@dataclass
class _Caller:
    kind: Literal["installation", "pat", "app", "anonymous"]
    installation_id: int | None = None
    repositories: frozenset[str] | None = None

    @property
    def key(self) -> str:
        return f"installation:{self.installation_id}" if self.kind == "installation" else self.kind


@dataclass
class _Bucket:
    limit: int
    used: int = 0
    reset: float = 0.0


CALLER = web.RequestKey("caller", _Caller)


class _Refusal(Exception):
    """An error answer a handler gives; the middleware adds the rate-limit headers."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def _error(status: int, message: str, *, documentation_url: str = DOCS, **extra: Any) -> web.Response:
    """GitHub's error body (the `basic-error` schema: message, documentation_url; github.com adds `status`)."""
    body: Json = {"message": message, "documentation_url": documentation_url, "status": str(status), **extra}
    return web.json_response(body, status=status)


def _auth(kind: Literal["jwt", "token"]) -> Callable[[Any], Any]:
    """Marks what a route authenticates with: an app JWT or a token (installation token or PAT)."""

    def mark(fn: Any) -> Any:
        fn._github_auth = kind
        return fn

    return mark


# --------------------------------------------------------------------------------------------------------------
# The fake


class FakeGitHub:
    """See the module docstring. Build it with `await FakeGitHub.start(...)`; every knob is a keyword of start."""

    def __init__(
        self,
        *,
        app_id: int = 424242,
        token_lifetime_s: float = 3600.0,
        strict_jwt_lifetime: bool = True,
        pat: str | None = None,
        rate_limit: int = 5000,
        rate_window_s: float = 3600.0,
        rate_limit_status: int = 403,
        webhook_url: str | None = None,
        webhook_secret: bytes | None = None,
        job_seconds: float = 0.2,
        job_exit: int = 0,
        poll_wait_s: float = 2.0,
        agent_timeout_s: float = 5.0,
        refuse_busy_delete: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app_id = app_id
        self.token_lifetime_s = token_lifetime_s
        # GitHub documents only "exp no more than 10 minutes into the future"; the issue asks for exp - iat <= 600 s
        # too, which a JWT with iat = now - 60 and exp = now + 600 (the docs' Ruby example) does not meet.
        self.strict_jwt_lifetime = strict_jwt_lifetime
        self.pat = pat or "github_pat_" + secrets.token_urlsafe(30)
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self.rate_limit_status = rate_limit_status
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.job_seconds = job_seconds
        self.job_exit = job_exit
        self.poll_wait_s = poll_wait_s
        self.agent_timeout_s = agent_timeout_s
        self.refuse_busy_delete = refuse_busy_delete
        self.clock = clock

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_pem: str = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ).decode()
        self.public_key_pem: str = (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

        self.installations: dict[int, Installation] = {}
        self.orgs: dict[str, Organization] = {}  # by lower-case login
        self.repositories: dict[str, Repository] = {}  # by lower-case full name
        self.runners: dict[int, Runner] = {}  # every registration ever made, deleted ones too (agents ask)
        self.jobs: dict[int, WorkflowJob] = {}
        self.runs: dict[int, WorkflowRun] = {}
        self.deliveries: list[Delivery] = []
        self.requests: list[tuple[str, str]] = []  # every REST API request, refused ones too
        self.request_log: list[RequestRecord] = []
        self.over_limit_requests: list[tuple[str, str]] = []  # refused: primary budget exhausted
        self.secondary_limited_requests: list[tuple[str, str]] = []  # refused: injected secondary limit
        self.agent_requests: list[tuple[str, str, int]] = []  # (method, path, status) of /_fake/agent calls

        self._tokens: dict[str, _Token] = {self.pat: _Token(self.pat, None, math.inf, None)}
        self._buckets: dict[str, _Bucket] = {}
        self._secondary_left = 0
        self._secondary_retry_after = 60
        self._secondary_with_retry_after = True
        self._ids = itertools.count(11)
        self._runner_ids = itertools.count(101)
        self._label_ids = itertools.count(1)
        self._job_ids = itertools.count(7_000_001)
        self._run_ids = itertools.count(9_000_001)
        self._run_numbers = itertools.count(1)
        self._outbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._queued_template: Json = json.loads(QUEUED_FIXTURE.read_text())
        self.url = ""

    # ---------------------------------------------------------------------------------------------- lifecycle

    @classmethod
    async def start(cls, *, host: str = "127.0.0.1", advertise_host: str | None = None, **kw: Any) -> FakeGitHub:
        """Listens on `host`, on a port the kernel picks. `advertise_host`: the address put in URLs (the JIT
        config's serverUrl, `Link` headers are built from the request) when agents reach the fake elsewhere, e.g.
        a Docker bridge gateway."""
        fake = cls(**kw)
        app = web.Application(middlewares=[fake._middleware], client_max_size=1024 * 1024)
        fake._routes(app)
        fake._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await fake._runner.setup()
        site = web.TCPSite(fake._runner, host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fake.url = f"http://{advertise_host or host}:{port}"
        fake._tasks.append(asyncio.create_task(fake._webhook_worker(), name="fake-github-webhooks"))
        fake._tasks.append(asyncio.create_task(fake._liveness_loop(), name="fake-github-liveness"))
        return fake

    async def stop(self) -> None:
        self._closing = True
        for runner in self.runners.values():
            runner.wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeGitHub:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------------------- set-up

    def add_installation(self, installation_id: int, account: str) -> Installation:
        inst = self.installations.get(installation_id) or Installation(installation_id, account)
        self.installations[installation_id] = inst
        return inst

    def add_org(
        self, login: str, *, installation_id: int | None = None, runner_groups: dict[int, str] | None = None
    ) -> Organization:
        """An organization; `installation_id`: the app's installation on it. Runner group 1 is "Default"."""
        if installation_id is not None:
            self.add_installation(installation_id, login)
        org = Organization(login, next(self._ids), installation_id, dict(runner_groups or {1: "Default"}))
        self.orgs[login.lower()] = org
        return org

    def add_repository(
        self,
        full_name: str,
        *,
        installation_id: int | None = None,
        private: bool = True,
        runner_groups: dict[int, str] | None = None,
    ) -> Repository:
        """A repository `owner/name`; `installation_id`: the app installation that covers it (None: only the PAT
        reaches it). Repository-level runners all go to group 1, "Default"."""
        if "/" not in full_name:
            raise ValueError(f"repository {full_name!r} is not owner/name")
        if installation_id is not None:
            self.add_installation(installation_id, full_name.split("/")[0])
        repo = Repository(full_name, next(self._ids), installation_id, private, dict(runner_groups or {1: "Default"}))
        self.repositories[full_name.lower()] = repo
        return repo

    def secondary_limit(self, n_requests: int, retry_after_s: int = 60, *, with_retry_after: bool = True) -> None:
        """The next `n_requests` REST requests are refused as over a secondary rate limit: 403 with `retry-after`
        (or, `with_retry_after=False`, with `x-ratelimit-remaining: 0` and a reset `retry_after_s` ahead; the docs
        allow both)."""
        self._secondary_left = n_requests
        self._secondary_retry_after = retry_after_s
        self._secondary_with_retry_after = with_retry_after

    def expire_tokens(self) -> None:
        """Every installation token issued so far expires now (the PAT stays)."""
        for token in self._tokens.values():
            if token.installation_id is not None:
                token.expires_at = self.clock() - 1

    # -------------------------------------------------------------------------------------------- simulation

    def queue_job(
        self,
        repository: str,
        labels: Sequence[str],
        *,
        name: str = "build",
        send_webhook: bool = True,
        run_id: int | None = None,
        seconds: float | None = None,
        exit_code: int | None = None,
        head_sha: str | None = None,
        head_branch: str = "main",
        workflow_name: str = "CI",
    ) -> int:
        """Queues a workflow job (in a new run, or in `run_id`'s) and returns its id. A `queued` webhook is sent
        unless `send_webhook=False` (a lost delivery: the job is only found through the API). The agent that gets
        the job "runs" it for `seconds` and exits `exit_code` (defaults: the fake's job_seconds, job_exit)."""
        repo = self._repo(repository)
        if repo is None:
            raise KeyError(f"unknown repository {repository}; add_repository() first")
        now = self.clock()
        if run_id is None:
            run = WorkflowRun(
                next(self._run_ids),
                repo.full_name,
                workflow_name,
                head_sha or secrets.token_hex(20),
                head_branch,
                now,
                next(self._run_numbers),
                updated_at=now,
            )
            self.runs[run.id] = run
        else:
            run = self.runs[run_id]
        job = WorkflowJob(
            id=next(self._job_ids),
            run_id=run.id,
            repository=repo.full_name,
            labels=list(labels),
            name=name,
            head_sha=run.head_sha,
            head_branch=run.head_branch,
            workflow_name=run.name,
            seconds=self.job_seconds if seconds is None else seconds,
            exit_code=self.job_exit if exit_code is None else exit_code,
            created_at=now,
            started_at=now,  # GitHub's queued payloads carry started_at = created_at
        )
        self.jobs[job.id] = job
        run.job_ids.append(job.id)
        self._webhook(job, "queued", suppressed=not send_webhook)
        self._schedule()
        return job.id

    def job_state(self, job_id: int) -> str:
        """queued, in_progress or completed."""
        return self.jobs[job_id].status

    def registered_runners(self, scope: RunnerScope | str) -> list[Runner]:
        """The registrations that exist now in `scope` (a RunnerScope, "owner/repo" or an org login)."""
        if isinstance(scope, str):
            scope = RunnerScope("repo" if "/" in scope else "org", scope)
        return [r for r in self.runners.values() if not r.deleted and self._same_scope(r.scope, scope)]

    def runner(self, runner_id: int) -> Runner:
        return self.runners[runner_id]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"fake GitHub: timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.02)

    async def wait_job(self, job_id: int, status: str, timeout: float = 30.0) -> WorkflowJob:
        await self.wait_for(lambda: self.jobs[job_id].status == status, timeout, f"job {job_id} {status}")
        return self.jobs[job_id]

    async def webhooks_sent(self) -> None:
        """Returns once every webhook enqueued so far has been delivered (or failed)."""
        await self._outbox.join()

    def sent(self, action: str | None = None, job_id: int | None = None) -> list[Delivery]:
        """The deliveries actually sent (not suppressed), optionally of one action / job."""
        return [
            d
            for d in self.deliveries
            if not d.suppressed and (action is None or d.action == action) and (job_id is None or d.job_id == job_id)
        ]

    async def redeliver(self, delivery_id: str) -> Delivery:
        """Sends a delivery again with the same X-GitHub-Delivery, as "Redeliver" in the app settings does."""
        old = next(d for d in self.deliveries if d.delivery_id == delivery_id)
        again = Delivery(old.delivery_id, old.event, old.action, old.job_id, dict(old.headers), old.body)
        self.deliveries.append(again)
        self._outbox.put_nowait(again)
        await again.done.wait()
        return again

    # ------------------------------------------------------------------------------------------------ routes

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/app/installations/{installation_id}/access_tokens", self._access_tokens)
        r.add_get("/app/installations", self._list_installations)
        r.add_get("/app/installations/{installation_id}", self._get_installation)
        r.add_get("/installation/repositories", self._installation_repositories)
        r.add_get("/user/repos", self._user_repos)
        r.add_get("/repos/{owner}/{repo}/installation", self._repo_installation)
        r.add_get("/orgs/{org}/installation", self._org_installation)
        r.add_get("/rate_limit", self._rate_limit_status)
        for prefix in ("/repos/{owner}/{repo}", "/orgs/{org}"):
            r.add_post(prefix + "/actions/runners/generate-jitconfig", self._generate_jitconfig)
            r.add_get(prefix + "/actions/runners", self._list_runners)
            r.add_get(prefix + "/actions/runners/{runner_id}", self._get_runner)
            r.add_delete(prefix + "/actions/runners/{runner_id}", self._delete_runner)
        r.add_get("/repos/{owner}/{repo}/actions/runs", self._list_runs)
        r.add_get("/repos/{owner}/{repo}/actions/runs/{run_id}/jobs", self._list_jobs)
        r.add_get("/repos/{owner}/{repo}/actions/jobs/{job_id}", self._get_job)
        r.add_post("/_fake/agent/{agent_id}/online", self._agent_online)
        r.add_get("/_fake/agent/{agent_id}/assignment", self._agent_assignment)
        r.add_post("/_fake/agent/{agent_id}/heartbeat", self._agent_heartbeat)
        r.add_post("/_fake/agent/{agent_id}/done", self._agent_done)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/_fake/"):
            answer = await self._answer(request, handler)
            self.agent_requests.append((request.method, request.path, answer.status))
            return answer

        self.requests.append((request.method, request.path))
        kind = getattr(handler, "_github_auth", "token")
        caller: _Caller | None = None
        response: web.StreamResponse
        if request.match_info.http_exception is not None:
            response = _error(request.match_info.http_exception.status, "Not Found")
        else:
            caller, refusal = (self._authenticate_jwt if kind == "jwt" else self._authenticate_token)(request)
            if refusal is not None:
                response = refusal
            else:
                assert caller is not None
                request[CALLER] = caller
                response = self._rate_limited(request, caller) or await self._answer(request, handler)
        self._rate_headers(response, caller)
        response.headers["X-GitHub-Request-Id"] = uuid.uuid4().hex[:16].upper()
        response.headers["X-GitHub-Api-Version-Selected"] = API_VERSION
        self.request_log.append(
            RequestRecord(
                request.method,
                request.path,
                dict(request.query),
                response.status,
                caller.key if caller else "anonymous",
                request.headers.get("Accept", ""),
                request.headers.get("X-GitHub-Api-Version", ""),
            )
        )
        return response

    async def _answer(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refusal as refusal:
            return _error(refusal.status, refusal.message, **refusal.extra)

    # ------------------------------------------------------------------------------------------ authentication

    def _bearer(self, request: web.Request) -> str | None:
        """`Authorization: Bearer <t>` or `token <t>` ("Authenticating to the REST API": both are accepted, JWTs
        need Bearer)."""
        value = request.headers.get("Authorization", "")
        scheme, _, credential = value.partition(" ")
        if scheme.lower() in ("bearer", "token") and credential.strip():
            return credential.strip()
        return None

    def _authenticate_token(self, request: web.Request) -> tuple[_Caller | None, web.Response | None]:
        value = self._bearer(request)
        if value is None:
            # The `requires_authentication` response of the REST API description.
            return None, _error(401, "Requires authentication")
        token = self._tokens.get(value)
        # An unknown, revoked or expired token: 401 "Bad credentials" ("Troubleshooting the REST API").
        if token is None or token.expires_at <= self.clock():
            return None, _error(401, "Bad credentials")
        if token.installation_id is None:
            return _Caller("pat"), None
        return _Caller("installation", token.installation_id, token.repositories), None

    def _authenticate_jwt(self, request: web.Request) -> tuple[_Caller | None, web.Response | None]:
        """An app JWT ("Generating a JSON Web Token (JWT) for a GitHub App"): RS256, signed with the app's private
        key; `iss` the app id (integer or its decimal string); `iat` not in the future; `exp` in the future and no
        more than 10 minutes ahead. The messages are github.com's, as its users report them."""
        value = self._bearer(request)
        if value is None:
            return None, _error(401, "Requires authentication")
        undecodable = _error(401, "A JSON web token could not be decoded")
        # The claims are read as plain JSON (PyJWT's claim checks would refuse an integer iss, which GitHub takes);
        # the signature is checked with PyJWS against the app's public key, RS256 only.
        try:
            header = jwt.get_unverified_header(value)
            unverified = json.loads(jwt.api_jws.PyJWS().decode(value, options={"verify_signature": False}))
        except (jwt.PyJWTError, ValueError):
            return None, undecodable
        if header.get("alg") != "RS256" or not isinstance(unverified, dict):
            return None, undecodable
        iss = unverified.get("iss")
        if isinstance(iss, bool) or not (isinstance(iss, int) or (isinstance(iss, str) and iss.isdigit())):
            return None, _error(401, "'Issuer' claim ('iss') must be an Integer")
        if int(iss) != self.app_id:
            # An app id GitHub does not know: 404 "Integration not found". (A real app id with another app's key
            # answers "A JSON web token could not be decoded", as a wrong key does here.)
            return None, _error(404, "Integration not found")
        try:
            claims = json.loads(jwt.api_jws.PyJWS().decode(value, self.public_key_pem, algorithms=["RS256"]))
        except (jwt.PyJWTError, ValueError):
            return None, undecodable
        now = self.clock()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or isinstance(iat, bool) or iat > now:
            return None, _error(
                401, "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
            )
        if not isinstance(exp, int) or isinstance(exp, bool) or exp <= now:
            return None, _error(
                401,
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at which "
                "the assertion expires",
            )
        if exp > now + 600 or (self.strict_jwt_lifetime and exp - iat > 600):
            return None, _error(401, "'Expiration time' claim ('exp') is too far in the future")
        return _Caller("app"), None

    # ------------------------------------------------------------------------------------------- rate limits

    def _bucket(self, caller: _Caller | None) -> _Bucket:
        key = caller.key if caller else "anonymous"
        bucket = self._buckets.get(key)
        now = self.clock()
        if bucket is None or now >= bucket.reset:
            # Unauthenticated requests have their own budget of 60 an hour, counted (never refused) here.
            bucket = _Bucket(self.rate_limit if caller else 60, 0, math.floor(now) + self.rate_window_s)
            self._buckets[key] = bucket
        return bucket

    def _rate_limited(self, request: web.Request, caller: _Caller) -> web.Response | None:
        """Secondary limit first (injected), then the primary budget of the caller ("Exceeding the rate limit":
        403 or 429; primary: x-ratelimit-remaining 0 until x-ratelimit-reset; secondary: retry-after)."""
        where = (request.method, request.path)
        if request.path == "/rate_limit":
            return None  # "Calling this endpoint does not count against your primary rate limit"
        if self._secondary_left > 0:
            self._secondary_left -= 1
            self.secondary_limited_requests.append(where)
            response = _error(
                403,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you "
                f"reach out to GitHub Support for help, please include the request ID {uuid.uuid4().hex[:16]}.",
                documentation_url=DOCS_SECONDARY,
            )
            if self._secondary_with_retry_after:
                response.headers["Retry-After"] = str(self._secondary_retry_after)
            else:
                response.headers["X-RateLimit-Remaining"] = "0"
                response.headers["X-RateLimit-Reset"] = str(math.ceil(self.clock() + self._secondary_retry_after))
            return response
        bucket = self._bucket(caller)
        if bucket.used >= bucket.limit:
            self.over_limit_requests.append(where)
            who = f"installation ID {caller.installation_id}" if caller.kind == "installation" else "user ID 1"
            if caller.kind == "app":
                who = f"app ID {self.app_id}"
            return _error(
                self.rate_limit_status,
                f"API rate limit exceeded for {who}. If you reach out to GitHub Support for help, please include "
                f"the request ID {uuid.uuid4().hex[:16]}.",
                documentation_url=DOCS_RATE_LIMITS,
            )
        bucket.used += 1
        return None

    def _rate_headers(self, response: web.StreamResponse, caller: _Caller | None) -> None:
        """x-ratelimit-limit/-remaining/-used/-reset (UTC epoch seconds)/-resource on every answer. Headers a
        secondary-limit answer set itself are kept."""
        bucket = self._bucket(caller)
        if caller is None:
            bucket.used = min(bucket.used + 1, bucket.limit)
        headers = {
            "X-RateLimit-Limit": str(bucket.limit),
            "X-RateLimit-Remaining": str(max(bucket.limit - bucket.used, 0)),
            "X-RateLimit-Reset": str(math.ceil(bucket.reset)),
            "X-RateLimit-Used": str(bucket.used),
            "X-RateLimit-Resource": "core",
        }
        for name, value in headers.items():
            response.headers.setdefault(name, value)

    async def _rate_limit_status(self, request: web.Request) -> web.Response:
        """GET /rate_limit: the `rate-limit-overview` schema, core only."""
        bucket = self._bucket(request[CALLER])
        core = {
            "limit": bucket.limit,
            "used": bucket.used,
            "remaining": max(bucket.limit - bucket.used, 0),
            "reset": math.ceil(bucket.reset),
        }
        return web.json_response({"resources": {"core": core}, "rate": core})

    # ------------------------------------------------------------------------------------------ installations

    def _installation_json(self, inst: Installation) -> Json:
        return {
            "id": inst.id,
            "app_id": self.app_id,
            "account": {"login": inst.account, "id": 1000 + inst.id},
            "repository_selection": "all",
            "target_type": "Organization" if inst.account.lower() in self.orgs else "User",
            "permissions": {"administration": "write", "actions": "read", "metadata": "read"},
        }

    def _installation(self, request: web.Request) -> Installation:
        raw = request.match_info["installation_id"]
        inst = self.installations.get(int(raw)) if raw.isdigit() else None
        if inst is None:
            raise _Refusal(404, "Not Found")
        return inst

    @_auth("jwt")
    async def _access_tokens(self, request: web.Request) -> web.Response:
        """POST /app/installations/{installation_id}/access_tokens ("Create an installation access token for an
        app"): 201 `installation-token` {token, expires_at, permissions, repository_selection[, repositories]};
        404 unknown installation; 422 a requested repository the installation does not cover."""
        inst = self._installation(request)
        body = await self._json_body(request, required=False)
        names = body.get("repositories")
        repos: frozenset[str] | None = None
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise _Refusal(422, "Invalid request.\n\nFor 'properties/repositories', is not an array of strings.")
            covered = {r.name.lower(): r for r in self._installation_repos(inst.id) if r.owner == inst.account}
            if any(n.lower() not in covered for n in names):
                raise _Refusal(
                    422,
                    "There is at least one repository that does not exist or is not accessible to the parent "
                    "installation.",
                )
            repos = frozenset(covered[n.lower()].full_name.lower() for n in names)
        value = "ghs_" + secrets.token_urlsafe(27)[:36]
        expires_at = self.clock() + self.token_lifetime_s
        self._tokens[value] = _Token(value, inst.id, expires_at, repos)
        answer: Json = {
            "token": value,
            "expires_at": _iso(expires_at),
            "permissions": body.get("permissions")
            or {"administration": "write", "actions": "read", "metadata": "read"},
            "repository_selection": "selected" if repos is not None else "all",
        }
        if repos is not None:
            answer["repositories"] = [self._repo_json(self.repositories[n]) for n in sorted(repos)]
        return web.json_response(answer, status=201)

    @_auth("jwt")
    async def _list_installations(self, request: web.Request) -> web.Response:
        """GET /app/installations ("List installations for the authenticated app"): a bare array, paginated."""
        chunk, headers = self._paginate(request, sorted(self.installations.values(), key=lambda i: i.id))
        return web.json_response([self._installation_json(i) for i in chunk], headers=headers)

    @_auth("token")
    async def _installation_repositories(self, request: web.Request) -> web.Response:
        """GET /installation/repositories ("List repositories accessible to the app installation"): 200
        {total_count, repository_selection, repositories}, paginated; only with an installation token."""
        caller: _Caller = request[CALLER]
        if caller.kind != "installation" or caller.installation_id is None:
            raise _Refusal(403, "This endpoint requires you to be authenticated as a GitHub App installation.")
        repos = sorted(
            (
                r
                for r in self._installation_repos(caller.installation_id)
                if caller.repositories is None or r.full_name.lower() in caller.repositories
            ),
            key=lambda r: r.id,
        )
        chunk, headers = self._paginate(request, repos)
        body = {
            "total_count": len(repos),
            "repository_selection": "all" if caller.repositories is None else "selected",
            "repositories": [self._repo_json(r) for r in chunk],
        }
        return web.json_response(body, headers=headers)

    @_auth("token")
    async def _user_repos(self, request: web.Request) -> web.Response:
        """GET /user/repos ("List repositories for the authenticated user"): a bare array, paginated; the token's
        owner reaches every repository of the fake. An installation token has no user: 403."""
        caller: _Caller = request[CALLER]
        if caller.kind != "pat":
            raise _Refusal(403, "Resource not accessible by integration")
        chunk, headers = self._paginate(request, sorted(self.repositories.values(), key=lambda r: r.id))
        return web.json_response([self._repo_json(r) for r in chunk], headers=headers)

    @_auth("jwt")
    async def _get_installation(self, request: web.Request) -> web.Response:
        return web.json_response(self._installation_json(self._installation(request)))

    @_auth("jwt")
    async def _repo_installation(self, request: web.Request) -> web.Response:
        """GET /repos/{owner}/{repo}/installation: the app's installation on a repository, 404 if none."""
        repo = self._repo(f"{request.match_info['owner']}/{request.match_info['repo']}")
        if repo is None or repo.installation_id is None:
            raise _Refusal(404, "Not Found")
        return web.json_response(self._installation_json(self.installations[repo.installation_id]))

    @_auth("jwt")
    async def _org_installation(self, request: web.Request) -> web.Response:
        org = self.orgs.get(request.match_info["org"].lower())
        if org is None or org.installation_id is None:
            raise _Refusal(404, "Not Found")
        return web.json_response(self._installation_json(self.installations[org.installation_id]))

    def _installation_repos(self, installation_id: int) -> list[Repository]:
        return [r for r in self.repositories.values() if r.installation_id == installation_id]

    # ---------------------------------------------------------------------------------------------- scopes

    def _repo(self, full_name: str) -> Repository | None:
        return self.repositories.get(full_name.lower())  # "The name is not case sensitive."

    def _scope(self, request: web.Request) -> tuple[RunnerScope, dict[int, str]]:
        """The repository or organization of a request, as the caller may see it: 404 if it does not exist,
        403 "Resource not accessible by integration" if the installation token does not cover it."""
        caller: _Caller = request[CALLER]
        if "org" in request.match_info:
            org = self.orgs.get(request.match_info["org"].lower())
            if org is None:
                raise _Refusal(404, "Not Found")
            if caller.kind == "installation" and org.installation_id != caller.installation_id:
                raise _Refusal(403, "Resource not accessible by integration")
            return RunnerScope("org", org.login, org.installation_id), org.runner_groups
        repo = self._repo(f"{request.match_info['owner']}/{request.match_info['repo']}")
        if repo is None:
            raise _Refusal(404, "Not Found")
        if caller.kind == "installation" and (
            repo.installation_id != caller.installation_id
            or (caller.repositories is not None and repo.full_name.lower() not in caller.repositories)
        ):
            raise _Refusal(403, "Resource not accessible by integration")
        return RunnerScope("repo", repo.full_name, repo.installation_id), repo.runner_groups

    @staticmethod
    def _same_scope(a: RunnerScope, b: RunnerScope) -> bool:
        return a.kind == b.kind and a.name.lower() == b.name.lower()

    def _covers(self, runner: Runner, job: WorkflowJob) -> bool:
        """A repository runner serves its repository; an organization runner the organization's repositories."""
        if runner.scope.kind == "repo":
            return runner.scope.name.lower() == job.repository.lower()
        return job.repository.split("/")[0].lower() == runner.scope.name.lower()

    # ----------------------------------------------------------------------------------------------- runners

    async def _json_body(self, request: web.Request, *, required: bool = True) -> Json:
        raw = await request.read()
        if not raw.strip():
            if required:
                raise _Refusal(400, "Problems parsing JSON")
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise _Refusal(400, "Problems parsing JSON") from None
        if not isinstance(body, dict):
            raise _Refusal(400, "Body should be a JSON object")
        return body

    async def _generate_jitconfig(self, request: web.Request) -> web.Response:
        """POST .../actions/runners/generate-jitconfig ("Create configuration for a just-in-time runner"): body
        {name, runner_group_id, labels (1..100), work_folder = "_work"}, all but work_folder required.

        201 {"runner": runner, "encoded_jit_config"}; 404 unknown repository/organization; 422 a body that does
        not match the schema (github.com: "Invalid input: object is missing required key: runner_group_id");
        409 a runner of that name already exists in the scope (github.com: "Already exists - A runner with the
        name ... already exists.", reported by users); a runner group the scope does not have: 404 (github.com,
        reported by users; the docs list 404, 409, 422)."""
        scope, groups = self._scope(request)
        body = await self._json_body(request)
        for key in ("name", "runner_group_id", "labels"):
            if key not in body:
                raise _Refusal(422, f"Invalid input: object is missing required key: {key}.")
        name, group_id, labels = body["name"], body["runner_group_id"], body["labels"]
        work_folder = body.get("work_folder", "_work")
        if not isinstance(name, str) or not name.strip():
            raise _Refusal(422, "Invalid input: name must be a non-empty string.")
        if not isinstance(group_id, int) or isinstance(group_id, bool):
            raise _Refusal(422, "Invalid input: runner_group_id must be an integer.")
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            raise _Refusal(422, "Invalid input: labels must be an array of strings.")
        if not 1 <= len(labels) <= 100:
            raise _Refusal(422, "Invalid input: labels must have between 1 and 100 items.")
        if not isinstance(work_folder, str):
            raise _Refusal(422, "Invalid input: work_folder must be a string.")
        if group_id not in groups:
            raise _Refusal(404, "Not Found")
        if any(r.name.lower() == name.lower() for r in self.registered_runners(scope)):
            raise _Refusal(409, f"Already exists - A runner with the name {name} already exists.")
        runner_id = next(self._runner_ids)
        runner = Runner(
            id=runner_id,
            name=name,
            scope=scope,
            labels=[(next(self._label_ids), label) for label in dict.fromkeys(labels)],
            runner_group_id=group_id,
            runner_group_name=groups[group_id],
            work_folder=work_folder,
            encoded_jit_config="",
        )
        runner.encoded_jit_config = self._encode_jit_config(runner)
        self.runners[runner_id] = runner
        return web.json_response(
            {"runner": runner.to_json(), "encoded_jit_config": runner.encoded_jit_config}, status=201
        )

    def _encode_jit_config(self, runner: Runner) -> str:
        """Like the real one: base64 of a JSON object mapping the runner's config file names to their base64
        content. `.runner` is what agent.sh reads; the credentials are filler of the real files' shape."""
        runner_file = {
            "agentId": runner.id,
            "agentName": runner.name,
            "poolId": runner.runner_group_id,
            "poolName": runner.runner_group_name,
            "serverUrl": self.url,
            "gitHubUrl": f"{self.url}/{runner.scope.name}",
            "workFolder": runner.work_folder,
            "ephemeral": True,
            "disableUpdate": True,
        }
        credentials = {
            "scheme": "OAuth",
            "data": {
                "clientId": str(uuid.uuid4()),
                "authorizationUrl": f"{self.url}/_fake/oauth2/token",
                "requireFipsCryptography": "False",
            },
        }
        rsa_params = {k: base64.b64encode(secrets.token_bytes(32)).decode() for k in _FAKE_RSA_FIELDS}
        rsa_params["exponent"] = "AQAB"
        return _b64json(
            {
                ".runner": _b64json(runner_file),
                ".credentials": _b64json(credentials),
                ".credentials_rsaparams": _b64json(rsa_params),
            }
        )

    def _paginate(self, request: web.Request, items: Sequence[Any]) -> tuple[Sequence[Any], dict[str, str]]:
        """`per_page` (default 30, max 100) and `page` (default 1), with a `Link` header naming the first, prev,
        next and last pages ("Using pagination in the REST API"); no rel="next" on the last page."""

        def number(key: str, default: int) -> int:
            raw = request.query.get(key, "")
            return int(raw) if raw.isdigit() and int(raw) > 0 else default

        per_page = min(number("per_page", 30), 100)
        page = number("page", 1)
        last = max(math.ceil(len(items) / per_page), 1)
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []
        for rel, target in (("prev", page - 1), ("next", page + 1), ("last", last), ("first", 1)):
            if (
                (rel == "prev" and page <= 1)
                or (rel == "next" and page >= last)
                or (rel in ("last", "first") and last == 1)
            ):
                continue
            url = request.url.with_query({**request.query, "per_page": str(per_page), "page": str(target)})
            links.append(f'<{url}>; rel="{rel}"')
        return chunk, ({"Link": ", ".join(links)} if links else {})

    async def _list_runners(self, request: web.Request) -> web.Response:
        """GET .../actions/runners[?name=] ("List self-hosted runners"): 200 {total_count, runners}, paginated."""
        scope, _ = self._scope(request)
        runners = sorted(self.registered_runners(scope), key=lambda r: r.id)
        if "name" in request.query:
            runners = [r for r in runners if r.name == request.query["name"]]
        chunk, headers = self._paginate(request, runners)
        body = {"total_count": len(runners), "runners": [r.to_json() for r in chunk]}
        return web.json_response(body, headers=headers)

    def _scoped_runner(self, request: web.Request) -> Runner:
        scope, _ = self._scope(request)
        raw = request.match_info["runner_id"]
        runner = self.runners.get(int(raw)) if raw.isdigit() else None
        if runner is None or runner.deleted or not self._same_scope(runner.scope, scope):
            raise _Refusal(404, "Not Found")
        return runner

    async def _get_runner(self, request: web.Request) -> web.Response:
        return web.json_response(self._scoped_runner(request).to_json())

    async def _delete_runner(self, request: web.Request) -> web.Response:
        """DELETE .../actions/runners/{runner_id} ("Delete a self-hosted runner"): 204; 404 when there is no such
        runner (gone already); 422 (documented) while it runs a job (github.com: 'Bad request - Runner ... is still
        running a job', as users report). The agent learns of the deletion at its next poll (410) and exits."""
        runner = self._scoped_runner(request)
        if runner.busy and self.refuse_busy_delete:
            raise _Refusal(422, f'Bad request - Runner "{runner.name}" is still running a job"')
        self._delete(runner)
        return web.Response(status=204)

    def _delete(self, runner: Runner) -> None:
        runner.deleted = True
        runner.status = "offline"
        runner.wake.set()

    # ------------------------------------------------------------------------------------------- runs and jobs

    def _run_status(self, run: WorkflowRun) -> tuple[str, str | None]:
        """A run is queued until one of its jobs starts, in_progress until all are done (so a job still queued in
        an in_progress run is not listed by ?status=queued, as on github.com)."""
        jobs = [self.jobs[j] for j in run.job_ids]
        if all(j.status == "completed" for j in jobs):
            failed = any(j.conclusion != "success" for j in jobs)
            return "completed", "failure" if failed else "success"
        if all(j.status == "queued" for j in jobs):
            return "queued", None
        return "in_progress", None

    def _repo_json(self, repo: Repository) -> Json:
        return {
            "id": repo.id,
            "name": repo.name,
            "full_name": repo.full_name,
            "private": repo.private,
            "owner": {"login": repo.owner, "type": "Organization" if repo.owner.lower() in self.orgs else "User"},
            "url": f"{self.url}/repos/{repo.full_name}",
        }

    def _run_json(self, run: WorkflowRun) -> Json:
        status, conclusion = self._run_status(run)
        base = f"{self.url}/repos/{run.repository}/actions/runs/{run.id}"
        return {
            "id": run.id,
            "name": run.name,
            "head_branch": run.head_branch,
            "head_sha": run.head_sha,
            "path": ".github/workflows/ci.yml",
            "run_number": run.run_number,
            "run_attempt": 1,
            "event": "push",
            "status": status,
            "conclusion": conclusion,
            "workflow_id": 1,
            "url": base,
            "jobs_url": base + "/jobs",
            "created_at": _iso(run.created_at),
            "updated_at": _iso(run.updated_at),
            "run_started_at": _iso(run.created_at),
            "repository": self._repo_json(self.repositories[run.repository.lower()]),
        }

    def _job_json(self, job: WorkflowJob) -> Json:
        """The `job` schema of the REST API description (the same fields as a webhook's workflow_job)."""
        return {
            "id": job.id,
            "run_id": job.run_id,
            "run_url": f"{self.url}/repos/{job.repository}/actions/runs/{job.run_id}",
            "run_attempt": 1,
            "node_id": base64.b64encode(f"WorkflowJob{job.id}".encode()).decode(),
            "head_sha": job.head_sha,
            "head_branch": job.head_branch,
            "url": f"{self.url}/repos/{job.repository}/actions/jobs/{job.id}",
            "html_url": f"https://github.com/{job.repository}/actions/runs/{job.run_id}/job/{job.id}",
            "status": job.status,
            "conclusion": job.conclusion,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at) if job.started_at else None,
            "completed_at": _iso(job.completed_at) if job.completed_at else None,
            "name": job.name,
            "steps": [],
            "check_run_url": f"{self.url}/repos/{job.repository}/check-runs/{job.id}",
            "labels": list(job.labels),
            "runner_id": job.runner_id,
            "runner_name": job.runner_name,
            "runner_group_id": job.runner_group_id,
            "runner_group_name": job.runner_group_name,
            "workflow_name": job.workflow_name,
        }

    async def _list_runs(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/actions/runs[?status=] ("List workflow runs for a repository"): 200 {total_count,
        workflow_runs}, newest first, paginated."""
        scope, _ = self._scope(request)
        runs = [r for r in self.runs.values() if r.repository.lower() == scope.name.lower()]
        wanted = request.query.get("status")
        if wanted:
            runs = [r for r in runs if wanted in self._run_status(r)]
        runs.sort(key=lambda r: r.id, reverse=True)
        chunk, headers = self._paginate(request, runs)
        body = {"total_count": len(runs), "workflow_runs": [self._run_json(r) for r in chunk]}
        return web.json_response(body, headers=headers)

    async def _list_jobs(self, request: web.Request) -> web.Response:
        """GET /repos/{o}/{r}/actions/runs/{run_id}/jobs ("List jobs for a workflow run"): {total_count, jobs}."""
        scope, _ = self._scope(request)
        raw = request.match_info["run_id"]
        run = self.runs.get(int(raw)) if raw.isdigit() else None
        if run is None or run.repository.lower() != scope.name.lower():
            raise _Refusal(404, "Not Found")
        jobs = [self.jobs[j] for j in run.job_ids]
        chunk, headers = self._paginate(request, jobs)
        return web.json_response(
            {"total_count": len(jobs), "jobs": [self._job_json(j) for j in chunk]}, headers=headers
        )

    async def _get_job(self, request: web.Request) -> web.Response:
        scope, _ = self._scope(request)
        raw = request.match_info["job_id"]
        job = self.jobs.get(int(raw)) if raw.isdigit() else None
        if job is None or job.repository.lower() != scope.name.lower():
            raise _Refusal(404, "Not Found")
        return web.json_response(self._job_json(job))

    # -------------------------------------------------------------------------------------------- scheduling

    def _schedule(self) -> None:
        """Gives queued jobs (oldest first) to idle online runners that cover the repository and have every label
        of the job. A JIT runner takes any job that matches, not necessarily the one it was made for."""
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.status != "queued":
                continue
            for runner in sorted(self.runners.values(), key=lambda r: r.id):
                if (
                    runner.status == "online"
                    and not runner.deleted
                    and not runner.busy
                    and runner.job_id is None
                    and not runner.ran_jobs  # ephemeral: one job per registration
                    and self._covers(runner, job)
                    and labels_match(runner.label_names, job.labels)
                ):
                    self._assign(job, runner)
                    break

    def _assign(self, job: WorkflowJob, runner: Runner) -> None:
        now = self.clock()
        job.status, job.started_at = "in_progress", now
        job.runner_id, job.runner_name = runner.id, runner.name
        job.runner_group_id, job.runner_group_name = runner.runner_group_id, runner.runner_group_name
        runner.busy, runner.job_id = True, job.id
        runner.ran_jobs.append(job.id)
        self.runs[job.run_id].updated_at = now
        self._webhook(job, "in_progress")
        runner.wake.set()

    def _finish(self, job: WorkflowJob, conclusion: str) -> None:
        now = self.clock()
        job.status, job.conclusion, job.completed_at = "completed", conclusion, now
        self.runs[job.run_id].updated_at = now
        self._webhook(job, "completed")

    async def _liveness_loop(self) -> None:
        """An agent unheard of for agent_timeout_s is offline; the job it held fails."""
        while True:
            await asyncio.sleep(0.1)
            deadline = time.monotonic() - self.agent_timeout_s
            for runner in self.runners.values():
                if runner.status != "online" or runner.polling or runner.last_seen > deadline:
                    continue
                runner.status = "offline"
                if runner.job_id is not None:
                    job = self.jobs[runner.job_id]
                    runner.busy, runner.job_id = False, None
                    if job.status == "in_progress":
                        self._finish(job, "failure")

    # ------------------------------------------------------------------------------------------------ agents

    def _agent(self, request: web.Request, *, live: bool = True) -> Runner:
        raw = request.match_info["agent_id"]
        runner = self.runners.get(int(raw)) if raw.isdigit() else None
        if runner is None:
            raise _Refusal(404, f"no runner registration {raw}")
        if runner.deleted and live:
            raise _Refusal(410, f"the registration of runner {runner.name} was deleted")
        runner.last_seen = time.monotonic()
        return runner

    async def _agent_online(self, request: web.Request) -> web.Response:
        runner = self._agent(request)
        if runner.went_online:
            # A JIT config registers one session, once ("The encoded value cannot register another runner").
            raise _Refusal(409, f"A session for runner {runner.name} already exists: a JIT config is single use")
        runner.went_online = True
        runner.status, runner.os = "online", "Linux"
        self._schedule()
        return web.json_response({"runner_id": runner.id, "name": runner.name})

    async def _agent_assignment(self, request: web.Request) -> web.Response:
        runner = self._agent(request)
        if runner.status != "online":
            raise _Refusal(409, f"runner {runner.name} is not online")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.poll_wait_s
        runner.polling += 1
        try:
            while runner.job_id is None and not runner.deleted and not self._closing:
                runner.wake.clear()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(runner.wake.wait(), remaining)
                except TimeoutError:
                    break
        finally:
            runner.polling -= 1
            runner.last_seen = time.monotonic()
        if runner.deleted:
            raise _Refusal(410, f"the registration of runner {runner.name} was deleted")
        if runner.job_id is None:
            return web.Response(status=204)
        job = self.jobs[runner.job_id]
        return web.json_response({"job_id": job.id, "seconds": job.seconds, "exit": job.exit_code})

    async def _agent_heartbeat(self, request: web.Request) -> web.Response:
        self._agent(request)
        return web.Response(status=204)

    async def _agent_done(self, request: web.Request) -> web.Response:
        """The agent finished its job: completed (success if it exits 0, failure otherwise), then GitHub deletes
        the JIT runner's registration."""
        runner = self._agent(request)
        text = (await request.text()).strip()
        if not text.lstrip("-").isdigit():
            raise _Refusal(400, "the body must be the job's exit code")
        if runner.job_id is None:
            raise _Refusal(409, f"runner {runner.name} has no job running")
        job = self.jobs[runner.job_id]
        runner.busy, runner.job_id = False, None
        self._finish(job, "success" if int(text) == 0 else "failure")
        self._delete(runner)
        return web.json_response({"job_id": job.id, "conclusion": job.conclusion})

    # ---------------------------------------------------------------------------------------------- webhooks

    def _webhook_payload(self, job: WorkflowJob, action: str) -> Json:
        """The fixture workflow_job.queued.payload.json with this job's fields in it."""
        payload = json.loads(json.dumps(self._queued_template))
        payload["action"] = action
        payload["workflow_job"].update(self._job_json(job))
        repo = self.repositories[job.repository.lower()]
        payload["repository"].update(
            id=repo.id,
            name=repo.name,
            full_name=repo.full_name,
            private=repo.private,
            url=f"{self.url}/repos/{repo.full_name}",
            html_url=f"https://github.com/{repo.full_name}",
        )
        payload["repository"]["owner"]["login"] = repo.owner
        org = self.orgs.get(repo.owner.lower())
        if org is not None:
            payload["organization"] = {"login": org.login, "id": org.id, "url": f"{self.url}/orgs/{org.login}"}
        if repo.installation_id is not None:
            payload["installation"] = {"id": repo.installation_id, "node_id": f"installation-{repo.installation_id}"}
        else:
            payload.pop("installation", None)
        return dict(payload)

    def _webhook(self, job: WorkflowJob, action: str, *, suppressed: bool = False) -> None:
        """Enqueues a `workflow_job` delivery (sent by a background task, never in the API handler). Headers as
        in "Webhook events and payloads" / "Validating webhook deliveries": X-GitHub-Event, X-GitHub-Delivery (a
        GUID), X-Hub-Signature-256 = "sha256=" + HMAC-SHA256 hex of the raw body with the webhook's secret."""
        if self.webhook_url is None or self.webhook_secret is None:
            return
        body = json.dumps(self._webhook_payload(job, action), separators=(",", ":")).encode()
        repo = self.repositories[job.repository.lower()]
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/" + secrets.token_hex(4)[:7],
            "X-GitHub-Event": "workflow_job",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-GitHub-Hook-ID": "1",
            "X-GitHub-Hook-Installation-Target-ID": str(self.app_id if repo.installation_id else repo.id),
            "X-GitHub-Hook-Installation-Target-Type": "integration" if repo.installation_id else "repository",
            "X-Hub-Signature": "sha1=" + hmac.new(self.webhook_secret, body, hashlib.sha1).hexdigest(),
            "X-Hub-Signature-256": "sha256=" + hmac.new(self.webhook_secret, body, hashlib.sha256).hexdigest(),
        }
        delivery = Delivery(headers["X-GitHub-Delivery"], "workflow_job", action, job.id, headers, body, suppressed)
        self.deliveries.append(delivery)
        if suppressed:
            delivery.done.set()
        else:
            self._outbox.put_nowait(delivery)

    async def _webhook_worker(self) -> None:
        """One delivery at a time, in order; 10 s to answer, as GitHub allows; no retry, as GitHub does not."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                delivery = await self._outbox.get()
                started = time.monotonic()
                try:
                    assert self.webhook_url is not None
                    async with session.post(self.webhook_url, data=delivery.body, headers=delivery.headers) as resp:
                        delivery.status = resp.status
                        delivery.answer = (await resp.read())[:4096]
                except (aiohttp.ClientError, TimeoutError, AssertionError) as exc:
                    delivery.error = f"{type(exc).__name__}: {exc}"
                finally:
                    delivery.seconds = time.monotonic() - started
                    delivery.done.set()
                    self._outbox.task_done()


# --------------------------------------------------------------------------------------------------------------
# A Python agent, for tests that run the lifecycle without Docker


def decode_jit_config(encoded_jit_config: str) -> dict[str, Json]:
    """The files of a JIT config: {".runner": {...}, ".credentials": {...}, ".credentials_rsaparams": {...}}."""
    files = json.loads(base64.b64decode(encoded_jit_config, validate=True))
    return {name: json.loads(base64.b64decode(content, validate=True)) for name, content in files.items()}


@dataclass
class AgentResult:
    exit_code: int
    job_id: int | None
    lines: list[str]


async def run_python_agent(encoded_jit_config: str, *, timeout: float = 60.0) -> AgentResult:
    """What images/test-forge-agent/agent.sh does, in-process: online, wait for a job, "run" it, report done,
    return its exit (0 without a job when the registration is deleted first)."""
    runner = decode_jit_config(encoded_jit_config)[".runner"]
    base = f"{runner['serverUrl']}/_fake/agent/{runner['agentId']}"
    lines: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(f"{base}/online") as resp:
            if resp.status != 200:
                lines.append(f"agent {runner['agentName']}: cannot go online: HTTP {resp.status}")
                return AgentResult(2, None, lines)
        lines.append(f"agent {runner['agentName']} online at {runner['serverUrl']}")
        while True:
            async with session.get(f"{base}/assignment") as resp:
                if resp.status == 204:
                    continue
                if resp.status == 410:
                    lines.append(f"agent {runner['agentName']}: registration deleted, exiting")
                    return AgentResult(0, None, lines)
                if resp.status != 200:
                    lines.append(f"agent {runner['agentName']}: assignment: HTTP {resp.status}")
                    return AgentResult(2, None, lines)
                job = await resp.json()
                break
        lines.append(f"running job {job['job_id']}")
        await asyncio.sleep(float(job["seconds"]))
        async with session.post(f"{base}/done", data=str(job["exit"])) as resp:
            if resp.status != 200:
                lines.append(f"agent {runner['agentName']}: done: HTTP {resp.status}")
                return AgentResult(2, job["job_id"], lines)
        lines.append(f"job {job['job_id']} done: exit {job['exit']}")
        return AgentResult(int(job["exit"]), int(job["job_id"]), lines)
