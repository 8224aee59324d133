"""How a job is shown in API answers and the CLI: everything but internals (never a secret value: the spec
only names secrets, and the accessor is not a token but is still omitted as operational detail)."""

from __future__ import annotations

from orchestrator.forges.records import RunnerRecord
from orchestrator.jobs.states import Job


def job_view(job: Job) -> dict[str, object]:
    return {
        "job_id": job.id,
        "status": job.state.value,
        "pool": job.pool,
        "source": job.source,
        "repository": job.spec.repository,
        "ref": job.spec.ref,
        "sha": job.spec.sha,
        "commands": job.spec.commands,
        "env": job.spec.env,
        "secrets": [s.model_dump(exclude_none=True) for s in job.spec.secrets],
        "timeout_s": job.timeout_s,
        "attempt": job.attempt,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "exit_code": job.exit_code,
        "reason": job.reason,
        "container_id": job.container_id,
        "controller_id": job.controller_id,
        "sender": job.spec.sender,
        "approval": job.approval.to_json() if job.approval is not None else None,
    }


def runner_view(record: RunnerRecord, job: Job | None) -> dict[str, object]:
    """A forge runner: its job's state and times, and which forge job it was asked for and actually ran."""
    return {
        "job_id": record.job_id,
        "name": record.name,
        "source": record.source,
        "scope": record.scope,
        "pool": job.pool if job else None,
        "status": job.state.value if job else None,
        "registration_id": record.registration_id,
        "trigger_job_id": record.trigger_job_id,
        "ran_job_id": record.ran_job_id,
        "ran_job_name": record.ran_job_name,
        "ran_repository": record.ran_repository,
        "conclusion": record.conclusion,
        "created_at": record.created_at,
        "started_at": job.started_at if job else None,
        "online_at": record.online_at,
        "completed_at": record.completed_at,
        "finished_at": job.finished_at if job else None,
        "exit_code": job.exit_code if job else None,
        "reason": job.reason if job else None,
    }
