"""Prometheus metrics. One registry per controller (tests run several in one process); counters the adapters
already keep (Docker/Vault retries and errors) and live gauges (queue depth, running jobs) are read at scrape
time instead of being pushed from every code path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        live = self._read()
        depth = GaugeMetricFamily("orchestrator_queue_depth", "Jobs accepted and waiting to start", labels=["pool"])
        running = GaugeMetricFamily("orchestrator_jobs_running", "Jobs starting or running", labels=["pool"])
        for pool, (queued, run) in sorted(live["pools"].items()):
            depth.add_metric([pool], queued)
            running.add_metric([pool], run)
        yield depth
        yield running
        connections = live.get("connections", {})
        open_now = GaugeMetricFamily(
            "orchestrator_http_connections_open", "Open HTTP connections, by listener", labels=["listener"]
        )
        closed = CounterMetricFamily(
            "orchestrator_http_connections_closed",
            "Connections the controller closed: shed (the oldest idle, at the cap), refused (at the cap, all busy), "
            "head_timeout (no complete request head in time)",
            labels=["listener", "why"],
        )
        for listener, stats in sorted(connections.items()):
            open_now.add_metric([listener], stats["open"])
            for why in ("shed", "refused", "head_timeout"):
                closed.add_metric([listener, why], stats[why])
        yield open_now
        yield closed
        runners = live.get("runners")
        if runners is not None:
            gauge = GaugeMetricFamily(
                "orchestrator_runners",
                "Forge runners by pool and state: queued (no container yet), idle (up, no job taken), busy",
                labels=["pool", "state"],
            )
            for pool, counts in sorted(runners["pools"].items()):
                for state in ("queued", "idle", "busy"):
                    gauge.add_metric([pool, state], counts.get(state, 0))
            yield gauge
            calls = CounterMetricFamily("orchestrator_forge_api_calls", "Forge API requests", labels=["source"])
            waits = CounterMetricFamily(
                "orchestrator_forge_rate_limit_waits", "Waits for a forge's rate limit to reset", labels=["source"]
            )
            budget = GaugeMetricFamily(
                "orchestrator_forge_rate_limit_remaining",
                "Requests left in the forge's rate-limit window, as it last said (-1: unknown)",
                labels=["source"],
            )
            for source, stats in sorted(runners["forges"].items()):
                calls.add_metric([source], stats.get("calls", 0))
                waits.add_metric([source], stats.get("rate_limit_waits", 0))
                budget.add_metric([source], stats.get("rate_limit_remaining", -1))
            yield calls
            yield waits
            yield budget
        for system in ("docker", "vault"):
            stats = live.get(system)
            if stats is None:
                continue
            errors = CounterMetricFamily(f"orchestrator_{system}_errors", f"{system} calls that failed for good")
            errors.add_metric([], stats["errors"])
            retries = CounterMetricFamily(f"orchestrator_{system}_retries", f"{system} calls retried")
            retries.add_metric([], stats["retries"])
            yield errors
            yield retries


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs_finished = Counter(
            "orchestrator_jobs_finished",
            "Jobs that reached a final state",
            ["pool", "state"],
            registry=self.registry,
        )
        self.webhooks_accepted = Counter(
            "orchestrator_webhooks_accepted", "Webhooks that created a job", ["source"], registry=self.registry
        )
        self.webhook_rejections = Counter(
            "orchestrator_webhook_rejections", "Webhooks refused, by reason", ["reason"], registry=self.registry
        )
        self.access_alerts = Counter(
            "orchestrator_access_alerts",
            "Unusual access detected (access/alerts.py), by kind: failed_auth, log_reads, secret_jobs, off_hours",
            ["kind"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "orchestrator_api_auth_failures",
            "API requests refused for a missing or invalid token, or while their address was limited, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.intake_worker_restarts = Counter(
            "orchestrator_intake_worker_restarts",
            "Intake worker processes started again after one died",
            registry=self.registry,
        )
        self.start_latency = Histogram(
            "orchestrator_job_start_seconds",
            "Webhook accepted → container started",
            ["pool"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.forge_events = Counter(
            "orchestrator_forge_events",
            "Forge webhook deliveries (GitHub, Gitea), by source, event and what was done",
            ["source", "event", "outcome"],
            registry=self.registry,
        )
        self.runner_online = Histogram(
            "orchestrator_runner_online_seconds",
            "A forge job's runner requested → the forge says a runner of ours took a job (in_progress)",
            ["pool"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.engine_state = Gauge(
            "orchestrator_engine_state",
            "Each Docker engine's state: 1 for the one it is in (healthy, unhealthy, draining)",
            ["engine", "state"],
            registry=self.registry,
        )
        self.warm_ready = Gauge(
            "orchestrator_warm_ready",
            "Warm containers started and waiting for a job, by pool",
            ["pool"],
            registry=self.registry,
        )
        self.warm_claims = Counter(
            "orchestrator_warm_claims",
            "Jobs started, by pool and whether a warm container served them (warm) or one was made for them (cold)",
            ["pool", "how"],
            registry=self.registry,
        )
        self.warm_refill = Histogram(
            "orchestrator_warm_refill_seconds",
            "Making one warm container: create, attach, start",
            ["pool"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.warm_replaced = Counter(
            "orchestrator_warm_replaced",
            "Warm containers removed unused, by pool and cause (age, config, image, died, engine, outage, shutdown)",
            ["pool", "cause"],
            registry=self.registry,
        )
        self.callbacks_pending = Gauge(
            "orchestrator_callbacks_pending",
            "Status callback and commit status deliveries waiting in the outbox, by target (callback, status)",
            ["target"],
            registry=self.registry,
        )
        self.callback_deliveries = Counter(
            "orchestrator_callback_deliveries",
            "Outbox deliveries that ended, by target and outcome (delivered, failed: given up)",
            ["target", "outcome"],
            registry=self.registry,
        )
        self.callback_attempts_failed = Counter(
            "orchestrator_callback_attempts_failed",
            "Delivery attempts that failed and were retried or given up, by target",
            ["target"],
            registry=self.registry,
        )
        self.teardown = Histogram(
            "orchestrator_container_teardown_seconds",
            "Job ended → its container removed",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 120),
            registry=self.registry,
        )

    def watch(self, read: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_LiveCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
