"""Approval gates, the pure part: which jobs must wait for a person's approval, and whether a decision on one is
allowed. No I/O; approvals/service.py applies the decisions.

A job needs approval when its pool says `requires_approval`, or when it reads a secret whose path matches one of
`[approvals] secret_paths`. It then waits in `awaiting_approval` -- no container, no token, no secret -- until a
person with an `approver` grant for its pool and repository approves it (it is queued) or rejects it; after
`[approvals] timeout_s` without a decision it is rejected. The approver must not be the job's own sender
(`spec.sender`, when the sender says who triggered the job): one person cannot push and wave through their own
deploy."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Literal

from orchestrator.access.grants import Principal
from orchestrator.config import ApprovalsConfig, PoolConfig
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import Job, JobState

Decision = Literal["approved", "rejected"]


class ApprovalRefused(Exception):
    """A decision that may not be taken. `code`: "no_grant" or "self_approval" (403), "not_awaiting" or
    "expired" (409); the message names the job and why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def approval_needed(spec: JobSpec, pool: PoolConfig | None, approvals: ApprovalsConfig) -> str | None:
    """Why the job must wait for approval (the reason it shows while waiting), or None."""
    if pool is not None and pool.requires_approval:
        return f"waiting for approval: pool {spec.pool!r} requires it"
    for secret in spec.secrets:
        for glob in approvals.secret_paths:
            if fnmatchcase(secret.path, glob):
                return f"waiting for approval: it reads secret {secret.path!r} (approvals.secret_paths {glob!r})"
    return None


def expired(job: Job, now: float, approvals: ApprovalsConfig) -> bool:
    return job.state is JobState.AWAITING_APPROVAL and now - job.created_at >= approvals.timeout_s


def check_decision(principal: Principal, job: Job, decision: Decision, now: float, approvals: ApprovalsConfig) -> None:
    """Raises ApprovalRefused unless `principal` may take `decision` on `job` now. The sender may reject their
    own job (as they could cancel it), never approve it."""
    if not principal.may("approver", job.pool, job.spec.repository):
        raise ApprovalRefused(
            "no_grant", f"{principal.name} has no approver grant for pool {job.pool!r} and {job.spec.repository!r}"
        )
    if job.state is not JobState.AWAITING_APPROVAL:
        raise ApprovalRefused("not_awaiting", f"job {job.id} is {job.state.value}, not awaiting approval")
    if expired(job, now, approvals):
        raise ApprovalRefused("expired", f"job {job.id} waited longer than approvals.timeout_s; it is rejected")
    if decision == "approved" and principal.is_one_of([job.spec.sender]):
        raise ApprovalRefused(
            "self_approval", f"{principal.name} sent job {job.id} and may not approve it: another approver must"
        )
