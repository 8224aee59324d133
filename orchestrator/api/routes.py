"""/api/v1 (jobs, logs, cancel) and the health probes."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from orchestrator.access.alert_sink import AccessWatch
from orchestrator.access.grants import Principal, Role, describe_grants
from orchestrator.api.auth import Authenticator, AuthRefused, FailureLimiter
from orchestrator.approvals.gate import ApprovalRefused, Decision
from orchestrator.approvals.service import Approvals
from orchestrator.artifacts.store import ArtifactStore
from orchestrator.config import ApiConfig, ServerConfig
from orchestrator.console.sessions import COOKIE, CSRF_HEADER, Sessions
from orchestrator.evidence.attestation_store import AttestationStore
from orchestrator.evidence.audit import AuditLog
from orchestrator.evidence.audit_search import MAX_LIMIT as AUDIT_MAX_LIMIT
from orchestrator.evidence.audit_search import AuditHit, AuditQuery, parse_time, search
from orchestrator.evidence.auditor import Auditor
from orchestrator.evidence.refusals import RefusalThrottle, address_key
from orchestrator.jobs.states import Job, JobState
from orchestrator.jobs.views import job_view, runner_view
from orchestrator.logs.sse import SseEncoder, parse_last_event_id
from orchestrator.logs.store import LogStore
from orchestrator.platform.metrics import CONTENT_TYPE, Metrics
from orchestrator.runtime.engines import EngineSet
from orchestrator.runtime.protocol import ContainerRuntime, EngineError
from orchestrator.scheduling.scheduler import NotCancellableError, Scheduler
from orchestrator.store.base import JobStore

log = logging.getLogger(__name__)

PRINCIPAL = web.RequestKey("principal", Principal)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


AUDIT_SCAN_MAX = 100_000  # records a scoped auditor's search reads per request before handing back a cursor
FORWARDED = "X-Orchestrator-Forwarded"  # a request one controller passes to another: never passed on again


def _err(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Api:
    """`server` is for `metrics_public`, `access` the API's tokens: the slices of the config the API reads."""

    def __init__(
        self,
        server: ServerConfig,
        access: ApiConfig,
        store: JobStore,
        scheduler: Scheduler,
        logs: LogStore,
        engine: ContainerRuntime,
        metrics: Metrics,
        *,
        auditor: Auditor,
        attestations: AttestationStore,
        attestation_public_pem: bytes,
        audit_log: AuditLog,
        artifacts: ArtifactStore | None = None,
        engines: EngineSet | None = None,
        controller_id: str = "",
        peers: Callable[[str], Awaitable[str | None]] | None = None,
        authenticator: Authenticator | None = None,
        sessions: Sessions | None = None,
        warm_ready: Callable[[str], int] | None = None,
        approvals: Approvals | None = None,
        watch: AccessWatch | None = None,
    ) -> None:
        self.approvals = approvals
        self.watch = watch  # unusual access: failed-auth bursts, many logs read (access/alerts.py)
        self.warm_ready = warm_ready  # pool -> warm containers ready (runtime/warm_pool.py)
        self.authenticator = authenticator or Authenticator(access)
        self.sessions = sessions  # the web console's logins (console/sessions.py)
        self.artifacts = artifacts
        self.engines = engines
        self.controller_id = controller_id
        self.peers = peers  # controller id -> its API URL (controllers sharing PostgreSQL)
        self.metrics = metrics
        self.auditor = auditor
        self.attestations = attestations
        self.attestation_public_pem = attestation_public_pem
        self.audit_log = audit_log
        self.limiter = FailureLimiter()
        self.refusals = RefusalThrottle("auth")
        self.readiness_checks: list[Callable[[], tuple[str, str]]] = []  # (name, "ok" or what is wrong)
        self.server = server
        self.access = access
        self.store = store
        self.scheduler = scheduler
        self.logs = logs
        self.engine = engine

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get(
                "/metrics",
                self.metrics_page if self.server.metrics_public else self._auth("viewer", self.metrics_page, wide=True),
            ),
            web.get("/api/v1/jobs", self._auth("viewer", self.list_jobs)),
            web.get("/api/v1/jobs/{job_id}", self._auth("viewer", self.show_job)),
            web.get("/api/v1/runners", self._auth("viewer", self.list_runners)),
            web.get("/api/v1/pools", self._auth("viewer", self.list_pools)),
            web.get("/api/v1/jobs/{job_id}/logs", self._auth("viewer", self.job_logs)),
            web.post("/api/v1/jobs/{job_id}/cancel", self._auth("operator", self.cancel_job)),
            web.post("/api/v1/jobs/{job_id}/approve", self._auth("approver", self.decide_job)),
            web.post("/api/v1/jobs/{job_id}/reject", self._auth("approver", self.decide_job)),
            web.get("/api/v1/jobs/{job_id}/attestation", self._auth("viewer", self.job_attestation)),
            web.get("/api/v1/jobs/{job_id}/artifacts", self._auth("viewer", self.job_artifacts)),
            web.get("/api/v1/jobs/{job_id}/artifacts/{name:.+}", self._auth("viewer", self.job_artifact)),
            web.get("/api/v1/attestation-key", self._auth("viewer", self.attestation_key)),
            web.get("/api/v1/audit/head", self._auth("auditor", self.audit_head, wide=True)),
            web.get("/api/v1/audit", self._auth("auditor", self.audit_search)),
            web.get("/api/v1/engines", self._auth("viewer", self.list_engines)),
            web.post("/api/v1/engines/{name}/drain", self._auth("operator", self.drain_engine, wide=True)),
            web.post("/api/v1/engines/{name}/undrain", self._auth("operator", self.drain_engine, wide=True)),
            web.get("/api/v1/whoami", self._auth(None, self.whoami)),
        ]

    def _auth(self, role: Role | None, handler: Handler, *, wide: bool = False) -> Handler:
        """Authenticates, then checks the principal holds `role` somewhere (`wide`: controller-wide, for what
        concerns no single job; None: any caller who authenticates). A job's own scope is checked by the handler
        (`_job`)."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization")
            principal: Principal | AuthRefused
            if header is None and self.sessions is not None and COOKIE in request.cookies:
                principal = self._session_principal(request)
            else:
                principal = await self.authenticator.authenticate(header)
            if isinstance(principal, AuthRefused):
                return self._unauthenticated(request, header, principal)
            if role is not None and not (principal.anywhere(role) if wide else principal.holds(role)):
                self.auditor.api(principal, "auth.forbidden", request.path, request.remote, "denied")
                need = (
                    f"a controller-wide {role} grant" if wide else f"{'an' if role[0] in 'aeiou' else 'a'} {role} grant"
                )
                return _err(403, f"{principal.name} holds {describe_grants(principal.grants)}; this needs {need}")
            request[PRINCIPAL] = principal
            return await handler(request)

        return wrapped

    def _session_principal(self, request: web.Request) -> Principal | AuthRefused:
        """The console's session: its cookie names it; a request that changes anything must carry its CSRF token
        too (a cookie alone is what another site can make the browser send)."""
        assert self.sessions is not None
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return AuthRefused("session_expired", "the console session has ended; sign in again")
        if request.method not in ("GET", "HEAD") and not Sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
            return AuthRefused("csrf_refused", f"a console request that changes something needs its {CSRF_HEADER}", 403)
        return session.principal

    async def _job(self, request: web.Request, role: Role = "viewer") -> Job | web.Response:
        """The job of the route, if the caller may see it (else 404, as for a job that does not exist: a scoped
        viewer learns nothing of other jobs) and holds `role` for its pool and repository (else 403)."""
        job_id = request.match_info["job_id"]
        principal = request[PRINCIPAL]
        job = await self.store.get(job_id)
        if job is None or not principal.may("viewer", job.pool, job.spec.repository):
            return _err(404, f"no job {job_id!r}")
        if not principal.may(role, job.pool, job.spec.repository):
            self.auditor.api(principal, "auth.forbidden", request.path, request.remote, "denied")
            return _err(
                403,
                f"{principal.name} holds {describe_grants(principal.grants)}: no {role} grant for pool "
                f"{job.pool!r} and repository {job.spec.repository!r}",
            )
        return job

    def _sees(self, principal: Principal, job: Job | None) -> bool:
        if job is None:
            return principal.anywhere("viewer")
        return principal.may("viewer", job.pool, job.spec.repository)

    async def whoami(self, request: web.Request) -> web.Response:
        """Who the token or login is and what it may do (for the console and for checking a grant)."""
        principal = request[PRINCIPAL]
        grants = [
            {"role": g.role, "pools": list(g.pools) if g.pools is not None else None,
             "repositories": list(g.repositories) if g.repositories is not None else None}
            for g in principal.grants
        ]  # fmt: skip
        return web.json_response({"name": principal.name, "kind": principal.kind, "grants": grants})

    def _unauthenticated(self, request: web.Request, header: str | None, refused: AuthRefused) -> web.Response:
        """A valid token is always served, whatever its address did before: the limiter bounds what failures cost
        (guessing speed, audit records), not what an address may do, so one guesser behind a shared proxy locks
        out nobody. A scraper polling /metrics without a token is not guessing and is not counted as failing."""
        scrape = header is None and request.path == "/metrics"
        key = address_key(request.remote)
        if not scrape and (wait := self.limiter.retry_after(key)):
            self._auth_refused(request, "rate_limited")
            resp = _err(429, "too many failed authentications from this address; try again later")
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        if refused.status == 403:  # a console request without its CSRF token: refused and audited, not a guess
            self._auth_refused(request, refused.reason)
            return _err(403, refused.message)
        if refused.status == 503:  # the identity provider is down: not the caller's failure
            self.metrics.auth_failures.labels(refused.reason).inc()
            return _err(503, refused.message)
        if not scrape:
            self.limiter.failed(key)
            self._auth_refused(request, refused.reason)
            if self.watch is not None:
                self.watch.auth_failed(key, refused.identity)
        else:
            self.metrics.auth_failures.labels("metrics_scrape_without_token").inc()
        resp = _err(401, refused.message)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="runner-orchestrator"'
        return resp

    def _auth_refused(self, request: web.Request, reason: str) -> None:
        """Counted always; audited on its own within the address's allowance, else in the window's summary."""
        self.metrics.auth_failures.labels(reason).inc()
        if self.refusals.refused(request.remote, reason, time.time()):
            self.auditor.auth_failed(request.remote, request.path, reason)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, str] = {}
        if self.scheduler.draining:
            checks["controller"] = "draining: not accepting new jobs"
        try:
            await self.engine.ping()
            checks["docker"] = "ok"
        except EngineError as exc:
            checks["docker"] = f"unreachable: {exc}"
        try:
            await self.store.check_writable()
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"not writable: {type(exc).__name__}: {exc}"
        for check in self.readiness_checks:
            name, state = check()
            checks[name] = state
        ready = all(v == "ok" for v in checks.values())
        body: dict[str, object] = {"ready": ready, "checks": checks}
        if self.engines is not None:  # ready while one engine takes jobs; each engine's state is shown
            body["engines"] = self.engines.describe()
        return web.json_response(body, status=200 if ready else 503)

    async def list_jobs(self, request: web.Request) -> web.Response:
        state_arg = request.query.get("status")
        try:
            state = JobState(state_arg) if state_arg else None
        except ValueError:
            return _err(400, f"unknown status {state_arg!r}; one of {', '.join(s.value for s in JobState)}")
        try:
            limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
        except ValueError:
            return _err(400, "limit must be an integer")
        jobs = await self._visible_jobs(request[PRINCIPAL], state, request.query.get("pool"), limit)
        return web.json_response({"jobs": [job_view(j) for j in jobs]})

    async def _visible_jobs(
        self, principal: Principal, state: JobState | None, pool: str | None, limit: int
    ) -> list[Job]:
        """The newest `limit` jobs the principal may see: by SQL for the pools of its grants, then by repository
        glob (which the store does not index: a repository-scoped viewer's listing reads its pools' jobs)."""
        allowed = principal.pools_for("viewer", self.scheduler.config.pools)
        if pool is not None and allowed is not None and pool not in allowed:
            return []
        pools: list[str | None] = [pool] if pool is not None or allowed is None else list(allowed)
        by_repository = any(g.repositories is not None for g in principal.grants)
        found: list[Job] = []
        for p in pools:
            found += await self.store.list_jobs(state=state, pool=p, limit=-1 if by_repository else limit)
        visible = [j for j in found if principal.may("viewer", j.pool, j.spec.repository)]
        visible.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        return visible[:limit]

    async def list_pools(self, request: web.Request) -> web.Response:
        """The pools the caller may see, with this controller's queued, running and warm counts and the limit."""
        principal = request[PRINCIPAL]
        config = self.scheduler.config
        allowed = principal.pools_for("viewer", config.pools)
        stats = self.scheduler.pool_stats()
        pools = []
        for name, pool in config.pools.items():
            if allowed is not None and name not in allowed:
                continue
            queued, running = stats.get(name, (0, 0))
            pools.append({
                "name": name, "queued": queued, "running": running, "max_concurrent": pool.max_concurrent,
                "warm": self.warm_ready(name) if self.warm_ready is not None else 0, "warm_target": pool.warm,
                "runner": pool.runner is not None,
            })  # fmt: skip
        return web.json_response({"pools": pools})

    async def list_runners(self, request: web.Request) -> web.Response:
        try:
            limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
        except ValueError:
            return _err(400, "limit must be an integer")
        principal = request[PRINCIPAL]
        records = await self.store.list_runners(source=request.query.get("source"), limit=limit)
        views = []
        for r in records:
            job = await self.store.get(r.job_id)
            if self._sees(principal, job):
                views.append(runner_view(r, job))
        return web.json_response({"runners": views})

    async def show_job(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        if isinstance(job, web.Response):
            return job
        return web.json_response(job_view(job))

    async def job_logs(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        job = await self._job(request)
        if isinstance(job, web.Response):
            return job
        sse = "text/event-stream" in request.headers.get("Accept", "") or request.query.get("format") == "sse"
        resume = parse_last_event_id(request.headers.get("Last-Event-ID")) if sse else None
        try:
            offset = resume if resume is not None else int(request.query.get("offset", "0"))
        except ValueError:
            return _err(400, "offset must be a non-negative integer")
        if offset < 0:
            return _err(400, "offset must be a non-negative integer")
        follow = sse or request.query.get("follow", "false").lower() in {"1", "true", "yes"}
        principal = request[PRINCIPAL]
        self.auditor.api(principal, "api.logs_read", job_id, request.remote, "ok")
        if self.watch is not None:
            self.watch.read(principal.name, job_id)
        if (
            self.peers is not None
            and job.controller_id != self.controller_id
            and not request.headers.get(FORWARDED)
            and self.logs.size(job_id) == 0
        ):
            return await self._forward_logs(request, job.controller_id)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8", "X-Job-Status": job.state})
        if not follow:
            size = self.logs.size(job_id)
            resp.headers["X-Log-Offset"] = str(size)
            await resp.prepare(request)
            pos = offset
            while pos < size:
                data = await asyncio.to_thread(self.logs.read, job_id, pos, min(256 * 1024, size - pos))
                if not data:
                    break
                pos += len(data)
                await resp.write(data)
            await resp.write_eof()
            return resp
        resp.enable_chunked_encoding()
        if sse:
            resp.headers["Content-Type"] = "text/event-stream; charset=utf-8"
            resp.headers["Cache-Control"] = "no-cache"
        await resp.prepare(request)

        async def finished() -> bool:
            current = await self.store.get(job_id)
            return current is None or current.state.final

        encoder = SseEncoder(offset) if sse else None
        async for data in self.logs.follow(job_id, offset, finished):
            await resp.write(encoder.encode(data) if encoder else data)
        if encoder is not None:
            final = await self.store.get(job_id)
            await resp.write(encoder.end(final.state.value if final else "unknown"))
        await resp.write_eof()
        return resp

    async def _forward_logs(self, request: web.Request, owner: str) -> web.StreamResponse:
        """The log of a job another controller runs: its answer, streamed through (the same token is accepted by
        every controller sharing the store; one hop only)."""
        assert self.peers is not None
        url = await self.peers(owner)
        if not url:
            return _err(502, f"the job runs on controller {owner!r}, which published no server.public_url")
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Accept", "Last-Event-ID")}
        headers[FORWARDED] = self.controller_id or "1"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(f"{url.rstrip('/')}{request.path}", params=request.query, headers=headers) as upstream,
            ):
                resp = web.StreamResponse(status=upstream.status)
                for name in ("Content-Type", "X-Job-Status", "X-Log-Offset", "Cache-Control"):
                    if name in upstream.headers:
                        resp.headers[name] = upstream.headers[name]
                resp.headers["X-Served-By"] = owner
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except (aiohttp.ClientError, OSError) as exc:
            return _err(502, f"the job runs on controller {owner!r} at {url}, which does not answer: {exc}")

    async def job_attestation(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if isinstance(found := await self._job(request), web.Response):
            return found
        envelope = self.attestations.read(job_id)
        if envelope is None:
            return _err(404, f"job {job_id!r} has no attestation (yet): it is signed when the job's run ends")
        return web.Response(body=envelope, content_type="application/json")

    async def job_artifacts(self, request: web.Request) -> web.Response:
        """The job's artifacts (name, size, sha256), its reports' totals, and what was refused."""
        job_id = request.match_info["job_id"]
        if isinstance(found := await self._job(request), web.Response):
            return found
        manifest = await asyncio.to_thread(self.artifacts.manifest, job_id) if self.artifacts else None
        if manifest is None:
            return _err(404, f"job {job_id!r} has no artifacts (none declared, not produced, or expired)")
        return web.json_response(manifest.to_json())

    async def job_artifact(self, request: web.Request) -> web.StreamResponse:
        """One artifact's bytes, with its sha256 in `Digest` (RFC 3230) and `X-Checksum-Sha256`."""
        job_id, name = request.match_info["job_id"], request.match_info["name"]
        if isinstance(job := await self._job(request), web.Response):
            return job
        found = await asyncio.to_thread(self.artifacts.file, job_id, name) if self.artifacts else None
        if found is None:
            return _err(404, f"job {job_id!r} has no artifact {name!r}")
        artifact, path = found
        principal = request[PRINCIPAL]
        self.auditor.api(principal, "api.artifact", f"{job_id}/{name}", request.remote, "ok")
        if self.watch is not None:
            self.watch.read(principal.name, job_id)
        response = web.FileResponse(
            path,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{quote(name.rsplit("/", 1)[-1])}"',
                "X-Checksum-Sha256": artifact.sha256,
                "Digest": "sha-256=" + base64.b64encode(bytes.fromhex(artifact.sha256)).decode(),
            },
        )
        return response

    async def list_engines(self, request: web.Request) -> web.Response:
        if self.engines is None:
            return _err(404, "this controller has one Docker engine (docker.base_url); [engines] lists several")
        return web.json_response({"engines": self.engines.describe()})

    async def drain_engine(self, request: web.Request) -> web.Response:
        """drain: no new containers on the engine, running jobs finish; undrain: new ones again. Audited."""
        name = request.match_info["name"]
        draining = request.path.endswith("/drain")
        principal = request[PRINCIPAL]
        action = "api.engine_drain" if draining else "api.engine_undrain"
        if self.engines is None:
            return _err(404, "this controller has one Docker engine (docker.base_url); [engines] lists several")
        try:
            self.engines.drain(name, draining=draining)
        except KeyError:
            self.auditor.api(principal, action, name, request.remote, "refused")
            return _err(404, f"no engine {name!r} (engines: {', '.join(self.engines.engines)})")
        self.auditor.api(principal, action, name, request.remote, "ok")
        log.info("engine drain changed", extra={"engine": name, "draining": draining, "by": principal.name})
        return web.json_response({"engines": self.engines.describe()})

    async def attestation_key(self, request: web.Request) -> web.Response:
        return web.Response(body=self.attestation_public_pem, content_type="application/x-pem-file")

    async def audit_head(self, request: web.Request) -> web.Response:
        """What an auditor anchors elsewhere, so a truncated trail is detectable later."""
        await asyncio.to_thread(self.auditor.flush)
        return web.json_response({"next_seq": self.audit_log.next_seq, "head": self.audit_log.head})

    async def audit_search(self, request: web.Request) -> web.Response:
        """The audit trail, read-only: `actor`, `job`, `action` (`api.*` for a prefix), `outcome`, `since` and
        `until` (RFC 3339 or a date), `after` (the cursor) and `limit`; each record with its hash, which `orchestrator
        audit verify` checks against the chain. An auditor scoped to pools or repositories sees only the records about
        jobs there; records about no job need a controller-wide grant."""
        q = request.query
        times: dict[str, float | None] = {"since": None, "until": None}
        for key in times:
            if q.get(key):
                try:
                    times[key] = parse_time(q[key])
                except ValueError as exc:
                    return _err(400, f"{key}: {exc}")
        query = AuditQuery(
            actor=q.get("actor") or None, target=q.get("job") or None, action=q.get("action") or None,
            outcome=q.get("outcome") or None, since=times["since"], until=times["until"],
        )  # fmt: skip
        try:
            limit = int(q.get("limit", "100"))
            after = int(q["after"]) if q.get("after") else None
        except ValueError:
            return _err(400, "limit and after must be integers")
        if not 1 <= limit <= AUDIT_MAX_LIMIT or (after is not None and after < 0):
            return _err(400, f"limit must be 1..{AUDIT_MAX_LIMIT} and after a record's seq")
        principal = request[PRINCIPAL]
        await asyncio.to_thread(self.auditor.flush)  # what was just done is searchable at once
        hits, cursor = await self._visible_records(principal, query, after, limit)
        self.auditor.api(principal, "api.audit_search", None, request.remote, "ok")
        return web.json_response(
            {"records": [{"seq": h.seq, "hash": h.hash, "record": h.record} for h in hits], "next_cursor": cursor}
        )

    async def _visible_records(
        self, principal: Principal, query: AuditQuery, after: int | None, limit: int
    ) -> tuple[list[AuditHit], int | None]:
        """A page of records the principal may see. A controller-wide auditor's is one search; a scoped one's is
        filtered page by page against the jobs the records are about (at most AUDIT_SCAN_MAX records read per call:
        then the cursor says where to go on)."""
        path = self.audit_log.path
        if principal.anywhere("auditor"):
            page = await asyncio.to_thread(search, path, query, after=after, limit=limit)
            return page.hits, page.next_cursor
        jobs: dict[str, Job | None] = {}
        hits: list[AuditHit] = []
        scanned = 0
        while True:
            page = await asyncio.to_thread(search, path, query, after=after, limit=limit)
            scanned += page.scanned
            for hit in page.hits:
                if await self._record_in_scope(principal, hit.record, jobs):
                    hits.append(hit)
                    if len(hits) == limit:
                        return hits, hit.seq
            if page.next_cursor is None:
                return hits, None
            after = page.next_cursor
            if scanned >= AUDIT_SCAN_MAX:
                return hits, after

    async def _record_in_scope(self, principal: Principal, record: dict[str, Any], jobs: dict[str, Job | None]) -> bool:
        target = record.get("target")
        job_id = target.split("/", 1)[0] if isinstance(target, str) else None  # "job" or "job/artifact"
        if job_id is not None and job_id not in jobs:
            jobs[job_id] = await self.store.get(job_id)
        job = jobs.get(job_id) if job_id is not None else None
        if job is None:
            return principal.anywhere("auditor")
        return principal.may("auditor", job.pool, job.spec.repository)

    async def decide_job(self, request: web.Request) -> web.Response:
        """Approve or reject a job awaiting approval, with an optional comment (JSON `{"comment": "..."}`); the
        approver needs an approver grant for the job's pool and repository and must not be its sender."""
        if isinstance(job := await self._job(request, "approver"), web.Response):
            return job
        principal = request[PRINCIPAL]
        decision: Decision = "approved" if request.path.endswith("/approve") else "rejected"
        action = "api.approve" if decision == "approved" else "api.reject"
        comment = ""
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _err(400, 'the body must be JSON: {"comment": "..."}')
            raw = body.get("comment", "") if isinstance(body, dict) else None
            if not isinstance(raw, str) or len(raw) > 2000 or not raw.isprintable():
                return _err(400, "comment must be printable text of at most 2000 characters")
            comment = raw
        if self.approvals is None:
            return _err(409, "this controller has no approval gates")
        try:
            decided = await self.approvals.decide(job, principal, decision, comment)
        except ApprovalRefused as refused:
            self.auditor.api(principal, action, job.id, request.remote, "refused")
            return _err(403 if refused.code in ("no_grant", "self_approval") else 409, str(refused))
        self.auditor.api(principal, action, job.id, request.remote, "ok")
        return web.json_response(job_view(decided))

    async def cancel_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        principal = request[PRINCIPAL]
        if isinstance(found := await self._job(request, "operator"), web.Response):
            return found
        try:
            job = await self.scheduler.cancel(job_id, reason=f"cancelled by {principal.name}")
        except KeyError:
            return _err(404, f"no job {job_id!r}")
        except NotCancellableError as exc:
            self.auditor.api(principal, "api.cancel", job_id, request.remote, "refused")
            return _err(409, str(exc))
        log.info("job cancel requested", extra={"job_id": job_id, "by": principal.name})
        self.auditor.api(principal, "api.cancel", job_id, request.remote, "ok")
        return web.json_response(job_view(job))
