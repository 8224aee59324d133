"""Thin adapter over the `docker` package. Blocking SDK calls run on a dedicated thread pool; each attached
output stream gets its own thread so a quiet job never occupies a pool worker. Transient failures (daemon
unreachable, 5xx, timeouts) are retried with tenacity on a bounded budget; anything else surfaces at once as an
EngineError carrying a message a user can act on."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import docker.tls
import requests.exceptions
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from orchestrator.runtime.container_spec import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_POOL,
    ContainerSpec,
    managed_filters,
)
from orchestrator.runtime.protocol import ContainerGoneError, EngineError, ManagedContainer

log = logging.getLogger(__name__)
T = TypeVar("T")

_HEADER = struct.Struct(">BxxxI")
_RECV_BYTES = 256 * 1024
# The engine went away: no connection, or one cut in the middle of an answer (a `wait` in progress when the daemon
# dies ends in ChunkedEncodingError).
_UNREACHABLE = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError, ConnectionError)


def out_of_descriptors(exc: BaseException) -> bool:
    """Whether a failure came from this process having no file descriptor left (EMFILE, or ENFILE for the whole
    host) rather than from the engine: requests and urllib3 wrap the OSError in their own errors, as an argument
    or as the cause."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.errno in (errno.EMFILE, errno.ENFILE):
            return True
        todo += [item.__cause__, item.__context__, *item.args]
    return False


def _explain(exc: BaseException) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    if out_of_descriptors(exc):  # our shortage, not the engine's: retried, and no reason to doubt a running job
        return EngineError("Docker engine not reached: this process has no file descriptor left", transient=True)
    if isinstance(exc, docker.errors.ImageNotFound):
        return EngineError(f"image not found on the Docker host: {exc.explanation}", status=404)
    if isinstance(exc, docker.errors.NotFound):
        return ContainerGoneError(f"not found: {exc.explanation}", status=404)
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code
        transient = status is None or (status >= 500 and "OCI runtime" not in str(exc.explanation))
        return EngineError(f"Docker API error {status}: {exc.explanation}", transient=transient, status=status)
    if isinstance(exc, (*_UNREACHABLE, requests.exceptions.Timeout)):
        return EngineError(f"Docker engine unreachable: {type(exc).__name__}", transient=True)
    if isinstance(exc, docker.errors.DockerException):
        return EngineError(f"Docker error: {exc}", transient=True)
    return EngineError(f"unexpected Docker client error: {type(exc).__name__}: {exc}")


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, EngineError) and exc.transient


def demultiplex(buffer: bytearray) -> tuple[bytes, bytes]:
    """Consume complete frames of Docker's attach stream (8-byte header: stream id, size) from `buffer`, return
    the payloads of stdout (the job's merged output: the script sends its commands' stderr there, so order is
    kept) and of stderr (the side channel the script writes archives to; runtime/side_channel.py)."""
    out = bytearray()
    err = bytearray()
    pos = 0
    while len(buffer) - pos >= _HEADER.size:
        stream, size = _HEADER.unpack_from(buffer, pos)
        end = pos + _HEADER.size + size
        if end > len(buffer):
            break
        (err if stream == 2 else out).extend(buffer[pos + _HEADER.size : end])
        pos = end
    del buffer[:pos]
    return bytes(out), bytes(err)


class AttachedStream:
    """Output of one container, read by a dedicated thread. `on_output` runs on that thread, so the output is
    processed as fast as the disk takes it without a round trip through the event loop per chunk; memory stays
    bounded because nothing is read ahead of what `on_output` has finished with."""

    def __init__(self, sock: Any) -> None:
        # Keep the SDK's wrapper alive: it owns the HTTP response the socket belongs to, and when the garbage
        # collector frees that response it closes the socket under a running job.
        self._owner = sock
        self._sock: socket.socket = getattr(sock, "_sock", sock)
        self._closed = threading.Event()

    def send(self, payload: bytes) -> None:
        self._sock.sendall(payload)

    def pump(self, on_output: Callable[[bytes], None], on_side: Callable[[bytes], None] | None = None) -> None:
        buffer = bytearray()
        try:
            while not self._closed.is_set():
                data = self._sock.recv(_RECV_BYTES)
                if not data:
                    break
                buffer += data
                chunk, side = demultiplex(buffer)
                if chunk:
                    on_output(chunk)
                if side:
                    (on_side or on_output)(side)
        except OSError:
            if not self._closed.is_set():
                raise
        finally:
            self.close()

    def alive(self) -> bool:
        if self._closed.is_set():
            return False
        try:
            return bool(self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))  # b"": the container is gone
        except BlockingIOError:
            return True  # nothing to read: the bootstrap waits for its script
        except OSError:
            return False

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._sock.close()
            with contextlib.suppress(Exception):
                self._owner.close()


