"""Gitea's API for single-use runners, on aiohttp: `GiteaForge` implements `ForgeAPI` (forges/protocol.py).

Gitea has no JIT configuration. A runner is registered with a *registration token* of its scope, and that token is
shared by the whole scope and stays valid until someone resets it (routers/api/v1/shared/runners.go returns the
latest active one): handing it to a job's container would let that job register runners of its own. So the
controller never lets it out: it fetches it (`POST /api/v1/{repos/O/R|orgs/O}/actions/runners/registration-token`,
Gitea >= 1.24; the older `GET` form is tried on 404/405), performs act_runner's own registration call itself --
`POST /api/actions/runner.v1.RunnerService/Register`, a Connect-protocol unary RPC that accepts JSON
(routers/api/actions/runner/runner.go) -- and delivers only the result: the `.runner` file act_runner writes after
`act_runner register` (internal/pkg/config/registration.go: id, uuid, name, token, address, labels, ephemeral).
`act_runner daemon` reads that file (`runner.file` in its config) and needs nothing else.

Every runner is registered *ephemeral* (Gitea >= 1.24): Gitea gives it one task and deletes it when that task
ends, so the runner's own credential, which the job can read inside its container, is worth nothing after the job.
A Gitea that ignores the flag (older versions answer without `ephemeral`) would leave a persistent runner whose
credential a job could keep using: such a registration is deleted at once and refused.

Transient failures (connection errors, 429, 502-504, and 500 on requests that are safe to repeat) are retried on a
bounded time budget with tenacity; the Register call is not repeated after Gitea may have acted on it. Error
messages name what to fix (the token file, the repository or organization, the Gitea version) and never contain
the access token, the registration token or a runner token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from orchestrator.forges.protocol import (
    ForgeAPI,
    ForgeError,
    QueuedJob,
    RegisteredRunner,
    Registration,
    RunnerScope,
)

if TYPE_CHECKING:
    from orchestrator.config import ForgeConfig

log = logging.getLogger(__name__)

RUNNER_FILE = ".runner"  # act_runner's default `runner.file`; the agent finds it at /run/secrets/.runner
REGISTER_RPC = "/api/actions/runner.v1.RunnerService/Register"
PAGE_LIMIT = 50  # Gitea's default [api] MAX_RESPONSE_ITEMS: a larger `limit` is cut to it
MAX_PAGES = 1000
CLIENT_NAME = "runner-orchestrator"
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_RUNNER_FILE_WARNING = (
    "Written by runner-orchestrator for one ephemeral act_runner (the same fields `act_runner register` writes). "
    "It holds this runner's credential: do not copy it."
)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class _Transient(Exception):
    """A failure worth repeating: nothing was done, or repeating cannot do it twice."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class _Refused(Exception):
    """A final answer: an HTTP error status (or a failure after which the request must not be repeated)."""

    def __init__(self, status: int, detail: str, code: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code  # the Connect error code of an RPC error ("invalid_argument", ...)


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def field(self, name: str) -> str:
        data = self.json()
        value = data.get(name) if isinstance(data, dict) else None
        return value if isinstance(value, str) else ""

    def detail(self) -> str:
        """Gitea's `message` (REST: {"message", "url"}; Connect: {"code", "message"}), else a short body."""
        message = self.field("message")
        if message:
            return message[:300]
        text = self.body[:200].decode("utf-8", "replace").strip()
        return text if text and not text.startswith("<") else f"HTTP {self.status}"

    def retry_after(self) -> float | None:
        raw = self.headers.get("Retry-After")
        if not raw:
            return None
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class _NewRunner:
    id: int
    uuid: str
    token: str = field(repr=False)
    name: str
    ephemeral: bool


@dataclass
class _CachedToken:
    value: str = field(repr=False)
    expires: float


def _scrub(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return text


def _as_int(value: object) -> int | None:
    """Connect's JSON encodes int64 as a string ("42"); Gitea's REST API as a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def split_labels(labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """The names Gitea matches `runs-on` against, and the same labels as act_runner stores them in `.runner`:
    `NAME:host` (act_runner's host mode, steps run in the runner's own container; labels.go `SchemeHost`). A label
    with another colon part (`pool:1234`) is opaque to act_runner and kept verbatim; `NAME:docker://IMAGE` asks
    for a Docker daemon this runner does not have and is refused."""
    names: list[str] = []
    stored: list[str] = []
    for raw in labels:
        label = raw.strip()
        if not label:
            continue
        name, _, schema = label.partition(":")
        if schema == "docker" or schema.startswith("docker:"):
            raise ForgeError(
                f"runner label {label!r} asks act_runner for a Docker container, but these runners have no Docker "
                "daemon (the orchestrator never hands out the Docker socket); give the plain label "
                f"{name!r}: it runs in host mode, in the runner's own hardened container"
            )
        if schema in ("", "host") or schema.startswith("host:"):
            entry_name, entry = name, f"{name}:host"
        else:
            entry_name, entry = label, label  # opaque to act_runner (labels.go: Opaque)
        if entry_name not in names:
            names.append(entry_name)
            stored.append(entry)
    if not names:
        raise ForgeError("a Gitea runner needs at least one label (the names in the jobs' `runs-on`)")
    return names, stored


class GiteaForge(ForgeAPI):
    """Gitea's runner API for one instance. `api_url` is the instance's base URL (Gitea's ROOT_URL, e.g.
    https://gitea.example); `token_file` holds an access token (chmod 600) of a user who may manage the runners:
    a repository admin (scope write:repository), an organization owner (write:organization). `agent_url` is the
    address the agent inside the runner container reaches Gitea at (its `.runner` `address`; default `api_url`)."""

    def __init__(
        self,
        api_url: str,
        token_file: Path,
        *,
        agent_url: str | None = None,
        request_timeout_s: float = 15.0,
        retry_budget_s: float = 30.0,
        backoff_s: float = 0.2,
        backoff_max_s: float = 3.0,
        registration_token_ttl_s: float = 600.0,
        require_ephemeral: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not re.match(r"^https?://[^/]", api_url):
            raise ValueError(f"api_url must be the Gitea instance's http(s) base URL, not {api_url!r}")
        self.base_url = api_url.rstrip("/")
        self.agent_url = (agent_url or api_url).rstrip("/")
        self.token_file = Path(token_file)
        self.request_timeout_s = request_timeout_s
        self.retry_budget_s = retry_budget_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.registration_token_ttl_s = registration_token_ttl_s
        self.require_ephemeral = require_ephemeral
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._token_cache: tuple[int, int, str] | None = None  # (mtime_ns, size, token)
        self._registration_tokens: dict[str, _CachedToken] = {}
        self._token_locks: dict[str, asyncio.Lock] = {}
        self._counters: dict[str, float] = {
            "calls": 0,
            "retries": 0,
            "errors": 0,
            "rate_limit_waits": 0,
            "registration_token_calls": 0,
            "registration_token_cache_hits": 0,
            "register_calls": 0,
        }
        self._rate_limit_remaining: float | None = None
        self._queued_jobs_api: bool | None = None
        self._warned_no_jobs_api = False

    @classmethod
    def from_config(cls, forge: ForgeConfig, **kwargs: Any) -> GiteaForge:
        if forge.kind != "gitea" or forge.token_file is None:
            raise ValueError('GiteaForge needs a [forge] with kind = "gitea" and token_file')
        return cls(
            forge.base_url,
            forge.token_file,
            request_timeout_s=forge.request_timeout_s,
            retry_budget_s=forge.retry_budget_s,
            **kwargs,
        )

    # -- ForgeAPI --------------------------------------------------------------------------------------------------

    async def register(
        self, scope: RunnerScope, *, name: str, labels: Sequence[str], runner_group_id: int | None
    ) -> Registration:
        """One ephemeral runner named `name`. Gitea has no runner groups: `runner_group_id` is ignored."""
        del runner_group_id
        names, stored = split_labels(labels)
        self._runners_path(scope)  # validates the scope before any call
        if not name or len(name.encode()) > 255:
            raise ForgeError(f"runner name {name!r}: Gitea takes 1 to 255 bytes")
        what = f"registering runner {name!r} for {scope}"
        for fresh in (False, True):
            token, cached = await self._registration_token(scope, fresh=fresh)
            try:
                runner = await self._register_rpc(token, name=name, labels=names, what=what)
                break
            except _Refused as exc:
                if cached and not fresh and exc.status in (400, 401, 404, 500) and "token" in exc.detail.lower():
                    log.info("the runner registration token of %s was reset at Gitea; fetching the new one", scope)
                    continue
                raise self._register_refused(exc, scope, what, token) from None
            except _Transient as exc:
                raise self._exhausted(exc, what, token) from None
        else:  # pragma: no cover - the loop always breaks or raises
            raise AssertionError("unreachable")
        if not runner.ephemeral and self.require_ephemeral:
            await self._discard_persistent(scope, runner)
        document = {
            "WARNING": _RUNNER_FILE_WARNING,
            "id": runner.id,
            "uuid": runner.uuid,
            "name": runner.name or name,
            "token": runner.token,
            "address": self.agent_url,
            "labels": stored,
            "ephemeral": True,
        }
        credential = json.dumps(document, indent=2) + "\n"
        return Registration(runner_id=runner.id, name=name, credential=credential, file_name=RUNNER_FILE)

    async def runners(self, scope: RunnerScope) -> list[RegisteredRunner]:
        path = self._runners_path(scope)
        what = f"listing the runners of {scope}"
        found: list[RegisteredRunner] = []
        seen: set[int] = set()
        received = 0
        for page in range(1, MAX_PAGES + 1):
            answer = await self._rest("GET", path, what=what, scope=scope, params={"page": page, "limit": PAGE_LIMIT})
            data = answer.json()
            if not isinstance(data, dict):
                raise self._malformed(what, answer)
            entries = data.get("runners") or []
            total = _as_int(data.get("total_count"))
            if not isinstance(entries, list):
                raise self._malformed(what, answer)
            for entry in entries:
                runner = _registered_runner(entry)
                if runner is not None and runner.id not in seen:
                    seen.add(runner.id)
                    found.append(runner)
            received += len(entries)  # an instance may cap pages below PAGE_LIMIT: count what came
            if not entries or (total is not None and received >= total):
                break
        return found

    async def resolve(self, scope: RunnerScope) -> RunnerScope:
        """Gitea needs nothing more than the scope's name."""
        return scope

    async def delete_runner(self, scope: RunnerScope, runner_id: int) -> bool:
        """False when Gitea no longer has it (an ephemeral runner is deleted by Gitea when its job ends)."""
        path = f"{self._runners_path(scope)}/{int(runner_id)}"
        try:
            await self._rest("DELETE", path, what=f"deleting runner {runner_id} of {scope}", scope=scope, gone_ok=True)
        except _Gone:
            return False
        return True

    async def queued_jobs(self, repository: str, installation_id: int | None) -> list[QueuedJob]:
        """The repository's jobs waiting for a runner: `GET /repos/{o}/{r}/actions/jobs?status=queued` (Gitea >= 1.25,
        routers/api/v1/shared/action.go ListJobs). Older Gitea has no such endpoint: then this returns [] (logged
        once, `stats()["queued_jobs_api"] == 0`) and only webhooks bring jobs. `installation_id` is GitHub's."""
        del installation_id
        scope = RunnerScope("repo", repository)
        base = self._repo_path(repository)
        what = f"listing the queued jobs of repository {repository}"
        jobs: list[QueuedJob] = []
        seen: set[int] = set()
        received = 0
        for page in range(1, MAX_PAGES + 1):
            try:
                answer = await self._rest(
                    "GET",
                    f"{base}/actions/jobs",
                    what=what,
                    scope=scope,
                    params={"status": "queued", "page": page, "limit": PAGE_LIMIT},
                    gone_ok=True,
                )
            except _Gone:
                if await self._repository_exists(repository):
                    self._no_jobs_api()
                    return []
                raise self._forge_error(_Refused(404, "The target couldn't be found."), what, scope) from None
            self._queued_jobs_api = True
            data = answer.json()
            if not isinstance(data, dict) or not isinstance(data.get("workflow_jobs") or [], list):
                raise self._malformed(what, answer)
            entries = data.get("workflow_jobs") or []
            for entry in entries:
                job = _queued_job(entry, repository)
                if job is not None and job.id not in seen:
                    seen.add(job.id)
                    jobs.append(job)
            total = _as_int(data.get("total_count"))
            received += len(entries)
            if not entries or (total is not None and received >= total):
                break
        return jobs

    async def repositories(self) -> list[tuple[str, int | None]]:
        """`GET /user/repos` (user.ListMyRepos): the repositories the token's user owns or can reach, also through
        its organizations' teams; paginated, `X-Total-Count`. Gitea has no installations: each is (name, None)."""
        what = "listing the repositories the token reaches"
        names: list[str] = []
        for page in range(1, MAX_PAGES + 1):
            answer = await self._rest(
                "GET", "/user/repos", what=what, scope=None, params={"page": page, "limit": PAGE_LIMIT}
            )
            data = answer.json()
            if not isinstance(data, list):
                raise self._malformed(what, answer)
            names.extend(
                str(repo["full_name"])
                for repo in data
                if isinstance(repo, dict) and isinstance(repo.get("full_name"), str) and repo["full_name"] not in names
            )
            total = _as_int(answer.headers.get("X-Total-Count"))
            if not data or (total is not None and len(names) >= total):
                break
        return [(name, None) for name in names]

    def stats(self) -> dict[str, float]:
        """calls, retries, errors, rate_limit_waits (429 answers waited on), rate_limit_remaining (-1: Gitea reports
        no rate limit, the default; else the last `X-RateLimit-Remaining` a proxy in front of it sent),
        registration_token_calls / _cache_hits, register_calls, queued_jobs_api (1 yes, 0 no, -1 not asked yet)."""
        out = dict(self._counters)
        out["rate_limit_remaining"] = -1.0 if self._rate_limit_remaining is None else self._rate_limit_remaining
        out["queued_jobs_api"] = -1.0 if self._queued_jobs_api is None else float(self._queued_jobs_api)
        return out

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._registration_tokens.clear()

    # -- registration ----------------------------------------------------------------------------------------------

    async def _registration_token(self, scope: RunnerScope, *, fresh: bool) -> tuple[str, bool]:
        """The scope's registration token and whether it came from the cache (Gitea answers the same token until it
        is reset, so one fetch serves many registrations)."""
        key = self._scope_key(scope)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._registration_tokens.get(key)
            if not fresh and cached is not None and cached.expires > self._clock():
                self._counters["registration_token_cache_hits"] += 1
                return cached.value, True
            token = await self._fetch_registration_token(scope)
            self._registration_tokens[key] = _CachedToken(token, self._clock() + self.registration_token_ttl_s)
            return token, False

    async def _fetch_registration_token(self, scope: RunnerScope) -> str:
        path = f"{self._runners_path(scope)}/registration-token"
        what = f"getting a runner registration token for {scope}"
        self._counters["registration_token_calls"] += 1
        try:
            answer = await self._rest("POST", path, what=what, scope=scope, legacy_ok=True)
        except _Legacy:
            # Gitea 1.21-1.23 (and Forgejo) serve it as GET only; 1.24 added POST and kept GET as deprecated.
            answer = await self._rest("GET", path, what=what, scope=scope)
        token = answer.field("token")
        if not token:
            raise self._malformed(what, answer)
        return token

    async def _register_rpc(self, registration_token: str, *, name: str, labels: list[str], what: str) -> _NewRunner:
        """act_runner's own `Register` call (internal/app/cmd/register.go doRegister), in Connect's JSON encoding."""
        body = {
            "name": name,
            "token": registration_token,
            "version": CLIENT_NAME,
            "labels": labels,
            "ephemeral": True,
        }
        self._counters["register_calls"] += 1
        answer = await self._call(
            "POST",
            self.base_url + REGISTER_RPC,
            payload=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Connect-Protocol-Version": "1"},
            idempotent=False,
        )
        data = answer.json()
        runner = data.get("runner") if isinstance(data, dict) else None
        if not isinstance(runner, dict):
            raise self._malformed(what, answer)
        runner_id = _as_int(runner.get("id"))
        uuid, token = _str(runner.get("uuid")), _str(runner.get("token"))
        if not runner_id or not uuid or not token:
            raise self._malformed(what, answer)
        # proto3 JSON leaves out false booleans: no "ephemeral" is a persistent runner
        return _NewRunner(runner_id, uuid, token, _str(runner.get("name")), runner.get("ephemeral") is True)

    async def _discard_persistent(self, scope: RunnerScope, runner: _NewRunner) -> None:
        """Gitea < 1.24 ignores `ephemeral` and registers a runner that would take job after job: its credential,
        readable by the job in its container, must not exist."""
        message = (
            f"Gitea at {self.base_url} registered runner {runner.name!r} for {scope} as a persistent runner: it "
            "ignores ephemeral registration (Gitea < 1.24). A persistent runner's credential would let a job take "
            "further jobs, so it is refused; upgrade Gitea to 1.24 or later"
        )
        try:
            await self.delete_runner(scope, runner.id)
            message += " (the registration was deleted)"
        except ForgeError as exc:
            message += f" (deleting runner {runner.id} failed too: {exc.message})"
        self._counters["errors"] += 1
        raise ForgeError(message)

    def _register_refused(self, exc: _Refused, scope: RunnerScope, what: str, token: str) -> ForgeError:
        self._counters["errors"] += 1
        detail = _scrub(exc.detail, token, self._current_token_or_empty())
        if exc.status in (404, 501) or exc.code == "unimplemented":
            hint = "is Gitea Actions enabled ([actions] ENABLED = true in app.ini) and api_url the instance's ROOT_URL?"
        elif "token" in detail.lower():
            hint = f"the registration token of {scope} was refused even after fetching it anew"
        else:
            hint = "see Gitea's log"
        return ForgeError(
            f"Gitea at {self.base_url} refused {what} (HTTP {exc.status}{'/' + exc.code if exc.code else ''}: "
            f"{detail}); {hint}",
            status=exc.status,
        )

    # -- REST plumbing ---------------------------------------------------------------------------------------------

    async def _rest(
        self,
        method: str,
        path: str,
        *,
        what: str,
        scope: RunnerScope | None,
        params: Mapping[str, str | int] | None = None,
        gone_ok: bool = False,
        legacy_ok: bool = False,
    ) -> _Answer:
        """`/api/v1` + `path`, authenticated with the access token; errors turned into ForgeErrors naming the fix.
        `gone_ok`: a 404 raises `_Gone` for the caller to interpret; `legacy_ok`: a 404/405 raises `_Legacy`."""
        token = self._access_token()
        try:
            return await self._call(
                method,
                f"{self.base_url}/api/v1{path}",
                params=params,
                headers={"Authorization": f"token {token}", "Accept": "application/json"},
                idempotent=True,
            )
        except _Refused as exc:
            if legacy_ok and exc.status in (404, 405):
                raise _Legacy from None
            if gone_ok and exc.status == 404:
                raise _Gone from None
            raise self._forge_error(exc, what, scope) from None
        except _Transient as exc:
            raise self._exhausted(exc, what, token) from None

    async def _repository_exists(self, repository: str) -> bool:
        try:
            await self._rest(
                "GET",
                self._repo_path(repository),
                what=f"looking up repository {repository}",
                scope=RunnerScope("repo", repository),
                gone_ok=True,
            )
        except _Gone:
            return False
        return True

    def _no_jobs_api(self) -> None:
        self._queued_jobs_api = False
        if not self._warned_no_jobs_api:
            self._warned_no_jobs_api = True
            log.warning(
                "this Gitea has no API for queued jobs (GET /repos/{owner}/{repo}/actions/jobs, Gitea >= 1.25): "
                "jobs whose webhook was lost are not found by reconciliation; upgrade Gitea to find them",
                extra={"gitea": self.base_url},
            )

    async def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        payload: bytes | None = None,
        headers: Mapping[str, str],
        idempotent: bool,
    ) -> _Answer:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=self._stop,
            wait=self._wait,
            reraise=True,
            before_sleep=self._before_sleep,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send(
                    method, url, params=params, payload=payload, headers=headers, idempotent=idempotent
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return exc.retry_after
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** (state.attempt_number - 1)))

    def _stop(self, state: RetryCallState) -> bool:
        """Stop when the next wait would end past the budget: a Retry-After longer than the budget is not slept."""
        return (state.seconds_since_start or 0.0) + self._wait(state) > self.retry_budget_s

    def _before_sleep(self, state: RetryCallState) -> None:
        self._counters["retries"] += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Transient) and exc.status == 429:
            self._counters["rate_limit_waits"] += 1

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | int] | None,
        payload: bytes | None,
        headers: Mapping[str, str],
        idempotent: bool,
    ) -> _Answer:
        session = self._client_session()
        self._counters["calls"] += 1
        try:
            async with session.request(
                method, url, params=params, data=payload, headers=headers, allow_redirects=False
            ) as resp:
                answer = _Answer(resp.status, await resp.read(), resp.headers)
        except aiohttp.ClientConnectorError as exc:  # no connection: nothing was sent
            raise _Transient(0, f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            if idempotent:
                raise _Transient(0, type(exc).__name__) from None
            raise _Refused(0, f"{type(exc).__name__}; not repeated, as Gitea may have acted on it") from None
        self._note_rate_limit(answer)
        if 200 <= answer.status < 300:
            return answer
        if answer.status in _RETRY_STATUSES or (idempotent and answer.status == 500):
            raise _Transient(answer.status, answer.detail(), answer.retry_after())
        if 300 <= answer.status < 400:
            where = answer.headers.get("Location", "elsewhere")
            raise _Refused(answer.status, f"redirected to {where}; set api_url to the instance's ROOT_URL")
        raise _Refused(answer.status, answer.detail(), answer.field("code"))

    def _note_rate_limit(self, answer: _Answer) -> None:
        raw = answer.headers.get("X-RateLimit-Remaining")
        if raw is not None:
            with contextlib.suppress(ValueError):
                self._rate_limit_remaining = float(raw)

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                headers={"User-Agent": CLIENT_NAME},
            )
        return self._session

    # -- the access token ------------------------------------------------------------------------------------------

    def _access_token(self) -> str:
        """The token file's content, re-read when the file changes (rotation needs no restart). chmod 600."""
        file = self.token_file
        try:
            st = file.stat()
        except FileNotFoundError:
            raise self._token_problem("file not found") from None
        except OSError as exc:
            raise self._token_problem(f"cannot read: {exc.strerror or type(exc).__name__}") from None
        if not stat.S_ISREG(st.st_mode):
            raise self._token_problem("not a regular file")
        if st.st_mode & 0o077:
            raise self._token_problem("readable by group/others; run chmod 600 on it")
        cached = self._token_cache
        if cached is not None and cached[:2] == (st.st_mtime_ns, st.st_size):
            return cached[2]
        try:
            token = file.read_text(encoding="utf-8").strip()
        except PermissionError:
            raise self._token_problem("not readable by this user") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._token_problem(f"cannot read: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        if not token or any(c.isspace() for c in token):
            raise self._token_problem("empty, or not a single access token")
        self._token_cache = (st.st_mtime_ns, st.st_size, token)
        return token

    def _current_token_or_empty(self) -> str:
        return self._token_cache[2] if self._token_cache is not None else ""

    def _token_problem(self, problem: str) -> ForgeError:
        self._counters["errors"] += 1
        return ForgeError(f"Gitea access token file {self.token_file}: {problem}")

    # -- errors ----------------------------------------------------------------------------------------------------

    def _forge_error(self, exc: _Refused, what: str, scope: RunnerScope | None) -> ForgeError:
        self._counters["errors"] += 1
        detail = _scrub(exc.detail, self._current_token_or_empty())
        status = exc.status
        need = _token_needs(scope)
        if status == 401:
            message = (
                f"Gitea at {self.base_url} refused the access token in {self.token_file} while {what} (HTTP 401: "
                f"{detail}); write a valid access token there: {need}"
            )
        elif status == 403:
            message = (
                f"the access token in {self.token_file} may not do this: {what} (HTTP 403: {detail}); it needs {need}"
            )
        elif status == 404:
            target = str(scope) if scope is not None else "such object"
            message = (
                f"Gitea at {self.base_url} has no {target}, or the token's user cannot see it (HTTP 404 while "
                f"{what}); check the name, that Actions is enabled for it, and that Gitea is 1.24 or later"
            )
        elif status == 0:
            message = f"Gitea at {self.base_url}: {what} failed ({detail})"
        else:
            message = f"Gitea at {self.base_url} refused {what} (HTTP {status}: {detail})"
        return ForgeError(message, status=status)

    def _exhausted(self, exc: _Transient, what: str, *secrets: str) -> ForgeError:
        self._counters["errors"] += 1
        detail = _scrub(exc.detail, *secrets)
        reason = f"unreachable: {detail}" if exc.status == 0 else f"HTTP {exc.status}: {detail}"
        return ForgeError(
            f"Gitea at {self.base_url} still failing after retrying for up to {self.retry_budget_s:g} s while {what} "
            f"({reason}); check that api_url is right and Gitea is up",
            status=exc.status,
        )

    def _malformed(self, what: str, answer: _Answer) -> ForgeError:
        self._counters["errors"] += 1
        return ForgeError(
            f"Gitea at {self.base_url} answered {what} with an unexpected body (HTTP {answer.status}); is api_url "
            "the Gitea instance's ROOT_URL, not a proxy's page?",
            status=answer.status,
        )

    # -- paths -----------------------------------------------------------------------------------------------------

    def _repo_path(self, repository: str) -> str:
        owner, sep, repo = repository.partition("/")
        if not sep or not _NAME.match(owner) or not _NAME.match(repo):
            raise ForgeError(f"repository {repository!r} is not of the form owner/name")
        return f"/repos/{quote(owner, safe='')}/{quote(repo, safe='')}"

    def _runners_path(self, scope: RunnerScope) -> str:
        if scope.kind == "repo":
            return f"{self._repo_path(scope.name)}/actions/runners"
        if not _NAME.match(scope.name):
            raise ForgeError(f"organization {scope.name!r} is not a valid Gitea organization name")
        return f"/orgs/{quote(scope.name, safe='')}/actions/runners"

    @staticmethod
    def _scope_key(scope: RunnerScope) -> str:
        return f"{scope.kind}:{scope.name.lower()}"


class _Gone(Exception):
    """A 404 the caller interprets (a deleted runner, a missing endpoint)."""


class _Legacy(Exception):
    """A 404/405 that may mean an older Gitea serving the route under another method."""


def _token_needs(scope: RunnerScope | None) -> str:
    if scope is None:
        return "a site administrator's token with scope write:admin"
    if scope.kind == "repo":
        return (
            f"a token of an administrator of repository {scope.name} with scope write:repository "
            "(read:repository for listing queued jobs)"
        )
    return f"a token of an owner of organization {scope.name} with scope write:organization"


def _registered_runner(entry: object) -> RegisteredRunner | None:
    """One entry of `{"runners": [...]}` (services/convert ToActionRunner): status "online"/"offline", busy when
    running a task, labels as [{"id", "name", "type": "custom"}]."""
    if not isinstance(entry, dict):
        return None
    runner_id = _as_int(entry.get("id"))
    if runner_id is None:
        return None
    labels = tuple(
        _str(label.get("name")) for label in entry.get("labels") or [] if isinstance(label, dict) and label.get("name")
    )
    return RegisteredRunner(
        id=runner_id,
        name=_str(entry.get("name")),
        status=_str(entry.get("status")) or "offline",
        busy=entry.get("busy") is True,
        labels=labels,
    )


def _queued_job(entry: object, repository: str) -> QueuedJob | None:
    """One entry of `{"workflow_jobs": [...]}` (services/convert ToActionWorkflowJob)."""
    if not isinstance(entry, dict) or entry.get("status") not in (None, "queued"):
        return None
    job_id, run_id = _as_int(entry.get("id")), _as_int(entry.get("run_id"))
    if job_id is None or run_id is None:
        return None
    labels = tuple(label for label in entry.get("labels") or [] if isinstance(label, str))
    return QueuedJob(
        id=job_id,
        run_id=run_id,
        repository=repository,
        labels=labels,
        name=_str(entry.get("name")),
        head_sha=_str(entry.get("head_sha")),
        head_branch=_str(entry.get("head_branch")),
    )
