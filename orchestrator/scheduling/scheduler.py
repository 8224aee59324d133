"""Pools, concurrency limits, FIFO queues, cancel, and start-up reconciliation.

Only this module decides when a job starts; the job runner decides how. Queues are in memory but rebuilt from the
store at start-up, so an accepted job is never lost: the store is the truth, the queue an index over it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.approvals.gate import approval_needed
from orchestrator.config import Config
from orchestrator.credentials.base import CredentialsBackend
from orchestrator.evidence.auditor import Auditor
from orchestrator.jobs.events import JobEvents
from orchestrator.jobs.refusal import Refusal
from orchestrator.jobs.states import Job, JobState, transition
from orchestrator.runtime.job_runner import JobRunner, PoolAtLimitError, RunControl
from orchestrator.runtime.protocol import ContainerRuntime, EngineError
from orchestrator.store.base import JobStore

log = logging.getLogger(__name__)


POOL_RETRY_S = 0.5  # how soon a pool full across controllers tries again


class QueueFullError(Exception):
    pass


def overdue(job: Job, now: float) -> bool:
    """Whether a job has been running longer than its timeout (it starts counting once the job is running)."""
    return job.started_at is not None and now - job.started_at >= job.timeout_s


def _requeued(job: Job, result: Job) -> bool:
    """Whether the runner queued the job again for another attempt (not: it found the job taken by another
    controller and left it, which returns it unchanged)."""
    return result.state is JobState.QUEUED and result.attempt > job.attempt


class NotCancellableError(Exception):
    pass


@dataclass
class _Running:
    control: RunControl
    task: asyncio.Task[Job]


class Scheduler:
    """Decides when jobs start; `runner` runs them on `engine`. `credentials` (None: no backend configured) is
    what reconciliation revokes interrupted jobs' tokens with; `events` hears of every state change it makes."""

    def __init__(
        self,
        config: Config,
        store: JobStore,
        engine: ContainerRuntime,
        runner: JobRunner,
        events: JobEvents,
        auditor: Auditor,
        *,
        credentials: CredentialsBackend | None = None,
        owned: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.owned = owned or (lambda container_id: False)  # containers sweeps leave alone (warm ones)
        self.auditor = auditor
        self.config = config
        self.store = store
        self.engine = engine
        self.runner = runner
        self.events = events
        self.credentials = credentials
        self.clock = clock
        self._queues: dict[str, deque[Job]] = {name: deque() for name in config.pools}
        self._running: dict[str, _Running] = {}
        self._running_per_pool: dict[str, int] = dict.fromkeys(config.pools, 0)
        self._reserved: dict[str, int] = {}
        self._held: set[str] = set()  # pools full across controllers: nothing starts there until the retry
        self._accepting = True
        self._next_pool = 0  # index into the pools: where the next dispatch pass begins

    # -- queries -------------------------------------------------------------------------------------------

    def queue_depth(self, pool: str | None = None) -> int:
        if pool is not None:
            return len(self._queues.get(pool, ()))
        return sum(len(q) for q in self._queues.values())

    def is_running(self, job_id: str) -> bool:
        return job_id in self._running

    def knows(self, job_id: str) -> bool:
        """Whether the job is queued or running here."""
        return job_id in self._running or any(j.id == job_id for q in self._queues.values() for j in q)

    def reserve(self, pool: str) -> None:
        """Claims a queue slot before the job is stored (429 beats unbounded memory). Slots are counted while
        the store commits, so concurrent webhooks cannot overshoot the limit; `release` right before `submit`."""
        waiting = len(self._queues[pool]) + self._reserved.get(pool, 0)
        if waiting >= self.config.pools[pool].max_queue:
            raise QueueFullError(f"pool {pool!r} has {waiting} jobs waiting; try again later")
        total = self.queue_depth() + sum(self._reserved.values())
        if total >= self.config.max_queued_total:
            raise QueueFullError(f"{total} jobs are waiting on this controller; try again later")
        self._reserved[pool] = self._reserved.get(pool, 0) + 1

    def release(self, pool: str) -> None:
        self._reserved[pool] -= 1

    async def admit(self, job: Job, on_stored: Callable[[Job, bool], None], *, capped: bool = True) -> tuple[Job, bool]:
        """Takes a new job in: the stored job and whether this call created it (False: a redelivery of one already
        stored under its id, which is not queued again). The order is the rule, kept here alone: a queue slot is
        held while the store commits, so concurrent admissions cannot overshoot the limits, and given back whether
        the commit succeeds or fails; `on_stored(stored, created)` (the caller's record of the delivery) runs once
        the job is durably stored and before it is queued, so nothing is acknowledged, recorded or run before it
        is stored; and a redelivery is answered even when the queue is full. Raises Refusal("queue_full") for a
        job not stored yet when there is no slot (nothing is stored then). `capped=False` skips the queue caps: a
        forge's `queued` delivery is never refused for capacity (GitHub does not redeliver; a refused one is a
        workflow job that waits until it times out), it waits in the queue like any job."""
        try:
            if capped:
                self.reserve(job.pool)
        except QueueFullError as exc:
            existing = await self.store.get(job.id)
            if existing is None:
                raise Refusal("queue_full", str(exc)) from None
            on_stored(existing, False)
            return existing, False
        why = approval_needed(job.spec, self.config.pools.get(job.pool), self.config.approvals)
        if why is not None and job.state is JobState.QUEUED:
            job = dataclasses.replace(job, state=JobState.AWAITING_APPROVAL, reason=why)
        try:
            stored, created = await self.store.create(job)
        finally:
            if capped:
                self.release(job.pool)
        on_stored(stored, created)
        if created:
            self.events.created(stored)
            if stored.state is JobState.QUEUED:
                self.submit(stored)
        return stored, created

    def pool_stats(self) -> dict[str, tuple[int, int]]:
        return {name: (len(q), self._running_per_pool[name]) for name, q in self._queues.items()}

    @property
    def draining(self) -> bool:
        return not self._accepting

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reconcile()
        self._dispatch()

    async def reconcile(self) -> None:
        """Settle what a previous process left: containers with our labels are removed, jobs that were starting
        or running end in `error` (or are re-queued when the pool allows), queued jobs are queued again."""
        await self._settle_left(self.config.controller_id, await self.store.unfinished(), "controller restarted")

    async def adopt(self, controller_id: str, jobs: list[Job]) -> None:
        """Jobs of another controller whose lease expired, already ours in the store (scheduling/cluster.py): its
        containers (on the engines we share) are removed, its queued jobs run here, its starting or running ones
        end in `error` -- or are queued again where the pool allows -- and their Vault tokens are revoked."""
        await self._settle_left(controller_id, jobs, f"controller {controller_id} lost its lease")

    async def _settle_left(self, owner: str, jobs: list[Job], why: str) -> None:
        try:
            containers = await self.engine.list_managed(owner)
        except EngineError as exc:
            log.error("reconciliation could not list containers", extra={"error": str(exc)})
            containers = []
        still_running = {c.job_id for c in containers if c.status == "running"}
        running_ids = {c.id for c in containers if c.status == "running"}  # a claimed warm container names no job
        now = self.clock()
        for c in containers:
            if c.job_id in self._running:
                continue
            log.info("removing leftover container", extra={"job_id": c.job_id, "container_id": c.id[:12]})
            try:
                await self.engine.remove(c.id)
                self.auditor.reconcile("container_removed", c.job_id, {"container": c.name, "was": c.status})
            except EngineError as exc:
                log.error("could not remove leftover container", extra={"job_id": c.job_id, "error": str(exc)})
        for job in jobs:
            if job.controller_id != self.config.controller_id or job.id in self._running:
                continue
            if job.state is JobState.AWAITING_APPROVAL:
                continue  # it waits for a person, not for a controller: nothing was interrupted
            if job.state is JobState.QUEUED and job.pool in self.config.pools:
                self._queues[job.pool].append(job)
                continue
            if job.credentials_accessor:
                await self._revoke_leftover_credentials(job)
            end = self.runner.end_interrupted
            if job.pool not in self.config.pools:
                await end(job, JobState.ERROR, f"pool {job.pool!r} is no longer configured")
            elif (job.id in still_running or job.container_id in running_ids) and overdue(job, now):
                # Nothing enforced its timeout while no controller ran: it has had its time, so no retry either.
                reason = (
                    f"timed out after {job.timeout_s} s: its container was still running past the timeout when the "
                    "controller restarted (no controller was there to stop it)"
                )
                await end(job, JobState.TIMED_OUT, reason)
            elif self.config.pools[job.pool].retry_on_restart:
                requeued = await self._settle(job, JobState.QUEUED, f"re-queued: {why}")
                if requeued is not None:
                    self._queues[job.pool].append(requeued)
            else:
                await end(job, JobState.ERROR, f"{why} while the job was running")
        self._dispatch()

    async def sweep(self) -> int:
        """Removes containers with our labels whose job is not running here: what a Docker outage or a failed
        removal left behind. Returns how many were removed."""
        removed = 0
        for c in await self.engine.list_managed(self.config.controller_id):
            if c.job_id in self._running or self.owned(c.id):
                continue
            try:
                await self.engine.remove(c.id)
                removed += 1
                log.info("swept leftover container", extra={"job_id": c.job_id, "container_id": c.id[:12]})
                self.auditor.reconcile("container_swept", c.job_id, {"container": c.name, "was": c.status})
            except EngineError as exc:
                log.warning("could not sweep container", extra={"job_id": c.job_id, "error": str(exc)})
        return removed

    async def sweep_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except EngineError as exc:
                log.warning("container sweep skipped: docker unavailable", extra={"error": str(exc)})

    async def _revoke_leftover_credentials(self, job: Job) -> None:
        backend = self.credentials
        accessor = job.credentials_accessor
        if accessor is None:
            return
        revoked = backend is not None and await backend.revoke_accessor(accessor)
        log.info(
            "credentials of interrupted job " + ("revoked by accessor" if revoked else "left to expire at their TTL"),
            extra={"job_id": job.id},
        )
        self.auditor.credentials_revoked(
            job.id,
            accessor=accessor,
            outcome="ok" if revoked else "left_to_ttl",
            how="revoke-accessor" if revoked else "ttl (no revoker token configured)",
        )

    async def _settle(self, job: Job, new: JobState, reason: str) -> Job | None:
        moved = transition(job, new, now=self.clock(), reason=reason)
        if await self.store.update(moved, expected=job.state):
            self.events.state_changed(moved)
            return moved
        return None

    def submit(self, job: Job) -> None:
        self._queues[job.pool].append(job)
        self._dispatch()

    def room(self, pool: str) -> int:
        """How many more jobs of `pool` this controller could start now: its free slots, nothing queued for them."""
        cfg = self.config.pools.get(pool)
        if cfg is None or not self._accepting:
            return 0
        if pool in self._held:
            return 0
        waiting = sum(len(q) for q in self._queues.values())
        total = self.config.max_total_concurrent - len(self._running) - waiting
        return max(0, min(cfg.max_concurrent - self._running_per_pool[pool] - len(self._queues[pool]), total))

    def take(self, jobs: list[Job]) -> None:
        """Queued jobs claimed from other controllers sharing the store (scheduling/cluster.py), already ours."""
        for job in jobs:
            self._queues[job.pool].append(job)
        self._dispatch()

    def _dispatch(self) -> None:
        """Starts what the limits allow: FIFO within a pool, and the pools in turn, each pass beginning with the
        pool after the one that got the last slot, so under the controller-wide limit a pool early in the config
        cannot take every slot that frees up while the others wait."""
        if not self._accepting:
            return
        pools = list(self._queues)
        started = True
        while started and len(self._running) < self.config.max_total_concurrent:
            started = False
            first = self._next_pool % len(pools)
            for index in (*range(first, len(pools)), *range(first)):
                name, queue = pools[index], self._queues[pools[index]]
                if not queue or name in self._held:
                    continue
                if self._running_per_pool[name] >= self.config.pools[name].max_concurrent:
                    continue
                if len(self._running) >= self.config.max_total_concurrent:
                    break
                self._start(queue.popleft())
                self._next_pool = index + 1
                started = True

    def _start(self, job: Job) -> None:
        control = RunControl(cancel=asyncio.Event())
        task = asyncio.create_task(self.runner.run(job, control), name=f"job-{job.id}")
        self._running[job.id] = _Running(control, task)
        self._running_per_pool[job.pool] += 1
        task.add_done_callback(lambda t: self._finished(job, t))

    def _finished(self, job: Job, task: asyncio.Task[Job]) -> None:
        self._running.pop(job.id, None)
        self._running_per_pool[job.pool] -= 1
        error = None if task.cancelled() else task.exception()
        if isinstance(error, PoolAtLimitError):
            self._hold(job)
        elif error is not None:
            log.error("job task crashed", extra={"job_id": job.id}, exc_info=error)
        elif not task.cancelled() and self._accepting and _requeued(job, ended := task.result()):
            self._queues[job.pool].appendleft(ended)  # its engine was lost and the pool retries: next in line
        self._dispatch()

    def _hold(self, job: Job) -> None:
        """The pool is full across controllers: the job goes back to the head of its queue, and the pool starts
        nothing here until POOL_RETRY_S later (a slot another controller frees is not announced: it is polled)."""
        self._queues[job.pool].appendleft(job)
        if job.pool not in self._held:
            self._held.add(job.pool)
            log.info("pool is at its limit across controllers; the job waits", extra={"job_id": job.id})
            asyncio.get_running_loop().call_later(POOL_RETRY_S, self._unhold, job.pool)

    def _unhold(self, pool: str) -> None:
        self._held.discard(pool)
        self._dispatch()

    async def cancel(self, job_id: str, reason: str = "cancelled by operator") -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise KeyError(job_id)
        if job.state.final:  # also while its task is still wrapping up (log closed, attestation signed)
            raise NotCancellableError(f"job {job_id} already ended: {job.state}")
        running = self._running.get(job_id)
        if running is not None:
            running.control.cancel_reason = reason
            running.control.cancel.set()
            try:
                return await asyncio.shield(running.task)
            except PoolAtLimitError:
                pass  # it never started (its pool was full across controllers): it is queued again, cancel it there
        if job.state is not JobState.QUEUED:
            raise NotCancellableError(f"job {job_id} is {job.state} under another controller process")
        queue = self._queues.get(job.pool, deque())
        for queued in list(queue):
            if queued.id == job_id:
                queue.remove(queued)
        settled = await self._settle(job, JobState.CANCELLED, reason)
        if settled is None:
            raise NotCancellableError(f"job {job_id} changed state while cancelling; try again")
        return settled

    async def shutdown(self, drain_timeout_s: float) -> None:
        """Stop starting jobs, let running ones finish for up to `drain_timeout_s`, then cancel the rest."""
        self._accepting = False
        tasks = [r.task for r in self._running.values()]
        if tasks and drain_timeout_s > 0:
            await asyncio.wait(tasks, timeout=drain_timeout_s)
        for running in list(self._running.values()):
            running.control.cancel_reason = "controller shut down before the job finished"
            running.control.cancel.set()
        remaining = [r.task for r in self._running.values()]
        if remaining:
            await asyncio.wait(remaining, timeout=self.config.docker.stop_grace_s + 30)