class DockerEngine:
    """The ContainerRuntime of a Docker engine (runtime/protocol.py)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_timeout_s: float = 60.0,
        retry_budget_s: float = 30.0,
        retry_attempts: int = 5,
        max_workers: int = 32,
        tls: docker.tls.TLSConfig | None = None,
    ) -> None:
        self._base_url = base_url
        self._tls = tls
        self._timeout = api_timeout_s
        self._retry_budget_s = retry_budget_s
        self._retry_attempts = retry_attempts
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="docker")
        self._client: docker.DockerClient | None = None
        self.retries = 0
        self.errors = 0
        # Bumped whenever the daemon could not be reached: a job that saw it change cannot trust its exit code
        # (a restarting daemon kills containers).
        self.outages = 0

    def outages_at(self, container_id: str) -> int:
        return self.outages

    def _api(self) -> Any:
        if self._client is None:
            kwargs: dict[str, Any] = {"timeout": int(self._timeout), "max_pool_size": 64}
            if self._base_url:
                if self._tls is not None:
                    kwargs["tls"] = self._tls
                if self._base_url.startswith("ssh://"):
                    kwargs["use_ssh_client"] = True  # the ssh binary: the controller user's keys and known_hosts
                self._client = docker.DockerClient(base_url=self._base_url, **kwargs)
            else:
                self._client = docker.from_env(**kwargs)
        return self._client.api

    async def _call(self, fn: Callable[[], T], *, retry: bool = True) -> T:
        loop = asyncio.get_running_loop()

        async def once() -> T:
            try:
                return await loop.run_in_executor(self._executor, fn)
            except Exception as exc:
                if isinstance(exc, _UNREACHABLE) and not out_of_descriptors(exc):
                    self.outages += 1
                raise _explain(exc) from exc

        try:
            if not retry:
                return await once()
            return await self._retrying(once)
        except EngineError as exc:
            if not isinstance(exc, ContainerGoneError):
                self.errors += 1
            raise

    async def _retrying(self, once: Callable[[], Coroutine[Any, Any, T]]) -> T:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(self._retry_attempts) | stop_after_delay(self._retry_budget_s),
            wait=wait_exponential(multiplier=0.2, max=5),
            reraise=True,
            before_sleep=self._count_retry,
        ):
            with attempt:
                return await once()
        raise AssertionError("unreachable")  # pragma: no cover

    def _count_retry(self, state: Any) -> None:
        self.retries += 1
        log.warning("docker call failed, retrying", extra={"attempt": state.attempt_number})

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, int]:
        return {"errors": self.errors, "retries": self.retries}

    async def ping(self) -> None:
        await self._call(lambda: self._api().ping(), retry=False)

    async def runtimes(self, *, retry: bool = True) -> dict[str, list[str]]:
        """The OCI runtimes the engine offers (`docker info` "Runtimes"), each with its runtimeArgs."""
        info = await self._call(lambda: self._api().info(), retry=retry)
        found = info.get("Runtimes") or {}
        return {str(name): [str(a) for a in (rt or {}).get("runtimeArgs") or []] for name, rt in found.items()}

    async def create(self, spec: ContainerSpec) -> str:
        """Idempotent by container name: a retried create that had in fact succeeded returns the same id."""

        def _create() -> str:
            api = self._api()
            host_config = api.create_host_config(**spec.host)
            try:
                created = api.create_container(name=spec.name, host_config=host_config, **spec.create)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                return str(api.inspect_container(spec.name)["Id"])
            return str(created["Id"])

        return await self._call(_create)

    async def attach(self, container_id: str) -> AttachedStream:
        sock = await self._call(
            lambda: self._api().attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        )
        return AttachedStream(sock)

    async def start(self, container_id: str) -> None:
        await self._call(lambda: self._api().start(container_id))

    async def wait(self, container_id: str, timeout_s: float) -> int:
        result = await self._call(lambda: self._api().wait(container_id, timeout=timeout_s))
        return int(result["StatusCode"])

    async def stop(self, container_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after `grace_s` (Docker's stop semantics)."""
        try:
            await self._call(lambda: self._api().stop(container_id, timeout=int(grace_s)))
        except ContainerGoneError:
            return

    async def remove(self, container_id: str) -> None:
        def _remove() -> None:
            try:
                self._api().remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "already in progress" in str(exc.explanation):
                    return
                raise

        await self._call(_remove)

    async def image_id(self, image: str) -> str:
        info = await self._call(lambda: self._api().inspect_image(image))
        return str(info["Id"])

    async def list_managed(self, controller_id: str) -> list[ManagedContainer]:
        rows = await self._call(lambda: self._api().containers(all=True, filters=dict(managed_filters(controller_id))))
        found = []
        for row in rows:
            labels = row.get("Labels") or {}
            names = row.get("Names") or [""]
            found.append(
                ManagedContainer(
                    id=row["Id"],
                    name=names[0].lstrip("/"),
                    job_id=labels.get(LABEL_JOB, ""),
                    attempt=int(labels.get(LABEL_ATTEMPT, "1") or 1),
                    status=row.get("State", ""),
                    pool=labels.get(LABEL_POOL, ""),
                )
            )
        return found
