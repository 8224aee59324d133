"""What a forge's verified webhook body says, as values: a `workflow_job` change, a ping, or something we do not
serve. Pure: parsed from the raw body after the signature was checked (intake/receive.py), no I/O.

GitHub names the event in the `X-GitHub-Event` header; the body tells it as surely -- only `workflow_job` deliveries
carry a top-level `workflow_job` object, only pings carry `zen` and `hook_id` -- and the body is all an intake
worker relays, so the body decides. Gitea (1.24+) models its `workflow_job` payload on GitHub's, with the same
field names and actions (its `action` is the job's status converted to GitHub's names: services/webhook/
notifier.go); it has no `installation` and no ping. Only `queued` is demand; any other action is acknowledged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orchestrator.jobs.refusal import Refusal

# GitHub's workflow_job actions (docs: "Webhook events and payloads", workflow_job).
QUEUED, IN_PROGRESS, COMPLETED, WAITING = "queued", "in_progress", "completed", "waiting"
ACTIONS = frozenset({QUEUED, IN_PROGRESS, COMPLETED, WAITING})


@dataclass(frozen=True)
class WorkflowJob:
    """One `workflow_job` delivery. `labels` keep the forge's spelling; matching compares them case-insensitively."""

    action: str
    job_id: int
    run_id: int
    run_attempt: int
    name: str
    labels: tuple[str, ...]
    repository: str
    owner: str
    organization: str | None
    installation_id: int | None
    head_sha: str
    head_branch: str
    runner_id: int | None
    runner_name: str | None
    conclusion: str | None
    workflow_name: str


@dataclass(frozen=True)
class Ping:
    hook_id: int | None


@dataclass(frozen=True)
class OtherEvent:
    """A delivery that is neither: answered 202 and counted, never served."""

    kind: str


ForgeEvent = WorkflowJob | Ping | OtherEvent


def _malformed(message: str) -> Refusal:
    return Refusal("invalid_payload", f"workflow_job payload: {message}")


def _int(data: dict[str, Any], key: str, where: str, *, optional: bool = False) -> int | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _malformed(f"{where}.{key} must be an integer")
    return value


def _str(data: dict[str, Any], key: str, where: str, *, optional: bool = False) -> str:
    value = data.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise _malformed(f"{where}.{key} must be a string")
    return value


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise _malformed(f"{key} must be an object")
    return value


def parse_event(body: bytes) -> ForgeEvent:
    """The event a verified body carries. Raises Refusal (400) for a body that is not a JSON object or a
    `workflow_job` payload missing what serving it needs, naming the field."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refusal("invalid_json", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Refusal("invalid_json", "body must be a JSON object")
    if "workflow_job" not in data:
        if "zen" in data and "hook_id" in data:
            hook = data.get("hook_id")
            return Ping(hook if isinstance(hook, int) and not isinstance(hook, bool) else None)
        return OtherEvent(_kind(data))
    job = _object(data, "workflow_job")
    repo = _object(data, "repository")
    action = _str(data, "action", "")
    labels = job.get("labels")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise _malformed("workflow_job.labels must be a list of strings")
    full_name = _str(repo, "full_name", "repository")
    owner, sep, _ = full_name.partition("/")
    if not sep or not owner:
        raise _malformed(f"repository.full_name {full_name!r} is not owner/name")
    org = data.get("organization")
    installation = data.get("installation")
    return WorkflowJob(
        action=action or "unknown",
        job_id=_int(job, "id", "workflow_job") or 0,
        run_id=_int(job, "run_id", "workflow_job") or 0,
        run_attempt=_int(job, "run_attempt", "workflow_job", optional=True) or 1,
        name=_str(job, "name", "workflow_job", optional=True),
        labels=tuple(labels),
        repository=full_name,
        owner=owner,
        organization=_str(org, "login", "organization") if isinstance(org, dict) else None,
        installation_id=_int(installation, "id", "installation") if isinstance(installation, dict) else None,
        head_sha=_str(job, "head_sha", "workflow_job", optional=True),
        head_branch=_str(job, "head_branch", "workflow_job", optional=True),
        runner_id=_int(job, "runner_id", "workflow_job", optional=True),
        runner_name=_str(job, "runner_name", "workflow_job", optional=True) or None,
        conclusion=_str(job, "conclusion", "workflow_job", optional=True) or None,
        workflow_name=_str(job, "workflow_name", "workflow_job", optional=True),
    )


def _kind(data: dict[str, Any]) -> str:
    """A short, stable name for a delivery we do not serve, for the metric and the log (never a payload value)."""
    for key in ("workflow_run", "check_run", "check_suite", "pull_request", "issue", "release"):
        if key in data:
            return key
    return "other"
