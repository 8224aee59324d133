"""A quiet job's held-back output, through the runtime's output pump and supervision loop (no Docker).

Defect 6: a job printed part of a secret, paused for longer than about 2 x ``idle_flush_s``, then printed the rest;
the supervision loop's idle flush had stored the prefix raw (``s3cr3t-Value_42[MASKED]``). Held-back bytes are a
possible secret's beginning, so nothing may store them raw while the job is quiet.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from orchestrator.jobs.states import JobState
from orchestrator.logs.redact import DEFAULT_MASK, SecretSet, StreamRedactor
from orchestrator.runtime.job_runner import JobRunner, RunControl, _OutputPump

from fakes import RecordingEvents

SECRET = b"s3cr3t-Value_42-fake"
PREFIX, REST = SECRET[:15], SECRET[15:]


class PausingStream:
    """Attached output that prints a secret's prefix, then stays quiet until told to go on or to end."""

    def __init__(self) -> None:
        self.go_on = threading.Event()
        self.closed = threading.Event()

    def pump(self, on_output: Callable[[bytes], None], on_side: Callable[[bytes], None] | None = None) -> None:
        on_output(b"token: " + PREFIX)
        while not (self.go_on.wait(0.01) or self.closed.is_set()):
            pass
        if not self.closed.is_set():
            on_output(REST + b" done\n")

    def close(self) -> None:
        self.closed.set()


class Engine:
    """Just what the supervision loop asks of the Docker engine."""

    def __init__(self, stream: PausingStream) -> None:
        self._stream = stream

    def outages_at(self, container_id: str) -> int:
        return 0

    async def wait(self, container_id: str, timeout_s: float) -> int:
        return 0

    async def stop(self, container_id: str, grace_s: float) -> None:
        self._stream.close()  # the container is killed: its output ends where it was


def supervised(stream: PausingStream, stored: list[bytes]) -> tuple[JobRunner, _OutputPump, Any, RunControl]:
    secrets = SecretSet()
    secrets.add(SECRET)
    at: Any = SimpleNamespace(
        job=SimpleNamespace(id="job-quiet", timeout_s=30), store=lambda data, now: stored.append(data)
    )
    # A config that still sets the deprecated idle flush, short: it must have no effect.
    config: Any = SimpleNamespace(logs=SimpleNamespace(idle_flush_s=0.05), docker=SimpleNamespace(stop_grace_s=1))
    runner = JobRunner(config, store=None, engine=Engine(stream), logs=None, events=RecordingEvents())  # type: ignore[arg-type]
    pump = _OutputPump(at, StreamRedactor(secrets), time.time)
    pump.start(stream)  # type: ignore[arg-type]
    return runner, pump, at, RunControl(cancel=asyncio.Event())


async def test_quiet_job_never_stores_the_prefix_it_paused_in() -> None:
    stream, stored = PausingStream(), []
    runner, pump, at, control = supervised(stream, stored)
    task = asyncio.create_task(runner._supervise(at, "container", stream, pump, control))  # type: ignore[arg-type]
    await asyncio.sleep(0.5)  # ten times the idle flush the config asks for
    assert b"".join(stored) == b"token: "
    stream.go_on.set()
    state, _, code = await asyncio.wait_for(task, 10)
    pump.flush()
    assert (state, code) == (JobState.SUCCEEDED, 0)
    assert b"".join(stored) == b"token: " + DEFAULT_MASK + b" done\n"  # one mask, no byte of the prefix


async def test_job_cancelled_while_quiet_ends_its_log_with_a_mask() -> None:
    stream, stored = PausingStream(), []
    runner, pump, at, control = supervised(stream, stored)
    task = asyncio.create_task(runner._supervise(at, "container", stream, pump, control))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    control.cancel.set()
    state, _, _ = await asyncio.wait_for(task, 10)
    pump.flush()  # end of stream: the prefix never completed
    assert state is JobState.CANCELLED
    assert b"".join(stored) == b"token: " + DEFAULT_MASK
