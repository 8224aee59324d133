"""The scheduler on the in-memory runtime (tests/fakes.py): dispatch order and limits, queue slots, cancel races
and start-up reconciliation. No Docker; each test runs in a fraction of a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Config
from orchestrator.evidence.auditor import Auditor
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import Job, JobState, new_job, transition
from orchestrator.logs.store import LogStore
from orchestrator.runtime.container_spec import LABEL_POOL
from orchestrator.runtime.job_runner import JobRunner
from orchestrator.runtime.protocol import EngineLostError
from orchestrator.scheduling.scheduler import NotCancellableError, QueueFullError, Scheduler
from orchestrator.store.sqlite import SQLiteJobStore

from fakes import FakeCredentials, FakeRuntime, RecordingEvents, eventually, runs

IMAGE = "runner-orchestrator/test-runner:local"
FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}


@dataclass
class Rig:
    scheduler: Scheduler
    runtime: FakeRuntime
    store: SQLiteJobStore
    events: RecordingEvents
    credentials: FakeCredentials
    config: Config

    async def job(self, pool: str = "a", **fields: Any) -> Job:
        spec = JobSpec.model_validate(
            {
                "id": fields.pop("id", f"j{time.monotonic_ns()}"),
                "pool": pool,
                "repository": "example/app",
                "ref": "main",
                "sha": "abcdef0",
                "commands": ["true"],
            }
        )
        job = new_job(spec, source="t", controller_id="unit", timeout_s=fields.pop("timeout_s", 30), now=time.time())
        stored, created = await self.store.create(replace(job, **fields))
        assert created
        return stored

    async def submit(self, pool: str = "a", **fields: Any) -> Job:
        job = await self.job(pool, **fields)
        self.scheduler.submit(job)
        return job

    def running_pools(self) -> list[str]:
        return [c.labels[LABEL_POOL] for c in self.runtime.containers.values() if c.status == "running"]

    async def final(self, job: Job) -> Job:
        await eventually(lambda: bool(set(self.events.states(job.id)) & FINAL))
        stored = await self.store.get(job.id)
        assert stored is not None
        return stored


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Rig] = []

    async def make(program: Any = None, *, total: int = 8, **pools: dict[str, Any]) -> Rig:
        cfg = Config.model_validate(
            {
                "controller_id": "unit",
                "data_dir": str(tmp_path / "data"),
                "docker": {"stop_grace_s": 0.1},
                "max_total_concurrent": total,
                "pools": {name: {"image": IMAGE, **settings} for name, settings in (pools or {"a": {}}).items()},
            }
        )
        store = SQLiteJobStore(tmp_path / f"jobs{len(made)}.sqlite3")
        await store.open()
        runtime = FakeRuntime(program)
        events = RecordingEvents()
        credentials = FakeCredentials()
        runner = JobRunner(cfg, store, runtime, LogStore(tmp_path / "logs"), events, credentials=credentials)
        scheduler = Scheduler(cfg, store, runtime, runner, events, Auditor(None), credentials=credentials)
        made.append(Rig(scheduler, runtime, store, events, credentials, cfg))
        return made[-1]

    yield make
    for r in made:
        await r.scheduler.shutdown(0)
        await r.store.close()


def forever(spec: Any) -> Any:
    return runs(b"busy\n", exit_code=None)


# -- dispatch ----------------------------------------------------------------------------------------------------


async def test_a_pool_runs_at_most_max_concurrent_in_fifo_order(rig: Any) -> None:
    r: Rig = await rig(lambda spec: runs(b"x\n", 0.05), a={"max_concurrent": 2})
    jobs = [await r.submit("a") for _ in range(5)]
    for job in jobs:
        await r.final(job)
    running, most, started = 0, 0, []
    for job_id, state in r.events.changes:
        if state == "running":
            running, most = running + 1, max(most, running + 1)
            started.append(job_id)
        elif state in FINAL:
            running -= 1
    assert most == 2
    assert started == [j.id for j in jobs]


async def test_each_job_of_a_single_slot_pool_starts_after_the_previous_ended(rig: Any) -> None:
    r: Rig = await rig(lambda spec: runs(b"x\n", 0.03), a={"max_concurrent": 1})
    jobs = [await r.submit("a") for _ in range(3)]
    for job in jobs:
        await r.final(job)
    sequence = [(jid, s) for jid, s in r.events.changes if s in ("running", "succeeded")]
    assert sequence == [(j.id, s) for j in jobs for s in ("running", "succeeded")]


async def test_pools_share_the_global_limit_fairly(rig: Any) -> None:
    """With the controller full, a free slot goes to the pools in turn, not to whichever queued most."""
    r: Rig = await rig(forever, total=2, a={"max_concurrent": 2}, b={"max_concurrent": 2}, c={})
    blockers = [await r.submit("c"), await r.submit("c")]
    await eventually(lambda: len(r.running_pools()) == 2)
    for _ in range(3):
        await r.submit("a")
    for _ in range(3):
        await r.submit("b")
    for blocker in blockers:
        await r.scheduler.cancel(blocker.id)
    await eventually(lambda: len(r.running_pools()) == 2)
    assert sorted(r.running_pools()) == ["a", "b"]
    assert (r.scheduler.queue_depth("a"), r.scheduler.queue_depth("b")) == (2, 2)


async def test_slots_that_free_up_go_to_the_pools_in_turn(rig: Any) -> None:
    """Before, each freed slot went to the first pool in the config that had a queue: pool b waited until pool a
    had nothing left."""
    programs = iter([runs(exit_code=None)])  # the blocker runs until cancelled, so every job queues behind it
    r: Rig = await rig(
        lambda spec: next(programs, runs(b"x\n", 0.02)), total=1, a={"max_concurrent": 1}, b={"max_concurrent": 1}
    )
    blocker = await r.submit("a")
    jobs = [await r.submit(pool) for pool in "aaabbb"]
    await eventually(lambda: r.scheduler.queue_depth() == 6)
    await r.scheduler.cancel(blocker.id)
    for job in [blocker, *jobs]:
        await r.final(job)
    pool_of = {j.id: j.pool for j in [blocker, *jobs]}
    started = [pool_of[jid] for jid, state in r.events.changes if state == "running"]
    assert started == ["a", "b", "a", "b", "a", "b", "a"]  # before: a, a, a, a, b, b, b


async def test_the_global_limit_caps_all_pools(rig: Any) -> None:
    r: Rig = await rig(forever, total=3, a={"max_concurrent": 5}, b={"max_concurrent": 5})
    for pool in "ababab":
        await r.submit(pool)
    await eventually(lambda: len(r.running_pools()) == 3)
    await asyncio.sleep(0.05)
    assert len(r.runtime.containers) == 3 and r.scheduler.queue_depth() == 3


async def test_a_finished_job_frees_its_slot_for_the_next(rig: Any) -> None:
    r: Rig = await rig(lambda spec: runs(b"x\n", 0.05), a={"max_concurrent": 1})
    first, second = await r.submit("a"), await r.submit("a")
    assert r.scheduler.queue_depth("a") == 1
    assert (await r.final(second)).state is JobState.SUCCEEDED
    assert (await r.final(first)).state is JobState.SUCCEEDED


async def test_jobs_other_controllers_run_in_the_pool_count_against_its_limit(rig: Any) -> None:
    """max_concurrent holds over every controller sharing the store: with 1 of 2 slots taken elsewhere, one job
    starts here, the next waits (queued, not lost, not an error) until the other controller's job ends."""
    r: Rig = await rig(forever, a={"max_concurrent": 2})
    elsewhere = await r.job("a", controller_id="other")
    started = transition(transition(elsewhere, JobState.STARTING, now=time.time()), JobState.RUNNING, now=time.time())
    assert await r.store.update(started, expected=JobState.QUEUED)
    first, second = await r.submit("a"), await r.submit("a")
    await eventually(lambda: r.events.states(first.id)[-1:] == ["running"])
    await asyncio.sleep(0.3)
    waiting = await r.store.get(second.id)
    assert waiting is not None and waiting.state is JobState.QUEUED
    assert r.events.states(second.id) == [] and r.scheduler.queue_depth("a") == 1
    assert r.scheduler.room("a") == 0
    ended = transition(started, JobState.SUCCEEDED, now=time.time())
    assert await r.store.update(ended, expected=JobState.RUNNING)
    await eventually(lambda: r.events.states(second.id)[-1:] == ["running"])
    assert len(r.running_pools()) == 2


