"""Soak: hundreds of mixed jobs through one in-process controller with Vault credentials, then nothing left over.

The mix (per 10 jobs): 4 succeed (`echo ok`), 2 fail (`exit 3`), 1 times out (`sleep 60`, timeout_s=1), 1 is
cancelled through the API while running, 1 is refused by Vault's policy (a path the role may not read) and 1
succeeds after reading two real secrets (and prints them, so redaction is exercised). A 50-job warm-up of the
same mix runs first; then `ORCHESTRATOR_SOAK_JOBS` jobs (default 500) are sent at once.

Checked at the end: every job reached the state its kind calls for; no container of this controller is left and
no Docker volume or network appeared; the store agrees with Docker (nothing `starting`/`running`, no final job's
container still exists); OpenBao holds no live job token; the process's RSS grew by less than 50 MiB between
the end of the warm-up and the end of the soak (the controller runs in this process, so this is its RSS plus the
test's own small bookkeeping); no secret value is in any stored log (API or file on disk).

Durations and RSS figures are printed (run with `-s` to see them); only the RSS bound is asserted.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import docker
import pytest

from conftest import RunningController, job_spec, managed_containers
from openbao import VaultLayout
from vault_controller import start_with_openbao

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SOAK_JOBS = int(os.environ.get("ORCHESTRATOR_SOAK_JOBS", "500"))
WARMUP_JOBS = 50
CONCURRENCY = 8
RSS_GROWTH_LIMIT = 50 * 1024 * 1024
FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}

DB_PASSWORD = "soak-db-pa55word-4e7a1c9b"
API_KEY = "soak-api-key-93b2d6f0e8a1"

# Kinds in every block of ten jobs (shuffled with a fixed seed, so a run is reproducible).
MIX = ["ok"] * 4 + ["fail"] * 2 + ["timeout", "cancel", "deny", "secret"]
EXPECTED = {
    "ok": "succeeded",
    "fail": "failed",
    "timeout": "timed_out",
    "cancel": "cancelled",
    "deny": "error",
    "secret": "succeeded",
}


def _spec(kind: str, job_id: str) -> dict[str, Any]:
    if kind == "ok":
        return job_spec(job_id, commands=["echo ok"])
    if kind == "fail":
        return job_spec(job_id, commands=["exit 3"])
    if kind == "timeout":
        return job_spec(job_id, commands=["sleep 60"], timeout_s=1)
    if kind == "cancel":
        return job_spec(job_id, commands=["sleep 60"], timeout_s=120)
    if kind == "deny":
        return job_spec(job_id, secrets=[{"path": "ci/other/db", "key": "password", "name": "X"}])
    # The commands are echoed into the log, so they rebuild the values instead of spelling them out.
    return job_spec(
        job_id,
        secrets=[
            {"path": "ci/default/db", "key": "password", "name": "DB_PASSWORD"},
            {"path": "ci/default/api", "key": "key", "name": "API_KEY", "deliver": "env"},
        ],
        commands=[
            'P=$(printf %s soak-db-pa55 word-4e7a1c9b | tr -d " ")',
            'test "$(cat /run/secrets/DB_PASSWORD)" = "$P" && echo file-ok',
            'test "$API_KEY" = "$(printf %s soak-api-key-93b2 d6f0e8a1 | tr -d " ")" && echo env-ok',
            "cat /run/secrets/DB_PASSWORD; echo; echo $API_KEY",
        ],
    )


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


@pytest.fixture
def vault(vault_layout: Any) -> VaultLayout:
    layout: VaultLayout = vault_layout()
    return layout


async def _start_with_vault(controller_factory: Any, vault: VaultLayout) -> RunningController:
    ctl = await start_with_openbao(
        controller_factory,
        vault,
        retry_budget_s=5.0,
        top={"max_total_concurrent": CONCURRENCY},
        pool={"max_concurrent": CONCURRENCY, "memory": "32m", "pids": 32, "max_queue": 2000},
    )

    def seed() -> None:
        vault.put_kv("ci/default/db", {"password": DB_PASSWORD})
        vault.put_kv("ci/default/api", {"key": API_KEY})
        vault.put_kv("ci/other/db", {"password": "soak-other-pool-password"})

    await asyncio.to_thread(seed)
    return ctl


async def _list_jobs(ctl: RunningController, status: str, limit: int = 1000) -> list[dict[str, Any]]:
    code, body = await ctl.api("GET", f"/api/v1/jobs?limit={limit}&status={status}")
    assert code == 200, body
    return list(body["jobs"])


async def _views(ctl: RunningController, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every job's view, one GET each (the list endpoint caps `limit` at 1000)."""
    gate = asyncio.Semaphore(16)

    async def one(job_id: str) -> dict[str, Any]:
        async with gate:
            return await ctl.job(job_id)

    return dict(zip(job_ids, await asyncio.gather(*(one(j) for j in job_ids)), strict=True))


