"""In-memory stand-ins for the controller's adapters, so the scheduler, the job runner and the intake can be
unit-tested without Docker or Vault: a ContainerRuntime whose containers run scripted programs, a credentials
backend, and a JobEvents sink that remembers what it was told."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.credentials.base import JobCredentials, SecretFile
from orchestrator.jobs.states import Job
from orchestrator.runtime.container_spec import LABEL_ATTEMPT, LABEL_CONTROLLER, LABEL_JOB, LABEL_POOL, ContainerSpec
from orchestrator.runtime.protocol import ContainerGoneError, EngineError, ManagedContainer


@dataclass
class Program:
    """What a fake container does once started: writes `output` (bytes are written, numbers are pauses in
    seconds), then exits with `exit_code`; with `exit_code=None` it runs until stopped. A stopped program exits
    143 (SIGTERM), or 137 after the grace period if it `ignores_sigterm`."""

    output: list[bytes | float] = field(default_factory=list)
    exit_code: int | None = 0
    ignores_sigterm: bool = False


class Side(bytes):
    """Program output written to the container's stderr: the side channel (runtime/side_channel.py)."""


def runs(*output: bytes | float, exit_code: int | None = 0, ignores_sigterm: bool = False) -> Program:
    return Program(list(output), exit_code, ignores_sigterm)


class FakeContainer:
    def __init__(self, container_id: str, spec: ContainerSpec, program: Program) -> None:
        self.id = container_id
        self.spec = spec
        self.program = program
        self.status = "created"
        self.exit_code: int | None = None
        self.stdin = bytearray()
        self.started = threading.Event()
        self.exited = threading.Event()
        self.stopping = threading.Event()

    @property
    def labels(self) -> dict[str, str]:
        return self.spec.create["labels"]

    def exit(self, code: int) -> None:
        if not self.exited.is_set():
            self.exit_code, self.status = code, "exited"
            self.exited.set()


class FakeStream:
    """The container's attached stdin and output, played from its program on the runner's reader thread."""

    def __init__(self, container: FakeContainer) -> None:
        self.container = container
        self.closed = threading.Event()

    def send(self, payload: bytes) -> None:
        if self.container.exited.is_set() or self.closed.is_set():
            raise BrokenPipeError("the container is gone")
        self.container.stdin += payload

    def pump(self, on_output: Callable[[bytes], None], on_side: Callable[[bytes], None] | None = None) -> None:
        c = self.container
        c.started.wait()
        for item in c.program.output:
            if self.closed.is_set() or c.stopping.is_set():
                break
            if isinstance(item, Side):
                (on_side or on_output)(bytes(item))
            elif isinstance(item, bytes):
                on_output(item)
            elif c.stopping.wait(item) or self.closed.is_set():
                break
        if c.program.exit_code is not None and not c.stopping.is_set():
            c.exit(c.program.exit_code)
            return
        while not (c.exited.is_set() or self.closed.is_set()):  # runs until stopped; its output ends with it
            c.exited.wait(0.01)

    def alive(self) -> bool:
        return not (self.closed.is_set() or self.container.exited.is_set())

    def close(self) -> None:
        self.closed.set()


