"""GitHub's REST API as the controller's `ForgeAPI`: single-use (JIT) runner registrations, the runner list, and
the queued jobs a lost webhook would hide.

One aiohttp session (made on first use, closed by `close`), every request with GitHub's recommended headers and
`Authorization: Bearer` of an installation token (auth.py) or of the fine-grained token.

Failures, in the order they are met:
- **Primary rate limit.** Every answer's `X-RateLimit-Remaining`/`-Reset` are recorded per credential (each
  installation token, the token file and the app's JWT have their own budget). When the budget is spent -- counting
  the requests still in flight, whose answers have not told us yet -- the next request waits until the reset instead
  of being sent: no request goes over the limit. While the budget is unknown (the first request of a credential, the
  first after a reset) one request goes alone and the others wait for its answer. An answer 403/429 with
  `X-RateLimit-Remaining: 0` (the budget was spent elsewhere, by another user of the same token) sets the budget to
  0 and the request waits the same way.
- **Secondary rate limit.** 403/429 with `Retry-After`: wait that long, then send again; without it (a 429, or a
  403 whose message says "secondary rate limit") wait one minute, as GitHub's best practices ask. At most
  `rate_limit_retries` times per call and never one wait longer than `rate_limit_max_wait_s`.
- **5xx and connection errors** are retried with tenacity, backing off, for at most `retry_budget_s` seconds.
- **401** with an installation token: the token is dropped and the request sent once more with a fresh one (it
  may have been revoked early, or the clock may be off); a second 401 is final.
- Everything else is final: a `ForgeError` whose message says what to fix -- app id, installation, repository or
  organization, runner group, the permission GitHub wants -- and never holds a token, JWT or JIT config.

`stats()` gives the counters the metrics export: calls (HTTP requests sent), retries (requests sent again), the
last `X-RateLimit-Remaining` seen (-1 until one is), rate-limit waits and the seconds waited.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from orchestrator.config import ForgeConfig
from orchestrator.forges.github.auth import (
    AppCredentials,
    AppTokenProvider,
    GitHubAuth,
    InstallationToken,
    TokenFileAuth,
    parse_expires_at,
)
from orchestrator.forges.protocol import (
    ForgeError,
    QueuedJob,
    RegisteredRunner,
    Registration,
    RunnerScope,
)

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = "runner-orchestrator"
JIT_CONFIG_FILE = "ACTIONS_RUNNER_INPUT_JITCONFIG"
DEFAULT_RUNNER_GROUP_ID = 1  # GitHub requires runner_group_id; 1 is the "Default" group
WORK_FOLDER = "_work"
PER_PAGE = 100  # GitHub's maximum
MAX_PAGES = 100
SECONDARY_DEFAULT_WAIT_S = 60.0  # GitHub: without Retry-After, "wait for at least one minute before retrying"
RESET_MARGIN_S = 1.0  # X-RateLimit-Reset is whole seconds; our clock and GitHub's may differ a little
_MESSAGE_MAX = 300

_NAME_PART = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_SECRET_LIKE = re.compile(
    r"(?:gh[opusr]_[A-Za-z0-9_]{16,}|github_pat_[A-Za-z0-9_]{16,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)"
)
_NEXT_LINK = re.compile(r"""<[^>]*>\s*;[^,]*\brel\s*=\s*"?[^",]*\bnext\b""")

Sleep = Callable[[float], Awaitable[None]]
Kind = Literal["register", "list", "delete", "queued", "token", "repos"]


# -- rate limits: pure ----------------------------------------------------------------------------------------------


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def retry_after_s(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds to wait: GitHub sends whole seconds; an HTTP date is understood too."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now)


def primary_wait(remaining: int | None, reset: float | None, now: float, in_flight: int = 0) -> float:
    """Seconds to wait before one more request may be sent under the primary limit: 0 when the budget is unknown,
    when requests are left after those in flight, or when the window has reset."""
    if remaining is None or remaining - in_flight > 0:
        return 0.0
    if reset is None:
        return SECONDARY_DEFAULT_WAIT_S
    return max(0.0, reset - now + RESET_MARGIN_S) if now < reset else 0.0


def limited(status: int, headers: Mapping[str, str], message: str, now: float) -> tuple[str, float] | None:
    """Whether an answer is a rate-limit refusal, GitHub's way: ("primary" | "secondary", seconds to wait), or None
    (a 403 that is about permissions, or no refusal at all). `headers` keys are lower case."""
    if status not in (403, 429):
        return None
    after = retry_after_s(headers.get("retry-after"), now)
    if after is not None:
        return ("secondary", after)
    if _int_header(headers, "x-ratelimit-remaining") == 0:
        reset = _int_header(headers, "x-ratelimit-reset")
        return ("primary", primary_wait(0, float(reset) if reset is not None else None, now))
    text = message.lower()
    if status == 429 or "secondary rate limit" in text or "abuse" in text:
        return ("secondary", SECONDARY_DEFAULT_WAIT_S)
    return None


def has_next_page(link: str) -> bool:
    return bool(_NEXT_LINK.search(link))


@dataclass
class _Budget:
    """What GitHub last said about one credential's primary budget, and the requests on their way."""

    remaining: int | None = None
    reset: float | None = None
    in_flight: int = 0
    unlimited: bool = False  # answers carry no rate-limit headers (GHES with rate limiting off)
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def observe(self, remaining: int | None, reset: int | None, now: float) -> None:
        self.unlimited = remaining is None
        if remaining is None:
            return
        new_reset = float(reset) if reset is not None else (self.reset if self.reset is not None else now + 60.0)
        if self.remaining is not None and new_reset == self.reset:
            remaining = min(remaining, self.remaining)  # an older answer of the window arriving late: not more
        self.remaining, self.reset = remaining, new_reset

    def settle(self) -> None:
        self.in_flight -= 1
        self.settled.set()
        self.settled = asyncio.Event()


