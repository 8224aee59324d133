"""One job's life in one fresh container: create → attach → start → stream → exit/timeout/cancel → remove.

The container is removed and credentials released before the job's final state is stored, so anyone who sees a
final state can rely on nothing of the job being left."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.config import Config, read_pool_secret
from orchestrator.credentials.base import CredentialsBackend, CredentialsError, JobCredentials, SecretFile
from orchestrator.evidence.attestation import JobFacts, sha256_file
from orchestrator.evidence.attestation_store import AttestationStore
from orchestrator.evidence.canonical import canonical_json
from orchestrator.forges.protocol import ForgeError, RunnerRegistrar
from orchestrator.jobs.events import JobEvents
from orchestrator.jobs.states import Job, JobState, exit_reason, state_for_exit, transition
from orchestrator.logs.redact import SecretSet, SecretTooShortError, StreamRedactor
from orchestrator.logs.store import JobLog, LogStore
from orchestrator.logs.timestamps import LineTimestamper
from orchestrator.runtime.container_spec import WorkspaceIO, build_container_spec, job_env, job_script, stdin_payload
from orchestrator.runtime.protocol import ContainerRuntime, EngineError, EngineLostError, OutputStream
from orchestrator.runtime.warm_pool import WarmPool
from orchestrator.runtime.workspace import Workspace, WorkspaceError, Workspaces
from orchestrator.store.base import JobStore

log = logging.getLogger(__name__)

_REMOVE_ATTEMPTS_S = 120.0


@dataclass
class _Attempt:
    """What one run has acquired so far, so that teardown releases exactly that."""

    job: Job
    joblog: JobLog
    redactor: StreamRedactor | None = None
    creds: JobCredentials | None = None
    registration: JobCredentials | None = None  # a forge runner's one-time registration
    container_id: str | None = None
    stream: OutputStream | None = None
    stamper: LineTimestamper | None = None
    image_id: str = ""
    pump: _OutputPump | None = None
    workspace: Workspace | None = None  # what goes into and comes out of /workspace (checkout, artifacts, cache)
    sender: asyncio.Future[None] | None = None  # streams the workspace archive to the container's stdin

    def store(self, data: bytes, now: float) -> None:
        """Only redacted bytes come here; timestamps go on after redaction so they cannot split a secret."""
        self.joblog.append(self.stamper.stamp(data, now) if self.stamper else data)


class JobLostError(Exception):
    """Another writer moved the job (e.g. reconciliation in a second controller); this runner must stop."""


class PoolAtLimitError(Exception):
    """The job's pool already runs `max_concurrent` jobs counted over every controller sharing the store: the job
    was not started and is still queued here (the scheduler queues it again and retries)."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"pool {job.pool!r} is at its limit across controllers")
        self.job = job


@dataclass
class RunControl:
    """Handles the scheduler keeps to steer a running job."""

    cancel: asyncio.Event
    cancel_reason: str = "cancelled by operator"


