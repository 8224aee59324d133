"""LogStore.follow on a real directory: followers get every byte and end as soon as the final state is stored."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from orchestrator.logs.store import LogStore


async def _collect(store: LogStore, job_id: str, finished: list[bool], poll_s: float) -> tuple[bytes, float]:
    async def is_finished() -> bool:
        return finished[0]

    out = b""
    async for chunk in store.follow(job_id, 0, is_finished, poll_s=poll_s):
        out += chunk
    return out, time.monotonic()


async def test_a_follower_ends_when_the_final_state_is_stored_not_at_its_next_poll(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    log = store.open("job-1")
    finished = [False]
    follower = asyncio.create_task(_collect(store, "job-1", finished, poll_s=30))
    log.append(b"first\n")
    await asyncio.sleep(0.05)
    log.append(b"last\n")
    await store.close("job-1")  # the output ended; the final state is not stored yet
    await asyncio.sleep(0.2)
    assert not follower.done()  # it waits for the final state, so its end can report it
    finished[0] = True  # the runner stores the final state, then
    stored = time.monotonic()
    store.forget("job-1")
    data, ended = await asyncio.wait_for(follower, 5)
    assert data == b"first\nlast\n"
    assert ended - stored < 1.0  # woken by forget(), not by the 30 s poll


async def test_a_follower_of_a_finished_job_reads_the_file_and_ends(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    log = store.open("job-2")
    log.append(b"all of it\n")
    await store.close("job-2")
    store.forget("job-2")
    data, _ = await asyncio.wait_for(_collect(store, "job-2", [True], poll_s=30), 5)
    assert data == b"all of it\n"


async def test_many_followers_all_end_on_forget(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    log = store.open("job-3")
    finished = [False]
    followers = [asyncio.create_task(_collect(store, "job-3", finished, poll_s=30)) for _ in range(20)]
    for n in range(50):
        log.append(b"line %d\n" % n)
        await asyncio.sleep(0)
    await store.close("job-3")
    finished[0] = True
    store.forget("job-3")
    results = await asyncio.wait_for(asyncio.gather(*followers), 5)
    expected = b"".join(b"line %d\n" % n for n in range(50))
    assert all(data == expected for data, _ in results)
