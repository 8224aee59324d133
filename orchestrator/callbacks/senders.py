"""The targets of the outbox: a signed Standard Webhooks callback and the forges' commit statuses.

Each target builds its request as a value (`Request`, pure, unit-tested) and `send` only performs it. Errors are
typed: `RetryableDelivery` (connection failures, timeouts, 408/425/429, 5xx) is retried by the dispatcher,
`PermanentDelivery` (any other non-2xx answer) is given up at once. Their messages name the status or the kind of
failure, never a header, a secret, a token or a response body (which might echo one).

Callbacks are signed with the `standardwebhooks` package (`Webhook.sign`): headers `webhook-id` (stable for one
state change, see outbox.py), `webhook-timestamp` (the attempt's time, so the receiver's 5-minute tolerance holds
for late retries) and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.

Commit statuses, as the forges document them (GitHub REST "Create a commit status", Gitea API v1
`CreateCommitStatus`, GitLab REST "Commits API: Set the pipeline status of a commit"):

- GitHub: `POST {api_url}/repos/{owner}/{repo}/statuses/{sha}`, `Authorization: Bearer <token>`,
  `Accept: application/vnd.github+json`, `X-GitHub-Api-Version: 2022-11-28`, JSON `{state, target_url,
  description, context}`, state one of error | failure | pending | success. The token needs "Commit statuses:
  write" (fine-grained) or `repo:status`.
- Gitea / Forgejo: `POST {api_url}/api/v1/repos/{owner}/{repo}/statuses/{sha}`, `Authorization: token <token>`,
  the same body; states pending | success | error | failure | warning.
- GitLab: `POST {api_url}/api/v4/projects/{id}/statuses/{sha}` where the id is the URL-encoded project path
  (`group%2Fproject`), `PRIVATE-TOKEN: <token>`, JSON `{state, name, target_url, description}`, state one of
  pending | running | success | failed | canceled. GitLab refuses some moves (e.g. back to pending after running,
  as a re-queued job would): that answer is a permanent failure of that one delivery, logged and audited.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import aiohttp
from standardwebhooks.webhooks import Webhook

from orchestrator.callbacks.outbox import Delivery
from orchestrator.callbacks.payload import ForgeKind, callback_body, status_body
from orchestrator.jobs.states import Job

_RETRYABLE_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "runner-orchestrator-callbacks"


class DeliveryError(Exception):
    """A failed attempt; the message is safe to log, store and audit."""


class RetryableDelivery(DeliveryError):
    """Worth another attempt later."""


class PermanentDelivery(DeliveryError):
    """The target refused in a way a retry will not change (or the delivery cannot be made at all)."""


def outcome_of(status: int) -> DeliveryError | None:
    """None for a 2xx answer, else the error it means."""
    if 200 <= status < 300:
        return None
    if status >= 500 or status in _RETRYABLE_STATUSES:
        return RetryableDelivery(f"HTTP {status}")
    return PermanentDelivery(f"HTTP {status}")


@dataclass(frozen=True, slots=True)
class Request:
    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Target(Protocol):
    def request(self, job: Job, delivery: Delivery, *, now: float) -> Request | None:
        """The HTTP request delivering `delivery`, or None when this target shows nothing for it. Raises
        PermanentDelivery when it cannot be made (e.g. the job's URL is no longer allowed)."""
        ...


class CallbackTarget:
    """Signed webhook to `url_for(job)` (the source's URL or the job's own)."""

    def __init__(self, secret: str, url_for: Callable[[Job], str | None], *, public_url: str | None) -> None:
        self._webhook = Webhook(secret)  # the whsec_ secret as read from its file; kept only in here
        self._url_for = url_for
        self.public_url = public_url

    def __repr__(self) -> str:
        return "CallbackTarget(secret=***)"

    def request(self, job: Job, delivery: Delivery, *, now: float) -> Request:
        url = self._url_for(job)
        if url is None:
            raise PermanentDelivery("no callback URL is configured (or allowed) for this job any more")
        body = callback_body(job, delivery, self.public_url)
        msg_id = delivery.webhook_id
        timestamp = datetime.fromtimestamp(int(now), tz=UTC)
        signature = self._webhook.sign(msg_id, timestamp, body.decode())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": signature,
        }
        return Request(url, body, headers)


def _split_repository(repository: str) -> tuple[str, str]:
    owner, _, name = repository.partition("/")
    if not owner or not name or "/" in name:
        raise PermanentDelivery(f"repository {repository!r} is not owner/name, so it has no commit statuses here")
    return owner, name


class CommitStatusTarget:
    def __init__(self, kind: ForgeKind, api_url: str, token: str, *, context: str, public_url: str | None) -> None:
        self.kind: ForgeKind = kind
        self.api_url = api_url.rstrip("/")
        self._token = token
        self.context = context
        self.public_url = public_url

    def __repr__(self) -> str:
        return f"CommitStatusTarget(kind={self.kind!r}, api_url={self.api_url!r}, token=***)"

    def request(self, job: Job, delivery: Delivery, *, now: float) -> Request | None:
        body = status_body(self.kind, delivery, context=self.context, public_url=self.public_url)
        if body is None:
            return None
        sha = urllib.parse.quote(job.spec.sha, safe="")
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        if self.kind == "gitlab":
            project = urllib.parse.quote(job.spec.repository, safe="")
            url = f"{self.api_url}/api/v4/projects/{project}/statuses/{sha}"
            headers["PRIVATE-TOKEN"] = self._token
        else:
            owner, name = (urllib.parse.quote(p, safe="") for p in _split_repository(job.spec.repository))
            if self.kind == "github":
                url = f"{self.api_url}/repos/{owner}/{name}/statuses/{sha}"
                headers["Authorization"] = f"Bearer {self._token}"
                headers["Accept"] = "application/vnd.github+json"
                headers["X-GitHub-Api-Version"] = "2022-11-28"
            else:
                url = f"{self.api_url}/api/v1/repos/{owner}/{name}/statuses/{sha}"
                headers["Authorization"] = f"token {self._token}"
        return Request(url, json.dumps(body, sort_keys=True).encode(), headers)


async def send(session: aiohttp.ClientSession, request: Request, *, timeout_s: float) -> None:
    """POSTs `request`; returns on 2xx, raises RetryableDelivery / PermanentDelivery otherwise."""
    try:
        async with session.post(
            request.url,
            data=request.body,
            headers=dict(request.headers),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as response:
            await response.read()
            status = response.status
    except TimeoutError:
        raise RetryableDelivery(f"no answer within {timeout_s:g} s") from None
    except aiohttp.ClientConnectionError as exc:
        raise RetryableDelivery(f"connection failed ({type(exc).__name__})") from None
    except aiohttp.ClientError as exc:
        raise RetryableDelivery(f"request failed ({type(exc).__name__})") from None
    error = outcome_of(status)
    if error is not None:
        raise error