async def test_a_job_held_for_a_full_pool_can_still_be_cancelled(rig: Any) -> None:
    r: Rig = await rig(forever, a={"max_concurrent": 1})
    elsewhere = await r.job("a", controller_id="other")
    assert await r.store.update(transition(elsewhere, JobState.STARTING, now=time.time()), expected=JobState.QUEUED)
    job = await r.submit("a")
    await asyncio.sleep(0.1)
    cancelled = await r.scheduler.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED
    assert r.scheduler.queue_depth("a") == 0 and r.runtime.containers == {}


async def test_a_job_whose_engine_was_lost_runs_again_where_the_pool_retries(rig: Any) -> None:
    r: Rig = await rig(lambda spec: runs(b"x\n", 0.05), a={"engine_loss_retries": 1})
    r.runtime.fail["wait"] = [EngineLostError("engine e1 (unix:///e1.sock) is unreachable")]
    job = await r.submit("a")
    ended = await r.final(job)
    assert (ended.state, ended.attempt) == (JobState.SUCCEEDED, 2)
    assert r.events.states(job.id) == ["starting", "running", "queued", "starting", "running", "succeeded"]


async def test_without_retries_a_lost_engine_ends_the_job_in_error(rig: Any) -> None:
    r: Rig = await rig(lambda spec: runs(b"x\n", 0.05))
    r.runtime.fail["wait"] = [EngineLostError("engine e1 (unix:///e1.sock) is unreachable")]
    ended = await r.final(await r.submit("a"))
    assert (ended.state, ended.attempt) == (JobState.ERROR, 1) and "engine e1" in (ended.reason or "")


