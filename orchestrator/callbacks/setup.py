"""The callback targets and dispatcher a config describes (wiring, for orchestrator/app.py). Secrets and tokens are
read from their files here, once, and held only by the targets."""

from __future__ import annotations

import functools

from orchestrator.callbacks.backoff import RetryPolicy
from orchestrator.callbacks.dispatcher import Dispatcher
from orchestrator.callbacks.outbox import CALLBACK, STATUS, OutboxTargets
from orchestrator.callbacks.routing import callback_url, outbox_targets
from orchestrator.callbacks.senders import CallbackTarget, CommitStatusTarget, Target
from orchestrator.config import Config, SourceConfig, read_callback_secret, read_status_token
from orchestrator.evidence.auditor import Auditor
from orchestrator.jobs.states import Job
from orchestrator.platform.metrics import Metrics
from orchestrator.store.base import JobStore


def wanted(config: Config) -> bool:
    return any(src.callbacks is not None or src.commit_status is not None for src in config.sources.values())


def store_outbox(config: Config) -> OutboxTargets | None:
    """What the store is given to write outbox rows with state changes; None without any callbacks configured."""
    return outbox_targets(config) if wanted(config) else None


def _url_of(source: SourceConfig, job: Job) -> str | None:
    return callback_url(source, job)


def build_targets(config: Config) -> dict[tuple[str, str], Target]:
    public_url = config.server.public_url
    targets: dict[tuple[str, str], Target] = {}
    for name, src in config.sources.items():
        if src.callbacks is not None:
            secret = read_callback_secret(src.callbacks.secret_file)
            targets[(name, CALLBACK)] = CallbackTarget(secret, functools.partial(_url_of, src), public_url=public_url)
        if src.commit_status is not None:
            status = src.commit_status
            token = read_status_token(status.token_file)
            targets[(name, STATUS)] = CommitStatusTarget(
                status.kind, status.base_url, token, context=status.context, public_url=public_url
            )
    return targets


def build_dispatcher(config: Config, store: JobStore, metrics: Metrics, auditor: Auditor) -> Dispatcher | None:
    if not wanted(config):
        return None
    settings = config.callbacks
    policy = RetryPolicy(
        retry_for_s=settings.retry_for_s,
        initial_s=settings.backoff_initial_s,
        max_s=settings.backoff_max_s,
        jitter_s=settings.jitter_s,
    )
    return Dispatcher(
        store,
        build_targets(config),
        controller_id=config.controller_id,
        policy=policy,
        metrics=metrics,
        auditor=auditor,
        request_timeout_s=settings.request_timeout_s,
        poll_interval_s=settings.poll_interval_s,
        max_in_flight=settings.max_in_flight,
    )