class JobRunner:
    """Runs one job at a time per call to `run`, on whatever ContainerRuntime it is given. `credentials` is None
    when no backend is configured (jobs asking for secrets are then refused at intake); `attestations` None
    when no key is configured to sign them."""

    def __init__(
        self,
        config: Config,
        store: JobStore,
        engine: ContainerRuntime,
        logs: LogStore,
        events: JobEvents,
        *,
        credentials: CredentialsBackend | None = None,
        registrar: RunnerRegistrar | None = None,
        attestations: AttestationStore | None = None,
        workspaces: Workspaces | None = None,
        warm: WarmPool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registrar = registrar
        self.workspaces = workspaces
        self.warm = warm
        self.config = config
        self.store = store
        self.engine = engine
        self.logs = logs
        self.events = events
        self.credentials = credentials
        self.attestations = attestations
        self.clock = clock
        self.on_secrets: Callable[[Job], None] | None = None  # a job got its secrets (the access alerts count them)

    async def _move(self, job: Job, new: JobState, **fields: object) -> Job:
        moved = transition(job, new, now=self.clock(), **fields)  # type: ignore[arg-type]
        if not await self.store.update(moved, expected=job.state):
            raise JobLostError(job.id)
        self.events.state_changed(moved)
        return moved

    async def _save(self, job: Job, **fields: object) -> Job:
        updated = replace(job, updated_at=self.clock(), **fields)  # type: ignore[arg-type]
        if not await self.store.update(updated, expected=job.state):
            raise JobLostError(job.id)
        return updated

    async def _begin(self, job: Job) -> Job | None:
        """queued -> starting within the pool's limit over all controllers; None if the job is no longer ours."""
        limit = self.config.pools[job.pool].max_concurrent if job.pool in self.config.pools else None
        moved = transition(job, JobState.STARTING, now=self.clock())
        if await self.store.update(moved, expected=job.state, pool_limit=limit):
            self.events.state_changed(moved)
            return moved
        current = await self.store.get(job.id)
        if current is not None and current.state is job.state and current.controller_id == job.controller_id:
            raise PoolAtLimitError(job)
        return None

    async def run(self, job: Job, control: RunControl) -> Job:
        """Runs a queued job to its end. Raises PoolAtLimitError (nothing done) when its pool is full cluster-wide."""
        begun = await self._begin(job)
        if begun is None:
            return job
        job = begun
        try:
            joblog = self.logs.open(job.id)
        except (OSError, ValueError) as exc:
            log.exception("could not open the job's log", extra={"job_id": job.id})
            return await self._move(job, JobState.ERROR, reason=f"log could not be opened: {type(exc).__name__}")
        attempt = _Attempt(
            job=job,
            joblog=joblog,
            stamper=LineTimestamper() if self.config.logs.timestamps else None,
        )
        outcome: tuple[JobState, str | None, int | None] = (JobState.ERROR, "internal error", None)
        try:
            outcome = await self._execute(attempt, control)
        except CredentialsError as exc:
            outcome = (JobState.ERROR, f"credentials: {exc}", None)
        except ForgeError as exc:
            outcome = (JobState.ERROR, f"forge: {exc.message}", None)
        except WorkspaceError as exc:
            outcome = (JobState.ERROR, str(exc), None)
        except EngineLostError as exc:
            retry = self._retries_engine_loss(attempt.job)
            outcome = (JobState.QUEUED if retry else JobState.ERROR, f"docker: {exc}", None)
        except EngineError as exc:
            outcome = (JobState.ERROR, f"docker: {exc}", None)
        except JobLostError:
            outcome = (JobState.ERROR, "job record changed by another controller", None)
        except asyncio.CancelledError:
            outcome = (JobState.ERROR, "controller shutting down", None)
            raise
        except Exception as exc:
            log.exception("job failed unexpectedly", extra={"job_id": job.id})
            outcome = (JobState.ERROR, f"internal error: {type(exc).__name__}", None)
        finally:
            job = await asyncio.shield(self._finish(attempt, *outcome))
        return job

    def _retries_engine_loss(self, job: Job) -> bool:
        """Whether a job whose engine went away runs again (pool engine_loss_retries; never a forge runner's job:
        its one-time registration died with the container)."""
        pool = self.config.pools.get(job.pool)
        return pool is not None and job.spec.runner is None and job.attempt <= pool.engine_loss_retries

    async def _execute(self, at: _Attempt, control: RunControl) -> tuple[JobState, str | None, int | None]:
        cancelled = (JobState.CANCELLED, control.cancel_reason, None)
        if control.cancel.is_set():
            return cancelled
        logs_cfg = self.config.logs
        secrets = SecretSet(min_length=logs_cfg.min_secret_length)
        delivered = await self._pool_secrets(at.job.pool, secrets)
        if at.job.spec.secrets:
            if self.credentials is None:
                raise CredentialsError("the job asks for secrets but no credentials backend is configured")
            at.creds = await self.credentials.acquire(at.job)
            if self.on_secrets is not None:
                self.on_secrets(at.job)
            for secret in at.creds.secrets:
                try:
                    secrets.add(secret.value, name=secret.name)
                except SecretTooShortError as exc:
                    raise CredentialsError(str(exc)) from None
            if at.creds.accessor:
                at.job = await self._save(at.job, credentials_accessor=at.creds.accessor)
            delivered += at.creds.secrets
        if at.job.spec.runner is not None:
            if self.registrar is None:
                raise ForgeError("this controller has no forge configured to register the runner with")
            at.registration = await self.registrar.register(at.job)
            for secret in at.registration.secrets:
                secrets.add(secret.value, name=secret.name)
            delivered += at.registration.secrets
        try:
            # Compiled off the event loop: for a long secret (a runner's registration) it takes ~20 ms.
            at.redactor = await asyncio.to_thread(StreamRedactor, secrets, mask=logs_cfg.mask.encode())
        except ValueError as exc:  # e.g. the configured mask itself contains a secret
            raise CredentialsError(f"log redaction cannot be set up: {exc}") from None
        if self.workspaces is not None:
            # The checkout and the cache to restore are ready before any container exists: a commit the remote
            # does not have fails the job here, with the reason.
            at.workspace = await self.workspaces.prepare(at.job)
        elif at.job.spec.artifacts or at.job.spec.cache:
            raise WorkspaceError("the job asks for artifacts or a cache but this controller keeps none")
        io = at.workspace.io if at.workspace is not None else WorkspaceIO()
        payload = stdin_payload(job_script(at.job.spec.commands, delivered, io, env=job_env(at.job.spec)))
        if not await self._claim_warm(at, payload):
            if control.cancel.is_set():
                return cancelled
            if not await self._start_cold(at, control):
                return cancelled
            assert at.stream is not None
            await asyncio.to_thread(at.stream.send, payload)
        elif control.cancel.is_set():
            return cancelled
        assert at.stream is not None and at.container_id is not None
        # Output is read from here on, while the workspace archive is sent and the state change is stored: the
        # first line never waits, and a container that stops reading its stdin cannot stall the send.
        pump = _OutputPump(at, at.redactor, self.clock)
        if at.workspace is not None:
            at.workspace.open_side(pump.output)  # what is not a section is output like any
            for line in at.workspace.notices:
                pump.store(f"[orchestrator] {line}\n".encode())
        pump.start(at.stream)
        if io.inbound_bytes:
            assert at.workspace is not None
            at.sender = asyncio.ensure_future(asyncio.to_thread(_send_all, at.stream, at.workspace.inbound()))
        at.job = await self._move(at.job, JobState.RUNNING)
        self.events.started(at.job)
        outcome = await self._supervise(at, at.container_id, at.stream, pump, control)
        if at.workspace is not None and outcome[2] is not None:  # it exited: what it handed back is complete
            outcome = await self._collect(at, outcome)
        return outcome

    async def _claim_warm(self, at: _Attempt, payload: bytes) -> bool:
        """Takes a warm container of the job's pool, if one is ready: recorded as the job's container in the store
        *before* the script is sent (reconciliation after a crash must know which container ran which job), then
        the script goes over its stdin. False: none was ready, or the one claimed died before it got the script
        (then it is removed and the job is served cold)."""
        if self.warm is None:
            return False
        warm = self.warm.claim(at.job.pool)
        if warm is None:
            return False
        at.container_id, at.stream, at.image_id = warm.id, warm.stream, warm.image_id
        at.job = await self._save(at.job, container_id=warm.id)
        try:
            await asyncio.to_thread(warm.stream.send, payload)
        except OSError as exc:
            log.warning("a warm container died before its script was sent; serving the job cold",
                        extra={"job_id": at.job.id, "container_id": warm.id[:12], "error": str(exc)})  # fmt: skip
            warm.stream.close()
            await self._remove(at.job.id, warm.id)
            self.warm.released(warm.id)
            at.container_id, at.stream, at.image_id = None, None, ""
            return False
        return True

    async def _start_cold(self, at: _Attempt, control: RunControl) -> bool:
        """A container made for the job: create (its id stored at once), attach, start. False: cancelled meanwhile
        (then it is never started)."""
        pool = self.config.pools[at.job.pool]
        cspec = build_container_spec(
            at.job.spec, pool, controller_id=self.config.controller_id, attempt=at.job.attempt,
            init=self.config.docker.init,
        )  # fmt: skip
        with contextlib.suppress(EngineError):
            at.image_id = await self.engine.image_id(pool.image)
        at.container_id = await self.engine.create(cspec)
        at.job = await self._save(at.job, container_id=at.container_id)
        if control.cancel.is_set():
            return False
        at.stream = await self.engine.attach(at.container_id)
        await self.engine.start(at.container_id)
        return not control.cancel.is_set()

    async def _collect(
        self, at: _Attempt, outcome: tuple[JobState, str | None, int | None]
    ) -> tuple[JobState, str | None, int | None]:
        """Keeps the artifacts and the cache the container wrote to the side channel. Artifacts that cannot be kept
        make the job an error (a deploy must not find a succeeded job without them); a cache is an optimisation."""
        assert at.workspace is not None and at.pump is not None
        at.pump.close_side()
        collected = await asyncio.to_thread(at.workspace.collect, outcome[2] == 0, self.clock())
        for line in collected.notices:
            at.pump.store(f"[orchestrator] {line}\n".encode())
        if collected.error is not None:
            return JobState.ERROR, collected.error, outcome[2]
        return outcome

    async def _pool_secrets(self, pool: str, secrets: SecretSet) -> list[SecretFile]:
        delivered = []
        for name, entry in self.config.pools[pool].secrets.items():
            try:
                value = await asyncio.to_thread(read_pool_secret, entry.file)
                secrets.add(value, name=name)
            except (OSError, UnicodeDecodeError) as exc:
                raise CredentialsError(f"pool secret {name!r} could not be read: {type(exc).__name__}") from None
            except SecretTooShortError as exc:
                raise CredentialsError(str(exc)) from None
            delivered.append(SecretFile(name=name, value=value, deliver=entry.deliver))
        return delivered

    async def _supervise(
        self,
        at: _Attempt,
        container_id: str,
        stream: OutputStream,
        pump: _OutputPump,
        control: RunControl,
    ) -> tuple[JobState, str | None, int | None]:
        job = at.job
        loop = asyncio.get_running_loop()
        pumped = pump.done
        outages_before = self.engine.outages_at(container_id)
        deadline = loop.time() + job.timeout_s
        cancel_wait = asyncio.ensure_future(control.cancel.wait())
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                waiters: set[asyncio.Future[Any]] = {pumped, cancel_wait}
                # No idle flush: bytes the redactor holds back are a possible secret's beginning, so a quiet job's
                # partial last line stays held until later output settles it (or the end masks it).
                done, _ = await asyncio.wait(waiters, timeout=remaining, return_when="FIRST_COMPLETED")
                if cancel_wait in done:
                    await self._stop(container_id, stream, pumped)
                    return JobState.CANCELLED, control.cancel_reason, None
                if pumped in done:
                    exc = pumped.exception()
                    if exc is not None:
                        raise EngineError(f"output stream broke: {type(exc).__name__}: {exc}") from exc
                    code = await self._wait_exit(container_id, deadline)
                    if code is None:
                        break
                    if self.engine.outages_at(container_id) != outages_before:
                        return (
                            JobState.ERROR,
                            f"docker: the engine was unreachable while the job ran; its exit code {code} "
                            "cannot be trusted (a restarting daemon kills containers)",
                            code,
                        )
                    return state_for_exit(code), exit_reason(code), code
            await self._stop(container_id, stream, pumped)
            return JobState.TIMED_OUT, f"timed out after {job.timeout_s} s", None
        finally:
            cancel_wait.cancel()

    async def _wait_exit(self, container_id: str, deadline: float) -> int | None:
        """Exit code once the process is gone; None if it outlives the deadline (it closed its output early)."""
        loop = asyncio.get_running_loop()
        while (remaining := deadline - loop.time()) > 0:
            try:
                return await self.engine.wait(container_id, timeout_s=min(remaining, 5.0) + 0.5)
            except EngineError as exc:
                if not exc.transient or loop.time() >= deadline:
                    raise
        return None

    async def _stop(self, container_id: str, stream: OutputStream, pumped: asyncio.Future[None]) -> None:
        await self.engine.stop(container_id, self.config.docker.stop_grace_s)
        # Output written before the kill is still in flight; give the reader a moment to store it.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(pumped), timeout=5)
        stream.close()

    async def _finish(self, at: _Attempt, final: JobState, reason: str | None, exit_code: int | None) -> Job:
        job = at.job
        if at.stream is not None:
            at.stream.close()
        if at.sender is not None:
            with contextlib.suppress(Exception):  # the stream is closed: a send still going fails now
                await asyncio.wait_for(asyncio.shield(at.sender), timeout=10)
        if at.pump is not None:
            # The reader thread ends once the stream is closed; let it hand over what it holds first.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(at.pump.done), timeout=5)
            at.pump.flush()
        elif at.redactor is not None:
            at.store(at.redactor.flush(), self.clock())
        if final is JobState.ERROR and reason:
            notice = f"\n[orchestrator] job ended in error: {reason}\n".encode()
            at.pump.store(notice) if at.pump is not None else at.store(notice, self.clock())
        if at.container_id is not None:
            began = time.monotonic()
            await self._remove(job.id, at.container_id)
            self.events.torn_down(job, time.monotonic() - began)
            if self.warm is not None:
                self.warm.released(at.container_id)
        if at.creds is not None and self.credentials is not None:
            await self.credentials.release(at.creds)
        if at.registration is not None and self.registrar is not None:
            await self.registrar.unregister(job, at.registration)
        if final is JobState.QUEUED:
            return await self._requeue(at, reason or "interrupted")
        # The log is closed and the attestation signed before the final state is stored, so whoever sees the
        # final state can fetch both.
        ended = transition(job, final, now=self.clock(), reason=reason, exit_code=exit_code)
        await self.logs.close(job.id)
        try:
            stored = await self._conclude(job, ended, at.image_id, at.workspace)
        finally:
            if at.workspace is not None:
                await asyncio.to_thread(at.workspace.cleanup)
        if stored is None:
            log.warning("job moved by another writer before it could finish", extra={"job_id": job.id})
            return job
        return stored

    async def _requeue(self, at: _Attempt, why: str) -> Job:
        """The attempt was lost with its engine and the pool retries: the job is queued again (attempt + 1; the
        scheduler runs it where there is room), its log says so and goes on with the next attempt's output."""
        job = at.job
        requeued = transition(job, JobState.QUEUED, now=self.clock(), reason=f"re-queued: {why}")
        notice = f"\n[orchestrator] attempt {job.attempt} lost ({why}); queued again as attempt {requeued.attempt}\n"
        at.pump.store(notice.encode()) if at.pump is not None else at.store(notice.encode(), self.clock())
        await self.logs.close(job.id)
        self.logs.forget(job.id)  # followers wait (polling) for the next attempt's output
        if at.workspace is not None:
            await asyncio.to_thread(at.workspace.cleanup)
        if not await self.store.update(requeued, expected=job.state):
            log.warning("job moved by another writer before it could be queued again", extra={"job_id": job.id})
            return job
        self.events.state_changed(requeued)
        log.warning("job queued again: its engine was lost", extra={"job_id": job.id, "attempt": requeued.attempt})
        return requeued

    async def _conclude(self, job: Job, ended: Job, image_id: str, workspace: Workspace | None = None) -> Job | None:
        """Once the job's log is closed: the attestation is signed, then the final state stored, so whoever sees
        the final state can fetch both. None when another writer moved the job first."""
        try:
            await self.attest(ended, image_id, workspace)
            if await self.store.update(ended, expected=job.state):
                self.events.state_changed(ended)
                return ended
            return None
        finally:
            self.logs.forget(job.id)  # its followers end now, seeing the final state

    async def end_interrupted(self, job: Job, final: JobState, reason: str) -> Job | None:
        """Ends a job that a previous controller process left starting or running, once reconciliation has removed
        its container: its log says why, its attestation is signed, then the final state is stored -- the order
        of a job that ends under this runner. None when another writer moved the job first."""
        ended = transition(job, final, now=self.clock(), reason=reason)
        try:
            self.logs.open(job.id).append(f"\n[orchestrator] job ended ({final.value}): {reason}\n".encode())
            await self.logs.close(job.id)
        except (OSError, ValueError) as exc:
            log.error("could not write to the job's log", extra={"job_id": job.id, "error": type(exc).__name__})
        return await self._conclude(job, ended, "")

    async def attest(self, job: Job, image_id: str = "", workspace: Workspace | None = None) -> None:
        """Signs the job's attestation. `image_id` is empty when the job ended before its image was resolved (or
        in an earlier controller process): then the image's name is all that is attested."""
        if self.attestations is None:
            return
        pool = self.config.pools.get(job.pool)  # None: a job of a pool removed from the config since
        try:
            log_sha256 = await asyncio.to_thread(sha256_file, self.logs.path(job.id))
            facts = JobFacts(
                job_id=job.id,
                repository=job.spec.repository,
                ref=job.spec.ref,
                sha=job.spec.sha,
                pool=job.pool,
                commands=list(job.spec.commands),
                env=dict(job.spec.env),
                secrets=[{"name": s.name, "path": s.path} for s in job.spec.secrets],
                spec_json=canonical_json(job.spec.model_dump(mode="json")),
                image=pool.image if pool is not None else "",
                image_id=image_id,
                controller_id=self.config.controller_id,
                started_at=job.started_at,
                finished_at=job.finished_at,
                state=job.state.value,
                exit_code=job.exit_code,
                reason=job.reason,
                log_sha256=log_sha256,
                pool_config_digest=hashlib.sha256(pool.model_dump_json().encode()).hexdigest() if pool else None,
                source=job.source,
                approval=job.approval.to_json() if job.approval is not None else None,
                **(workspace.facts() if workspace is not None else {}),
            )
            await self.attestations.attest(facts)
        except Exception:
            log.exception("could not sign the job's attestation", extra={"job_id": job.id})

    async def _remove(self, job_id: str, container_id: str) -> None:
        """Removal is retried well past the normal budget: a container left behind is the failure this
        product exists to prevent. If it still fails, start-up reconciliation removes it later."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _REMOVE_ATTEMPTS_S
        while True:
            try:
                await self.engine.remove(container_id)
                return
            except EngineError as exc:
                if loop.time() >= give_up:
                    log.error(
                        "could not remove container; reconciliation will retry",
                        extra={"job_id": job_id, "container_id": container_id, "error": str(exc)},
                    )
                    return
                await asyncio.sleep(1.0)


class _OutputPump:
    """Reads the container's output on its own thread, redacts it and stores it there (no event-loop round trip
    per chunk). Bytes the redactor holds back are never flushed on a pause: they could be a secret's beginning.
    The lock keeps the redactor and the log single-writer between that thread and the event loop's final flush
    and notices."""

    def __init__(self, at: _Attempt, redactor: StreamRedactor, clock: Callable[[], float]) -> None:
        self._at = at
        self._redactor = redactor
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self.done: asyncio.Future[None] = self._loop.create_future()
        at.pump = self

    def output(self, chunk: bytes) -> None:
        """Job output: redacted, then stored."""
        with self._lock:
            self._at.store(self._redactor.feed(chunk), self._clock())

    def _on_side(self, chunk: bytes) -> None:
        side = self._at.workspace.side if self._at.workspace is not None else None
        if side is None:
            self.output(chunk)
        else:
            side.feed(chunk)  # what is not a section comes back through output()

    def close_side(self) -> None:
        side = self._at.workspace.side if self._at.workspace is not None else None
        if side is not None:
            side.close()

    def flush(self) -> None:
        with self._lock:
            self._at.store(self._redactor.flush(), self._clock())

    def store(self, data: bytes) -> None:
        with self._lock:
            self._at.store(data, self._clock())

    def start(self, stream: OutputStream) -> None:
        loop, done = self._loop, self.done

        def run() -> None:
            try:
                stream.pump(self.output, self._on_side)
            except BaseException as exc:
                loop.call_soon_threadsafe(_set_exception, done, exc)
            else:
                loop.call_soon_threadsafe(_set_result, done)

        threading.Thread(target=run, name=f"attach-{self._at.job.id}", daemon=True).start()


def _send_all(stream: OutputStream, chunks: Iterable[bytes]) -> None:
    """The workspace archive to the container's stdin, after the script (on a thread: blocking sends)."""
    for chunk in chunks:
        stream.send(chunk)


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _set_exception(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
