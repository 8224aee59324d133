"""Controllers sharing one PostgreSQL: a lease each, so that when one stops (SIGKILL, host loss) another takes over
its jobs within a bounded time -- and a controller that comes back after losing its lease touches nothing.

* Each controller holds a lease (the `controllers` table): a row with a generation, renewed every `heartbeat_s`.
  Starting takes a new generation.
* A lease not renewed for `lease_ttl_s` is expired. Every controller looks for expired leases each heartbeat; the
  first to end one (a conditional UPDATE of its generation, in the same transaction that makes it the owner of the
  unfinished jobs) takes them over -- PostgreSQL decides the race, there is no protocol of our own. Its queued jobs
  run here; its starting or running ones end in `error` (or are queued again where `retry_on_restart`); its
  containers on the engines we share are removed and their Vault tokens revoked (Scheduler.adopt).
* Fencing: every job write is conditional on the writer owning the job (store/postgres.py), and a controller whose
  lease renewal fails -- it was taken over while it was stopped or cut off -- stops at once (SIGTERM to itself:
  it drains, and its writes to jobs it no longer owns are refused).

* Queued jobs go to whichever controller has room: each heartbeat, a controller with free slots in a pool claims
  the oldest queued jobs other controllers accepted (`FOR UPDATE SKIP LOCKED`), no more than the pool has free
  across controllers; their old owner's attempt to start one is then refused by the fence and it moves on.
* A pool's `max_concurrent` holds across controllers: a job starts (queued -> starting) only in a transaction that
  takes the pool's advisory lock and counts its starting and running jobs over all controllers (store/postgres.py);
  a start refused for the limit leaves the job queued at the head of its queue, and the pool tries again shortly
  (Scheduler._hold). Each controller's own `max_total_concurrent` is its share of the hosts' capacity.

Takeover time is at most `lease_ttl_s` + `heartbeat_s` after the last heartbeat."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Protocol

from orchestrator.config import Config
from orchestrator.evidence.auditor import Auditor
from orchestrator.jobs.states import Job
from orchestrator.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)


class Leases(Protocol):
    async def acquire_lease(self, controller_id: str, now: float, url: str | None = None) -> int: ...
    async def controller_url(self, controller_id: str) -> str | None: ...
    async def renew_lease(self, controller_id: str, generation: int, now: float) -> bool: ...
    async def expired_leases(self, cutoff: float, *, besides: str) -> list[tuple[str, int]]: ...
    async def take_over(self, controller_id: str, generation: int, *, by: str, now: float) -> list[Job] | None: ...
    async def claim_queued(self, pool: str, limit: int, *, pool_limit: int, by: str, now: float) -> list[Job]: ...


def _stop_this_process() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class Cluster:
    def __init__(
        self,
        config: Config,
        leases: Leases,
        scheduler: Scheduler,
        auditor: Auditor,
        *,
        clock: Callable[[], float] = time.time,
        on_lost: Callable[[], None] = _stop_this_process,
    ) -> None:
        self.config = config
        self.leases = leases
        self.scheduler = scheduler
        self.auditor = auditor
        self.clock = clock
        self.on_lost = on_lost
        self.generation = 0
        self.taken_over: list[str] = []  # controllers whose jobs this one took over
        self.claimed = 0  # queued jobs claimed from other controllers
        self.lost = False

    async def join(self) -> None:
        """Takes this controller's lease (a new generation) before it reconciles or runs anything."""
        self.generation = await self.leases.acquire_lease(
            self.config.controller_id, self.clock(), self.config.server.public_url
        )
        log.info("lease taken", extra={"controller_id": self.config.controller_id, "generation": self.generation})

    async def beat(self) -> None:
        """One heartbeat: renew the lease, or stop if it is gone; then take over expired ones."""
        me = self.config.controller_id
        now = self.clock()
        if not await self.leases.renew_lease(me, self.generation, now):
            if not self.lost:
                self.lost = True
                log.critical(
                    "this controller's lease was taken over (it was stopped or cut off for longer than lease_ttl_s); "
                    "stopping: another controller owns its jobs now",
                    extra={"controller_id": me, "generation": self.generation},
                )
                self.auditor.reconcile("lease_lost", me, {"generation": self.generation})
                self.on_lost()
            return
        cutoff = now - self.config.cluster.lease_ttl_s
        for other, generation in await self.leases.expired_leases(cutoff, besides=me):
            jobs = await self.leases.take_over(other, generation, by=me, now=self.clock())
            if jobs is None:
                continue  # another controller was faster, or it came back
            self.taken_over.append(other)
            log.warning("took over the jobs of a controller whose lease expired",
                        extra={"controller_id": other, "jobs": len(jobs)})  # fmt: skip
            self.auditor.reconcile("lease_taken_over", other, {"jobs": len(jobs), "by": me})
            await self.scheduler.adopt(other, jobs)
        if self.config.cluster.share_queued:
            await self.claim()

    async def claim(self) -> int:
        """Queued jobs other controllers have not started yet, claimed for this one's free slots: whichever
        controller has room runs the oldest waiting job. Returns how many it took."""
        taken = 0
        for pool in self.config.pools:
            room = self.scheduler.room(pool)
            if room <= 0:
                continue
            jobs = await self.leases.claim_queued(
                pool, room, pool_limit=self.config.pools[pool].max_concurrent, by=self.config.controller_id,
                now=self.clock(),
            )  # fmt: skip
            if jobs:
                taken += len(jobs)
                log.info("claimed queued jobs of other controllers", extra={"pool": pool, "jobs": len(jobs)})
                self.scheduler.take(jobs)
        self.claimed += taken
        return taken

    async def run_forever(self) -> None:
        while not self.lost:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease heartbeat failed; retrying")
            await asyncio.sleep(self.config.cluster.heartbeat_s)
