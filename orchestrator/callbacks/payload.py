"""What a delivery says. Pure: values in, values out.

The callback body follows the Standard Webhooks payload structure (`type`, `timestamp`, `data`); it is built from
the outbox row (the state, exit code and reason as they were at that change, not as the job is now) and the job's
spec, so every attempt of one delivery sends the same bytes. Links point at the controller's API
(`server.public_url`; paths alone without it); they need a viewer token like any API call.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from orchestrator.callbacks.outbox import Delivery
from orchestrator.jobs.states import Job, JobState

ForgeKind = Literal["github", "gitea", "gitlab"]

# GitHub and Gitea commit statuses: pending | success | failure | error (Gitea also has warning).
_GITHUB_STATES: dict[JobState, str] = {
    JobState.AWAITING_APPROVAL: "pending",
    JobState.QUEUED: "pending",
    JobState.RUNNING: "pending",
    JobState.SUCCEEDED: "success",
    JobState.FAILED: "failure",
    JobState.TIMED_OUT: "failure",
    JobState.CANCELLED: "error",
    JobState.ERROR: "error",
    JobState.REJECTED: "failure",
}
# GitLab commit statuses: pending | running | success | failed | canceled (GitLab also knows skipped).
_GITLAB_STATES: dict[JobState, str] = {
    JobState.AWAITING_APPROVAL: "pending",
    JobState.QUEUED: "pending",
    JobState.RUNNING: "running",
    JobState.SUCCEEDED: "success",
    JobState.FAILED: "failed",
    JobState.TIMED_OUT: "failed",
    JobState.CANCELLED: "canceled",
    JobState.ERROR: "failed",
    JobState.REJECTED: "canceled",
}
DESCRIPTION_MAX = 140  # GitHub refuses longer commit status descriptions


def forge_state(kind: ForgeKind, state: JobState) -> str | None:
    """The commit status a job state is shown as; None for `starting`, which adds nothing to `queued`."""
    return (_GITLAB_STATES if kind == "gitlab" else _GITHUB_STATES).get(state)


def links(job_id: str, public_url: str | None) -> dict[str, str]:
    base = (public_url or "").rstrip("/")
    return {
        "job_url": f"{base}/api/v1/jobs/{job_id}",
        "log_url": f"{base}/api/v1/jobs/{job_id}/logs",
        "attestation_url": f"{base}/api/v1/jobs/{job_id}/attestation",
    }


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat().replace("+00:00", "Z")


def callback_payload(job: Job, delivery: Delivery, public_url: str | None) -> dict[str, Any]:
    urls = links(job.id, public_url)
    final = delivery.state.final
    data: dict[str, Any] = {
        "job_id": job.id,
        "source": job.source,
        "pool": job.pool,
        "repository": job.spec.repository,
        "ref": job.spec.ref,
        "sha": job.spec.sha,
        "state": delivery.state.value,
        "final": final,
        "sequence": delivery.seq,
        "attempt": delivery.attempt,
        "changed_at": delivery.at,
        "exit_code": delivery.exit_code,
        "reason": delivery.reason,
        "job_url": urls["job_url"],
        "log_url": urls["log_url"],
        # Signed and stored before the final state is (job_runner), so it exists once a final state is announced.
        "attestation_url": urls["attestation_url"] if final else None,
    }
    return {"type": f"job.{delivery.state.value}", "timestamp": _iso(delivery.at), "data": data}


def callback_body(job: Job, delivery: Delivery, public_url: str | None) -> bytes:
    """The exact bytes signed and sent: compact, keys in a fixed order, the same for every attempt."""
    payload = callback_payload(job, delivery, public_url)
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def description(delivery: Delivery) -> str:
    text = delivery.state.value.replace("_", " ")
    if delivery.state.final and delivery.reason:
        text = f"{text}: {delivery.reason}"
    elif delivery.state.final and delivery.exit_code not in (None, 0):
        text = f"{text}: exit code {delivery.exit_code}"
    if len(text) > DESCRIPTION_MAX:
        text = text[: DESCRIPTION_MAX - 1] + "…"
    return text


def status_body(kind: ForgeKind, delivery: Delivery, *, context: str, public_url: str | None) -> dict[str, Any] | None:
    """The JSON body of a commit status, or None when the state is not shown as one. `target_url` only with an
    absolute `public_url`: the forges want a URL, not a path."""
    state = forge_state(kind, delivery.state)
    if state is None:
        return None
    body: dict[str, Any] = {"state": state, "description": description(delivery)}
    body["name" if kind == "gitlab" else "context"] = context
    if public_url:
        body["target_url"] = links(delivery.job_id, public_url)["log_url"]
    return body
