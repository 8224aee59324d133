"""Several Docker engines: the placement rule (runtime/placement.py, pure) and the router (runtime/engines.py) on
in-memory engines -- jobs spread by free capacity, an unhealthy engine gets nothing new and its job's calls fail at
once naming it, a drain stops new work and survives a restart, leftovers are removed when an engine is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.config import Config
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import JobState, new_job
from orchestrator.logs.store import LogStore
from orchestrator.runtime.engines import EngineSet
from orchestrator.runtime.job_runner import JobRunner, RunControl
from orchestrator.runtime.placement import NoRoom, Placed, place
from orchestrator.runtime.protocol import EngineError
from orchestrator.store.sqlite import SQLiteJobStore

from fakes import FakeRuntime, RecordingEvents, runs

IMAGE = "runner-orchestrator/test-runner:local"


def test_placement_most_free_capacity_then_config_order() -> None:
    cap = {"a": 2, "b": 4, "c": 4}
    assert place("p", cap, {}) == Placed("b")  # b and c tie at 4 free: config order
    assert place("p", cap, {"b": 1}) == Placed("c")
    assert place("p", cap, {"b": 2, "c": 2}) == Placed("a")  # all at 2 free: the first
    assert place("p", cap, {}, unhealthy={"b"}, draining={"c"}) == Placed("a")
    full = place("p", {"a": 1, "b": 1}, {"a": 1}, unhealthy={"b"})
    assert isinstance(full, NoRoom) and "a: full (1 of 1)" in full.message and "b: unhealthy" in full.message


def config(tmp_path: Path, **pool: Any) -> Config:
    return Config.model_validate(
        {
            "controller_id": "unit",
            "data_dir": str(tmp_path / "data"),
            "engines": {
                "one": {"base_url": "unix:///run/one.sock"},
                "two": {"base_url": "unix:///run/two.sock"},
                "three": {"base_url": "unix:///run/three.sock"},
            },
            "pools": {
                "default": {"image": IMAGE, "max_concurrent": 6, "engines": {"one": 2, "two": 2, "three": 2}, **pool}
            },
        }
    )


def engine_set(tmp_path: Path, **pool: Any) -> tuple[EngineSet, dict[str, FakeRuntime]]:
    cfg = config(tmp_path, **pool)
    fakes = {name: FakeRuntime(lambda spec: runs(b"hi\n", exit_code=None), id_prefix=name) for name in cfg.engines}
    (tmp_path / "data").mkdir(exist_ok=True)
    engines = EngineSet(cfg, fakes, {n: e.base_url for n, e in cfg.engines.items()},
                        state_file=tmp_path / "data" / "engines.json")  # fmt: skip
    return engines, fakes


def test_config_checks_engines() -> None:
    base: dict[str, Any] = {"controller_id": "c", "data_dir": "/tmp/x"}
    with pytest.raises(ValidationError, match="tcp needs tls_ca_file"):
        Config.model_validate({**base, "engines": {"e": {"base_url": "tcp://h:2376"}}, "pools": {"p": {"image": "i"}}})
    with pytest.raises(ValidationError, match="no engine named 'nope'"):
        Config.model_validate({**base, "engines": {"e": {"base_url": "unix:///x"}},
                               "pools": {"p": {"image": "i", "engines": {"nope": 1}}}})  # fmt: skip
    with pytest.raises(ValidationError, match="more than its engines' capacity"):
        Config.model_validate({**base, "engines": {"e": {"base_url": "unix:///x"}},
                               "pools": {"p": {"image": "i", "max_concurrent": 3, "engines": {"e": 2}}}})  # fmt: skip
    plain = Config.model_validate({**base, "engines": {"e": {"base_url": "tcp://h:2375", "unsafe_plain_tcp": True}},
                                   "pools": {"p": {"image": "i"}}})  # fmt: skip
    assert any("plain tcp" in w for w in plain.warnings())


async def run_jobs(tmp_path: Path, engines: EngineSet, n: int, prefix: str = "j") -> list[Any]:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    runner = JobRunner(engines.config, store, engines, LogStore(tmp_path / "logs"), RecordingEvents())
    controls, tasks = [], []
    for i in range(n):
        spec = JobSpec.model_validate({"id": f"{prefix}{i}", "pool": "default", "repository": "o/r", "ref": "main",
                                       "sha": "0" * 40, "commands": ["sleep 9"]})  # fmt: skip
        job, _ = await store.create(new_job(spec, source="t", controller_id="unit", timeout_s=30, now=time.time()))
        control = RunControl(cancel=asyncio.Event())
        controls.append(control)
        tasks.append(asyncio.create_task(runner.run(job, control)))
        await asyncio.sleep(0.05)
    return [store, controls, tasks]


async def test_jobs_spread_by_free_capacity_and_avoid_unhealthy_and_draining_engines(tmp_path: Path) -> None:
    engines, fakes = engine_set(tmp_path)
    store, controls, tasks = await run_jobs(tmp_path, engines, 3)
    assert {name: len(f.containers) for name, f in fakes.items()} == {"one": 1, "two": 1, "three": 1}
    fakes["two"].fail["ping"] = [EngineError("Docker engine unreachable", transient=True)]
    await engines.probe()
    assert engines.state("two") == "unhealthy"
    engines.drain("three")
    (tmp_path / "b").mkdir()
    _, more_controls, more_tasks = await run_jobs(tmp_path / "b", engines, 1, prefix="k")
    assert {name: len(f.containers) for name, f in fakes.items()} == {"one": 2, "two": 1, "three": 1}
    for control in controls + more_controls:
        control.cancel.set()
    await asyncio.gather(*tasks, *more_tasks)
    await store.close()


async def test_a_lost_engine_fails_its_job_at_once_naming_it(tmp_path: Path) -> None:
    engines, fakes = engine_set(tmp_path, engines={"one": 6})
    store, _, tasks = await run_jobs(tmp_path, engines, 1)
    (cid,) = fakes["one"].containers
    fakes["one"].fail["ping"] = [EngineError("Docker engine unreachable", transient=True)]
    await engines.probe()
    fakes["one"].containers[cid].exit(137)  # the engine died with its container: the output ends
    (job,) = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert job.state is JobState.ERROR and "engine one (unix:///run/one.sock) is unreachable" in (job.reason or "")
    assert cid not in fakes["one"].removed  # deferred: the engine does not answer
    await engines.probe()  # it answers again: what its job left is removed
    assert cid in fakes["one"].removed
    await store.close()


async def test_a_job_lost_with_its_engine_runs_again_elsewhere_where_the_pool_retries(tmp_path: Path) -> None:
    """engine_loss_retries = 1: the first loss queues the job again (attempt 2, the log says so), the next attempt
    goes to an engine that answers; a second loss ends it in error."""
    engines, fakes = engine_set(tmp_path, engine_loss_retries=1)
    store, _, tasks = await run_jobs(tmp_path, engines, 1)
    (cid,) = fakes["one"].containers
    fakes["one"].fail["ping"] = [EngineError("Docker engine unreachable", transient=True)] * 99
    await engines.probe()
    fakes["one"].containers[cid].exit(137)
    (job,) = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert (job.state, job.attempt) == (JobState.QUEUED, 2)
    assert "re-queued: docker: engine one (unix:///run/one.sock) is unreachable" in (job.reason or "")
    stored = await store.get(job.id)
    assert stored is not None and (stored.state, stored.attempt, stored.container_id) == (JobState.QUEUED, 2, None)
    logs = LogStore(tmp_path / "logs")
    assert "attempt 1 lost" in logs.read(job.id).decode() and "queued again as attempt 2" in logs.read(job.id).decode()

    runner = JobRunner(engines.config, store, engines, logs, RecordingEvents())
    second = asyncio.create_task(runner.run(stored, RunControl(cancel=asyncio.Event())))
    await asyncio.sleep(0.1)
    assert len(fakes["two"].containers) == 1 and len(fakes["one"].containers) == 1  # elsewhere
    (cid2,) = fakes["two"].containers
    fakes["two"].fail["ping"] = [EngineError("Docker engine unreachable", transient=True)]
    await engines.probe()
    fakes["two"].containers[cid2].exit(137)
    ended = await asyncio.wait_for(second, 10)
    assert (ended.state, ended.attempt) == (JobState.ERROR, 2) and "engine two" in (ended.reason or "")
    await store.close()


async def test_another_engines_outage_does_not_taint_a_jobs_exit_code(tmp_path: Path) -> None:
    engines, fakes = engine_set(tmp_path, engines={"one": 3, "two": 3})
    store, _, tasks = await run_jobs(tmp_path, engines, 1)
    (cid,) = fakes["one"].containers
    fakes["two"].outages += 1  # engine two could not be reached meanwhile; the job runs on one
    fakes["one"].containers[cid].exit(0)
    (job,) = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert job.state is JobState.SUCCEEDED, job.reason
    await store.close()


async def test_a_drain_survives_a_restart_and_unknown_engines_are_refused(tmp_path: Path) -> None:
    engines, fakes = engine_set(tmp_path)
    engines.drain("two")
    again = EngineSet(engines.config, fakes, engines.urls, state_file=tmp_path / "data" / "engines.json")
    assert again.state("two") == "draining" and again.state("one") == "healthy"
    again.drain("two", draining=False)
    assert (
        EngineSet(engines.config, fakes, engines.urls, state_file=tmp_path / "data" / "engines.json").draining == set()
    )
    with pytest.raises(KeyError):
        engines.drain("nope")


async def test_listing_relearns_which_engine_holds_a_container(tmp_path: Path) -> None:
    engines, fakes = engine_set(tmp_path)
    left = fakes["three"].leftover("unit", "old-job")
    fresh = EngineSet(engines.config, fakes, engines.urls)  # a restarted controller
    listed = await fresh.list_managed("unit")
    assert [c.id for c in listed] == [left] and fresh.engine_of(left) == "three"
    await fresh.remove(left)
    assert left in fakes["three"].removed


async def test_a_listing_racing_a_removal_does_not_count_a_gone_container(tmp_path: Path) -> None:
    """The sweep's listing can return a container a job's removal deletes a moment later: capacity is what this
    process placed and has not removed, not what a listing saw."""
    engines, fakes = engine_set(tmp_path, max_concurrent=1, engines={"one": 1})
    from orchestrator.runtime.container_spec import build_container_spec

    spec = JobSpec.model_validate({"id": "j", "pool": "default", "repository": "o/r", "ref": "main", "sha": "0" * 40,
                                   "commands": ["true"]})  # fmt: skip
    cid = await engines.create(build_container_spec(spec, engines.config.pools["default"], controller_id="unit"))
    stale = await fakes["one"].list_managed("unit")  # listed while it still exists ...
    await engines.remove(cid)  # ... removed by its job ...

    async def late_listing(controller_id: str) -> Any:
        return stale  # ... and the listing's answer arrives after

    fakes["one"].list_managed = late_listing  # type: ignore[method-assign]
    await engines.list_managed("unit")
    spec2 = JobSpec.model_validate({**spec.model_dump(), "id": "k"})
    assert await engines.create(build_container_spec(spec2, engines.config.pools["default"], controller_id="unit"))
