"""Builds the controller: wires store, engine, logs, scheduler, intake and API into one aiohttp application."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from orchestrator.api.routes import Api
from orchestrator.config import Config, read_source_secrets
from orchestrator.credentials.base import CredentialsBackend
from orchestrator.intake.webhooks import WebhookIntake, WebhookSource
from orchestrator.logs.store import LogStore
from orchestrator.runtime.docker_engine import DockerEngine
from orchestrator.runtime.job_runner import JobRunner
from orchestrator.scheduler import Scheduler
from orchestrator.store.base import JobStore
from orchestrator.store.sqlite import SQLiteJobStore

log = logging.getLogger(__name__)


@dataclass
class Controller:
    config: Config
    store: JobStore
    engine: DockerEngine
    logs: LogStore
    runner: JobRunner
    scheduler: Scheduler
    intake: WebhookIntake
    api: Api


def build_controller(config: Config, credentials: CredentialsBackend | None = None) -> Controller:
    data = config.data_dir
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = SQLiteJobStore(data / "jobs.sqlite3")
    engine = DockerEngine(config.docker.base_url, api_timeout_s=config.docker.api_timeout_s)
    logs = LogStore(data / "logs")
    runner = JobRunner(config, store, engine, logs, credentials)
    scheduler = Scheduler(config, store, engine, runner)
    sources = {
        name: WebhookSource(name, src.scheme, tuple(read_source_secrets(src))) for name, src in config.sources.items()
    }
    intake = WebhookIntake(config, sources, store, scheduler, credentials_configured=credentials is not None)
    api = Api(config, store, scheduler, logs, engine)
    return Controller(config, store, engine, logs, runner, scheduler, intake, api)


CONTROLLER = web.AppKey("controller", Controller)


def build_app(controller: Controller, *, drain_timeout_s: float = 0.0) -> web.Application:
    app = web.Application(client_max_size=controller.config.server.max_body_bytes)
    app[CONTROLLER] = controller
    app.router.add_post("/webhooks/{source}", controller.intake.handle)
    app.router.add_routes(controller.api.routes())

    async def startup(app: web.Application) -> None:
        await controller.store.open()
        await controller.scheduler.start()
        log.info(
            "controller started",
            extra={"controller_id": controller.config.controller_id, "config_digest": controller.config.digest()},
        )

    async def shutdown(app: web.Application) -> None:
        controller.intake.accepting = False
        await controller.scheduler.shutdown(drain_timeout_s)

    async def cleanup(app: web.Application) -> None:
        await controller.store.close()
        await controller.engine.close()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    return app
