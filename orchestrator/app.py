"""Builds the controller: wires store, engine, logs, scheduler, intake and API into one aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator.access.alert_sink import AccessWatch, AlertSink, AlertWebhook
from orchestrator.access.alerts import AccessAlerts
from orchestrator.access.tokens import TokenUsage
from orchestrator.api.auth import Authenticator
from orchestrator.api.routes import Api
from orchestrator.approvals.service import Approvals
from orchestrator.artifacts.store import ArtifactStore
from orchestrator.caches.store import CacheStore
from orchestrator.callbacks.dispatcher import Dispatcher
from orchestrator.callbacks.setup import build_dispatcher, store_outbox
from orchestrator.checkout.checkouts import Checkouts
from orchestrator.config import Config, read_source_secrets
from orchestrator.console.routes import Console
from orchestrator.console.sessions import Sessions
from orchestrator.credentials.base import CredentialsBackend
from orchestrator.credentials.claims import discovery_document
from orchestrator.credentials.oidc import SigningKeys
from orchestrator.evidence.attestation import PUBLIC_KEY_FILENAME as ATTESTATION_PUBLIC_KEY
from orchestrator.evidence.attestation_store import AttestationStore
from orchestrator.evidence.audit import (
    AUDIT_FILE_NAME,
    PUBLIC_KEY_FILE_NAME,
    AuditLog,
    syslog_forwarder,
)
from orchestrator.evidence.auditor import Auditor
from orchestrator.evidence.keys import export_public_key, load_or_create, public_pem
from orchestrator.forges.intake import ForgeIntake
from orchestrator.forges.protocol import ForgeAPI
from orchestrator.forges.runners import ForgeRunners
from orchestrator.intake.receive import WebhookSource
from orchestrator.intake.webhook_listener import WebhookListener
from orchestrator.intake.webhooks import WebhookIntake
from orchestrator.jobs.states import Job
from orchestrator.logs.store import LogStore
from orchestrator.platform.connections import (
    ConnectionGuard,
    ConnectionLimits,
    DescriptorPlan,
    controller_reserve,
    plan_descriptors,
)
from orchestrator.platform.metrics import Metrics
from orchestrator.platform.serving import proxy_middlewares
from orchestrator.runtime.docker_engine import DockerEngine
from orchestrator.runtime.engines import EngineSet
from orchestrator.runtime.job_runner import JobRunner
from orchestrator.runtime.protocol import ContainerRuntime
from orchestrator.runtime.runtimes import check_pool_runtimes
from orchestrator.runtime.warm_pool import WarmPool
from orchestrator.runtime.workspace import Workspaces
from orchestrator.scheduling.cluster import Cluster, Leases
from orchestrator.scheduling.events import ControllerJobEvents
from orchestrator.scheduling.scheduler import Scheduler
from orchestrator.store.base import JobStore
from orchestrator.store.sqlite import SQLiteJobStore

log = logging.getLogger(__name__)


@dataclass
class Controller:
    config: Config
    store: JobStore
    engine: ContainerRuntime
    logs: LogStore
    runner: JobRunner
    scheduler: Scheduler
    intake: WebhookIntake
    api: Api
    metrics: Metrics
    auditor: Auditor
    audit_log: AuditLog
    credentials: CredentialsBackend | None = None
    signing_keys: SigningKeys | None = None
    runners: ForgeRunners | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)
    webhook_listener: WebhookListener | None = None
    descriptors: DescriptorPlan | None = None
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    connection_guards: dict[str, ConnectionGuard] = field(default_factory=dict)  # listener -> its guard (metrics)
    callbacks: Dispatcher | None = None  # status callbacks and commit statuses, from the store's outbox
    artifacts: ArtifactStore | None = None
    warm: WarmPool | None = None
    engines: EngineSet | None = None  # several Docker engines ([engines]); None: the one of docker.base_url
    cluster: Cluster | None = None  # leases and takeover, when controllers share PostgreSQL
    approvals: Approvals | None = None  # approval gates: decisions and their expiry
    alert_webhook: AlertWebhook | None = None  # [alerts] webhook_url: the trail's alerts, delivered


def plan_connections(config: Config, soft_limit: int) -> tuple[ConnectionLimits, DescriptorPlan]:
    """Connection limits for the controller's own listeners (its port, and webhook_port unless workers serve
    it), held within what the open-files limit leaves after the jobs' descriptors."""
    server = config.server
    listeners = 1 + (server.webhook_port is not None and not server.intake_workers)
    plan = plan_descriptors(
        soft_limit,
        wanted=server.max_connections,
        listeners=listeners,
        reserved=controller_reserve(config.max_total_concurrent) + 2 * server.intake_workers,
    )
    limits = ConnectionLimits(plan.per_listener, server.header_timeout_s, server.keepalive_timeout_s)
    return limits, plan