# -- queue slots ---------------------------------------------------------------------------------------------------


async def test_reserve_counts_slots_held_while_the_store_commits(rig: Any) -> None:
    r: Rig = await rig(a={"max_queue": 2})
    r.scheduler.reserve("a")
    r.scheduler.reserve("a")
    with pytest.raises(QueueFullError, match="pool 'a' has 2 jobs waiting"):
        r.scheduler.reserve("a")
    r.scheduler.release("a")
    r.scheduler.reserve("a")  # the released slot is free again


async def test_the_controller_wide_queue_limit(rig: Any, tmp_path: Path) -> None:
    r: Rig = await rig(forever, total=1, a={"max_concurrent": 1, "max_queue": 100})
    r.config = r.scheduler.config = r.config.model_copy(update={"max_queued_total": 2})
    await r.submit("a")  # runs
    await eventually(lambda: len(r.runtime.containers) == 1)
    await r.submit("a")
    await r.submit("a")
    with pytest.raises(QueueFullError, match="2 jobs are waiting on this controller"):
        r.scheduler.reserve("a")


# -- cancel --------------------------------------------------------------------------------------------------------


async def test_cancel_a_queued_job(rig: Any) -> None:
    r: Rig = await rig(forever, a={"max_concurrent": 1})
    await r.submit("a")
    queued = await r.submit("a")
    cancelled = await r.scheduler.cancel(queued.id, reason="not needed")
    assert (cancelled.state, cancelled.reason) == (JobState.CANCELLED, "not needed")
    assert r.scheduler.queue_depth("a") == 0
    assert len(r.runtime.containers) == 1  # it never got one