# -- answers and what went wrong ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: Any

    @property
    def message(self) -> str:
        """GitHub's error message, with the details of a 422's `errors`."""
        if not isinstance(self.body, dict):
            return ""
        parts = [str(self.body.get("message") or "")]
        errors = self.body.get("errors")
        if isinstance(errors, list):
            for error in errors[:5]:
                if isinstance(error, dict):
                    text = error.get("message") or " ".join(
                        str(error[k]) for k in ("resource", "field", "code") if error.get(k)
                    )
                    parts.append(str(text))
                elif isinstance(error, str):
                    parts.append(error)
        return "; ".join(p for p in parts if p)[:_MESSAGE_MAX]


class _Transient(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class _What:
    """The call being made, in the words of its error messages."""

    kind: Kind
    action: str
    installation_id: int | None
    scope: RunnerScope | None = None
    repository: str | None = None
    runner_group_id: int | None = None

    @property
    def target(self) -> str:
        if self.scope is not None:
            return str(self.scope)
        return f"repository {self.repository}" if self.repository else "GitHub"


def _full_names(items: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(item["full_name"]) for item in items if isinstance(item.get("full_name"), str)]


# -- the client -----------------------------------------------------------------------------------------------------


class GitHubForge:
    """`ForgeAPI` on GitHub.com or GitHub Enterprise Server (`api_url` https://HOST/api/v3).

    `auth` is an `AppTokenProvider` (GitHub App) or a `TokenFileAuth` (fine-grained token); `installation_id` is the
    installation used when a scope names none (the webhook's is preferred). `clock` (epoch seconds) and `sleep` are
    injectable so tests need not wait for real resets.

    `queued_jobs` looks for queued jobs in the runs listed with each of `queued_run_statuses`: a run is "queued" only
    until its first job starts, so a job still waiting in a run that is "in_progress" (a matrix, a job that `needs:`
    another) is found only among the in_progress runs; ("queued",) alone spends fewer calls and misses those."""

    def __init__(
        self,
        auth: GitHubAuth,
        *,
        api_url: str = DEFAULT_API_URL,
        installation_id: int | None = None,
        request_timeout_s: float = 15.0,
        retry_budget_s: float = 30.0,
        rate_limit_max_wait_s: float = 3600.0,
        rate_limit_retries: int = 3,
        queued_run_statuses: Sequence[str] = ("queued", "in_progress"),
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not re.match(r"^https?://[^/\s]+", api_url):
            raise ForgeError(
                f"GitHub api_url {api_url!r} is not an http(s) URL (https://api.github.com, GHES: /api/v3)"
            )
        self.auth = auth
        self.api_url = api_url.rstrip("/")
        self.installation_id = installation_id
        self.request_timeout_s = request_timeout_s
        self.retry_budget_s = retry_budget_s
        self.rate_limit_max_wait_s = rate_limit_max_wait_s
        self.rate_limit_retries = rate_limit_retries
        self.queued_run_statuses = tuple(queued_run_statuses)
        self.clock = clock
        self.sleep = sleep
        self.calls = 0
        self.retries = 0
        self.rate_limit_waits = 0
        self.rate_limit_wait_s = 0.0
        self.rate_limit_remaining = -1
        self._installations: dict[str, int] = {}
        self._budgets: dict[str, _Budget] = {}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(
        cls, forge: ForgeConfig, *, clock: Callable[[], float] = time.time, sleep: Sleep = asyncio.sleep
    ) -> GitHubForge:
        """From a `[sources.NAME.forge]` section (config.ForgeConfig, kind "github")."""
        auth: GitHubAuth
        if forge.app_id is not None and forge.private_key_file is not None:
            auth = AppTokenProvider(AppCredentials.from_file(forge.app_id, forge.private_key_file), clock=clock)
        elif forge.token_file is not None:
            auth = TokenFileAuth(forge.token_file)
        else:
            raise ForgeError("a GitHub forge needs app_id + private_key_file, or token_file")
        return cls(
            auth,
            api_url=forge.base_url,
            installation_id=forge.installation_id,
            request_timeout_s=forge.request_timeout_s,
            retry_budget_s=forge.retry_budget_s,
            clock=clock,
            sleep=sleep,
        )

    def stats(self) -> dict[str, float]:
        return {
            "calls": float(self.calls),
            "retries": float(self.retries),
            "rate_limit_remaining": float(self.rate_limit_remaining),
            "rate_limit_waits": float(self.rate_limit_waits),
            "rate_limit_wait_s": self.rate_limit_wait_s,
        }

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- ForgeAPI ---------------------------------------------------------------------------------------------------

    async def register(
        self, scope: RunnerScope, *, name: str, labels: Sequence[str], runner_group_id: int | None
    ) -> Registration:
        group = runner_group_id if runner_group_id is not None else DEFAULT_RUNNER_GROUP_ID
        what = _What(
            kind="register",
            action=f"register runner {name} in runner group {group}",
            installation_id=self._installation(scope.installation_id),
            scope=scope,
            runner_group_id=group,
        )
        path = f"{self._scope_path(scope)}/actions/runners/generate-jitconfig"
        body = {"name": name, "runner_group_id": group, "labels": list(labels), "work_folder": WORK_FOLDER}
        answer = await self._request("POST", path, what, json_body=body)
        # Our names are unique (controller id + request id): one that exists is our own registration whose answer was
        # lost (a retried 5xx, a crash). Its JIT config reached nobody unless it runs a job: replace it.
        conflict = answer.status in (409, 422) and "already exists" in answer.message.lower()
        if conflict and await self._remove_leftover(scope, name, what):
            answer = await self._request("POST", path, what, json_body=body)
        if answer.status != 201:
            raise self._refusal(answer, what)
        data = self._object(answer, what)
        runner = data.get("runner")
        config = data.get("encoded_jit_config")
        if not isinstance(runner, dict) or not isinstance(runner.get("id"), int) or not isinstance(config, str):
            raise ForgeError(
                f"GitHub's answer to generate-jitconfig for {what.target} has no runner id or encoded_jit_config; "
                f"is api_url {self.api_url} GitHub's REST API?",
                status=answer.status,
            )
        log.info(
            "github runner registered",
            extra={"runner_id": runner["id"], "runner_name": name, "scope": str(scope), "runner_group_id": group},
        )
        return Registration(
            runner_id=runner["id"], name=str(runner.get("name") or name), credential=config, file_name=JIT_CONFIG_FILE
        )

    async def runners(self, scope: RunnerScope) -> list[RegisteredRunner]:
        what = _What(
            kind="list",
            action="list its self-hosted runners",
            installation_id=self._installation(scope.installation_id),
            scope=scope,
        )
        items = await self._pages(f"{self._scope_path(scope)}/actions/runners", "runners", what)
        return [self._runner(item) for item in items if isinstance(item.get("id"), int)]

    async def delete_runner(self, scope: RunnerScope, runner_id: int) -> bool:
        what = _What(
            kind="delete",
            action=f"delete runner {runner_id}",
            installation_id=self._installation(scope.installation_id),
            scope=scope,
        )
        answer = await self._request("DELETE", f"{self._scope_path(scope)}/actions/runners/{int(runner_id)}", what)
        if answer.status == 204:
            return True
        if answer.status == 404:
            return False
        raise self._refusal(answer, what)

    async def queued_jobs(self, repository: str, installation_id: int | None) -> list[QueuedJob]:
        scope = RunnerScope("repo", repository, installation_id)
        base = self._scope_path(scope)
        what = _What(
            kind="queued",
            action="list its queued workflow jobs",
            installation_id=self._installation(installation_id),
            repository=repository,
        )
        run_ids: list[int] = []
        for status in self.queued_run_statuses:
            for run in await self._pages(f"{base}/actions/runs", "workflow_runs", what, {"status": status}):
                run_id = run.get("id")
                if isinstance(run_id, int) and run_id not in run_ids:
                    run_ids.append(run_id)
        jobs: list[QueuedJob] = []
        for run_id in run_ids:
            try:
                items = await self._pages(f"{base}/actions/runs/{run_id}/jobs", "jobs", what)
            except ForgeError as exc:
                if exc.status == 404:
                    continue  # the run was deleted since it was listed
                raise
            for job in items:
                if job.get("status") != "queued" or not isinstance(job.get("id"), int):
                    continue
                labels = job.get("labels")
                jobs.append(
                    QueuedJob(
                        id=job["id"],
                        run_id=int(job.get("run_id") or run_id),
                        repository=repository,
                        labels=tuple(str(label) for label in labels) if isinstance(labels, list) else (),
                        name=str(job.get("name") or ""),
                        head_sha=str(job.get("head_sha") or ""),
                        head_branch=str(job.get("head_branch") or ""),
                    )
                )
        return jobs

    async def repositories(self) -> list[tuple[str, int | None]]:
        """A GitHub App: the repositories of each of its installations (`GET /app/installations` with the app's
        JWT, then `GET /installation/repositories` with each installation's token) -- or of the configured
        installation alone when one is set. A token: `GET /user/repos` (what the token's owner can reach; a
        fine-grained token only sees the repositories it was granted)."""
        if self.auth.app_id is None:
            what = _What(kind="repos", action="list the repositories it can reach", installation_id=None)
            return [(name, None) for name in _full_names(await self._pages("/user/repos", None, what))]
        if self.installation_id is not None:
            installations = [self.installation_id]
        else:
            what = _What(kind="token", action="list the app's installations", installation_id=None)
            found = await self._pages("/app/installations", None, what, bearer=self.auth.app_jwt)
            installations = [i["id"] for i in found if isinstance(i.get("id"), int) and not i.get("suspended_at")]
        repositories: list[tuple[str, int | None]] = []
        for installation in installations:
            what = _What(kind="repos", action="list the installation's repositories", installation_id=installation)
            items = await self._pages("/installation/repositories", "repositories", what)
            repositories.extend((name, installation) for name in _full_names(items))
        return repositories

    async def resolve(self, scope: RunnerScope) -> RunnerScope:
        """The scope with its App installation: a repository or organization named in the config (no webhook told
        which installation) is looked up once with the app's JWT (`GET /repos/{o}/{r}/installation`,
        `GET /orgs/{org}/installation`) and cached. A token (no App) needs none."""
        if scope.installation_id is not None or self.installation_id is not None or self.auth.app_id is None:
            return scope
        key = f"{scope.kind}:{scope.name}"
        found = self._installations.get(key)
        if found is None:
            what = _What(kind="token", action="find the app's installation", installation_id=None, scope=scope)
            answer = await self._request(
                "GET", f"{self._scope_path(scope)}/installation", what, bearer=self.auth.app_jwt
            )
            data = self._object(answer, what) if answer.status == 200 else {}
            installation = data.get("id")
            if answer.status != 200 or isinstance(installation, bool) or not isinstance(installation, int):
                raise ForgeError(
                    f"GitHub App {self.auth.app_id} is not installed on {scope} ({answer.status} "
                    f"{answer.message or ''}): install it there, or set installation_id".replace(" )", ")"),
                    status=answer.status,
                )
            found = self._installations[key] = installation
        return RunnerScope(scope.kind, scope.name, found)

    # -- helpers of the ForgeAPI methods ----------------------------------------------------------------------------

    def _installation(self, installation_id: int | None) -> int | None:
        return installation_id if installation_id is not None else self.installation_id

    @staticmethod
    def _scope_path(scope: RunnerScope) -> str:
        parts = scope.name.split("/")
        expected = 2 if scope.kind == "repo" else 1
        if len(parts) != expected or not all(_NAME_PART.match(p) and p not in (".", "..") for p in parts):
            shape = "owner/repo" if scope.kind == "repo" else "an organization login"
            what = "repository" if scope.kind == "repo" else "organization"
            raise ForgeError(f"{scope.name!r} is not a GitHub {what} name ({shape})")
        quoted = "/".join(quote(p, safe="") for p in parts)
        return f"/repos/{quoted}" if scope.kind == "repo" else f"/orgs/{quoted}"

    @staticmethod
    def _runner(item: Mapping[str, Any]) -> RegisteredRunner:
        labels = item.get("labels")
        names = (
            tuple(str(label.get("name")) for label in labels if isinstance(label, dict) and label.get("name"))
            if isinstance(labels, list)
            else ()
        )
        return RegisteredRunner(
            id=int(item["id"]),
            name=str(item.get("name") or ""),
            status=str(item.get("status") or ""),
            busy=bool(item.get("busy")),
            labels=names,
        )

    async def _remove_leftover(self, scope: RunnerScope, name: str, what: _What) -> bool:
        """Deletes the registration named `name` if it is idle; False if there is none or it runs a job."""
        path = f"{self._scope_path(scope)}/actions/runners"
        for item in await self._pages(path, "runners", what, {"name": name}):
            if item.get("name") == name and isinstance(item.get("id"), int):
                if item.get("busy"):
                    return False
                log.warning(
                    "replacing a leftover github runner registration of the same name",
                    extra={"runner_id": item["id"], "runner_name": name, "scope": str(scope)},
                )
                await self.delete_runner(scope, item["id"])
                return True
        return False

    async def _pages(
        self,
        path: str,
        key: str | None,
        what: _What,
        params: Mapping[str, str] | None = None,
        bearer: Callable[[], str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every page of a list: the `key` list of each answer's object, or the answer itself when `key` is None
        (GitHub answers some lists, e.g. `GET /app/installations`, as a bare array)."""
        items: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            query = {**(params or {}), "per_page": str(PER_PAGE), "page": str(page)}
            answer = await self._request("GET", path, what, params=query, bearer=bearer)
            if answer.status != 200:
                raise self._refusal(answer, what)
            body: dict[str, Any] = {} if key is None else self._object(answer, what)
            chunk = answer.body if key is None else body.get(key)
            if not isinstance(chunk, list):
                raise ForgeError(
                    f"GitHub's answer listing {what.target} has no {key or 'JSON'!r} list; is api_url "
                    f"{self.api_url} GitHub's REST API?",
                    status=answer.status,
                )
            items.extend(item for item in chunk if isinstance(item, dict))
            link = answer.headers.get("link")
            if link is not None:
                if not has_next_page(link):
                    return items
                continue
            total = body.get("total_count")
            if len(chunk) < PER_PAGE or (isinstance(total, int) and len(items) >= total):
                return items
        log.warning("github list cut at the page limit", extra={"path": path, "pages": MAX_PAGES})
        return items

    def _object(self, answer: _Answer, what: _What) -> dict[str, Any]:
        if isinstance(answer.body, dict):
            return answer.body
        raise ForgeError(
            f"GitHub answered {what.action} on {what.target} with HTTP {answer.status} but no JSON object; is "
            f"api_url {self.api_url} GitHub's REST API (https://api.github.com, GHES: https://HOST/api/v3)?",
            status=answer.status,
        )

    # -- error messages ---------------------------------------------------------------------------------------------

    def _scrub(self, text: str, *sensitive: str) -> str:
        for value in (*sensitive, *self.auth.secrets()):
            if value:
                text = text.replace(value, "[REDACTED]")
        return _SECRET_LIKE.sub("[REDACTED]", text)

    def _visible_to(self, installation_id: int | None) -> str:
        if self.auth.app_id is None:
            return f"{self.auth.describe(installation_id)} (does the token have access to it?)"
        if installation_id is None:
            return f"GitHub App {self.auth.app_id}"
        return f"installation {installation_id} (is the app installed there?)"

    def _permission(self, what: _What) -> str:
        """The permission GitHub's docs name for the call: what the app (or the fine-grained token) must be given."""
        if what.kind == "queued":
            return "Actions: read"
        if what.kind == "repos":
            return "Metadata: read"
        access = "read" if what.kind == "list" else "write"
        if what.scope is not None and what.scope.kind == "org":
            return f"Self-hosted runners: {access} (organization)"
        return f"Administration: {access}"

    def _refusal(self, answer: _Answer, what: _What) -> ForgeError:
        who = self.auth.describe(what.installation_id)
        github = answer.message or f"HTTP {answer.status}"
        group = f" (runner group {what.runner_group_id})" if what.runner_group_id is not None else ""
        status = answer.status
        if status == 401:
            fix = (
                "replace the token in the token file; it may have expired or been revoked"
                if self.auth.app_id is None
                else "the installation token was refused twice: check that the installation still exists and the "
                "controller's clock is right"
            )
            message = (
                f"GitHub rejected the credentials of {who} (401 {github}) trying to {what.action} on "
                f"{what.target}: {fix}"
            )
        elif status == 403:
            accepted = answer.headers.get("x-accepted-github-permissions")
            text = github.lower()
            if accepted or "not accessible" in text or "permission" in text or "admin" in text:
                wants = f"; GitHub accepts: {accepted}" if accepted else ""
                message = (
                    f"{who} lacks the {self._permission(what)} permission on {what.target}, needed to {what.action} "
                    f"(GitHub: {github}{wants})"
                )
            else:
                message = f"GitHub refused {who} to {what.action} on {what.target} (403 {github})"
            if what.kind == "register" and what.scope is not None and what.scope.kind == "org":
                message += f"; or runner group {what.runner_group_id} does not allow {what.target}'s repositories"
        elif status == 404:
            if what.scope is not None and what.scope.kind == "org":
                message = (
                    f"GitHub has no organization {what.scope.name} visible to {self._visible_to(what.installation_id)}"
                )
                if what.kind == "register":
                    message += f"; or the organization has no runner group {what.runner_group_id}"
            else:
                repository = what.scope.name if what.scope is not None else what.repository
                message = f"GitHub has no repository {repository} visible to {self._visible_to(what.installation_id)}"
            message += f" [{who}, trying to {what.action}]"
        elif status == 409:
            message = f"GitHub refused to {what.action} on {what.target}{group}: {github} (409 conflict) [{who}]"
        elif status == 422:
            message = f"GitHub refused to {what.action} on {what.target} (422 {github}) [{who}]"
        else:
            message = f"GitHub answered {status} to {what.action} on {what.target}: {github} [{who}]"
        return ForgeError(self._scrub(message), status=status)

    # -- the installation token exchange ----------------------------------------------------------------------------

    async def _exchange(self, installation_id: int, app_jwt: str) -> InstallationToken:
        what = _What(
            kind="token",
            action=f"fetch an installation token for installation {installation_id}",
            installation_id=installation_id,
        )
        first = [app_jwt]

        def bearer() -> str:
            return first.pop() if first else self.auth.app_jwt()

        answer = await self._request(
            "POST", f"/app/installations/{int(installation_id)}/access_tokens", what, bearer=bearer
        )
        app = f"GitHub App {self.auth.app_id}"
        github = answer.message or f"HTTP {answer.status}"
        if answer.status == 201:
            data = self._object(answer, what)
            token = data.get("token")
            try:
                expires_at = parse_expires_at(data.get("expires_at"))
            except ValueError:
                expires_at = None
            if isinstance(token, str) and token and expires_at is not None:
                return InstallationToken(token=token, expires_at=expires_at)
            message = f"GitHub's answer to {what.action} of {app} has no token or expires_at"
        elif answer.status == 401:
            message = (
                f"GitHub refused the JWT of {app} (401 {github}) trying to {what.action}: is app_id {self.auth.app_id} "
                "right, is private_key_file a current key of this app, is the controller's clock right?"
            )
        elif answer.status == 404:
            message = (
                f"{app} has no installation {installation_id} (404 {github}): was the app uninstalled, or is the "
                "installation id wrong?"
            )
        elif answer.status == 403:
            message = (
                f"GitHub refused {app} an installation token for installation {installation_id} (403 {github}): "
                "is the installation suspended?"
            )
        else:
            message = f"GitHub answered {answer.status} to {what.action} of {app}: {github}"
        raise ForgeError(self._scrub(message, app_jwt), status=answer.status)

    # -- one request: credentials, rate limits, retries -------------------------------------------------------------

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                headers={
                    "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": API_VERSION,
                    "User-Agent": USER_AGENT,
                },
            )
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        what: _What,
        *,
        json_body: object = None,
        params: Mapping[str, str] | None = None,
        bearer: Callable[[], str] | None = None,
    ) -> _Answer:
        """Sends one API request through every failure handling but the final refusal, which the caller words."""
        installation_id = what.installation_id
        refreshed = False
        limit_retries = 0
        while True:
            if bearer is not None:
                credential, key = bearer(), "app"
            else:
                credential = await self.auth.token(installation_id, self._exchange)
                key = f"installation:{installation_id}" if self.auth.app_id is not None else "token"
            answer = await self._send(method, path, what, credential, key, json_body, params)
            if answer.status == 401 and bearer is None and not refreshed:
                self.auth.invalidate(installation_id, credential)
                refreshed = True
                self.retries += 1
                continue
            limit = limited(answer.status, answer.headers, answer.message, self.clock())
            if limit is None:
                return answer
            kind, wait = limit
            if limit_retries >= self.rate_limit_retries or wait > self.rate_limit_max_wait_s:
                raise ForgeError(
                    self._scrub(
                        f"GitHub's {kind} rate limit for {self.auth.describe(installation_id)} still refuses to "
                        f"{what.action} on {what.target} after {limit_retries} waits (next wait {wait:.0f} s, limit "
                        f"{self.rate_limit_max_wait_s:.0f} s): {answer.message or answer.status}",
                        credential,
                    ),
                    status=answer.status,
                )
            limit_retries += 1
            self.retries += 1
            if kind == "secondary" or wait <= RESET_MARGIN_S:
                # (a primary refusal whose reset our clock has passed already: the clocks differ; a pause, not a storm)
                await self._wait(max(wait, RESET_MARGIN_S))
            # primary: the budget now says 0 until the reset, so the next send waits for it in _gate

    async def _wait(self, seconds: float) -> None:
        self.rate_limit_waits += 1
        self.rate_limit_wait_s += seconds
        log.info("waiting for github's rate limit", extra={"wait_s": round(seconds, 1)})
        await self.sleep(seconds)

    async def _gate(self, key: str, what: _What) -> _Budget:
        """Waits until one more request fits in the credential's primary budget, and counts it as in flight."""
        budget = self._budgets.setdefault(key, _Budget())
        waited = 0.0
        while True:
            now = self.clock()
            if budget.remaining is not None and budget.reset is not None and now >= budget.reset:
                budget.remaining = budget.reset = None  # a new window: the next answer tells its budget
            if budget.remaining is None and not budget.unlimited and budget.in_flight:
                # the budget is unknown (first request, new window): one request goes first and its answer tells
                await budget.settled.wait()
                continue
            wait = primary_wait(budget.remaining, budget.reset, now, budget.in_flight)
            if wait <= 0:
                budget.in_flight += 1
                return budget
            if budget.remaining is not None and budget.remaining > 0:
                # what is left is spoken for by requests in flight: their answers will tell whether any remains
                await budget.settled.wait()
                continue
            if waited + wait > self.rate_limit_max_wait_s:
                raise ForgeError(
                    f"GitHub's primary rate limit for {self.auth.describe(what.installation_id)} is spent until "
                    f"{time.strftime('%H:%M:%S UTC', time.gmtime(budget.reset or now))} ({wait:.0f} s), longer than "
                    f"rate_limit_max_wait_s ({self.rate_limit_max_wait_s:.0f} s); not trying to {what.action} on "
                    f"{what.target}",
                    status=429,
                )
            waited += wait
            await self._wait(wait)

    async def _send(
        self,
        method: str,
        path: str,
        what: _What,
        credential: str,
        key: str,
        json_body: object,
        params: Mapping[str, str] | None,
    ) -> _Answer:
        """One request, sent again on 5xx and connection errors for at most `retry_budget_s` (tenacity)."""
        started = self.clock()

        def out_of_budget(state: RetryCallState) -> bool:
            spent = max(state.idle_for, self.clock() - started)
            return spent + state.upcoming_sleep > self.retry_budget_s

        def count_retry(_: RetryCallState) -> None:
            self.retries += 1

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_Transient),
                stop=out_of_budget,
                wait=wait_exponential(multiplier=0.2, max=3),
                sleep=self.sleep,
                reraise=True,
                before_sleep=count_retry,
            ):
                with attempt:
                    return await self._once(method, path, what, credential, key, json_body, params)
        except _Transient as exc:
            raise ForgeError(
                f"GitHub API at {self.api_url} unavailable after retrying for {self.retry_budget_s:g} s, trying to "
                f"{what.action} on {what.target}: {exc.detail}",
                status=exc.status,
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self,
        method: str,
        path: str,
        what: _What,
        credential: str,
        key: str,
        json_body: object,
        params: Mapping[str, str] | None,
    ) -> _Answer:
        budget = await self._gate(key, what)
        try:
            self.calls += 1
            try:
                async with self._session_().request(
                    method,
                    self.api_url + path,
                    headers={"Authorization": f"Bearer {credential}"},
                    json=json_body,
                    params=params,
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    headers = {name.lower(): value for name, value in resp.headers.items()}
            except aiohttp.InvalidURL:
                raise ForgeError(f"GitHub api_url {self.api_url} does not make a valid URL") from None
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _Transient(0, type(exc).__name__) from None
            remaining = _int_header(headers, "x-ratelimit-remaining")
            budget.observe(remaining, _int_header(headers, "x-ratelimit-reset"), self.clock())
            if remaining is not None:
                self.rate_limit_remaining = remaining
        finally:
            budget.settle()
        if status >= 500:
            raise _Transient(status, f"HTTP {status}")
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        return _Answer(status=status, headers=headers, body=body)