def build_engines(config: Config, auditor: Auditor, metrics: Metrics) -> EngineSet:
    """The [engines] as DockerEngines behind one router; their state changes are audited and exported."""
    import docker.tls

    adapters: dict[str, ContainerRuntime] = {}
    for name, cfg in config.engines.items():
        tls = None
        if cfg.tls_ca_file is not None and cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
            tls = docker.tls.TLSConfig(
                client_cert=(str(cfg.tls_cert_file), str(cfg.tls_key_file)), ca_cert=str(cfg.tls_ca_file), verify=True
            )
        adapters[name] = DockerEngine(
            cfg.base_url, api_timeout_s=config.docker.api_timeout_s, retry_budget_s=config.docker.retry_budget_s,
            tls=tls,
        )  # fmt: skip

    def changed(engine: str, state: str) -> None:
        auditor.reconcile(f"engine_{state}", engine, {"url": config.engines[engine].base_url})
        for candidate in ("healthy", "unhealthy", "draining"):
            metrics.engine_state.labels(engine, candidate).set(1 if candidate == state else 0)

    engines = EngineSet(
        config, adapters, {name: cfg.base_url for name, cfg in config.engines.items()},
        state_file=config.data_dir / "engines.json", on_change=changed,
    )  # fmt: skip
    for name in config.engines:
        metrics.engine_state.labels(name, engines.state(name)).set(1)
    return engines