async def test_cancel_a_running_job_waits_for_its_teardown(rig: Any) -> None:
    r: Rig = await rig(forever)
    job = await r.submit("a")
    await eventually(lambda: "running" in r.events.states(job.id))
    ended = await r.scheduler.cancel(job.id, reason="by ops")
    assert (ended.state, ended.reason) == (JobState.CANCELLED, "by ops")
    assert r.runtime.containers == {} and not r.scheduler.is_running(job.id)


async def test_cancel_while_starting_never_runs_the_job(rig: Any) -> None:
    r: Rig = await rig(forever)
    gate = asyncio.Event()
    original = r.runtime.create

    async def slow_create(spec: Any) -> str:
        await gate.wait()
        return await original(spec)

    r.runtime.create = slow_create  # type: ignore[method-assign]
    job = await r.submit("a")
    await eventually(lambda: "starting" in r.events.states(job.id))
    cancelling = asyncio.create_task(r.scheduler.cancel(job.id, reason="too late to run"))
    await asyncio.sleep(0.01)
    gate.set()
    ended = await cancelling
    assert ended.state is JobState.CANCELLED and "running" not in r.events.states(job.id)
    assert r.runtime.containers == {} and [m for m, _ in r.runtime.calls if m == "start"] == []


async def test_two_cancels_of_one_running_job_end_it_once(rig: Any) -> None:
    r: Rig = await rig(forever)
    job = await r.submit("a")
    await eventually(lambda: "running" in r.events.states(job.id))
    first, second = await asyncio.gather(
        r.scheduler.cancel(job.id, reason="one"), r.scheduler.cancel(job.id, reason="two"), return_exceptions=True
    )
    assert isinstance(first, Job) and first.state is JobState.CANCELLED
    assert isinstance(second, Job | NotCancellableError)
    assert r.events.states(job.id).count("cancelled") == 1


async def test_cancel_of_a_finished_job_is_refused(rig: Any) -> None:
    r: Rig = await rig()
    job = await r.submit("a")
    await r.final(job)
    with pytest.raises(NotCancellableError, match="already ended"):
        await r.scheduler.cancel(job.id)
    with pytest.raises(KeyError):
        await r.scheduler.cancel("no-such-job")


async def test_shutdown_cancels_what_did_not_finish_within_the_drain(rig: Any) -> None:
    r: Rig = await rig(forever)
    job = await r.submit("a")
    await eventually(lambda: "running" in r.events.states(job.id))
    await r.scheduler.shutdown(0.05)
    ended = await r.store.get(job.id)
    assert ended is not None and ended.state is JobState.CANCELLED
    assert ended.reason == "controller shut down before the job finished"
    assert r.runtime.containers == {}
    late = await r.job("a")
    r.scheduler.submit(late)  # no dispatch after shutdown
    await asyncio.sleep(0.05)
    assert r.runtime.containers == {}


# -- reconciliation ------------------------------------------------------------------------------------------------


async def test_reconcile_leaves_jobs_awaiting_approval_waiting(rig: Any) -> None:
    r: Rig = await rig()
    waiting = await r.job("a", state=JobState.AWAITING_APPROVAL, reason="waiting for approval")
    await r.scheduler.reconcile()
    stored = await r.store.get(waiting.id)
    assert stored == waiting and r.scheduler.queue_depth("a") == 0 and r.runtime.containers == {}


async def test_admit_holds_a_gated_job_for_approval(rig: Any) -> None:
    r: Rig = await rig(a={"requires_approval": True})
    spec = JobSpec.model_validate({"id": "gated-1", "pool": "a", "repository": "o/r", "ref": "main",
                                   "sha": "abcdef0", "commands": ["true"]})  # fmt: skip
    job = new_job(spec, source="t", controller_id="unit", timeout_s=30, now=time.time())
    stored, created = await r.scheduler.admit(job, lambda j, c: None)
    assert created and stored.state is JobState.AWAITING_APPROVAL and "requires it" in (stored.reason or "")
    assert r.scheduler.queue_depth("a") == 0 and not r.scheduler.knows("gated-1")


