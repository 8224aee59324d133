"""Approval decisions applied: an approved job is queued (with its approval stored on it), a rejected or expired one
ends in `rejected` with its log, attestation and audit records saying who decided and why. The rules are in
approvals/gate.py; the HTTP edge maps ApprovalRefused to 403/409."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from orchestrator.access.grants import Principal
from orchestrator.approvals.gate import ApprovalRefused, Decision, check_decision, expired
from orchestrator.config import Config
from orchestrator.jobs.events import JobEvents
from orchestrator.jobs.states import Approval, Job, JobState, transition
from orchestrator.runtime.job_runner import JobRunner
from orchestrator.scheduling.scheduler import Scheduler
from orchestrator.store.base import JobStore

log = logging.getLogger(__name__)


class Approvals:
    def __init__(
        self,
        config: Config,
        store: JobStore,
        scheduler: Scheduler,
        runner: JobRunner,
        events: JobEvents,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.runner = runner
        self.events = events
        self.clock = clock

    async def decide(self, job: Job, principal: Principal, decision: Decision, comment: str) -> Job:
        """Approves or rejects `job` (as read just before); raises ApprovalRefused."""
        now = self.clock()
        try:
            check_decision(principal, job, decision, now, self.config.approvals)
        except ApprovalRefused as refused:
            if refused.code == "expired":
                await self._expire(job)
            raise
        approval = Approval(decision, now, principal.name, comment)
        if decision == "approved":
            moved = transition(job, JobState.QUEUED, now=now, reason=f"approved by {principal.name}", approval=approval)
            if not await self.store.update(moved, expected=JobState.AWAITING_APPROVAL):
                raise ApprovalRefused("not_awaiting", f"job {job.id} changed while it was being approved; look again")
            self.events.state_changed(moved)
            if moved.controller_id == self.config.controller_id:
                self.scheduler.submit(moved)
            log.info("job approved", extra={"job_id": job.id, "by": principal.name})
            return moved
        reason = f"rejected by {principal.name}" + (f": {comment}" if comment else "")
        decided = dataclasses.replace(job, approval=approval)
        ended = await self.runner.end_interrupted(decided, JobState.REJECTED, reason)
        if ended is None:
            raise ApprovalRefused("not_awaiting", f"job {job.id} changed while it was being rejected; look again")
        log.info("job rejected", extra={"job_id": job.id, "by": principal.name})
        return ended

    async def _expire(self, job: Job) -> Job | None:
        timeout = self.config.approvals.timeout_s
        waited = dataclasses.replace(job, approval=Approval("expired", self.clock()))
        reason = f"rejected: nobody approved it within approvals.timeout_s ({timeout} s)"
        return await self.runner.end_interrupted(waited, JobState.REJECTED, reason)

    async def sweep(self) -> int:
        """Rejects this controller's jobs that waited too long, and queues its jobs another controller approved
        (the approver's controller cannot run them: they are ours). Returns how many were rejected."""
        now = self.clock()
        rejected = 0
        for job in await self.store.list_jobs(state=JobState.AWAITING_APPROVAL, limit=-1):
            mine = job.controller_id == self.config.controller_id
            if mine and expired(job, now, self.config.approvals) and await self._expire(job) is not None:
                rejected += 1
        for job in await self.store.list_jobs(state=JobState.QUEUED, limit=-1):
            if (
                job.approval is not None
                and job.controller_id == self.config.controller_id
                and not self.scheduler.knows(job.id)
            ):
                self.scheduler.submit(job)
        return rejected

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.approvals.check_interval_s)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("approval sweep failed; retrying")