def build_controller(
    config: Config,
    *,
    runtime: ContainerRuntime | None = None,
    credentials: CredentialsBackend | None = None,
    forges: dict[str, ForgeAPI] | None = None,
) -> Controller:
    """Everything the config describes, wired together. `runtime` replaces the Docker engine the config names,
    `credentials` the backend it names and `forges` the forge API clients of its forge sources (tests and benches
    pass in-memory or loopback ones)."""
    limits, descriptors = plan_connections(config, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    guards: dict[str, ConnectionGuard] = {}
    data = config.data_dir
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    metrics = Metrics()
    audit_key = load_or_create(data / "audit.key")
    export_public_key(data / PUBLIC_KEY_FILE_NAME, audit_key)
    audit_log = AuditLog(
        data / AUDIT_FILE_NAME, audit_key, forward=syslog_forwarder() if config.audit.syslog else None
    ).open()
    auditor = Auditor(audit_log)
    signing_keys: SigningKeys | None = None
    if credentials is None and config.credentials is not None:
        from orchestrator.credentials.vault import build_vault_credentials

        credentials, signing_keys = build_vault_credentials(config, auditor)
    store: JobStore
    leases: Leases | None = None  # controllers sharing PostgreSQL hold leases (scheduling/cluster.py)
    if config.storage.backend == "postgres":
        from orchestrator.store.postgres import PostgresJobStore  # optional: the 'postgres' extra

        storage = config.storage
        assert storage.dsn_file is not None  # the config requires it with backend = "postgres"
        store = PostgresJobStore(
            storage.dsn_file,
            pool_size=storage.pool_size,
            connect_timeout_s=storage.connect_timeout_s,
            outbox=store_outbox(config),
        )
        leases = store
    else:
        store = SQLiteJobStore(data / "jobs.sqlite3", outbox=store_outbox(config))
    engines: EngineSet | None = None
    if runtime is not None:
        engine: ContainerRuntime = runtime
        engines = runtime if isinstance(runtime, EngineSet) else None
    elif config.engines:
        engines = build_engines(config, auditor, metrics)
        engine = engines
    else:
        engine = DockerEngine(
            config.docker.base_url,
            api_timeout_s=config.docker.api_timeout_s,
            retry_budget_s=config.docker.retry_budget_s,
        )
    logs = LogStore(data / "logs", max_bytes=config.logs.max_bytes)
    attest_key = load_or_create(data / "attestation.key")
    export_public_key(data / ATTESTATION_PUBLIC_KEY, attest_key)
    attestations = AttestationStore(data / "attestations", attest_key)
    events = ControllerJobEvents(auditor, metrics)
    callbacks = build_dispatcher(config, store, metrics, auditor)
    if callbacks is not None:
        events.listeners.append(callbacks.notify)
    runners: ForgeRunners | None = None
    if any(src.forge is not None for src in config.sources.values()):
        if forges is None:
            from orchestrator.forges.clients import build_forges

            forges = build_forges(config)
        runners = ForgeRunners(config, store, forges, auditor, metrics=metrics)
    artifacts = ArtifactStore(data / "artifacts", retention_s=config.artifacts.retention_days * 86400)
    caches = CacheStore(
        data / "caches", max_total_bytes=config.caches.max_total_bytes, fallback_refs=config.caches.fallback_refs
    )
    checkouts = Checkouts(config) if any(src.checkout is not None for src in config.sources.values()) else None
    workspaces = Workspaces(config, artifacts=artifacts, caches=caches, work_dir=data / "work", checkouts=checkouts)
    warm = None
    if any(pool.warm for pool in config.pools.values()):
        warm = WarmPool(config, engine, metrics, usable=engines.usable if engines is not None else lambda cid: True)
    runner = JobRunner(
        config, store, engine, logs, events, credentials=credentials, registrar=runners, attestations=attestations,
        workspaces=workspaces, warm=warm,
    )  # fmt: skip
    scheduler = Scheduler(
        config, store, engine, runner, events, auditor, credentials=credentials, owned=warm.owns if warm else None
    )
    sources = {
        name: WebhookSource(name, src.scheme, tuple(read_source_secrets(src))) for name, src in config.sources.items()
    }
    intake = WebhookIntake(
        config,
        sources,
        scheduler,
        credentials_configured=credentials is not None,
        metrics=metrics,
        auditor=auditor,
        forges=ForgeIntake(config, runners, auditor, metrics.forge_events) if runners is not None else None,
    )
    approvals = Approvals(config, store, scheduler, runner, events)
    watch = AccessWatch(
        AccessAlerts(config.alerts), AlertSink(config.alerts, metrics, auditor, controller_id=config.controller_id)
    )
    runner.on_secrets = watch.secrets_issued
    api = Api(
        config.server,
        config.api,
        store,
        scheduler,
        logs,
        engine,
        metrics,
        auditor=auditor,
        attestations=attestations,
        artifacts=artifacts,
        engines=engines,
        controller_id=config.controller_id,
        peers=leases.controller_url if leases is not None else None,
        attestation_public_pem=public_pem(attest_key),
        audit_log=audit_log,
        authenticator=Authenticator(config.api, usage=TokenUsage(config.data_dir), on_token_use=watch.token_used),
        watch=watch,
        warm_ready=warm.ready if warm is not None else None,
        approvals=approvals,
        sessions=Sessions(ttl_s=config.console.session_ttl_s, idle_s=config.console.session_idle_s)
        if config.console.enabled
        else None,  # the web console's logins, which the API accepts with their CSRF token
    )

    def live() -> dict[str, Any]:
        stats: dict[str, Any] = {
            "pools": scheduler.pool_stats(),
            "docker": engine.stats(),
            "connections": {name: guard.stats() for name, guard in guards.items()},
        }
        if credentials is not None:
            stats["vault"] = credentials.stats()
        if runners is not None:
            stats["runners"] = runners.stats()
        if warm is not None:
            stats["warm"] = warm.stats()
        return stats

    metrics.watch(live)
    listener = None
    if config.server.webhook_port is not None:
        listener = WebhookListener(config.server, intake, limits=limits, guards=guards)
        api.readiness_checks.append(listener.readiness)
    return Controller(
        config,
        store,
        engine,
        logs,
        runner,
        scheduler,
        intake,
        api,
        metrics,
        auditor,
        audit_log,
        credentials,
        signing_keys,
        runners,
        webhook_listener=listener,
        descriptors=descriptors,
        connection_limits=limits,
        connection_guards=guards,
        callbacks=callbacks,
        artifacts=artifacts,
        warm=warm,
        engines=engines,
        cluster=Cluster(config, leases, scheduler, auditor) if leases is not None else None,
        approvals=approvals,
        alert_webhook=AlertWebhook(
            config.alerts, audit_log.path, config.data_dir, flush=auditor.flush, next_seq=lambda: audit_log.next_seq,
            controller_id=config.controller_id,
        ) if config.alerts.webhook_url is not None else None,
    )  # fmt: skip


def _oidc_routes(controller: Controller) -> list[web.RouteDef]:
    """Public, cacheable issuer documents: Vault fetches them to verify job tokens."""
    keys, issuer = controller.signing_keys, controller.config.server.public_url
    if keys is None or issuer is None:
        return []
    cache = {"Cache-Control": "public, max-age=300"}

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response(discovery_document(issuer), headers=cache)

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(keys.jwks(), headers=cache)

    return [web.get("/.well-known/openid-configuration", discovery), web.get("/.well-known/jwks.json", jwks)]


async def _every(interval_s: float, action: Callable[[], Awaitable[object]]) -> None:
    """Runs `action` now and then every `interval_s`; failures are the action's to log."""
    while True:
        await action()
        await asyncio.sleep(interval_s)


async def _rotate_keys_periodically(keys: SigningKeys, every_s: float = 60.0) -> None:
    while True:
        try:
            if await asyncio.to_thread(keys.rotate_if_due):
                log.info("oidc signing key rotated", extra={"kid": keys.active_kid})
        except Exception:
            log.exception("oidc key rotation failed; the current key stays active")
        await asyncio.sleep(every_s)


CONTROLLER = web.AppKey("controller", Controller)


async def drain(controller: Controller, drain_timeout_s: float) -> None:
    """Graceful stop: webhooks get 503 + Retry-After and /readyz turns 503 while running jobs may finish for
    `drain_timeout_s`; then the rest are cancelled (containers removed, credentials revoked)."""
    controller.intake.accepting = False
    if controller.webhook_listener is not None:
        controller.webhook_listener.stopping = True  # a worker that exits from now on is not started again
    await controller.scheduler.shutdown(drain_timeout_s)
    if controller.webhook_listener is not None:
        await controller.webhook_listener.stop()


def summarise_refusals(controller: Controller, *, final: bool = False) -> None:
    """Writes the summary of each refusal window that has ended (all of them when `final`)."""
    now = time.time()
    for throttle in (controller.intake.refusals, controller.api.refusals):
        summary = throttle.due(now, final=final)
        if summary is not None:
            controller.auditor.refusals_summarised(summary)


async def _summarise_refusals_periodically(controller: Controller, every_s: float = 5.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        summarise_refusals(controller)


def build_app(controller: Controller, *, drain_timeout_s: float = 0.0) -> web.Application:
    app = web.Application(
        client_max_size=controller.config.server.max_body_bytes,
        middlewares=proxy_middlewares(controller.config.server.trusted_networks),
    )
    app[CONTROLLER] = controller
    app.router.add_post("/webhooks/{source}", controller.intake.handle)
    app.router.add_routes(controller.api.routes())
    app.router.add_routes(_oidc_routes(controller))
    if controller.config.console.enabled and controller.api.sessions is not None:
        app.router.add_routes(Console(controller.config, controller.api, controller.api.sessions).routes())

    async def startup(app: web.Application) -> None:
        await check_pool_runtimes(controller.config, controller.engine)  # e.g. runsc missing: no start, one line
        if controller.webhook_listener is not None:  # a port in use or a broken worker: fail before any job runs
            await controller.webhook_listener.start()
        await controller.store.open()
        config = controller.config
        controller.auditor.config_loaded(config.digest(), config.controller_id, config.warnings())
        for warning in config.warnings():
            log.warning("unsafe pool option in use", extra={"warning": warning})
        for note in config.notes():
            log.warning("config note", extra={"note": note})
        if controller.descriptors is not None:
            for warning in controller.descriptors.warnings:
                log.warning("open-files limit is low", extra={"warning": warning})
        if controller.cluster is not None:
            await controller.cluster.join()  # a new lease generation before anything of its jobs is touched
        await controller.scheduler.start()
        if controller.cluster is not None:
            controller.background.append(asyncio.create_task(controller.cluster.run_forever(), name="cluster"))
        if controller.alert_webhook is not None:
            controller.background.append(asyncio.create_task(controller.alert_webhook.run_forever(), name="alerts"))
        if controller.approvals is not None:
            await controller.approvals.sweep()  # approvals that expired while no controller ran
            controller.background.append(asyncio.create_task(controller.approvals.run_forever(), name="approvals"))
        if controller.webhook_listener is not None:
            await controller.webhook_listener.open()
        if controller.signing_keys is not None:
            controller.background.append(asyncio.create_task(_rotate_keys_periodically(controller.signing_keys)))
        if controller.credentials is not None:
            controller.background.append(asyncio.create_task(_every(3600.0, controller.credentials.maintain)))
        if controller.engines is not None:
            controller.background.append(asyncio.create_task(controller.engines.probe_forever(), name="engines"))
        if controller.warm is not None:  # after reconciliation removed what a previous process left
            controller.background.append(asyncio.create_task(controller.warm.run_forever(), name="warm-pool"))
        sweep = controller.scheduler.sweep_forever(controller.config.docker.sweep_interval_s)
        controller.background.append(asyncio.create_task(sweep))
        controller.background.append(asyncio.create_task(_summarise_refusals_periodically(controller)))
        if controller.artifacts is not None:
            expire = controller.artifacts.expire
            controller.background.append(
                asyncio.create_task(_every(3600.0, lambda: asyncio.to_thread(expire)), name="artifact-retention")
            )
        if controller.callbacks is not None:
            controller.background.append(asyncio.create_task(controller.callbacks.run_forever(), name="callbacks"))
        if controller.runners is not None:
            scheduler = controller.scheduler

            async def admit(job: Job) -> tuple[Job, bool]:
                return await scheduler.admit(job, lambda stored, created: None, capped=False)

            supervise = controller.runners.run_forever(admit, scheduler.cancel)
            controller.background.append(asyncio.create_task(supervise, name="forge-runners"))
        log.info(
            "controller started",
            extra={"controller_id": controller.config.controller_id, "config_digest": controller.config.digest()},
        )

    async def shutdown(app: web.Application) -> None:
        await drain(controller, drain_timeout_s)

    async def cleanup(app: web.Application) -> None:
        if controller.webhook_listener is not None:
            await controller.webhook_listener.stop()  # also when startup failed half-way
        for task in controller.background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        summarise_refusals(controller, final=True)  # before the audit trail closes
        if controller.runners is not None:
            for forge in controller.runners.forges.values():
                await forge.close()
        await controller.store.close()
        await controller.engine.close()
        if controller.api.authenticator.usage is not None:
            controller.api.authenticator.usage.flush()

        await asyncio.to_thread(controller.auditor.close)

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    return app