async def _interrupted(r: Rig, state: JobState, *, started_ago: float = 1.0, accessor: str | None = None) -> Job:
    job = await r.job("a")
    now = time.time()
    moved = transition(job, JobState.STARTING, now=now)
    if state is JobState.RUNNING:
        moved = replace(transition(moved, JobState.RUNNING, now=now), started_at=now - started_ago)
    moved = replace(moved, credentials_accessor=accessor)
    assert await r.store.update(moved, expected=JobState.QUEUED)
    return moved


async def test_reconcile_removes_leftovers_and_ends_interrupted_jobs(rig: Any) -> None:
    r: Rig = await rig()
    running = await _interrupted(r, JobState.RUNNING, accessor="acc-1")
    starting = await _interrupted(r, JobState.STARTING)
    r.runtime.leftover("unit", running.id)
    r.runtime.leftover("other-controller", "not-ours")
    queued = await r.job("a")
    await r.scheduler.start()
    assert [c.labels["io.runner-orchestrator.controller-id"] for c in r.runtime.containers.values()] == [
        "other-controller"
    ]
    for job in (running, starting):
        ended = await r.store.get(job.id)
        assert ended is not None and ended.state is JobState.ERROR
        assert ended.reason == "controller restarted while the job was running"
    assert r.credentials.revoked_accessors == ["acc-1"]
    assert (await r.final(queued)).state is JobState.SUCCEEDED  # accepted but never started: started now


async def test_reconcile_requeues_where_the_pool_retries(rig: Any) -> None:
    r: Rig = await rig(a={"retry_on_restart": True})
    interrupted = await _interrupted(r, JobState.RUNNING)
    await r.scheduler.start()
    ended = await r.final(interrupted)
    assert (ended.state, ended.attempt) == (JobState.SUCCEEDED, 2)


async def test_reconcile_times_out_a_job_still_running_past_its_timeout(rig: Any) -> None:
    r: Rig = await rig(a={"retry_on_restart": True})
    late = await _interrupted(r, JobState.RUNNING, started_ago=3600)
    r.runtime.leftover("unit", late.id, status="running")
    exited = await _interrupted(r, JobState.RUNNING, started_ago=3600)
    r.runtime.leftover("unit", exited.id, status="exited")  # not found running: retried as before
    await r.scheduler.start()
    ended = await r.store.get(late.id)
    assert ended is not None and ended.state is JobState.TIMED_OUT and ended.attempt == 1
    assert ended.reason is not None and ended.reason.startswith("timed out after 30 s")
    assert (await r.final(exited)).attempt == 2


async def test_reconcile_ends_jobs_of_a_removed_pool(rig: Any) -> None:
    r: Rig = await rig(a={}, b={})
    job = await r.job("b")
    moved = transition(job, JobState.STARTING, now=time.time())
    assert await r.store.update(moved, expected=JobState.QUEUED)
    r.scheduler.config = r.config.model_copy(update={"pools": {"a": r.config.pools["a"]}})
    r.scheduler.runner.config = r.scheduler.config
    await r.scheduler.reconcile()
    ended = await r.store.get(job.id)
    assert ended is not None and (ended.state, ended.reason) == (JobState.ERROR, "pool 'b' is no longer configured")


async def test_reconcile_survives_an_engine_it_cannot_reach(rig: Any) -> None:
    r: Rig = await rig()
    from orchestrator.runtime.protocol import EngineError

    r.runtime.fail["list_managed"] = [EngineError("Docker engine unreachable: ConnectionError", transient=True)]
    interrupted = await _interrupted(r, JobState.RUNNING)
    await r.scheduler.reconcile()
    ended = await r.store.get(interrupted.id)
    assert ended is not None and ended.state is JobState.ERROR


async def test_sweep_removes_only_containers_of_jobs_not_running_here(rig: Any) -> None:
    r: Rig = await rig(forever)
    job = await r.submit("a")
    await eventually(lambda: "running" in r.events.states(job.id))
    r.runtime.leftover("unit", "gone-job", status="exited")
    assert await r.scheduler.sweep() == 1
    assert len(r.runtime.containers) == 1 and r.runtime.by_job(job.id).status == "running"
