"""What happens to jobs, told to one sink: every state change (audit record, metric, log line), how long a job
took to start and its container to go. Components take the sink they are given -- there is no silent default --
so a test sees exactly what a job reported and a controller cannot forget to audit. Pure: a protocol."""

from __future__ import annotations

from typing import Protocol

from orchestrator.jobs.states import Job


class JobEvents(Protocol):
    def state_changed(self, job: Job) -> None:
        """`job` has just been stored in a new state (`job.state`)."""
        ...

    def created(self, job: Job) -> None:
        """`job` has just been stored, queued, for the first time."""
        ...

    def started(self, job: Job) -> None:
        """The job's container is running (`job.started_at`)."""
        ...

    def torn_down(self, job: Job, seconds: float) -> None:
        """The job's container was removed `seconds` after its run ended."""
        ...
