"""The approval rules (orchestrator/approvals/gate.py): which jobs wait, and who may decide. Pure."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from orchestrator.access.grants import Grant, Principal
from orchestrator.approvals.gate import ApprovalRefused, approval_needed, check_decision, expired
from orchestrator.config import ApprovalsConfig, PoolConfig
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import JobState, new_job

T0 = 1_000_000.0
GATES = ApprovalsConfig(timeout_s=3600, secret_paths=["ci/*/prod/*"])


def spec(**fields: Any) -> JobSpec:
    base = {"id": "j1", "pool": "deploy", "repository": "org/app", "ref": "main", "sha": "abcdef0", "commands": ["x"]}
    return JobSpec.model_validate({**base, **fields})


def pool(**fields: Any) -> PoolConfig:
    return PoolConfig.model_validate({"image": "i", **fields})


def test_a_pool_that_requires_approval_gates_every_job() -> None:
    assert (
        approval_needed(spec(), pool(requires_approval=True), GATES)
        == "waiting for approval: pool 'deploy' requires it"
    )
    assert approval_needed(spec(), pool(), GATES) is None
    assert approval_needed(spec(), None, GATES) is None


def test_a_secret_path_gates_the_jobs_that_read_it() -> None:
    prod = [{"path": "ci/deploy/prod/db", "key": "password", "name": "DB"}]
    staging = [{"path": "ci/deploy/staging/db", "key": "password", "name": "DB"}]
    assert approval_needed(spec(secrets=prod), pool(), GATES) == (
        "waiting for approval: it reads secret 'ci/deploy/prod/db' (approvals.secret_paths 'ci/*/prod/*')"
    )
    assert approval_needed(spec(secrets=staging), pool(), GATES) is None


def waiting(**fields: Any) -> Any:
    job = new_job(spec(**fields), source="t", controller_id="c", timeout_s=60, now=T0, awaiting="gated")
    assert job.state is JobState.AWAITING_APPROVAL
    return job


APPROVER = Principal("bob", (Grant("approver", None, ("org/*",)),), aliases=frozenset({"bob-gh"}))


def refusal(principal: Principal, job: Any, decision: str = "approved", now: float = T0 + 1) -> str | None:
    try:
        check_decision(principal, job, decision, now, GATES)  # type: ignore[arg-type]
    except ApprovalRefused as exc:
        return exc.code
    return None


def test_an_approver_in_scope_decides() -> None:
    assert refusal(APPROVER, waiting(sender="alice")) is None
    assert refusal(APPROVER, waiting(sender="alice"), "rejected") is None
    assert refusal(Principal("root", (Grant("admin"),)), waiting(sender="alice")) is None


def test_outside_the_scope_or_without_the_role_there_is_no_decision() -> None:
    assert refusal(APPROVER, waiting(repository="evil/app")) == "no_grant"
    assert refusal(Principal("ops", (Grant("operator"),)), waiting()) == "no_grant"


def test_the_sender_may_reject_their_job_but_never_approve_it() -> None:
    job = waiting(sender="Bob-GH")  # the approver's forge login, in another case
    assert refusal(APPROVER, job) == "self_approval"
    assert refusal(APPROVER, job, "rejected") is None
    assert refusal(APPROVER, waiting(sender=None)) is None  # an unknown sender cannot be checked


def test_only_a_waiting_job_that_has_not_expired_is_decided() -> None:
    job = waiting()
    assert refusal(APPROVER, dataclasses.replace(job, state=JobState.QUEUED)) == "not_awaiting"
    assert not expired(job, T0 + 3599, GATES) and expired(job, T0 + 3600, GATES)
    assert refusal(APPROVER, job, now=T0 + 3600) == "expired"


def test_the_config_bounds_the_timeout() -> None:
    with pytest.raises(ValueError):
        ApprovalsConfig(timeout_s=10)
