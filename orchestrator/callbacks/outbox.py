"""The outbox record and the rules deliveries follow. Pure.

Durability: the store writes a job's outbox rows (one per target) in the same transaction as the state change
they announce (`JobStore.create` / `JobStore.update` with an `OutboxTargets` function), so a state change that is
stored has its deliveries stored with it, and a crash right after the commit loses neither; a crash before it
loses both (the change never happened). The dispatcher only ever moves a row from `pending` to `delivered` or
`failed`, so after a restart it finds exactly the deliveries still owed.

Ordering: deliveries of one (job, target) form a chain ordered by `seq` (the job's n-th announced state change);
only the chain's head -- its lowest pending `seq` -- may be sent, so a later state is never sent before an earlier
one was delivered or given up. Chains of different jobs or targets are independent.

Idempotency: `webhook_id` is derived from what is stored (job id, seq, state, time of the change), so every
attempt of one delivery, before and after restarts, carries the same id, and a receiver can drop repeats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from orchestrator.jobs.states import Job, JobState

CALLBACK: Final = "callback"  # the signed webhook to the source's (or the job's) callback URL
STATUS: Final = "status"  # the forge's commit status
TARGETS: Final = (CALLBACK, STATUS)

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"  # given up: retries ran out or the receiver refused for good
Status = Literal["pending", "delivered", "failed"]

# What the store asks for every job it writes in a new state: the targets that state change goes to (may be empty).
OutboxTargets = Callable[[Job], Sequence[str]]

# Columns of an outbox row a state change writes, in this order (the store adds the delivery columns' defaults).
NEW_ROW_COLUMNS: Final = "job_id, seq, target, state, at, attempt, exit_code, reason"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One state change of one job, owed to one target."""

    job_id: str
    target: str
    seq: int
    state: JobState
    at: float  # when the job entered `state` (its updated_at then)
    attempt: int
    exit_code: int | None = None
    reason: str | None = None
    status: Status = "pending"
    attempts: int = 0  # failed attempts so far
    first_attempt_at: float | None = None  # the retry deadline counts from here, across restarts
    last_error: str | None = None
    finished_at: float | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.job_id, self.target, self.seq)

    @property
    def chain(self) -> tuple[str, str]:
        return (self.job_id, self.target)

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.job_id, self.seq, self.state, self.at)


def webhook_id(job_id: str, seq: int, state: JobState, at: float) -> str:
    """Stable across retries and restarts; distinct for distinct state changes (also of a re-queued job)."""
    digest = hashlib.sha256(f"{job_id}\x00{seq}\x00{state.value}\x00{at!r}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def new_rows(job: Job, seq: int, targets: Iterable[str]) -> list[tuple[object, ...]]:
    """The rows (NEW_ROW_COLUMNS) a state change writes, one per target."""
    return [
        (job.id, seq, target, job.state.value, job.updated_at, job.attempt, job.exit_code, job.reason)
        for target in targets
    ]


def chains(pending: Iterable[Delivery]) -> dict[tuple[str, str], list[Delivery]]:
    """Pending deliveries by (job, target), each chain in the order it must be sent (seq ascending). Rows not
    pending are left out: they hold nothing up."""
    grouped: dict[tuple[str, str], list[Delivery]] = {}
    for delivery in pending:
        if delivery.status == PENDING:
            grouped.setdefault(delivery.chain, []).append(delivery)
    for chain in grouped.values():
        chain.sort(key=lambda d: d.seq)
    return grouped


def may_send(delivery: Delivery, chain: Sequence[Delivery]) -> bool:
    """Whether `delivery` is its chain's head: no earlier state of its job for its target is still pending."""
    return delivery.status == PENDING and all(
        other.seq >= delivery.seq for other in chain if other.chain == delivery.chain and other.status == PENDING
    )
