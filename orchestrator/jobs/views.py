"""How a job is shown in API answers and the CLI: everything but internals (never a secret value: the spec
only names secrets, and the accessor is not a token but is still omitted as operational detail)."""

from __future__ import annotations

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
    }
