"""Warm containers: fresh, hardened containers of a pool, created and started before any job needs them, their
bootstrap blocked reading stdin. A job claims one and its script, secrets and workspace arrive over that stdin, so
its start costs a store write and a send instead of Docker creating and starting a container (~170 ms here). Each
is still used once: a claimed container is never returned; the pool is refilled in the background.

Nothing job-specific exists in a warm container before a claim: its create arguments are the pool's alone
(container_spec.build_warm_spec), its labels say `warm` and name no job. The claim records container → job in
the store before the script is sent (job_runner), so after a crash reconciliation knows which container ran what;
unclaimed warm containers are removed at start-up like every container of this controller.

A warm container is replaced when it is older than the pool's `warm_max_age_s`, when the pool's config digest or
image id changed, or when it died; an engine outage empties the pool, which refills once the engine answers.
Refills run at most `warm_refill_concurrency` at a time across pools, so they never crowd out jobs' creates."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from orchestrator.config import Config, PoolConfig
from orchestrator.platform.metrics import Metrics
from orchestrator.runtime.container_spec import build_warm_spec
from orchestrator.runtime.protocol import ContainerRuntime, EngineError, OutputStream

log = logging.getLogger(__name__)


def pool_digest(pool: PoolConfig) -> str:
    """What a warm container was made from, besides its image: a changed pool gets new ones."""
    return hashlib.sha256(pool.model_dump_json().encode()).hexdigest()


@dataclass
class WarmContainer:
    id: str
    name: str
    pool: str
    stream: OutputStream
    image_id: str
    digest: str
    made_at: float  # monotonic


def stale_cause(
    container: WarmContainer,
    *,
    now: float,
    max_age_s: float,
    digest: str,
    image_id: str | None,
    usable: Callable[[str], bool] = lambda container_id: True,
) -> str | None:
    """Why a ready warm container must be replaced, or None. Pure. `image_id` None: not known right now; `usable`
    False: its engine is draining or unhealthy (several engines)."""
    if not container.stream.alive():
        return "died"
    if not usable(container.id):
        return "engine"
    if container.digest != digest:
        return "config"
    if image_id is not None and container.image_id != image_id:
        return "image"
    if now - container.made_at > max_age_s:
        return "age"
    return None


def refill_plan(
    wanted: Mapping[str, int], ready: Mapping[str, int], making: Mapping[str, int], max_warm: int
) -> dict[str, int]:
    """How many warm containers to start per pool now: each pool up to its `warm`, all within `max_warm`, the pools
    furthest below their target first. Pure."""
    room = max_warm - sum(ready.values()) - sum(making.values())
    short = {name: n - ready.get(name, 0) - making.get(name, 0) for name, n in wanted.items()}
    plan: dict[str, int] = {}
    while room > 0:
        name = max((p for p in short if short[p] > 0), key=lambda p: short[p], default=None)
        if name is None:
            break
        plan[name] = plan.get(name, 0) + 1
        short[name] -= 1
        room -= 1
    return plan


@dataclass
class _Pool:
    ready: list[WarmContainer] = field(default_factory=list)
    making: int = 0


class WarmPool:
    def __init__(
        self,
        config: Config,
        engine: ContainerRuntime,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = 1.0,
        usable: Callable[[str], bool] = lambda container_id: True,
    ) -> None:
        self.usable = usable
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.clock = clock
        self.tick_s = tick_s
        self.wanted = {name: pool.warm for name, pool in config.pools.items() if pool.warm}
        self.digests = {name: pool_digest(config.pools[name]) for name in self.wanted}
        self._pools = {name: _Pool() for name in self.wanted}
        self._claimed: set[str] = set()  # claimed, until the job runner removed them
        self._making: set[str] = set()  # created, not ready yet
        self._slots = asyncio.Semaphore(config.warm_refill_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._outages = engine.outages
        self._wake = asyncio.Event()
        self._closing = False
        self.claims = {"warm": 0, "cold": 0}

    @property
    def enabled(self) -> bool:
        return bool(self.wanted)

    def ready(self, pool: str) -> int:
        entry = self._pools.get(pool)
        return len(entry.ready) if entry else 0

    def owns(self, container_id: str) -> bool:
        """Whether the container is one of ours -- ready, or claimed by a job still running: sweeps leave it."""
        if container_id in self._claimed or container_id in self._making:
            return True
        return any(c.id == container_id for p in self._pools.values() for c in p.ready)

    def claim(self, pool: str) -> WarmContainer | None:
        """A ready warm container of the pool, taken out of the pool for good (None: the job is served cold). Runs
        on the event loop without awaiting, so two jobs can never claim the same container."""
        entry = self._pools.get(pool)
        if entry is None:
            return None
        digest = self.digests[pool]
        while entry.ready:
            container = entry.ready.pop(0)  # the oldest first: the others stay younger than their max age
            cause = stale_cause(container, now=self.clock(), max_age_s=self.config.pools[pool].warm_max_age_s,
                                digest=digest, image_id=None, usable=self.usable)  # fmt: skip
            if cause is not None:
                self._discard(container, cause)
                continue
            self._claimed.add(container.id)
            self.claims["warm"] += 1
            self.metrics.warm_claims.labels(pool, "warm").inc()
            self._gauge(pool)
            self._wake.set()  # refill now
            return container
        self.claims["cold"] += 1
        self.metrics.warm_claims.labels(pool, "cold").inc()
        self._wake.set()
        return None

    def served_cold(self, pool: str) -> None:
        """A job of a pool without warm containers started cold (counted for the metrics)."""
        self.metrics.warm_claims.labels(pool, "cold").inc()

    def released(self, container_id: str) -> None:
        """The job runner removed a claimed container (or gave it up before the script was sent)."""
        self._claimed.discard(container_id)

    # -- upkeep -------------------------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Refills, and replaces stale containers, until cancelled; then removes the ready ones."""
        try:
            while True:
                await self.upkeep()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.tick_s)
        finally:
            self._closing = True  # refills under way remove what they make
            await self.drain("shutdown")

    async def upkeep(self) -> None:
        """One pass: an outage empties the pool; stale containers go; the pools are topped up (in the background,
        `warm_refill_concurrency` at a time)."""
        if self.engine.outages != self._outages:
            self._outages = self.engine.outages
            await self.drain("outage")
        images: dict[str, str | None] = {}
        for name in self.wanted:
            image = self.config.pools[name].image
            if image not in images:
                try:
                    images[image] = await self.engine.image_id(image)
                except EngineError:
                    images[image] = None
        now = self.clock()
        for name, entry in self._pools.items():
            pool = self.config.pools[name]
            for container in list(entry.ready):
                cause = stale_cause(container, now=now, max_age_s=pool.warm_max_age_s, digest=self.digests[name],
                                    image_id=images.get(pool.image), usable=self.usable)  # fmt: skip
                if cause is not None:
                    entry.ready.remove(container)
                    self._discard(container, cause)
        if any(images.get(self.config.pools[name].image) is None for name in self.wanted):
            return  # the engine does not answer (or an image is missing): nothing can be made now
        plan = refill_plan(
            self.wanted,
            {n: len(p.ready) for n, p in self._pools.items()},
            {n: p.making for n, p in self._pools.items()},
            self.config.max_warm,
        )
        for name, count in plan.items():
            for _ in range(count):
                self._pools[name].making += 1
                task = asyncio.create_task(self._make(name, images[self.config.pools[name].image] or ""))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Waits for the refills under way (tests, benches)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _make(self, name: str, image_id: str) -> None:
        entry = self._pools[name]
        container_id: str | None = None
        try:
            async with self._slots:
                began = time.monotonic()
                spec = build_warm_spec(name, self.config.pools[name], controller_id=self.config.controller_id,
                                       tag=secrets.token_hex(4), init=self.config.docker.init)  # fmt: skip
                container_id = await self.engine.create(spec)
                self._making.add(container_id)
                stream = await self.engine.attach(container_id)
                await self.engine.start(container_id)
                self.metrics.warm_refill.labels(name).observe(time.monotonic() - began)
            made = WarmContainer(container_id, spec.name, name, stream, image_id, self.digests[name], self.clock())
            if self._closing:
                self._discard(made, "shutdown")
            else:
                entry.ready.append(made)
                self._gauge(name)
        except EngineError as exc:
            log.warning("could not make a warm container", extra={"pool": name, "error": str(exc)})
            if container_id is not None:
                with contextlib.suppress(EngineError):
                    await self.engine.remove(container_id)
        finally:
            entry.making -= 1
            if container_id is not None:
                self._making.discard(container_id)

    def _discard(self, container: WarmContainer, cause: str) -> None:
        log.info("replacing a warm container", extra={"pool": container.pool, "container_id": container.id[:12],
                                                       "cause": cause})  # fmt: skip
        self.metrics.warm_replaced.labels(container.pool, cause).inc()
        self._gauge(container.pool)
        container.stream.close()
        task = asyncio.create_task(self._remove(container.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, container_id: str) -> None:
        try:
            await self.engine.remove(container_id)
        except EngineError as exc:  # the sweep or the next start-up removes it
            log.warning("could not remove a warm container", extra={"container_id": container_id[:12],
                                                                     "error": str(exc)})  # fmt: skip

    async def drain(self, cause: str) -> None:
        """Removes every ready warm container (an outage, shutdown), and at shutdown those being made."""
        if self._closing:
            await self.settle()
        for name, entry in self._pools.items():
            ready, entry.ready = entry.ready, []
            for container in ready:
                self._discard(container, cause)
            self._gauge(name)
        await self.settle()

    def _gauge(self, pool: str) -> None:
        self.metrics.warm_ready.labels(pool).set(self.ready(pool))

    def stats(self) -> dict[str, object]:
        return {"ready": {name: len(p.ready) for name, p in self._pools.items()}, "claims": dict(self.claims)}
