"""Warm containers (runtime/warm_pool.py): the pure rules (what is stale, how many to make), and the pool with the
job runner on the in-memory runtime -- claims, a claim race, a warm container dying between claim and script,
refills bounded under load, age-out, a changed config or image, an engine outage."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Config
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import Job, JobState, new_job
from orchestrator.logs.store import LogStore
from orchestrator.platform.metrics import Metrics
from orchestrator.runtime.container_spec import LABEL_JOB, LABEL_WARM
from orchestrator.runtime.job_runner import JobRunner, RunControl
from orchestrator.runtime.protocol import EngineError
from orchestrator.runtime.warm_pool import WarmContainer, WarmPool, refill_plan, stale_cause
from orchestrator.store.sqlite import SQLiteJobStore

from fakes import FakeRuntime, RecordingEvents, eventually, runs

IMAGE = "runner-orchestrator/test-runner:local"


class Stream:
    def __init__(self, alive: bool = True) -> None:
        self._alive = alive

    def alive(self) -> bool:
        return self._alive

    def send(self, payload: bytes) -> None: ...
    def pump(self, on_output: Any, on_side: Any = None) -> None: ...
    def close(self) -> None: ...


def warm(**kw: Any) -> WarmContainer:
    base: dict[str, Any] = {"id": "c1", "name": "n", "pool": "p", "stream": Stream(), "image_id": "sha256:a",
                            "digest": "d", "made_at": 100.0}  # fmt: skip
    return WarmContainer(**{**base, **kw})


def test_stale_causes() -> None:
    check = {"now": 150.0, "max_age_s": 60.0, "digest": "d", "image_id": "sha256:a"}
    assert stale_cause(warm(), **check) is None  # type: ignore[arg-type]
    assert stale_cause(warm(stream=Stream(alive=False)), **check) == "died"  # type: ignore[arg-type]
    assert stale_cause(warm(digest="old"), **check) == "config"  # type: ignore[arg-type]
    assert stale_cause(warm(image_id="sha256:b"), **check) == "image"  # type: ignore[arg-type]
    assert stale_cause(warm(made_at=80.0), **check) == "age"  # type: ignore[arg-type]
    assert stale_cause(warm(), **check, usable=lambda cid: False) == "engine"  # type: ignore[arg-type]
    assert stale_cause(warm(image_id="sha256:b"), **{**check, "image_id": None}) is None  # type: ignore[arg-type]


def test_refill_plan_tops_up_within_max_warm_the_emptiest_first() -> None:
    assert refill_plan({"a": 3, "b": 2}, {}, {}, 10) == {"a": 3, "b": 2}
    assert refill_plan({"a": 3, "b": 2}, {"a": 3}, {"b": 1}, 10) == {"b": 1}
    assert refill_plan({"a": 4, "b": 4}, {"a": 2}, {}, 5) == {"b": 2, "a": 1}  # b first, then both evenly
    assert refill_plan({"a": 4, "b": 4}, {}, {}, 3) in ({"a": 2, "b": 1}, {"a": 1, "b": 2})
    assert refill_plan({"a": 1}, {"a": 1}, {}, 1) == {}


def config(tmp_path: Path, **pool: Any) -> Config:
    return Config.model_validate(
        {
            "controller_id": "unit",
            "data_dir": str(tmp_path / "data"),
            "docker": {"stop_grace_s": 0.2},
            "pools": {"default": {"image": IMAGE, "max_timeout_s": 3600, "warm": 2, **pool}},
            "warm_refill_concurrency": 2,
        }
    )


class Rig:
    def __init__(self, tmp_path: Path, **pool: Any) -> None:
        self.config = config(tmp_path, **pool)
        self.runtime = FakeRuntime(lambda spec: runs(b"hello\n", exit_code=0))
        self.metrics = Metrics()
        self.clock = [1000.0]
        self.warm = WarmPool(self.config, self.runtime, self.metrics, clock=lambda: self.clock[0])
        self.store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
        self.events = RecordingEvents()
        self.runner = JobRunner(self.config, self.store, self.runtime, LogStore(tmp_path / "logs"), self.events,
                                warm=self.warm)  # fmt: skip

    async def fill(self) -> None:
        await self.warm.upkeep()
        await self.warm.settle()

    async def job(self, name: str) -> Job:
        raw = {"id": name, "pool": "default", "repository": "example/app", "ref": "main", "sha": "0" * 40}
        spec = JobSpec.model_validate({**raw, "commands": ["echo hi"], "env": {"SECRET_NAME": "x"}})
        job, _ = await self.store.create(new_job(spec, source="t", controller_id="unit", timeout_s=30, now=time.time()))
        return job

    async def run(self, job: Job) -> Job:
        return await asyncio.wait_for(self.runner.run(job, RunControl(cancel=asyncio.Event())), 10)

    def warm_containers(self) -> list[Any]:
        return [c for c in self.runtime.containers.values() if c.labels.get(LABEL_WARM) == "true"]


@pytest.fixture
async def rig(tmp_path: Path) -> Any:
    r = Rig(tmp_path)
    await r.store.open()
    yield r
    await r.warm.drain("shutdown")
    await r.store.close()


async def test_a_job_claims_a_warm_container_which_holds_nothing_of_it_before(rig: Rig) -> None:
    await rig.fill()
    assert rig.warm.ready("default") == 2 and len(rig.warm_containers()) == 2
    for c in rig.warm_containers():
        assert c.status == "running" and LABEL_JOB not in c.labels and c.stdin == b""
        assert "example/app" not in repr(c.spec) and "SECRET_NAME" not in repr(c.spec)
    job = await rig.run(await rig.job("j1"))
    assert job.state is JobState.SUCCEEDED
    stored = await rig.store.get("j1")
    assert stored is not None and stored.container_id in rig.runtime.removed  # recorded, then removed
    claimed = [c for c in rig.runtime.calls if c[0] == "create"]
    assert len(claimed) == 2  # no create for the job: it ran in a warm container
    assert b"export SECRET_NAME=x" in rig.runtime.removed_stdin[stored.container_id or ""]
    assert rig.warm.claims == {"warm": 1, "cold": 0} and not rig.warm.owns(stored.container_id or "")
    await rig.fill()
    assert rig.warm.ready("default") == 2  # refilled; the claimed one never returns


async def test_two_jobs_one_warm_container(rig: Rig, tmp_path: Path) -> None:
    rig.warm.wanted["default"] = 1
    await rig.fill()
    first, second = await asyncio.gather(rig.run(await rig.job("a")), rig.run(await rig.job("b")))
    assert first.state is second.state is JobState.SUCCEEDED
    assert rig.warm.claims == {"warm": 1, "cold": 1}
    assert first.container_id != second.container_id


async def test_a_warm_container_that_died_is_replaced_and_the_job_served_cold(rig: Rig) -> None:
    await rig.fill()
    for c in rig.warm_containers():
        c.exit(137)  # both died while waiting
    job = await rig.run(await rig.job("j"))
    assert job.state is JobState.SUCCEEDED and rig.warm.claims == {"warm": 0, "cold": 1}
    assert rig.metrics.warm_replaced.labels("default", "died")._value.get() == 2


async def test_a_warm_container_dying_between_claim_and_script_falls_back_cold(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await rig.fill()
    original = rig.warm.claim

    def claim_then_die(pool: str) -> WarmContainer | None:
        got = original(pool)
        if got is not None:
            rig.runtime.containers[got.id].exit(137)  # after the liveness check, before the script is sent
        return got

    monkeypatch.setattr(rig.warm, "claim", claim_then_die)
    job = await rig.run(await rig.job("j"))
    assert job.state is JobState.SUCCEEDED, job.reason
    assert rig.warm.claims == {"warm": 1, "cold": 0}  # claimed, then the job went cold
    assert [m for m, _ in rig.runtime.calls].count("create") == 3


async def test_age_config_and_image_changes_replace_ready_containers(rig: Rig) -> None:
    await rig.fill()
    rig.clock[0] += rig.config.pools["default"].warm_max_age_s + 1
    await rig.fill()
    assert rig.metrics.warm_replaced.labels("default", "age")._value.get() == 2 and rig.warm.ready("default") == 2
    rig.warm.digests["default"] = "the pool's config changed"
    await rig.fill()
    assert rig.metrics.warm_replaced.labels("default", "config")._value.get() == 2
    rig.runtime.images[IMAGE] = "sha256:" + "cd" * 32  # the image was rebuilt under its tag
    await rig.fill()
    assert rig.metrics.warm_replaced.labels("default", "image")._value.get() == 2
    await eventually(lambda: len(rig.warm_containers()) == 2)
    assert all(rig.warm.owns(c.id) for c in rig.warm_containers())


async def test_an_engine_outage_empties_the_pool_which_refills_when_it_is_back(rig: Rig) -> None:
    await rig.fill()
    rig.runtime.outages += 1
    rig.runtime.fail["image_id"] = [EngineError("Docker engine unreachable", transient=True)]
    await rig.fill()
    assert rig.warm.ready("default") == 0 and rig.metrics.warm_replaced.labels("default", "outage")._value.get() == 2
    await rig.fill()  # the engine answers again
    assert rig.warm.ready("default") == 2


async def test_refills_under_load_stay_within_their_concurrency(rig: Rig) -> None:
    """20 jobs through a pool of 4 warm containers while the pool refills in the background: the refills never
    exceed warm_refill_concurrency at once, every job succeeds, most are served warm."""
    rig.warm.wanted["default"] = 4
    in_flight = peak = 0
    original = rig.runtime.create

    async def slow_create(spec: Any) -> str:
        nonlocal in_flight, peak
        warm_create = "-warm-" in spec.name
        in_flight += warm_create
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= warm_create
        return await original(spec)

    rig.runtime.create = slow_create  # type: ignore[method-assign]
    await rig.fill()
    upkeep = asyncio.create_task(rig.warm.run_forever())
    try:
        jobs = []
        for n in range(20):
            jobs.append(await rig.run(await rig.job(f"j{n}")))
            await asyncio.sleep(0.03)  # a steady trickle: the refill keeps up
    finally:
        upkeep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upkeep
    assert all(j.state is JobState.SUCCEEDED for j in jobs)
    assert 1 <= peak <= rig.config.warm_refill_concurrency
    assert rig.warm.claims["warm"] >= 15, rig.warm.claims
    assert rig.warm_containers() == []  # the upkeep's end removed the ready ones


def test_config_bounds_warm_by_max_warm() -> None:
    from pydantic import ValidationError

    base = {"controller_id": "c", "data_dir": "/tmp/x", "max_warm": 3}
    with pytest.raises(ValidationError, match=r"max_warm = 3 is less than the pools' warm containers"):
        Config.model_validate({**base, "pools": {"a": {"image": "i", "warm": 2}, "b": {"image": "i", "warm": 2}}})
    Config.model_validate({**base, "pools": {"a": {"image": "i", "warm": 3}}})
