"""A loopback fake of the part of Gitea (>= 1.24; the jobs list of 1.25) that single-use runners use, written from
Gitea's sources (go-gitea/gitea) and act_runner's (gitea/act_runner), with their status codes and JSON shapes:

REST (`/api/v1`, `Authorization: token T` or `Bearer T`; routers/api/v1/api.go, shared/runners.go, shared/action.go):
* `POST|GET /repos/{o}/{r}/actions/runners/registration-token`, `/orgs/{org}/...`, `POST /admin/actions/runners/
  registration-token` (and the legacy `GET /admin/runners/registration-token`) -> 200 `{"token"}`: the scope's latest
  active token, created if there is none (the same token until `reset_registration_token`).
* `GET .../actions/runners?page&limit` -> `{"runners": [{"id","name","status","busy","disabled","ephemeral",
  "labels": [{"id","name","type"}]}], "total_count"}`; `GET|DELETE .../actions/runners/{id}` (204; 404 "Runner not
  found"; 404 "No permission to access this runner" for another scope's runner).
* `GET /repos/{o}/{r}/actions/jobs?status=queued&page&limit` -> `{"workflow_jobs": [...], "total_count"}` with `Link`
  and `X-Total-Count` (absent with `jobs_api=False`, like Gitea 1.24: the generic 404).
* `GET /repos/{o}/{r}` (a few fields); `GET /user/repos?page&limit` -> an array of repositories, `X-Total-Count`.
* Errors: `{"message", "url"}` (services/context/api.go APIError), 404 `{"message": "The target couldn't be found.",
  "url", "errors": []}`; 401 "token is required" without a known token; 403 when the token lacks the scope
  (`token does not have at least one of required scope(s), ...`) or the user the role (repository admin,
  organization owner, site admin). Pagination as `utils.GetListOptions`: page >= 1, limit default 30, at most 50.

Runner RPC (`/api/actions/runner.v1.RunnerService/*`, Connect protocol, JSON only here; Gitea also takes proto):
* `Register` {name, token, version, labels, ephemeral} -> {"runner": {"id": "7", "uuid", "token", "name",
  "version", "labels", "ephemeral": true}} (int64 as strings, false booleans left out, as protojson writes them);
  errors `{"code": "invalid_argument", "message": ...}` with HTTP 400 (routers/api/actions/runner/runner.go).
  `supports_ephemeral=False` plays a Gitea < 1.24, which ignores the flag.
* `Declare`, `FetchTask`, `UpdateTask` with `x-runner-uuid` / `x-runner-token` (401 `unauthenticated`,
  "unregistered runner" otherwise) -- simplified: a task is just `{"id"}` plus the job's id and name in `context`;
  an ephemeral runner gets one task, is refused a second, and is deleted when its task reports a result.

Webhooks (services/webhook/deliver.go, notifier.go): with `webhook_url`, `workflow_job` deliveries as a "gitea"
webhook sends them: the JSON body (2-space indent), `X-Gitea-Event: workflow_job`, `X-Gitea-Event-Type`,
`X-Gitea-Delivery`, `X-Gitea-Signature` (hex HMAC-SHA256 of the body), the same as `X-Gogs-*`, `X-Hub-Signature`
(sha1=), `X-Hub-Signature-256` (sha256=), `X-GitHub-Delivery/-Event/-Event-Type`. Actions: queued (job waiting
for a runner), in_progress (a runner took it: runner_id, runner_name), completed (conclusion success / failure /
cancelled / skipped); a job blocked on others is "waiting". Times Gitea has not set are Go's zero time.

Faults: `fail(method, path_prefix, status, times, retry_after=None)` answers the next matching requests with that
status (Gitea's error body). `requests` records (method, path, status) of every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

JSON = dict[str, Any]
ZERO_TIME = "0001-01-01T00:00:00Z"
DEFAULT_PAGING = 30
MAX_RESPONSE_ITEMS = 50
NOT_FOUND = "The target couldn't be found."
RESULTS = {"RESULT_SUCCESS": "success", "RESULT_FAILURE": "failure", "RESULT_CANCELLED": "cancelled",
           "RESULT_SKIPPED": "skipped"}  # fmt: skip


@dataclass
class FakeToken:
    value: str
    user: str
    scopes: frozenset[str]  # Gitea's: read:repository, write:repository, write:organization, write:admin, all


@dataclass
class FakeRunner:
    id: int
    uuid: str
    token: str
    name: str
    labels: list[str]
    version: str
    ephemeral: bool
    scope: tuple[str, str]  # ("repo", "o/r") | ("org", "o") | ("admin", "")
    online: bool = False
    task_id: int | None = None
    task_done: bool = False


@dataclass
class FakeJob:
    id: int
    run_id: int
    repository: str
    name: str
    labels: list[str]
    head_sha: str
    head_branch: str
    status: str = "queued"  # queued | waiting | in_progress | completed
    conclusion: str = ""
    runner_id: int = 0
    runner_name: str = ""
    created_at: str = "2026-01-01T00:00:00Z"
    started_at: str = ZERO_TIME
    completed_at: str = ZERO_TIME


@dataclass
class Fault:
    method: str
    path_prefix: str
    status: int
    times: int
    retry_after: float | None = None


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class FakeGitea:
    supports_ephemeral: bool = True  # Gitea >= 1.24
    jobs_api: bool = True  # Gitea >= 1.25
    legacy_get: bool = True  # 1.24 keeps the GET registration-token routes (deprecated)
    webhook_url: str | None = None
    webhook_secret: str = ""
    max_response_items: int = MAX_RESPONSE_ITEMS  # [api] MAX_RESPONSE_ITEMS

    url: str = ""
    tokens: dict[str, FakeToken] = field(default_factory=dict)
    site_admins: set[str] = field(default_factory=set)
    repos: dict[str, JSON] = field(default_factory=dict)  # "o/r" -> {"id", "admins", "private"}
    orgs: dict[str, set[str]] = field(default_factory=dict)  # org -> owners
    runners: dict[int, FakeRunner] = field(default_factory=dict)
    jobs: dict[int, FakeJob] = field(default_factory=dict)
    registration_tokens: dict[tuple[str, str], str] = field(default_factory=dict)  # active ones
    retired_tokens: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    _ids: dict[str, int] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self.url

    async def stop(self) -> None:
        await self.drain()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FakeGitea:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def drain(self) -> None:
        """Wait until every webhook delivery started so far is done."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # -- admin helpers (no HTTP) -----------------------------------------------------------------------------------

    def _next(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    def add_token(self, user: str, *scopes: str, site_admin: bool = False) -> str:
        value = secrets.token_hex(20)  # Gitea's access tokens: 40 hex characters
        self.tokens[value] = FakeToken(value, user, frozenset(scopes or ("all",)))
        if site_admin:
            self.site_admins.add(user)
        return value

    def add_repo(self, full_name: str, *, admins: set[str] | None = None, private: bool = True) -> None:
        owner = full_name.split("/")[0]
        self.repos[full_name] = {"id": self._next("repo"), "admins": set(admins or {owner}), "private": private}

    def add_org(self, name: str, *, owners: set[str]) -> None:
        self.orgs[name] = set(owners)

    def reset_registration_token(self, kind: str, name: str = "") -> None:
        old = self.registration_tokens.pop((kind, name), None)
        if old:
            self.retired_tokens.add(old)

    def fail(
        self, method: str, path_prefix: str, status: int, times: int = 1, retry_after: float | None = None
    ) -> None:
        self.faults.append(Fault(method, path_prefix, status, times, retry_after))

    def queue_job(
        self, repository: str, labels: list[str], *, name: str = "build", waiting: bool = False, sha: str = ""
    ) -> FakeJob:
        """A workflow job becomes ready (StatusWaiting: `queued`), or is blocked on others (`waiting`)."""
        job = FakeJob(
            id=self._next("job"),
            run_id=self._next("run"),
            repository=repository,
            name=name,
            labels=list(labels),
            head_sha=sha or secrets.token_hex(20),
            head_branch="main",
            status="waiting" if waiting else "queued",
        )
        self.jobs[job.id] = job
        self._notify(job)
        return job

    def count(self, method: str, path_prefix: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p.startswith(path_prefix))

    # -- HTTP ------------------------------------------------------------------------------------------------------

    def _swagger(self) -> str:
        return f"{self.url}/api/swagger"

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response({"message": message, "url": self._swagger()}, status=status)

    def _not_found(self) -> web.Response:
        return web.json_response({"message": NOT_FOUND, "url": self._swagger(), "errors": []}, status=404)

    @staticmethod
    def _connect_error(code: str, message: str) -> web.Response:
        status = {"invalid_argument": 400, "unauthenticated": 401, "not_found": 404, "internal": 500}[code]
        return web.json_response({"code": code, "message": message}, status=status)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._route(request)
        self.requests.append((request.method, request.path, response.status))
        return response

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and path.startswith(fault.path_prefix):
                fault.times -= 1
                headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                body = {"message": "fault injected", "url": self._swagger()}
                return web.json_response(body, status=fault.status, headers=headers)
        if path.startswith("/api/actions/runner.v1.RunnerService/"):
            return await self._rpc(request, path.rsplit("/", 1)[1])
        if path.startswith("/api/v1/"):
            return await self._api(request, path[len("/api/v1") :])
        return self._not_found()

    # -- REST ------------------------------------------------------------------------------------------------------

    def _auth(self, request: web.Request) -> FakeToken | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("token", "bearer"):
            return self.tokens.get(value.strip())
        return None

    @staticmethod
    def _has_scope(token: FakeToken, category: str, write: bool) -> bool:
        if "all" in token.scopes or f"write:{category}" in token.scopes:
            return True
        return not write and f"read:{category}" in token.scopes

    def _scope_refusal(self, token: FakeToken, category: str, write: bool) -> web.Response | None:
        if self._has_scope(token, category, write):
            return None
        need = f"{'write' if write else 'read'}:{category}"
        return self._error(
            403,
            f"token does not have at least one of required scope(s), required=[{need}], "
            f"token scope={','.join(sorted(token.scopes))}",
        )

    async def _api(self, request: web.Request, path: str) -> web.StreamResponse:
        parts = [p for p in path.split("/") if p]
        token = self._auth(request)
        if token is None:
            return self._error(401, "token is required")
        write = request.method not in ("GET", "HEAD")
        user = token.user
        if parts[:1] == ["repos"] and len(parts) >= 3:
            full = f"{parts[1]}/{parts[2]}"
            repo = self.repos.get(full)
            if (refused := self._scope_refusal(token, "repository", write)) is not None:
                return refused
            if repo is None or (repo["private"] and user not in repo["admins"] and user not in self.site_admins):
                return self._not_found()
            rest = parts[3:]
            if not rest and request.method == "GET":
                return web.json_response(
                    {"id": repo["id"], "full_name": full, "name": parts[2], "private": repo["private"]}
                )
            if rest[:1] == ["actions"] and rest[1:2] == ["jobs"] and len(rest) == 2 and request.method == "GET":
                return self._list_jobs(request, full) if self.jobs_api else self._not_found()
            if rest[:2] == ["actions", "runners"]:
                if user not in repo["admins"] and user not in self.site_admins:
                    return self._error(403, "user should be the owner of the repo")
                return self._runners(request, ("repo", full), rest[2:])
            return self._not_found()
        if parts[:1] == ["orgs"] and len(parts) >= 2:
            if (refused := self._scope_refusal(token, "organization", write)) is not None:
                return refused
            owners = self.orgs.get(parts[1])
            if owners is None:
                return self._not_found()
            if parts[2:4] == ["actions", "runners"]:
                if user not in owners and user not in self.site_admins:
                    return self._error(403, "Must be an organization owner")
                return self._runners(request, ("org", parts[1]), parts[4:])
            return self._not_found()
        if parts == ["user", "repos"] and request.method == "GET":
            if (refused := self._scope_refusal(token, "repository", False)) is not None:
                return refused
            return self._my_repos(request, user)
        if parts[:1] == ["admin"]:
            if (refused := self._scope_refusal(token, "admin", write)) is not None:
                return refused
            if user not in self.site_admins:
                return self._error(403, "user should be the site admin")
            if parts[1:3] == ["actions", "runners"]:
                return self._runners(request, ("admin", ""), parts[3:])
            if parts[1:] == ["runners", "registration-token"] and request.method == "GET":
                return self._registration_token(("admin", ""))
            return self._not_found()
        return self._not_found()

    def _my_repos(self, request: web.Request, user: str) -> web.Response:
        """GET /user/repos (user.ListMyRepos: "the repositories you own or have access to"): an array of repositories,
        paginated, with `X-Total-Count`. Here: those the user administers, and the public ones of its organizations."""
        member_of = {org for org, owners in self.orgs.items() if user in owners}
        names = sorted(
            name
            for name, repo in self.repos.items()
            if user in repo["admins"]
            or user in self.site_admins
            or (not repo["private"] and name.split("/")[0] in member_of)
        )
        page, limit = _list_options(request, self.max_response_items)
        chunk = names[(page - 1) * limit : page * limit]
        body = [
            {"id": self.repos[n]["id"], "full_name": n, "name": n.split("/")[1], "private": self.repos[n]["private"]}
            for n in chunk
        ]
        return web.json_response(body, headers={"X-Total-Count": str(len(names))})

    def _registration_token(self, scope: tuple[str, str]) -> web.Response:
        """shared.GetRegistrationToken: the latest active token, a new one if there is none."""
        token = self.registration_tokens.get(scope)
        if token is None:
            token = secrets.token_hex(20)
            self.registration_tokens[scope] = token
        return web.json_response({"token": token})

    def _runners(self, request: web.Request, scope: tuple[str, str], rest: list[str]) -> web.StreamResponse:
        method = request.method
        if rest == ["registration-token"]:
            if method == "POST" or (method == "GET" and self.legacy_get):
                return self._registration_token(scope)
            return self._error(405, "Method Not Allowed")
        if not rest and method == "GET":
            mine = [r for r in sorted(self.runners.values(), key=lambda r: r.id) if self._visible(r, scope)]
            page, limit = _list_options(request, self.max_response_items)
            chunk = mine[(page - 1) * limit : page * limit]
            return web.json_response({"runners": [self._runner_json(r) for r in chunk], "total_count": len(mine)})
        if len(rest) == 1 and method in ("GET", "DELETE"):
            if not rest[0].isdigit():
                return self._error(400, f"invalid runner_id {rest[0]!r}")  # ctx.PathParamInt64 would read 0
            runner = self.runners.get(int(rest[0]))
            if runner is None:
                return self._error(404, "Runner not found")
            if not self._visible(runner, scope):
                return self._error(404, "No permission to access this runner")
            if method == "DELETE":
                del self.runners[runner.id]
                return web.Response(status=204)
            return web.json_response(self._runner_json(runner))
        return self._not_found()

    def _visible(self, runner: FakeRunner, scope: tuple[str, str]) -> bool:
        """ActionRunner.EditableInContext: the admin scope sees every runner, others their own."""
        return scope[0] == "admin" or runner.scope == scope

    @staticmethod
    def _runner_json(runner: FakeRunner) -> JSON:
        return {
            "id": runner.id,
            "name": runner.name,
            "status": "online" if runner.online else "offline",
            "busy": runner.task_id is not None and not runner.task_done,
            "disabled": False,
            "ephemeral": runner.ephemeral,
            "labels": [{"id": i, "name": label, "type": "custom"} for i, label in enumerate(runner.labels)],
        }

    def _list_jobs(self, request: web.Request, repository: str) -> web.StreamResponse:
        statuses = request.query.getall("status", [])
        for status in statuses:
            if status not in ("queued", "in_progress", "completed", "waiting", "pending", "success", "failure"):
                return self._error(400, f"Invalid status {status}")
        wanted = {"pending": "waiting"}.get
        jobs = [
            j
            for j in sorted(self.jobs.values(), key=lambda j: j.id)
            if j.repository == repository
            and (not statuses or j.status in {wanted(s, s) for s in statuses} or j.conclusion in statuses)
        ]
        page, limit = _list_options(request, self.max_response_items)
        chunk = jobs[(page - 1) * limit : page * limit]
        headers = {"X-Total-Count": str(len(jobs))}
        if page * limit < len(jobs):
            headers["Link"] = f'<{self.url}{request.path}?page={page + 1}&limit={limit}>; rel="next"'
        body = {"workflow_jobs": [self._job_json(j) for j in chunk], "total_count": len(jobs)}
        return web.json_response(body, headers=headers)

    def _job_json(self, job: FakeJob) -> JSON:
        """convert.ToActionWorkflowJob; `omitempty` fields left out when empty, zero times kept (Go structs)."""
        api = f"{self.url}/api/v1/repos/{job.repository}"
        out: JSON = {
            "id": job.id,
            "url": f"{api}/actions/jobs/{job.id}",
            "html_url": f"{self.url}/{job.repository}/actions/runs/{job.run_id}/jobs/{job.id}",
            "run_id": job.run_id,
            "run_url": f"{api}/actions/runs/{job.run_id}",
            "name": job.name,
            "labels": job.labels,
            "run_attempt": 1,
            "head_sha": job.head_sha,
            "head_branch": job.head_branch,
            "status": job.status,
            "steps": [],
            "created_at": job.created_at,
            "started_at": job.started_at,
            "completed_at": job.completed_at,
        }
        if job.conclusion:
            out["conclusion"] = job.conclusion
        if job.runner_id:
            out["runner_id"], out["runner_name"] = job.runner_id, job.runner_name
        return out

    # -- runner RPC ------------------------------------------------------------------------------------------------

    async def _rpc(self, request: web.Request, method: str) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type != "application/json":
            # connect-go answers an unknown codec with 415 and the ones it accepts; this fake speaks JSON only
            return web.Response(status=415, headers={"Accept-Post": "application/json"})
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            return self._connect_error("invalid_argument", "unmarshal into runner.v1 message: invalid JSON")
        if not isinstance(body, dict):
            return self._connect_error("invalid_argument", "unmarshal into runner.v1 message: not an object")
        if method == "Register":
            return self._register(body)
        runner = self._runner_of(request)
        if runner is None:
            return self._connect_error("unauthenticated", "unregistered runner")
        if method == "Declare":
            runner.labels = [str(label) for label in body.get("labels") or []]
            runner.version = str(body.get("version") or "")
            runner.online = True
            return web.json_response({"runner": self._rpc_runner(runner)})
        if method == "FetchTask":
            return self._fetch_task(runner)
        if method == "UpdateTask":
            return self._update_task(runner, body)
        return self._connect_error("not_found", f"/runner.v1.RunnerService/{method} is not served by this fake")

    def _register(self, body: JSON) -> web.Response:
        token, name = str(body.get("token") or ""), str(body.get("name") or "")
        if not token or not name:
            return self._connect_error("invalid_argument", "missing runner token, name")
        scope = next((s for s, t in self.registration_tokens.items() if t == token), None)
        if scope is None:
            if token in self.retired_tokens:
                return self._connect_error(
                    "invalid_argument", "runner registration token has been invalidated, please use the latest one"
                )
            return self._connect_error("invalid_argument", "runner registration token not found")
        runner = FakeRunner(
            id=self._next("runner"),
            uuid=str(uuid.uuid4()),
            token=secrets.token_hex(20),
            name=name.encode()[:255].decode("utf-8", "ignore"),
            labels=[str(label) for label in body.get("labels") or []],
            version=str(body.get("version") or ""),
            ephemeral=bool(body.get("ephemeral")) and self.supports_ephemeral,
            scope=scope,
        )
        self.runners[runner.id] = runner
        return web.json_response({"runner": self._rpc_runner(runner)})

    @staticmethod
    def _rpc_runner(runner: FakeRunner) -> JSON:
        out: JSON = {
            "id": str(runner.id),  # protojson writes int64 as a JSON string
            "uuid": runner.uuid,
            "token": runner.token,
            "name": runner.name,
            "version": runner.version,
            "labels": runner.labels,
        }
        if runner.ephemeral:
            out["ephemeral"] = True  # proto3 JSON leaves out false
        return out

    def _runner_of(self, request: web.Request) -> FakeRunner | None:
        wanted = request.headers.get("x-runner-uuid", "")
        token = request.headers.get("x-runner-token", "")
        for runner in self.runners.values():
            if runner.uuid == wanted and hmac.compare_digest(runner.token, token):
                return runner
        return None

    def _fetch_task(self, runner: FakeRunner) -> web.Response:
        runner.online = True
        if runner.ephemeral and runner.task_id is not None:
            if runner.task_done:
                return self._connect_error("internal", "ephemeral runner has already completed its task")
            return web.json_response({"tasksVersion": "1"})  # busy with its one task: nothing more
        if runner.task_id is not None and not runner.task_done:
            return web.json_response({"tasksVersion": "1"})
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.status == "queued" and self._serves(runner, job):
                job.status, job.runner_id, job.runner_name = "in_progress", runner.id, runner.name
                job.started_at = "2026-01-01T00:00:05Z"
                runner.task_id, runner.task_done = job.id, False
                self._notify(job)
                task = {"id": str(job.id), "context": {"job_id": str(job.id), "job_name": job.name}}
                return web.json_response({"task": task, "tasksVersion": "1"})
        return web.json_response({"tasksVersion": "1"})

    def _serves(self, runner: FakeRunner, job: FakeJob) -> bool:
        kind, name = runner.scope
        in_scope = (
            kind == "admin"
            or (kind == "repo" and job.repository == name)
            or (kind == "org" and job.repository.split("/")[0] == name)
        )
        return in_scope and set(job.labels) <= set(runner.labels)

    def _update_task(self, runner: FakeRunner, body: JSON) -> web.Response:
        raw_state = body.get("state")
        state: JSON = raw_state if isinstance(raw_state, dict) else {}
        raw_id = str(state.get("id") or "0")
        task_id = int(raw_id) if raw_id.isdigit() else 0
        job = self.jobs.get(task_id)
        if job is None or runner.task_id != task_id:
            return self._connect_error("internal", "update task: invalid runner for task")
        result = str(state.get("result") or "RESULT_UNSPECIFIED")
        if result in RESULTS:
            job.status, job.conclusion = "completed", RESULTS[result]
            job.completed_at = "2026-01-01T00:01:00Z"
            runner.task_done = True
            self._notify(job)
            if runner.ephemeral:  # UpdateTask deletes an ephemeral runner once its task has a result
                self.runners.pop(runner.id, None)
        return web.json_response({"state": {"id": str(task_id), "result": result}})

    # -- webhooks --------------------------------------------------------------------------------------------------

    def _notify(self, job: FakeJob) -> None:
        if self.webhook_url is None:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(job, self._payload(job)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _payload(self, job: FakeJob) -> bytes:
        owner, name = job.repository.split("/")
        action = {"waiting": "waiting"}.get(job.status, job.status)
        payload: JSON = {
            "action": action,
            "workflow_job": self._job_json(job),
            "repository": {
                "id": self.repos.get(job.repository, {}).get("id", 0),
                "owner": {"id": 1, "login": owner, "username": owner},
                "name": name,
                "full_name": job.repository,
                "private": True,
                "html_url": f"{self.url}/{job.repository}",
            },
            "sender": {"id": 1, "login": owner, "username": owner},
        }
        if owner in self.orgs:
            payload["organization"] = {"id": 2, "name": owner, "username": owner}
        return json.dumps(payload, indent=2).encode()

    async def _deliver(self, job: FakeJob, body: bytes) -> None:
        assert self._session is not None and self.webhook_url is not None
        delivery = str(uuid.uuid4())
        sig256 = hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest() if self.webhook_secret else ""
        sig1 = hmac.new(self.webhook_secret.encode(), body, hashlib.sha1).hexdigest() if self.webhook_secret else ""
        headers = {
            "Content-Type": "application/json",
            "X-Gitea-Delivery": delivery,
            "X-Gitea-Event": "workflow_job",
            "X-Gitea-Event-Type": "workflow_job",
            "X-Gitea-Signature": sig256,
            "X-Gogs-Delivery": delivery,
            "X-Gogs-Event": "workflow_job",
            "X-Gogs-Event-Type": "workflow_job",
            "X-Gogs-Signature": sig256,
            "X-Hub-Signature": "sha1=" + sig1,
            "X-Hub-Signature-256": "sha256=" + sig256,
            "X-GitHub-Delivery": delivery,
            "X-GitHub-Event": "workflow_job",
            "X-GitHub-Event-Type": "workflow_job",
        }
        try:
            async with self._session.post(self.webhook_url, data=body, headers=headers) as resp:
                status = resp.status
        except aiohttp.ClientError:
            status = 0  # Gitea records the failed delivery; it does not retry on its own
        self.deliveries.append(Delivery(headers, body, status))


def _list_options(request: web.Request, max_items: int) -> tuple[int, int]:
    """utils.GetListOptions: page < 1 is 1; limit <= 0 is the default (30), larger than the maximum (50) is that."""

    def number(name: str) -> int:
        raw = request.query.get(name, "")
        return int(raw) if raw.lstrip("-").isdigit() else 0

    page = max(1, number("page"))
    limit = number("limit")
    limit = min(DEFAULT_PAGING, max_items) if limit <= 0 else min(limit, max_items)
    return page, limit
