"""What the scheduler and the job runner need from a container engine: one interface, the way garm puts every
provider behind one. `DockerEngine` implements it against the Docker Engine API; tests use an in-memory fake
(tests/fakes.py). Errors are `EngineError`s whose message a user can act on; `transient` ones are worth a retry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from orchestrator.runtime.container_spec import ContainerSpec


class EngineError(Exception):
    def __init__(self, message: str, *, transient: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class EngineLostError(EngineError):
    """The engine holding the job's container stopped answering: what became of the container is unknown (it is
    removed once the engine is back). The job may be retried elsewhere where its pool allows."""


class ContainerGoneError(EngineError):
    """The container no longer exists (removed out from under us, or never created)."""


@dataclass(frozen=True)
class ManagedContainer:
    """A container carrying this controller's labels, as listed by the engine."""

    id: str
    name: str
    job_id: str
    attempt: int
    status: str  # the engine's word: "created", "running", "exited", ...
    pool: str = ""


class OutputStream(Protocol):
    """A container's attached stdin and merged stdout/stderr."""

    def send(self, payload: bytes) -> None:
        """Writes to the container's stdin (blocking; the runner calls it off the event loop)."""
        ...

    def pump(self, on_output: Callable[[bytes], None], on_side: Callable[[bytes], None] | None = None) -> None:
        """Reads until the container closes its output, handing each chunk of stdout to `on_output` and of stderr
        (the side channel; runtime/side_channel.py) to `on_side`, or to `on_output` without one (blocking: runs on a
        thread of its own). Raises OSError when the stream breaks."""
        ...

    def alive(self) -> bool:
        """False once the container closed its output (it died): a warm container is checked before it is claimed.
        Never blocks."""
        ...

    def close(self) -> None: ...


class ContainerRuntime(Protocol):
    @property
    def outages(self) -> int:
        """Bumped whenever the engine could not be reached: a job that saw it change while running cannot trust
        its exit code (a restarting engine kills containers)."""
        ...

    def outages_at(self, container_id: str) -> int:
        """`outages` of the engine holding `container_id` (with several engines, another one's outage says nothing
        about this container)."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters for the metrics: calls that failed for good (`errors`) and retries."""
        ...

    async def ping(self) -> None: ...

    async def runtimes(self, *, retry: bool = True) -> dict[str, list[str]]:
        """The OCI runtimes offered, each with its arguments (e.g. runsc for gVisor)."""
        ...

    async def image_id(self, image: str) -> str: ...

    async def create(self, spec: ContainerSpec) -> str:
        """Creates (idempotently, by the spec's name) and returns the container id."""
        ...

    async def attach(self, container_id: str) -> OutputStream: ...

    async def start(self, container_id: str) -> None: ...

    async def wait(self, container_id: str, timeout_s: float) -> int:
        """The exit code once the container has stopped; EngineError (transient) if it still runs after
        `timeout_s`."""
        ...

    async def stop(self, container_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; a container already gone is no error."""
        ...

    async def remove(self, container_id: str) -> None:
        """Removes it, running or not, with its anonymous volumes; a container already gone is no error."""
        ...

    async def list_managed(self, controller_id: str) -> list[ManagedContainer]: ...

    async def close(self) -> None: ...
