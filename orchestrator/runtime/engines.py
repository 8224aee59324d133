"""Several Docker engines as one ContainerRuntime: the job runner, the scheduler and the warm pool keep speaking the
runtime protocol, and this router decides where each container goes (runtime/placement.py) and sends every later
call to the engine that holds it. Container ids are Docker's own (64 hex, unique across engines); which engine
holds which is learnt at create and from every listing, so a restarted controller finds its containers again.

Health: each engine is probed every `probe_interval_s`. One whose probe fails is unhealthy: no new container goes
there; calls to its containers fail at once with a reason naming it (a job running there ends in `error` instead of
waiting for its timeout); removing one of its containers is deferred -- when the engine answers again, the sweep
removes what is left. Drain: no new containers, running ones finish; kept in the data dir across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from orchestrator.config import Config
from orchestrator.platform.files import write_atomic
from orchestrator.runtime.container_spec import LABEL_POOL, ContainerSpec
from orchestrator.runtime.placement import NoRoom, place
from orchestrator.runtime.protocol import (
    ContainerGoneError,
    ContainerRuntime,
    EngineError,
    EngineLostError,
    ManagedContainer,
    OutputStream,
)

log = logging.getLogger(__name__)


class EngineSet:
    def __init__(
        self,
        config: Config,
        engines: Mapping[str, ContainerRuntime],
        urls: Mapping[str, str],
        *,
        state_file: Path | None = None,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.engines = dict(engines)
        self.urls = dict(urls)
        self.state_file = state_file
        self.on_change = on_change or (lambda engine, state: None)
        self.unhealthy: set[str] = set()
        self.draining: set[str] = set(self._load_draining())
        self._where: dict[str, str] = {}  # container id -> engine: where its calls go (learnt from listings too)
        # container id -> (engine, pool) of what this process placed and has not removed: the capacity in use. Only
        # create and remove change it -- a listing racing a removal must not count a container that is gone.
        self._placed: dict[str, tuple[str, str]] = {}
        self._deferred: dict[str, str] = {}  # container id -> engine: to remove once the engine answers again

    # -- state -------------------------------------------------------------------------------------------------

    def _load_draining(self) -> list[str]:
        if self.state_file is None:
            return []
        try:
            names = json.loads(self.state_file.read_text()).get("draining", [])
        except (OSError, ValueError):
            return []
        return [n for n in names if n in self.engines]

    def _save_draining(self) -> None:
        if self.state_file is not None:
            write_atomic(self.state_file, json.dumps({"draining": sorted(self.draining)}).encode(), mode=0o600)

    def drain(self, name: str, *, draining: bool = True) -> None:
        """No new containers on `name` (running ones finish), or again new ones. KeyError: no such engine."""
        if name not in self.engines:
            raise KeyError(name)
        (self.draining.add if draining else self.draining.discard)(name)
        self._save_draining()
        self.on_change(name, self.state(name))

    def state(self, name: str) -> str:
        if name in self.unhealthy:
            return "unhealthy"
        return "draining" if name in self.draining else "healthy"

    def describe(self) -> list[dict[str, object]]:
        counts: dict[str, int] = {}
        for engine, _pool in self._placed.values():
            counts[engine] = counts.get(engine, 0) + 1
        return [
            {"name": name, "url": self.urls[name], "state": self.state(name), "containers": counts.get(name, 0)}
            for name in self.engines
        ]

    def engine_of(self, container_id: str) -> str | None:
        return self._where.get(container_id)

    def usable(self, container_id: str) -> bool:
        """Whether a container made earlier (a warm one) may still take a job: its engine is neither draining nor
        unhealthy."""
        where = self._where.get(container_id)
        return where is None or (where not in self.draining and where not in self.unhealthy)

    # -- health ------------------------------------------------------------------------------------------------

    async def probe(self) -> None:
        """Pings every engine once; an engine that answers again gets its deferred removals done."""
        for name, engine in self.engines.items():
            try:
                await engine.ping()
            except EngineError as exc:
                if name not in self.unhealthy:
                    self.unhealthy.add(name)
                    log.error("docker engine unreachable", extra={"engine": name, "url": self.urls[name],
                                                                   "error": str(exc)})  # fmt: skip
                    self.on_change(name, "unhealthy")
                continue
            if name in self.unhealthy:
                self.unhealthy.discard(name)
                log.info("docker engine reachable again", extra={"engine": name, "url": self.urls[name]})
                self.on_change(name, self.state(name))
            for cid, where in list(self._deferred.items()):
                if where == name:
                    with contextlib.suppress(EngineError):
                        await engine.remove(cid)
                        self._deferred.pop(cid, None)
                        self._placed.pop(cid, None)

    async def probe_forever(self) -> None:
        interval = min((e.probe_interval_s for e in self.config.engines.values()), default=5.0)
        while True:
            await self.probe()
            await asyncio.sleep(interval)

    # -- ContainerRuntime ---------------------------------------------------------------------------------------

    @property
    def outages(self) -> int:
        return sum(engine.outages for engine in self.engines.values())

    def outages_at(self, container_id: str) -> int:
        where = self._where.get(container_id)
        return self.engines[where].outages if where is not None else self.outages

    def stats(self) -> dict[str, int]:
        out = {"errors": 0, "retries": 0}
        for engine in self.engines.values():
            for key, value in engine.stats().items():
                out[key] = out.get(key, 0) + value
        return out

    async def ping(self) -> None:
        """Ready when at least one engine that may take new containers answers."""
        problems = []
        for name, engine in self.engines.items():
            if name in self.draining:
                continue
            try:
                await engine.ping()
                return
            except EngineError as exc:
                problems.append(f"engine {name}: {exc}")
        raise EngineError("no Docker engine answers: " + "; ".join(problems or ["all are draining"]), transient=True)

    async def runtimes(self, *, retry: bool = True) -> dict[str, list[str]]:
        """The OCI runtimes every reachable engine offers (a pool's runtime must exist wherever it may run)."""
        offered: dict[str, list[str]] | None = None
        for engine in self.engines.values():
            try:
                got = await engine.runtimes(retry=retry)
            except EngineError:
                continue
            offered = got if offered is None else {k: v for k, v in offered.items() if k in got}
        if offered is None:
            raise EngineError("no Docker engine answers", transient=True)
        return offered

    async def image_id(self, image: str) -> str:
        """The image's id on the first healthy engine (build the same image on every engine)."""
        error: EngineError | None = None
        for name, engine in self.engines.items():
            if name in self.unhealthy:
                continue
            try:
                return await engine.image_id(image)
            except EngineError as exc:
                error = self._named(name, exc)
        raise error or EngineError("no Docker engine answers", transient=True)

    async def create(self, spec: ContainerSpec) -> str:
        pool = spec.create["labels"].get(LABEL_POOL, "")
        capacity = self.config.pool_engines(pool)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.docker.retry_budget_s
        while True:
            used: dict[str, int] = {}
            for where, of_pool in self._placed.values():
                if of_pool == pool:
                    used[where] = used.get(where, 0) + 1
            choice = place(pool, capacity, used, unhealthy=self.unhealthy, draining=self.draining)
            if not isinstance(choice, NoRoom):
                break
            if loop.time() >= give_up:  # no engine came back or freed a slot within the retry budget
                raise EngineError(choice.message, transient=False)
            await asyncio.sleep(0.5)  # an engine may answer again, or a container's removal free its slot
        name = choice.engine
        try:
            cid = await self.engines[name].create(spec)
        except EngineError as exc:
            raise self._named(name, exc) from exc
        self._where[cid], self._placed[cid] = name, (name, pool)
        return cid

    async def attach(self, container_id: str) -> OutputStream:
        name, engine = self._engine(container_id)
        try:
            return await engine.attach(container_id)
        except EngineError as exc:
            raise self._named(name, exc) from exc

    async def start(self, container_id: str) -> None:
        name, engine = self._engine(container_id)
        try:
            await engine.start(container_id)
        except EngineError as exc:
            raise self._named(name, exc) from exc

    async def wait(self, container_id: str, timeout_s: float) -> int:
        name, engine = self._engine(container_id)
        if name in self.unhealthy:
            raise EngineLostError(f"engine {name} ({self.urls[name]}) is unreachable; the job's container was there")
        try:
            return await engine.wait(container_id, timeout_s)
        except EngineError as exc:
            raise self._named(name, exc) from exc

    async def stop(self, container_id: str, grace_s: float) -> None:
        name, engine = self._engine(container_id)
        if name in self.unhealthy:
            return  # it is removed when the engine is back (or died with it)
        try:
            await engine.stop(container_id, grace_s)
        except EngineError as exc:
            raise self._named(name, exc) from exc

    async def remove(self, container_id: str) -> None:
        where = self._where.get(container_id)
        if where is None:
            for name, engine in self.engines.items():  # not seen yet: whichever has it
                if name not in self.unhealthy:
                    with contextlib.suppress(ContainerGoneError):
                        await engine.remove(container_id)
            return
        if where in self.unhealthy:
            self._deferred[container_id] = where  # counted until it is really gone
            self._where.pop(container_id, None)
            return
        try:
            await self.engines[where].remove(container_id)
        except EngineError as exc:
            raise self._named(where, exc) from exc
        self._where.pop(container_id, None)
        self._placed.pop(container_id, None)

    async def list_managed(self, controller_id: str) -> list[ManagedContainer]:
        """This controller's containers on every engine that answers (an unreachable one's are listed once it is
        back: then the sweep removes what its jobs left)."""
        found: list[ManagedContainer] = []
        for name, engine in self.engines.items():
            if name in self.unhealthy:
                continue
            try:
                listed = await engine.list_managed(controller_id)
            except EngineError as exc:
                log.warning("could not list an engine's containers", extra={"engine": name, "error": str(exc)})
                continue
            for c in listed:
                self._where.setdefault(c.id, name)
            found += listed
        return found

    async def close(self) -> None:
        for engine in self.engines.values():
            await engine.close()

    # -- helpers -----------------------------------------------------------------------------------------------

    def _engine(self, container_id: str) -> tuple[str, ContainerRuntime]:
        name = self._where.get(container_id)
        if name is None:
            raise ContainerGoneError(f"no engine holds container {container_id[:12]}", status=404)
        return name, self.engines[name]

    def _named(self, name: str, exc: EngineError) -> EngineError:
        """The engine's error with the engine named (the job's reason says where it ran)."""
        message = f"engine {name}: {exc}"
        if isinstance(exc, ContainerGoneError):
            return ContainerGoneError(message, status=exc.status)
        if name in self.unhealthy:  # it failed because its engine went away
            return EngineLostError(f"engine {name} ({self.urls[name]}) is unreachable: {exc}", status=exc.status)
        return EngineError(message, transient=exc.transient, status=exc.status)
