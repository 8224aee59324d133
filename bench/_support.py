"""Shared helpers for the benchmark scripts in bench/: an in-process controller on 127.0.0.1, signed webhooks,
percentiles, a compact table, and the leftover-container check every script ends with.

Not a test helper: nothing here asserts on timings. The config mirrors tests/conftest.py `make_config` (same
pool defaults, standard-webhooks source, operator and viewer tokens) so figures match what the tests exercise.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shlex
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from aiohttp import web

from orchestrator.app import Controller, build_app, build_controller
from orchestrator.config import Config, hash_token
from orchestrator.intake.signatures import sign
from orchestrator.platform import structured_logs
from orchestrator.platform.serving import LISTEN_BACKLOG, app_runner
from orchestrator.runtime.container_spec import LABEL_CONTROLLER

TEST_IMAGE = os.environ.get("ORCHESTRATOR_TEST_IMAGE", "runner-orchestrator/test-runner:local")
SOURCE = "bench"
SCHEME = "standard-webhooks"


def proc_cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def new_controller_id() -> str:
    return f"bench-{uuid.uuid4().hex[:10]}"


def write_serve_config(
    directory: Path, controller_id: str, *, total: int, top: str = "", tail: str
) -> tuple[Path, bytes, str]:
    """A TOML config for `orchestrator serve` run as its own process (the shape of make_config): a signing secret,
    an operator token, port 0 (the controller names its port in its `listening` line); `top` goes with the
    top-level keys, `tail` (pools, engines, storage ...) after the tables. Returns (path, webhook key, token)."""
    key, secret_file = write_secret(directory)
    token = os.urandom(16).hex()
    q = json.dumps  # TOML basic strings accept JSON string escapes for these values
    text = f"""
controller_id = {q(controller_id)}
data_dir = {q(str(directory / "data"))}
max_total_concurrent = {total}
{top}
[server]
host = "127.0.0.1"
port = 0

[docker]
stop_grace_s = 1

[sources.{SOURCE}]
scheme = "standard-webhooks"
secret_file = {q(str(secret_file))}

[[api.tokens]]
name = "ops"
role = "operator"
sha256 = {q(hash_token(token))}
{tail}"""
    path = directory / "orchestrator.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path, key, token


def write_secret(directory: Path) -> tuple[bytes, Path]:
    key = secrets.token_bytes(24)
    path = directory / "webhook.secret"
    path.write_text("whsec_" + base64.b64encode(key).decode())
    path.chmod(0o600)
    return key, path


def make_config(
    directory: Path,
    *,
    controller_id: str,
    secret_file: Path,
    token: str,
    viewer: str,
    top: dict[str, Any] | None = None,
    pools: dict[str, dict[str, Any]] | None = None,
    **pool: Any,
) -> Config:
    """Same shape as tests/conftest.py `make_config` (kept in sync by hand: bench/ imports nothing from tests/ but
    the pytest-free tests/openbao.py and tests/ports.py).
    `top` overrides top-level fields (e.g. queue caps); `pool` overrides the default pool's fields; `pools` adds
    pools, each the default pool with the given overrides."""
    pool_cfg: dict[str, Any] = {
        "image": TEST_IMAGE,
        "memory": "128m",
        "cpus": 1.0,
        "pids": 64,
        "max_concurrent": 4,
        "default_timeout_s": 60,
        "max_timeout_s": 300,
    }
    pool_cfg.update(pool)
    raw = {
        "controller_id": controller_id,
        "data_dir": str(directory / "data"),
        "server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 64 * 1024},
        "docker": {"stop_grace_s": 1},
        "sources": {SOURCE: {"scheme": SCHEME, "secret_file": str(secret_file)}},
        "api": {
            "tokens": [
                {"name": "ops", "role": "operator", "sha256": hash_token(token)},
                {"name": "dash", "role": "viewer", "sha256": hash_token(viewer)},
            ]
        },
        "pools": {"default": pool_cfg, **{name: {**pool_cfg, **over} for name, over in (pools or {}).items()}},
        "max_total_concurrent": 8,
    }
    raw.update(top or {})
    return Config.model_validate(raw)


def job_spec(job_id: str, commands: Sequence[str], **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "version": 1,
        "id": job_id,
        "pool": "default",
        "repository": "example/app",
        "ref": "refs/heads/main",
        "sha": "3f786850e387550fdab836ed7e6dc881de23001b",
        "commands": list(commands),
    }
    spec.update(overrides)
    return spec


def signed(key: bytes, spec: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(spec).encode()
    headers = sign(SCHEME, key, body, msg_id=f"msg_{secrets.token_hex(8)}", timestamp=int(time.time()))
    headers["Content-Type"] = "application/json"
    return body, headers


@dataclass
class Served:
    url: str
    runner: web.AppRunner


async def serve(app: web.Application) -> Served:
    """Serve `app` on 127.0.0.1 with an ephemeral port, the way `orchestrator serve` does (no access log)."""
    runner = app_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=LISTEN_BACKLOG)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return Served(f"http://127.0.0.1:{port}", runner)


@dataclass
class BenchController:
    controller: Controller
    served: Served
    key: bytes
    token: str
    viewer: str

    @property
    def url(self) -> str:
        return self.served.url


async def start_controller(
    directory: Path,
    controller_id: str,
    *,
    top: dict[str, Any] | None = None,
    pools: dict[str, dict[str, Any]] | None = None,
    **pool: Any,
) -> BenchController:
    key, secret_file = write_secret(directory)
    token, viewer = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    cfg = make_config(
        directory,
        controller_id=controller_id,
        secret_file=secret_file,
        token=token,
        viewer=viewer,
        top=top,
        pools=pools,
        **pool,
    )
    controller = build_controller(cfg)
    served = await serve(build_app(controller))
    return BenchController(controller, served, key, token, viewer)


def configure_logging(mode: str, directory: Path) -> None:
    """`json`: what `orchestrator serve` does (structured_logs.configure at level info), into a file instead of
    stderr/journald. `none`: the controller's info lines are filtered out before they are formatted."""
    if mode == "none":
        logging.getLogger().setLevel(logging.WARNING)
        return
    structured_logs.configure("info", logging.FileHandler(directory / "controller.log"))


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); good enough for a few dozen to a few thousand samples."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def reproduce_line(script: str, argv: Sequence[str]) -> str:
    return (
        "reproduce: cd "
        + shlex.quote(str(Path(__file__).resolve().parent.parent))
        + " && "
        + shlex.join([".venv/bin/python", script, *argv])
    )


def machine_line() -> str:
    load = os.getloadavg()
    return (
        f"machine: cpus={os.cpu_count()} load1={load[0]:.2f} python={sys.version.split()[0]} "
        f"date={time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )


def leftovers(client: docker.DockerClient, controller_id: str) -> list[str]:
    found = client.containers.list(all=True, filters={"label": f"{LABEL_CONTROLLER}={controller_id}"})
    return [str(c.name) for c in found]


def check_no_leftovers(client: docker.DockerClient, controller_id: str) -> None:
    """Force-removes anything still labelled with `controller_id`, then fails loudly if there was something."""
    names = leftovers(client, controller_id)
    for name in names:
        client.api.remove_container(name, force=True, v=True)
    label = f"label={LABEL_CONTROLLER}={controller_id}"
    print(f"cleanup: `docker ps -a --filter {label}` -> {len(leftovers(client, controller_id))} containers")
    assert not names, f"containers left behind (now force-removed): {names}"