class FakeRuntime:
    """A ContainerRuntime (orchestrator/runtime/protocol.py) in memory. `program` decides what each created
    container runs; `fail` queues errors that the named method raises on its next calls; `calls` records every
    call in order, `journal` (shared with other fakes) what was done, for ordering assertions."""

    def __init__(
        self,
        program: Callable[[ContainerSpec], Program] | None = None,
        *,
        journal: list[str] | None = None,
        runtimes: dict[str, list[str]] | None = None,
        id_prefix: str = "c",  # container ids are unique across engines, as Docker's are
    ) -> None:
        self.id_prefix = id_prefix
        self.program = program or (lambda spec: runs(b"hello\n"))
        self.containers: dict[str, FakeContainer] = {}
        self.removed: list[str] = []
        self.removed_stdin: dict[str, bytes] = {}  # what each removed container was sent
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, list[EngineError]] = {}
        self.journal = journal if journal is not None else []
        self.offered = runtimes or {"runc": []}
        self.images = {"runner-orchestrator/test-runner:local": "sha256:" + "ab" * 32}
        self.outages = 0
        self.errors = 0
        self.retries = 0
        self._ids = itertools.count(1)

    # -- test helpers -------------------------------------------------------------------------------------------

    def by_job(self, job_id: str) -> FakeContainer:
        (found,) = [c for c in self.containers.values() if c.labels.get(LABEL_JOB) == job_id]
        return found

    def leftover(self, controller_id: str, job_id: str, *, status: str = "running", attempt: int = 1) -> str:
        """A container a previous controller process left behind."""
        cid = f"left{next(self._ids):04d}"
        spec = ContainerSpec(
            name=f"orch-{controller_id}-{job_id}-a{attempt}",
            create={"labels": {LABEL_CONTROLLER: controller_id, LABEL_JOB: job_id, LABEL_ATTEMPT: str(attempt)}},  # type: ignore[typeddict-item]
            host={},
        )
        container = FakeContainer(cid, spec, runs(exit_code=None))
        container.status = status
        self.containers[cid] = container
        return cid

    def outages_at(self, container_id: str) -> int:
        return self.outages

    def _enter(self, method: str, target: str) -> None:
        self.calls.append((method, target))
        queued = self.fail.get(method)
        if queued:
            exc = queued.pop(0)
            if isinstance(exc, EngineError) and "unreachable" in str(exc):
                self.outages += 1
            if not isinstance(exc, ContainerGoneError):
                self.errors += 1
            raise exc

    def _get(self, container_id: str) -> FakeContainer:
        container = self.containers.get(container_id)
        if container is None:
            raise ContainerGoneError(f"not found: no such container: {container_id}", status=404)
        return container

    # -- ContainerRuntime ---------------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {"errors": self.errors, "retries": self.retries}

    async def ping(self) -> None:
        self._enter("ping", "")

    async def runtimes(self, *, retry: bool = True) -> dict[str, list[str]]:
        self._enter("runtimes", "")
        return dict(self.offered)

    async def image_id(self, image: str) -> str:
        self._enter("image_id", image)
        if image not in self.images:
            raise EngineError(f"image not found on the Docker host: {image}", status=404)
        return self.images[image]

    async def create(self, spec: ContainerSpec) -> str:
        self._enter("create", spec.name)
        for container in self.containers.values():
            if container.spec.name == spec.name:
                return container.id  # idempotent by name, as the Engine API's 409 makes it
        cid = f"{self.id_prefix}{next(self._ids):04d}"
        self.containers[cid] = FakeContainer(cid, spec, self.program(spec))
        return cid

    async def attach(self, container_id: str) -> FakeStream:
        self._enter("attach", container_id)
        return FakeStream(self._get(container_id))

    async def start(self, container_id: str) -> None:
        self._enter("start", container_id)
        container = self._get(container_id)
        container.status = "running"
        container.started.set()

    async def wait(self, container_id: str, timeout_s: float) -> int:
        self._enter("wait", container_id)
        container = self._get(container_id)
        if not await asyncio.to_thread(container.exited.wait, timeout_s):
            raise EngineError("Docker engine unreachable: ReadTimeout", transient=True)
        assert container.exit_code is not None
        return container.exit_code

    async def stop(self, container_id: str, grace_s: float) -> None:
        self._enter("stop", container_id)
        container = self.containers.get(container_id)
        if container is None or container.exited.is_set():
            return
        container.stopping.set()
        if container.program.ignores_sigterm:
            await asyncio.sleep(grace_s)
            container.exit(137)
        else:
            container.exit(143)

    async def remove(self, container_id: str) -> None:
        self._enter("remove", container_id)
        container = self.containers.pop(container_id, None)
        if container is not None:
            container.stopping.set()
            container.exit(137)
            self.removed.append(container_id)
            self.removed_stdin[container_id] = bytes(container.stdin)
            self.journal.append("container removed")

    async def list_managed(self, controller_id: str) -> list[ManagedContainer]:
        self._enter("list_managed", controller_id)
        return [
            ManagedContainer(
                id=c.id,
                name=c.spec.name,
                job_id=c.labels.get(LABEL_JOB, ""),
                attempt=int(c.labels.get(LABEL_ATTEMPT, "1")),
                status=c.status,
                pool=c.labels.get(LABEL_POOL, ""),
            )
            for c in self.containers.values()
            if c.labels.get(LABEL_CONTROLLER) == controller_id
        ]

    async def close(self) -> None:
        return None


class FakeCredentials:
    """A CredentialsBackend handing each job `secrets`; records what it issued and revoked."""

    def __init__(self, secrets: dict[str, str] | None = None, *, journal: list[str] | None = None) -> None:
        self.secrets = secrets or {}
        self.journal = journal if journal is not None else []
        self.issued: list[str] = []
        self.released: list[str] = []
        self.revoked_accessors: list[str] = []
        self.can_revoke = True
        self.fail_acquire: Exception | None = None

    async def acquire(self, job: Job) -> JobCredentials:
        if self.fail_acquire is not None:
            raise self.fail_acquire
        self.issued.append(job.id)
        values = [SecretFile(name, value) for name, value in self.secrets.items()]
        return JobCredentials(secrets=values, accessor=f"acc-{job.id}", job_id=job.id)

    async def release(self, credentials: JobCredentials) -> None:
        self.released.append(credentials.job_id or "")
        self.journal.append("token revoked")

    async def revoke_accessor(self, accessor: str) -> bool:
        if not self.can_revoke:
            return False
        self.revoked_accessors.append(accessor)
        return True

    def stats(self) -> dict[str, int]:
        return {"errors": 0, "retries": 0}

    async def maintain(self) -> None:
        return None


class RecordingEvents:
    """A JobEvents sink keeping every state change (job id, state) and timing it was told about."""

    def __init__(self, *, journal: list[str] | None = None) -> None:
        self.changes: list[tuple[str, str]] = []
        self.started_jobs: list[str] = []
        self.created_jobs: list[str] = []
        self.teardowns: list[tuple[str, float]] = []
        self.journal = journal if journal is not None else []

    def state_changed(self, job: Job) -> None:
        self.changes.append((job.id, job.state.value))
        if job.state.final:
            self.journal.append(f"final state {job.state.value}")

    def created(self, job: Job) -> None:
        self.created_jobs.append(job.id)

    def started(self, job: Job) -> None:
        self.started_jobs.append(job.id)

    def torn_down(self, job: Job, seconds: float) -> None:
        self.teardowns.append((job.id, seconds))

    def states(self, job_id: str) -> list[str]:
        return [state for jid, state in self.changes if jid == job_id]


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)
