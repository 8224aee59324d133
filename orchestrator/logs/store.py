"""Per-job log files (only redacted bytes ever reach them) and live fan-out to followers.

Followers never receive data pushed from the job: they read the file from their own offset and are only woken
up when it grows. A slow or stalled reader therefore costs nothing but its own file handle; the job and other
readers never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from orchestrator.jobs.spec import checked_job_id

_READ_CHUNK = 256 * 1024


def truncation_notice(limit: int) -> bytes:
    return f"\n[orchestrator] log truncated: the job wrote more than {limit} bytes; the rest was discarded\n".encode()


class JobLog:
    """The log of a job while it runs: append-only, with a change signal for followers.

    `append` may be called from the job's output thread as well as from the event loop (one writer at a time,
    which the job runner guarantees); followers are woken on the loop, at most once per loop iteration."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file = path.open("ab", buffering=0)
        os.chmod(path, 0o600)
        self.size = self._file.tell()
        self.truncated = False
        self.done = False
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake_pending = False

    def append(self, data: bytes) -> None:
        if self.done or self.truncated or not data:
            return
        room = self.max_bytes - self.size
        if len(data) > room:
            data = data[: max(room, 0)] + truncation_notice(self.max_bytes)
            self.truncated = True
        self._file.write(data)
        self.size += len(data)
        if threading.get_ident() == self._loop_thread:
            self._signal()
        elif not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(RuntimeError):  # loop closed at shutdown: nobody left to wake
                self._loop.call_soon_threadsafe(self._signal)

    def _signal(self) -> None:
        self._wake_pending = False
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def next_change(self) -> asyncio.Event:
        """The event the next change sets. Taken before looking, so a change in between is not missed."""
        return self._changed

    async def changed(self, within_s: float, event: asyncio.Event | None = None) -> None:
        """Returns when the log grows, closes or is forgotten (or `event`, from `next_change`, was set), or after
        `within_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((event or self._changed).wait(), within_s)

    async def close(self) -> None:
        if self.done:
            return
        self.done = True
        await asyncio.to_thread(os.fsync, self._file.fileno())
        self._file.close()
        self._signal()


class LogStore:
    def __init__(self, directory: Path, *, max_bytes: int = 100 * 1024 * 1024) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._live: dict[str, JobLog] = {}
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, job_id: str) -> Path:
        return self.directory / f"{checked_job_id(job_id)}.log"

    def open(self, job_id: str) -> JobLog:
        log = JobLog(self.path(job_id), self.max_bytes)
        self._live[job_id] = log
        return log

    async def close(self, job_id: str) -> None:
        """No more output: the file is synced and closed. The job stays live here until `forget`, so its followers
        wait for the final state to be stored instead of polling for it."""
        log = self._live.get(job_id)
        if log is not None:
            await log.close()

    def forget(self, job_id: str) -> None:
        """Called once the job's final state is stored: followers of its closed log wake up and end."""
        log = self._live.pop(job_id, None)
        if log is not None:
            log._signal()

    def live(self, job_id: str) -> JobLog | None:
        return self._live.get(job_id)

    def size(self, job_id: str) -> int:
        log = self._live.get(job_id)
        if log is not None:
            return log.size
        try:
            return self.path(job_id).stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, job_id: str, offset: int = 0, limit: int = _READ_CHUNK) -> bytes:
        try:
            with self.path(job_id).open("rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    async def follow(
        self,
        job_id: str,
        offset: int,
        is_finished: Callable[[], Awaitable[bool]],
        *,
        poll_s: float = 0.5,
    ) -> AsyncIterator[bytes]:
        """Yields the log from `offset` on until the job has finished and everything written was sent."""
        while True:
            log = self._live.get(job_id)
            woken = log.next_change() if log is not None else None
            data = await asyncio.to_thread(self.read, job_id, offset)
            if data:
                offset += len(data)
                yield data
                continue
            if log is None:
                # Not running under this process (queued, or finished): finished means nothing more will come.
                if await is_finished():
                    data = await asyncio.to_thread(self.read, job_id, offset)
                    if not data:
                        return
                    offset += len(data)
                    yield data
                    continue
                await asyncio.sleep(poll_s)
            elif not log.done:
                await log.changed(poll_s, woken)
            elif offset >= log.size:  # all of it sent: what is left is the final state, which `forget` announces
                if await is_finished():
                    return
                await log.changed(poll_s, woken)
