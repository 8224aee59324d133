"""Which targets a job's state changes go to, and which callback URLs a job may name. Pure.

A source with `[sources.NAME.callbacks]` sends every job's state changes to its `url`; a job spec may name its
own `callback_url` instead, accepted only within the source's `allowed_url_prefixes`. A prefix matches on scheme,
host and port exactly and on the path segment by segment (`https://h/ci/` admits `https://h/ci/x`, never
`https://h/ci-evil` or `https://h.evil/`); URLs with user info, fragments, `.`/`..` segments (also
percent-encoded), backslashes or whitespace are refused outright. A source with `[sources.NAME.commit_status]`
also gets commit statuses on its jobs' `sha`.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from orchestrator.callbacks.outbox import CALLBACK, STATUS, OutboxTargets
from orchestrator.callbacks.payload import forge_state
from orchestrator.jobs.refusal import Refusal
from orchestrator.jobs.states import Job

if TYPE_CHECKING:
    from orchestrator.config import Config, SourceConfig
    from orchestrator.jobs.spec import JobSpec


def url_problem(url: str, *, prefix: bool = False) -> str | None:
    """Why `url` cannot be a callback URL (or, with `prefix`, an allow-list entry), or None."""
    if any(c.isspace() or ord(c) < 0x20 or c == "\\" for c in url):
        return "must not contain whitespace, control characters or backslashes"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    del port
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry user info (credentials do not belong in a URL)"
    if parts.fragment or url.endswith("#"):
        return "must not have a fragment"
    if prefix and (parts.query or url.endswith("?")):
        return "an allowed prefix must not have a query"
    segments = urllib.parse.unquote(parts.path).split("/")
    if any(segment in (".", "..") for segment in segments):
        return "must not contain '.' or '..' path segments"
    return None


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int]:
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def url_allowed(url: str, prefixes: list[str]) -> bool:
    if url_problem(url) is not None:
        return False
    target = urllib.parse.urlsplit(url)
    path = target.path or "/"
    for prefix in prefixes:
        if url_problem(prefix, prefix=True) is not None:
            continue
        allowed = urllib.parse.urlsplit(prefix)
        if _origin(allowed) != _origin(target):
            continue
        base = allowed.path or "/"
        if path == base or path.startswith(base if base.endswith("/") else base + "/"):
            return True
    return False


def callback_url(source: SourceConfig | None, job: Job) -> str | None:
    """Where the job's callbacks go: its own URL if the source allows it, else the source's, else nowhere."""
    if source is None or source.callbacks is None:
        return None
    own = job.spec.callback_url
    if own is not None:
        return own if url_allowed(own, source.callbacks.allowed_url_prefixes) else None
    return source.callbacks.url


def outbox_targets(config: Config) -> OutboxTargets:
    """What the store calls for every state change it writes: the targets that change is owed to."""

    def targets(job: Job) -> tuple[str, ...]:
        source = config.sources.get(job.source)
        found: list[str] = []
        if callback_url(source, job) is not None:
            found.append(CALLBACK)
        status = source.commit_status if source is not None else None
        if status is not None and forge_state(status.kind, job.state) is not None:
            found.append(STATUS)
        return tuple(found)

    return targets


def check_callback_request(spec: JobSpec, source_name: str, source: SourceConfig | None) -> None:
    """Admission: a job's own `callback_url` must be allowed by its source. Raises Refusal (invalid_spec)."""
    url = spec.callback_url
    if url is None:
        return
    callbacks = source.callbacks if source is not None else None
    problem = url_problem(url)
    if problem is None and callbacks is None:
        problem = f"is not taken: source {source_name!r} has no [sources.{source_name}.callbacks]"
    elif problem is None and callbacks is not None and not url_allowed(url, callbacks.allowed_url_prefixes):
        problem = f"is not within the allowed_url_prefixes of source {source_name!r}"
    if problem is not None:
        message = f"callback_url {problem}"
        raise Refusal("invalid_spec", f"invalid job spec: {message}", [{"field": "callback_url", "message": message}])