async def _run_batch(ctl: RunningController, kinds: dict[str, str], *, timeout_s: float) -> dict[str, dict[str, Any]]:
    """Sends every job at once, cancels each `cancel` job as soon as the API shows it running, waits until no job
    is queued, starting or running any more, and returns the views of all of them."""
    results = await asyncio.gather(*(ctl.post_webhook(_spec(kind, job_id)) for job_id, kind in kinds.items()))
    refused = [(job_id, r) for job_id, r in zip(kinds, results, strict=True) if r[0] != 202]
    assert not refused, refused[:5]
    to_cancel = {job_id for job_id, kind in kinds.items() if kind == "cancel"}
    cancels: list[asyncio.Task[tuple[int, Any]]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        # In the order jobs move through the states, so none can slip between two queries unseen.
        queued = await _list_jobs(ctl, "queued", limit=1)
        starting = await _list_jobs(ctl, "starting", limit=1)
        running = await _list_jobs(ctl, "running")
        for job in running:
            if job["job_id"] in to_cancel:
                to_cancel.discard(job["job_id"])
                cancels.append(asyncio.create_task(ctl.api("POST", f"/api/v1/jobs/{job['job_id']}/cancel")))
        if not (queued or starting or running):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs still running after {timeout_s} s: {[j['job_id'] for j in running]}")
        await asyncio.sleep(0.25)
    for code, body in await asyncio.gather(*cancels):
        assert code == 200, body
    views = await _views(ctl, list(kinds))
    left = Counter(v["status"] for v in views.values() if v["status"] not in FINAL)
    assert not left, f"jobs not final: {dict(left)}"
    return views


def _check_outcomes(kinds: dict[str, str], views: dict[str, dict[str, Any]]) -> None:
    wrong = []
    for job_id, kind in kinds.items():
        view = views[job_id]
        ok = view["status"] == EXPECTED[kind]
        if kind == "fail":
            ok = ok and view["exit_code"] == 3
        elif kind == "deny":
            ok = ok and "permission denied" in (view["reason"] or "") and view["container_id"] is None
        elif kind == "cancel":
            ok = ok and (view["reason"] or "").startswith("cancelled by")
        if not ok:
            wrong.append((kind, job_id, view["status"], view["exit_code"], view["reason"]))
    assert not wrong, f"{len(wrong)} jobs ended wrongly, e.g. {wrong[:5]}"


@pytest.mark.timeout(900)
async def test_soak_mixed_jobs_leave_nothing_behind(
    controller_factory: Any, vault: VaultLayout, docker_client: docker.DockerClient
) -> None:
    volumes_before = {v.id for v in docker_client.volumes.list()}
    networks_before = {n.id for n in docker_client.networks.list()}
    ctl = await _start_with_vault(controller_factory, vault)
    rng = random.Random(1234)  # a reproducible mix

    def kinds_for(prefix: str, count: int) -> dict[str, str]:
        order: list[str] = []
        while len(order) < count:
            block = list(MIX)
            rng.shuffle(block)
            order += block
        return {f"{prefix}-{n:04d}": kind for n, kind in enumerate(order[:count])}

    began = time.monotonic()
    warmup = kinds_for("warm", WARMUP_JOBS)
    _check_outcomes(warmup, await _run_batch(ctl, warmup, timeout_s=300))
    warmup_s = time.monotonic() - began
    gc.collect()
    rss_before = _rss_bytes()

    soak_began = time.monotonic()
    soak = kinds_for("soak", SOAK_JOBS)
    views = await _run_batch(ctl, soak, timeout_s=max(300.0, SOAK_JOBS * 1.5))
    soak_s = time.monotonic() - soak_began
    gc.collect()
    rss_after = _rss_bytes()
    print(
        f"\nsoak: {SOAK_JOBS} jobs in {soak_s:.1f} s ({SOAK_JOBS / soak_s * 60:.0f} jobs/min, concurrency "
        f"{CONCURRENCY}); warm-up {WARMUP_JOBS} jobs in {warmup_s:.1f} s; "
        f"states {dict(sorted(Counter(v['status'] for v in views.values()).items()))}\n"
        f"soak: RSS after warm-up {_mib(rss_before)}, after soak {_mib(rss_after)}, "
        f"growth {_mib(rss_after - rss_before)} (limit {_mib(RSS_GROWTH_LIMIT)})"
    )
    _check_outcomes(soak, views)

    # Nothing left in Docker, and the store agrees with it.
    assert managed_containers(docker_client, ctl.controller_id) == []
    new_volumes = {v.id for v in docker_client.volumes.list()} - volumes_before
    new_networks = {n.id for n in docker_client.networks.list()} - networks_before
    assert not new_volumes, f"volumes appeared during the soak: {sorted(new_volumes)}"
    assert not new_networks, f"networks appeared during the soak: {sorted(new_networks)}"
    stored = await ctl.controller.store.list_jobs(limit=10 * (SOAK_JOBS + WARMUP_JOBS))
    assert len(stored) == SOAK_JOBS + WARMUP_JOBS
    by_state = Counter(j.state.value for j in stored)
    assert not by_state.keys() - FINAL, by_state
    existing = {c["Id"] for c in docker_client.api.containers(all=True)}
    still_there = [j.id for j in stored if j.container_id and j.container_id in existing]
    assert not still_there, f"final jobs whose container still exists: {still_there[:5]}"
    assert sum(1 for j in stored if j.container_id) >= (SOAK_JOBS + WARMUP_JOBS) * 8 // 10

    # Vault: every job token was revoked, whatever way the job ended.
    assert await asyncio.to_thread(vault.job_tokens) == []

    # No secret value in any stored log, through the API or on disk; the secret jobs did see their values.
    for job_id, kind in {**warmup, **soak}.items():
        if kind == "secret":
            log = await ctl.logs(job_id)
            assert b"file-ok" in log and b"env-ok" in log and log.count(b"[MASKED]") >= 2, log
            assert DB_PASSWORD.encode() not in log and API_KEY.encode() not in log
    log_files = list((ctl.config.data_dir / "logs").glob("*.log"))
    assert len(log_files) == SOAK_JOBS + WARMUP_JOBS
    for f in log_files:
        data = f.read_bytes()
        assert DB_PASSWORD.encode() not in data and API_KEY.encode() not in data, f

    assert rss_after - rss_before < RSS_GROWTH_LIMIT
