"""The durable record of one single-use forge runner, next to the job that runs its container: what the forge was
asked for, what it registered, and which forge job the runner actually ran (a JIT runner takes any queued job its
labels fit, not necessarily the one whose webhook asked for it). Pure values; stores keep them (store/base.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunnerRecord:
    job_id: str  # our job: its container, timeout, cancel and logs are the runner's
    source: str  # the forge source ([sources.NAME] with a [forge])
    name: str  # the name registered at the forge: <controller_id>-<job_id>
    scope: str  # "repo:owner/name" or "org:owner"
    trigger_job_id: int  # the forge job whose `queued` delivery (or reconciliation) asked for this runner
    created_at: float
    registration_id: int | None = None  # the forge's runner id, once registered
    ran_job_id: int | None = None  # the forge job it took (in_progress)
    ran_job_name: str | None = None
    ran_repository: str | None = None
    online_at: float | None = None  # when the forge said it took that job
    completed_at: float | None = None  # when the forge said that job ended
    conclusion: str | None = None  # success, failure, cancelled, ...


# Fields `update_runner` may set after creation.
UPDATABLE = frozenset(
    {"registration_id", "ran_job_id", "ran_job_name", "ran_repository", "online_at", "completed_at", "conclusion"}
)
