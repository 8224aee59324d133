"""Single-use forge runners: a runner job's registration at the forge, its supervision and reconciliation.

A runner is a job (jobs/): its container, queue place, timeout, cancel, logs, audit records and crash recovery are
those of any job. What this module adds:

* `ForgeRunners.register` / `unregister` (the job runner's RunnerRegistrar): a one-time registration right before
  the container is created, delivered to the agent as a file over stdin; deleted after, if the forge still has it.
* `ForgeRunners.supervise`: a runner that took no job within the pool's `bootstrap_timeout_s` is removed; one whose
  forge job completed but whose agent did not exit within `completed_grace_s` is removed.
* `ForgeRunners.reconcile`: against each forge's runner list -- registrations with our name prefix and no live job
  are deleted; live runner jobs whose registration vanished before they took a job are removed -- and against its
  queued jobs: a queued job no webhook told us about (a lost delivery, the controller was down) gets a runner.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from orchestrator.config import Config
from orchestrator.credentials.base import JobCredentials, SecretFile
from orchestrator.evidence.auditor import Auditor
from orchestrator.forges.matching import Matched, RunnerPool, choose_pool
from orchestrator.forges.protocol import ForgeAPI, ForgeError, QueuedJob, RunnerScope
from orchestrator.forges.records import RunnerRecord
from orchestrator.jobs.spec import JobSpec, RunnerRequest
from orchestrator.jobs.states import Job, JobState, new_job
from orchestrator.platform.metrics import Metrics
from orchestrator.store.base import JobStore

log = logging.getLogger(__name__)

# Runner jobs' spec fields that a JIT runner cannot promise: it takes any queued job its labels fit, so the ref and
# commit of the job whose webhook asked for it are not the ones it may run (see RunnerRecord.ran_*).
ANY_REF = "*"
ANY_SHA = "0000000"


def runner_name(controller_id: str, job_id: str, attempt: int = 1) -> str:
    """The name registered at the forge: our prefix marks what reconciliation may delete."""
    name = f"{controller_id}-{job_id}"
    return name if attempt == 1 else f"{name}-{attempt}"


def runner_job_id(source: str, forge_job_id: int, n: int = 1) -> str:
    """One runner request per forge job (a redelivered `queued` is a duplicate); n > 1 when reconciliation finds the
    forge job still queued after its earlier runners ended."""
    return f"{source}-{forge_job_id}" if n == 1 else f"{source}-{forge_job_id}-{n}"


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def pools_of(config: Config) -> list[RunnerPool]:
    return [
        RunnerPool.of(name, pool.runner.source, pool.runner.labels, pool.runner.repositories, pool.runner.organizations)
        for name, pool in config.pools.items()
        if pool.runner is not None
    ]


@dataclass(frozen=True)
class _Handle:
    scope: RunnerScope
    runner_id: int
    source: str


Admit = Callable[[Job], Awaitable[tuple[Job, bool]]]
Cancel = Callable[[str, str], Awaitable[object]]


class ForgeRunners:
    def __init__(
        self,
        config: Config,
        store: JobStore,
        forges: dict[str, ForgeAPI],
        auditor: Auditor,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.config = config
        self.store = store
        self.forges = forges
        self.auditor = auditor
        self.clock = clock
        self.pools = pools_of(config)
        self.errors = 0
        self.registered = 0
        self.last_counts: dict[str, dict[str, int]] = {}
        self.last_waiting: dict[str, int] = {}  # per pool: runners not yet on a job, as supervise last saw them
        self._cancelling: dict[str, asyncio.Task[None]] = {}
        self.reconciled = 0  # passes done, all forges

    # -- requests --------------------------------------------------------------------------------------------

    def build_job(
        self, source: str, pool: str, *, repository: str, owner: str, installation_id: int | None, trigger: int,
        run_id: int, job_id: str, now: float,
    ) -> tuple[Job, RunnerRecord]:  # fmt: skip
        """The runner job a forge job asks for, and its record (not stored yet)."""
        runner = self.config.pools[pool].runner
        assert runner is not None
        forge = self.config.sources[source].forge
        assert forge is not None
        scope_name = repository if runner.scope == "repo" else owner
        request = RunnerRequest(
            source=source,
            scope_kind=runner.scope,
            scope_name=scope_name,
            installation_id=forge.installation_id or installation_id,
            labels=runner.labels,
            runner_group_id=runner.runner_group_id,
            trigger_job_id=trigger,
            trigger_run_id=run_id,
        )
        spec = JobSpec(
            id=job_id,
            pool=pool,
            repository=repository if runner.scope == "repo" else owner,
            ref=ANY_REF,
            sha=ANY_SHA,
            commands=[f"exec {runner.command}"],
            runner=request,
        )
        timeout = self.config.pools[pool].default_timeout_s
        job = new_job(spec, source=source, controller_id=self.config.controller_id, timeout_s=timeout, now=now)
        record = RunnerRecord(
            job_id=job_id,
            source=source,
            name=runner_name(self.config.controller_id, job_id),
            scope=f"{runner.scope}:{scope_name}",
            trigger_job_id=trigger,
            created_at=now,
        )
        return job, record

    async def request(self, job: Job, record: RunnerRecord, admit: Admit) -> tuple[Job, bool]:
        """Stores the runner's record, then admits its job (durably stored, then queued)."""
        await self.store.create_runner(record)
        return await admit(job)

    # -- RunnerRegistrar ---------------------------------------------------------------------------------------

    async def register(self, job: Job) -> JobCredentials:
        request = job.spec.runner
        if request is None:
            raise ForgeError(f"job {job.id} is not a runner job")
        forge = self.forges.get(request.source)
        if forge is None:
            raise ForgeError(f"source {request.source!r} has no forge configured")
        scope = RunnerScope(request.scope_kind, request.scope_name, request.installation_id)
        try:
            scope = await forge.resolve(scope)  # a warm runner came with no webhook naming its installation
        except ForgeError:
            self.errors += 1
            raise
        name = runner_name(self.config.controller_id, job.id, job.attempt)
        record = await self.store.get_runner(job.id)
        if record is None:  # stored with the job normally; a crash between the two leaves only the job
            record, _ = await self.store.create_runner(
                RunnerRecord(job.id, request.source, name, f"{scope.kind}:{scope.name}", request.trigger_job_id,
                             self.clock())
            )  # fmt: skip
        try:
            registration = await forge.register(
                scope, name=name, labels=request.labels, runner_group_id=request.runner_group_id
            )
        except ForgeError as exc:
            self.errors += 1
            self.auditor.runner("registration_failed", job.id, "error", {"scope": str(scope), "error": exc.message})
            raise
        self.registered += 1
        await self.store.update_runner(job.id, registration_id=registration.runner_id)
        self.auditor.runner(
            "registered", job.id, "ok", {"name": name, "scope": str(scope), "runner_id": registration.runner_id}
        )
        log.info(
            "runner registered",
            extra={"job_id": job.id, "runner": name, "scope": str(scope), "runner_id": registration.runner_id},
        )
        secret = SecretFile(name=registration.file_name, value=registration.credential, deliver="file")
        return JobCredentials(
            secrets=[secret], job_id=job.id, handle=_Handle(scope, registration.runner_id, request.source)
        )

    async def unregister(self, job: Job, registration: JobCredentials) -> None:
        handle = registration.handle
        if not isinstance(handle, _Handle):
            return
        await self._delete(handle.source, handle.scope, handle.runner_id, job.id, why="job ended")

    async def _delete(self, source: str, scope: RunnerScope, runner_id: int, job_id: str | None, *, why: str) -> None:
        forge = self.forges.get(source)
        if forge is None:
            return
        try:
            existed = await forge.delete_runner(scope, runner_id)
        except ForgeError as exc:
            if exc.status == 422:  # still busy at the forge (its job just ended): it deletes a used JIT runner itself
                log.info(
                    "runner registration still busy at the forge; reconciliation deletes it if it stays",
                    extra={"job_id": job_id, "runner_id": runner_id, "scope": str(scope)},
                )
                return
            self.errors += 1
            log.error(
                "could not delete a runner registration; reconciliation will retry",
                extra={"job_id": job_id, "runner_id": runner_id, "scope": str(scope), "error": exc.message},
            )
            return
        except Exception as exc:  # never raise into the job's teardown
            self.errors += 1
            log.error("runner deletion failed", extra={"job_id": job_id, "error": type(exc).__name__})
            return
        outcome = "deleted" if existed else "already_gone"
        self.auditor.runner("deleted", job_id, outcome, {"runner_id": runner_id, "scope": str(scope), "why": why})

    # -- what the forge tells ----------------------------------------------------------------------------------

    async def took_job(self, name: str, *, forge_job_id: int, job_name: str, repository: str) -> RunnerRecord | None:
        """An `in_progress` naming one of our runners: which forge job it actually runs."""
        record = await self.store.runner_by_name(name)
        if record is None:
            return None
        updated = await self.store.update_runner(
            record.job_id, ran_job_id=forge_job_id, ran_job_name=job_name, ran_repository=repository,
            online_at=self.clock(),
        )  # fmt: skip
        if record.online_at is None and self.metrics is not None:
            job = await self.store.get(record.job_id)
            if job is not None:
                self.metrics.runner_online.labels(job.pool).observe(max(0.0, self.clock() - record.created_at))
        details = {"runner": name, "forge_job_id": forge_job_id, "trigger_job_id": record.trigger_job_id}
        if forge_job_id != record.trigger_job_id:
            details["note"] = "took another queued job than the one that asked for it"
        self.auditor.runner("took_job", record.job_id, "ok", details)
        return updated

    async def job_completed(self, name: str, *, forge_job_id: int, conclusion: str | None) -> RunnerRecord | None:
        """A `completed` naming one of our runners: supervise() removes its container if the agent does not exit."""
        record = await self.store.runner_by_name(name)
        if record is None:
            return None
        fields: dict[str, object] = {"completed_at": self.clock(), "conclusion": conclusion or "unknown"}
        if record.ran_job_id is None:
            fields["ran_job_id"] = forge_job_id
        updated = await self.store.update_runner(record.job_id, **fields)
        self.auditor.runner("job_completed", record.job_id, conclusion or "unknown", {"forge_job_id": forge_job_id})
        return updated

    # -- supervision -------------------------------------------------------------------------------------------

    async def keep_warm(self, admit: Admit, waiting: Mapping[str, int] | None = None) -> int:
        """Tops each pool with `min_idle` up to that many runners waiting for a job (queued or up, none taken yet):
        a job then starts on a runner already online instead of waiting for a container. Returns how many it asked
        for. They are runner jobs like any (trigger_job_id 0), removed by the bootstrap timeout if never used.
        `waiting`: the per-pool count `supervise` just made (run_forever), so one tick reads the runners once."""
        warm = {name: pool.runner for name, pool in self.config.pools.items() if pool.runner and pool.runner.min_idle}
        if not warm:  # the common case: no query every supervision tick
            return 0
        asked = 0
        if waiting is None:
            waiting = {}
            for record in await self.store.runners_of_unfinished_jobs():
                job = await self.store.get(record.job_id)
                if job is not None and not job.state.final and record.online_at is None:
                    waiting[job.pool] = waiting.get(job.pool, 0) + 1
        for name, runner in warm.items():
            target = runner.warm_scope()
            if target is None:  # the config refuses min_idle without one place
                continue
            for _ in range(runner.min_idle - waiting.get(name, 0)):
                job_id = f"{runner.source}-warm-{uuid.uuid4().hex[:12]}"
                job, record = self.build_job(
                    runner.source, name, repository=target, owner=target.partition("/")[0], installation_id=None,
                    trigger=0, run_id=0, job_id=job_id, now=self.clock(),
                )  # fmt: skip
                _, created = await self.request(job, record, admit)
                asked += created
        return asked

    async def supervise(self, cancel: Cancel) -> None:
        """Removes runners that overstay: no job taken within the bootstrap timeout, or still there after their
        forge job completed. Also refreshes the counts the metrics read."""
        now = self.clock()
        counts: dict[str, dict[str, int]] = {}
        waiting: dict[str, int] = {}
        for record in await self.store.runners_of_unfinished_jobs():
            job = await self.store.get(record.job_id)
            if job is None or job.state.final:
                continue
            if record.online_at is None:
                waiting[job.pool] = waiting.get(job.pool, 0) + 1
            pool = self.config.pools.get(job.pool)
            runner = pool.runner if pool else None
            if runner is None:
                continue
            tally = counts.setdefault(job.pool, {"queued": 0, "idle": 0, "busy": 0})
            if job.state is JobState.QUEUED:
                tally["queued"] += 1
                continue
            tally["busy" if record.online_at is not None and record.completed_at is None else "idle"] += 1
            reason = None
            if record.completed_at is not None and now - record.completed_at > runner.completed_grace_s:
                reason = (
                    f"the forge reported its job completed {now - record.completed_at:.0f} s ago and the agent did "
                    "not exit"
                )
            elif (
                record.online_at is None
                and job.state is JobState.RUNNING
                and job.started_at is not None
                and now - job.started_at > runner.bootstrap_timeout_s
            ):
                reason = f"runner took no job within bootstrap_timeout_s ({runner.bootstrap_timeout_s} s)"
            if reason is not None:
                await self._cancel(cancel, job, reason)
        self.last_counts = counts
        self.last_waiting = waiting

    async def _cancel(self, cancel: Cancel, job: Job, reason: str) -> None:
        """Starts removing the runner (the cancel waits for the container to stop; supervision does not)."""
        if job.id in self._cancelling:
            return
        log.info("removing runner", extra={"job_id": job.id, "reason": reason})

        async def run() -> None:
            try:
                await cancel(job.id, reason)
            except Exception as exc:  # another controller's job, or it ended meanwhile
                log.debug("runner not cancelled", extra={"job_id": job.id, "error": type(exc).__name__})
            finally:
                self._cancelling.pop(job.id, None)

        self._cancelling[job.id] = asyncio.create_task(run())

    async def settle(self) -> None:
        """Waits for the removals supervision started (tests, shutdown)."""
        while self._cancelling:
            await asyncio.gather(*list(self._cancelling.values()), return_exceptions=True)

    # -- reconciliation ----------------------------------------------------------------------------------------

    async def reconcile(self, source: str, admit: Admit, cancel: Cancel) -> dict[str, int]:
        """One pass against a forge: orphan registrations deleted, runners whose registration vanished removed,
        queued jobs no webhook announced given runners. Returns what it did, for the log and the tests."""
        forge = self.forges[source]
        done = {"orphans_deleted": 0, "vanished_removed": 0, "lost_jobs_served": 0}
        prefix = f"{self.config.controller_id}-"
        live = {r.name: r for r in await self.store.runners_of_unfinished_jobs(source)}
        scopes = await self._scopes(source)
        for scope in scopes:
            try:
                registered = await forge.runners(scope)
            except ForgeError as exc:
                log.warning("reconcile: cannot list runners", extra={"scope": str(scope), "error": exc.message})
                self.errors += 1
                continue
            names = {r.name for r in registered}
            for reg in registered:
                if reg.name.startswith(prefix) and self._owner_of(reg.name, live) is None:
                    await self._delete(source, scope, reg.id, None, why="orphan: no live runner job")
                    done["orphans_deleted"] += 1
            for record in live.values():
                if record.scope != f"{scope.kind}:{scope.name}" or record.registration_id is None:
                    continue
                job = await self.store.get(record.job_id)
                if (
                    job is not None
                    and job.state is JobState.RUNNING
                    and record.online_at is None
                    and not any(n == record.name or n.startswith(record.name + "-") for n in names)
                ):
                    await self._cancel(cancel, job, "its registration is gone at the forge before it took a job")
                    done["vanished_removed"] += 1
        done["lost_jobs_served"] = await self._serve_lost_jobs(source, scopes, admit)
        self.reconciled += 1
        if any(done.values()):
            self.auditor.reconcile("forge", source, dict(done))
            log.info("forge reconciled", extra={"source": source, **done})
        return done

    @staticmethod
    def _owner_of(name: str, live: dict[str, RunnerRecord]) -> RunnerRecord | None:
        """The live record a registered name belongs to (a retried job registers `<name>-<attempt>`)."""
        if name in live:
            return live[name]
        base, _, attempt = name.rpartition("-")
        return live.get(base) if attempt.isdigit() else None

    async def _scopes(self, source: str) -> list[RunnerScope]:
        """Where our runners may be registered: every scope a runner of this source was asked for lately, and
        the repositories and organizations the pools name without wildcards."""
        forge = self.config.sources[source].forge
        installation = forge.installation_id if forge else None
        seen: dict[tuple[str, str], int | None] = {}
        for record in await self.store.list_runners(source=source, limit=500):
            kind, _, name = record.scope.partition(":")
            if (kind, name) in seen:
                continue  # one job per scope tells its installation
            job = await self.store.get(record.job_id)
            seen[(kind, name)] = job.spec.runner.installation_id if job and job.spec.runner else installation
        for pool in self.config.pools.values():
            runner = pool.runner
            if runner is None or runner.source != source:
                continue
            if runner.scope == "repo":
                for repo in runner.repositories:
                    if not _is_glob(repo):
                        seen.setdefault(("repo", repo), installation)
            else:
                for org in runner.organizations:
                    if not _is_glob(org):
                        seen.setdefault(("org", org), installation)
        scopes = []
        for (kind, name), inst in seen.items():
            if kind not in ("repo", "org"):
                continue
            try:
                scopes.append(await self.forges[source].resolve(RunnerScope(kind, name, inst)))  # type: ignore[arg-type]
            except ForgeError as exc:
                log.warning("reconcile: scope skipped", extra={"scope": f"{kind}:{name}", "error": exc.message})
        return scopes

    async def _serve_lost_jobs(self, source: str, scopes: list[RunnerScope], admit: Admit) -> int:
        """Asks the forge for the queued jobs of every repository a pool may serve: those named in the config or
        seen in runner records, and -- when a pool allows repositories by glob or organization -- every repository
        the credential reaches that a pool allows, so a repository whose first webhook was lost is found too."""
        forge = self.forges[source]
        served = 0
        repositories: dict[str, tuple[str, int | None]] = {}
        for scope in scopes:
            if scope.kind == "repo":
                repositories.setdefault(scope.name.lower(), (scope.name, scope.installation_id))
        if self._discovers(source):
            try:
                reachable = await forge.repositories()
            except ForgeError as exc:
                log.warning("reconcile: cannot list the repositories the forge credential reaches",
                            extra={"source": source, "error": exc.message})  # fmt: skip
                self.errors += 1
                reachable = []
            for name, installation in reachable:
                if any(pool.source == source and pool.allows(name) for pool in self.pools):
                    repositories.setdefault(name.lower(), (name, installation))
        for repository, installation in repositories.values():
            try:
                queued = await forge.queued_jobs(repository, installation)
            except ForgeError as exc:
                log.warning(
                    "reconcile: cannot list queued jobs", extra={"repository": repository, "error": exc.message}
                )
                continue
            for forge_job in queued:
                if await self._serve(source, forge_job, installation, admit):
                    served += 1
        return served

    def _discovers(self, source: str) -> bool:
        """Whether a pool of the source allows repositories the config does not name one by one."""
        return any(
            pool.source == source and (pool.organizations or any(_is_glob(repo) for repo in pool.repositories))
            for pool in self.pools
        )

    async def _serve(self, source: str, forge_job: QueuedJob, installation: int | None, admit: Admit) -> bool:
        """A runner for a queued forge job that has no live one: the first request if none was ever made, a new
        one if all earlier ones ended (their runners took other jobs, or failed)."""
        choice = choose_pool(self.pools, source=source, repository=forge_job.repository, labels=forge_job.labels)
        if not isinstance(choice, Matched):
            return False
        for n in range(1, 6):
            job_id = runner_job_id(source, forge_job.id, n)
            existing = await self.store.get(job_id)
            if existing is not None and not existing.state.final:
                return False  # a runner is on its way
            if existing is None:
                owner = forge_job.repository.partition("/")[0]
                job, record = self.build_job(
                    source, choice.pool, repository=forge_job.repository, owner=owner, installation_id=installation,
                    trigger=forge_job.id, run_id=forge_job.run_id, job_id=job_id, now=self.clock(),
                )  # fmt: skip
                _, created = await self.request(job, record, admit)
                if created:
                    self.auditor.runner("lost_job_served", job_id, "ok", {"forge_job_id": forge_job.id})
                return created
        return False

    async def run_forever(self, admit: Admit, cancel: Cancel, *, tick_s: float = 5.0) -> None:
        """Supervision every `tick_s`, reconciliation of each forge every `reconcile_interval_s` (first at start)."""
        next_reconcile = dict.fromkeys(self.forges, 0.0)
        while True:
            try:
                await self.supervise(cancel)
                await self.keep_warm(admit, self.last_waiting)
                now = time.monotonic()
                for source, due in next_reconcile.items():
                    if now >= due:
                        forge_cfg = self.config.sources[source].forge
                        interval = forge_cfg.reconcile_interval_s if forge_cfg else 60.0
                        next_reconcile[source] = now + interval
                        await self.reconcile(source, admit, cancel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("forge supervision failed; retrying")
            await asyncio.sleep(tick_s)

    def stats(self) -> dict[str, object]:
        calls = {source: forge.stats() for source, forge in self.forges.items()}
        return {"pools": self.last_counts, "forges": calls, "errors": self.errors, "registered": self.registered}
