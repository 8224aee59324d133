"""The lease loop (scheduling/cluster.py) on an in-memory lease table: renewal, stopping once when the lease is
gone, taking over expired leases only when this controller won the race. PostgreSQL's side is tested in
tests/store/test_postgres.py, two real controllers in tests/integration/test_cluster_failover.py."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.config import ClusterConfig, Config
from orchestrator.jobs.states import Job
from orchestrator.scheduling.cluster import Cluster


class Leases:
    def __init__(self) -> None:
        self.renewals = True
        self.expired: list[tuple[str, int]] = []
        self.taken: dict[str, list[Any] | None] = {}
        self.calls: list[str] = []
        self.queued: list[Any] = []

    async def acquire_lease(self, controller_id: str, now: float, url: str | None = None) -> int:
        return 7

    async def controller_url(self, controller_id: str) -> str | None:
        return None

    async def renew_lease(self, controller_id: str, generation: int, now: float) -> bool:
        self.calls.append(f"renew {generation}")
        return self.renewals

    async def expired_leases(self, cutoff: float, *, besides: str) -> list[tuple[str, int]]:
        return list(self.expired)

    async def take_over(self, controller_id: str, generation: int, *, by: str, now: float) -> list[Job] | None:
        self.calls.append(f"take {controller_id} {generation} by {by}")
        return self.taken.get(controller_id)

    async def claim_queued(self, pool: str, limit: int, *, pool_limit: int, by: str, now: float) -> list[Job]:
        self.calls.append(f"claim {pool} {limit} of {pool_limit} by {by}")
        return self.queued[:limit]


class Scheduler:
    def __init__(self) -> None:
        self.adopted: list[tuple[str, list[Any]]] = []
        self.free = 0
        self.taken: list[Any] = []

    async def adopt(self, controller_id: str, jobs: list[Any]) -> None:
        self.adopted.append((controller_id, jobs))

    def room(self, pool: str) -> int:
        return self.free

    def take(self, jobs: list[Any]) -> None:
        self.taken.extend(jobs)


class Auditor:
    def __init__(self) -> None:
        self.records: list[tuple[str, str | None]] = []

    def reconcile(self, action: str, target: str | None, details: dict[str, Any]) -> None:
        self.records.append((action, target))


def cluster() -> tuple[Cluster, Leases, Scheduler, Auditor, list[int]]:
    config = Config.model_validate({"controller_id": "me", "data_dir": "/tmp/x", "pools": {"p": {"image": "i"}}})
    leases, scheduler, auditor, stops = Leases(), Scheduler(), Auditor(), []
    c = Cluster(config, leases, scheduler, auditor, clock=lambda: 1000.0, on_lost=lambda: stops.append(1))  # type: ignore[arg-type]
    return c, leases, scheduler, auditor, stops


async def test_takes_over_only_what_it_won() -> None:
    c, leases, scheduler, auditor, stops = cluster()
    await c.join()
    leases.expired = [("dead", 3), ("raced", 4)]
    leases.taken = {"dead": ["job-1", "job-2"], "raced": None}  # another controller took "raced" first
    await c.beat()
    assert leases.calls == ["renew 7", "take dead 3 by me", "take raced 4 by me"]  # no room: nothing claimed
    assert scheduler.adopted == [("dead", ["job-1", "job-2"])] and c.taken_over == ["dead"]
    assert auditor.records == [("lease_taken_over", "dead")] and stops == []


async def test_a_lost_lease_stops_the_controller_once_and_takes_nothing_over() -> None:
    c, leases, scheduler, auditor, stops = cluster()
    await c.join()
    leases.renewals = False
    leases.expired = [("dead", 3)]
    await c.beat()
    await c.beat()
    assert stops == [1] and c.lost and scheduler.adopted == []
    assert auditor.records == [("lease_lost", "me")]


def test_the_lease_outlives_several_heartbeats() -> None:
    with pytest.raises(ValidationError, match="at least 3 heartbeats"):
        ClusterConfig(heartbeat_s=2, lease_ttl_s=5)
    assert ClusterConfig(heartbeat_s=0.5, lease_ttl_s=3).lease_ttl_s == 3


async def test_a_controller_with_room_claims_queued_jobs_of_others() -> None:
    c, leases, scheduler, _, _ = cluster()
    await c.join()
    leases.queued = ["old-1", "old-2", "old-3"]
    scheduler.free = 2
    await c.beat()
    assert "claim p 2 of 2 by me" in leases.calls and scheduler.taken == ["old-1", "old-2"] and c.claimed == 2
