"""The controller's background task that empties the outbox (see outbox.py for what is stored and why).

One loop scans the store for this controller's pending deliveries (on every state change it is told of, and every
`poll_interval_s` -- also what finds the deliveries a previous run left when it crashed) and starts one task per
(job, target) chain not already being worked on; that task sends the chain's deliveries strictly in `seq` order,
each retried with back-off (tenacity, `backoff.py`) until delivered or given up, so chains never wait for each
other and one job's states never overtake each other. At most `max_in_flight` requests run at once.

Delivered and given-up rows are marked in the store; a given-up delivery is logged and audited with its target,
state, attempts and last error (never a secret: errors are built by senders.py from status codes and exception
types). A delivery in flight when the controller stops or dies stays pending and is sent again, with the same
webhook-id, by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type

from orchestrator.callbacks.backoff import RetryPolicy, stop_at_deadline
from orchestrator.callbacks.outbox import DELIVERED, FAILED, TARGETS, Delivery, chains
from orchestrator.callbacks.senders import DeliveryError, PermanentDelivery, RetryableDelivery, Target, send
from orchestrator.evidence.auditor import Auditor
from orchestrator.jobs.states import Job
from orchestrator.platform.metrics import Metrics
from orchestrator.store.base import JobStore

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        targets: Mapping[tuple[str, str], Target],  # (source, target kind) -> target
        *,
        controller_id: str,
        policy: RetryPolicy,
        metrics: Metrics,
        auditor: Auditor,
        request_timeout_s: float = 10.0,
        poll_interval_s: float = 2.0,
        max_in_flight: int = 32,
        scan_limit: int = 10_000,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.targets = dict(targets)
        self.controller_id = controller_id
        self.policy = policy
        self.metrics = metrics
        self.auditor = auditor
        self.request_timeout_s = request_timeout_s
        self.poll_interval_s = poll_interval_s
        self.scan_limit = scan_limit
        self.clock = clock
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wake = asyncio.Event()
        self._chains: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def notify(self, job: Job | None = None) -> None:
        """A state change was stored (its outbox rows with it): look at the outbox now."""
        self._wake.set()

    def stats(self) -> dict[str, int]:
        return {"chains_in_flight": len(self._chains)}

    async def run_forever(self) -> None:
        self._session = aiohttp.ClientSession()
        try:
            while True:
                try:
                    await self.scan()
                except Exception:
                    log.exception("callback outbox scan failed; trying again")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
                self._wake.clear()
        finally:
            tasks = list(self._chains.values())
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._session.close()
            self._session = None

    async def scan(self) -> None:
        """Starts a task for every chain with pending deliveries that has none yet."""
        pending = await self.store.pending_deliveries(self.controller_id, limit=self.scan_limit)
        for target in TARGETS:
            self.metrics.callbacks_pending.labels(target).set(sum(1 for d in pending if d.target == target))
        for chain, deliveries in chains(pending).items():
            if chain in self._chains:
                continue
            task = asyncio.create_task(self._drain(deliveries), name=f"callbacks-{chain[0]}-{chain[1]}")
            self._chains[chain] = task
            task.add_done_callback(lambda _, chain=chain: self._chain_done(chain))  # type: ignore[misc]

    def _chain_done(self, chain: tuple[str, str]) -> None:
        self._chains.pop(chain, None)
        self._wake.set()  # later states of the job may have been stored meanwhile

    async def _drain(self, deliveries: list[Delivery]) -> None:
        """One chain, in order: the next delivery only once the previous one is delivered or given up."""
        try:
            for delivery in deliveries:
                await self.deliver(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The store failed (the delivery stays pending): the next scan starts the chain again.
            log.exception("callback delivery interrupted", extra={"job_id": deliveries[0].job_id})
            await asyncio.sleep(self.poll_interval_s)

    async def deliver(self, delivery: Delivery) -> None:
        job = await self.store.get(delivery.job_id)
        target = self.targets.get((job.source, delivery.target)) if job is not None else None
        if job is None or target is None:
            await self._give_up(delivery, delivery.attempts, "the target is no longer configured for this job")
            return
        first = delivery.first_attempt_at
        attempts = delivery.attempts
        retrying = AsyncRetrying(
            stop=stop_at_deadline(self.policy.deadline(first if first is not None else self.clock()), self.clock),
            wait=self.policy.wait(),
            retry=retry_if_exception_type(RetryableDelivery),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    started = self.clock()
                    if first is None:
                        first = started
                    try:
                        await self._attempt(job, delivery, target, now=started)
                    except RetryableDelivery as exc:
                        attempts += 1
                        self.metrics.callback_attempts_failed.labels(delivery.target).inc()
                        await self.store.note_delivery_attempt(*delivery.key, at=first, error=str(exc))
                        log.debug(
                            "callback attempt failed",
                            extra={**_fields(delivery), "attempts": attempts, "error": str(exc)},
                        )
                        raise
        except DeliveryError as exc:
            if isinstance(exc, PermanentDelivery):
                attempts += 1
            await self._give_up(delivery, attempts, str(exc))
            return
        await self.store.finish_delivery(*delivery.key, status=DELIVERED, at=self.clock(), error=None)
        self.metrics.callback_deliveries.labels(delivery.target, DELIVERED).inc()

    async def _attempt(self, job: Job, delivery: Delivery, target: Target, *, now: float) -> None:
        request = target.request(job, delivery, now=now)
        if request is None:
            return  # nothing to show for this state (the outbox only holds such rows after a config change)
        session = self._session
        if session is None:
            raise RetryableDelivery("the dispatcher is not running")
        async with self._slots:
            await send(session, request, timeout_s=self.request_timeout_s)

    async def _give_up(self, delivery: Delivery, attempts: int, error: str) -> None:
        await self.store.finish_delivery(*delivery.key, status=FAILED, at=self.clock(), error=error)
        self.metrics.callback_deliveries.labels(delivery.target, FAILED).inc()
        details = {**_fields(delivery), "attempts": attempts, "error": error}
        log.warning("callback given up", extra=details)
        self.auditor.callback_given_up(delivery.job_id, details)


def _fields(delivery: Delivery) -> dict[str, object]:
    return {
        "job_id": delivery.job_id,
        "target": delivery.target,
        "seq": delivery.seq,
        "state": delivery.state.value,
        "webhook_id": delivery.webhook_id,
    }
