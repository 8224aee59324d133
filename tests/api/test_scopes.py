"""Every API route for every kind of grant (role x scope), on a controller over the in-memory runtime: who sees
which job (404 for a job outside one's scope, as for one that does not exist), who may act on it (403 when one sees
it but lacks the role there), and what needs a controller-wide grant."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator.config import hash_token

from conftest import TEST_IMAGE, RunningController, job_spec
from fakes import runs

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}

# name -> (role, pools, repositories)
GRANTS: dict[str, tuple[str, list[str] | None, list[str] | None]] = {
    "viewer": ("viewer", None, None),
    "gpu_viewer": ("viewer", ["gpu"], None),
    "app_viewer": ("viewer", None, ["org/app*"]),
    "operator": ("operator", None, None),
    "gpu_operator": ("operator", ["gpu"], None),
    "admin": ("admin", None, None),
    "auditor": ("auditor", None, None),
    "app_auditor": ("auditor", None, ["org/app*"]),
    "app_approver": ("approver", None, ["org/app*"]),
}
# The jobs: A in pool default from org/app, G in pool gpu from org/other, E in pool default from evil/x.
JOBS = {"A": ("default", "org/app"), "G": ("gpu", "org/other"), "E": ("default", "evil/x")}
SEES = {
    "viewer": "AGE", "gpu_viewer": "G", "app_viewer": "A", "operator": "AGE", "gpu_operator": "G", "admin": "AGE",
    "auditor": "AGE", "app_auditor": "A", "app_approver": "A",
}  # fmt: skip
OPERATES = {"operator": "AGE", "gpu_operator": "G", "admin": "AGE"}
CONTROLLER_WIDE_VIEWERS = {"viewer", "operator", "admin", "auditor"}


@dataclass
class World:
    ctl: RunningController
    tokens: dict[str, str]
    jobs: dict[str, str]  # A/G/E -> job id

    async def call(self, method: str, path: str, who: str | None) -> tuple[int, Any]:
        if who is None:
            async with self.ctl.session.request(method, f"{self.ctl.url}{path}") as resp:
                return resp.status, await resp.read()
        return await self.ctl.api(method, path, token=self.tokens[who])

    async def wait(self, job_id: str, statuses: set[str]) -> None:
        for _ in range(400):
            if (await self.call("GET", f"/api/v1/jobs/{job_id}", "admin"))[1]["status"] in statuses:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} never reached {statuses}")


@pytest.fixture
async def world(fake_controller_factory: Any) -> AsyncIterator[World]:
    tokens = {name: secrets.token_urlsafe(16) for name in GRANTS}
    entries = []
    for name, (role, pools, repositories) in GRANTS.items():
        entry: dict[str, Any] = {"name": name, "role": role, "sha256": hash_token(tokens[name])}
        if pools is not None:
            entry["pools"] = pools
        if repositories is not None:
            entry["repositories"] = repositories
        entries.append(entry)
    pool = {"image": TEST_IMAGE, "memory": "128m", "pids": 64, "max_concurrent": 4}
    settings = {"api": {"tokens": entries}, "pools": {"default": pool, "gpu": pool}}
    ctl: RunningController = await fake_controller_factory(settings=settings)
    jobs = {}
    for key, (pool_name, repository) in JOBS.items():
        spec = job_spec(pool=pool_name, repository=repository)
        assert (await ctl.post_webhook(spec))[0] == 202
        jobs[key] = spec["id"]
    w = World(ctl, tokens, jobs)
    for job_id in jobs.values():
        await w.wait(job_id, FINAL)
    yield w


PRINCIPALS = list(GRANTS)
JOB_ROUTES = ["", "/logs", "/attestation"]


@pytest.mark.parametrize("who", PRINCIPALS)
async def test_the_job_list_shows_only_jobs_in_scope(world: World, who: str) -> None:
    status, body = await world.call("GET", "/api/v1/jobs", who)
    assert status == 200
    assert {j["job_id"] for j in body["jobs"]} == {world.jobs[k] for k in SEES[who]}
    status, body = await world.call("GET", "/api/v1/jobs?pool=gpu", who)
    assert {j["job_id"] for j in body["jobs"]} == {world.jobs[k] for k in SEES[who] if JOBS[k][0] == "gpu"}


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("route", JOB_ROUTES)
async def test_a_job_outside_ones_scope_does_not_exist(world: World, who: str, route: str) -> None:
    for key, job_id in world.jobs.items():
        status, body = await world.call("GET", f"/api/v1/jobs/{job_id}{route}", who)
        if key in SEES[who]:
            assert status == 200, (who, key, route, body)
        else:
            assert (status, body) == (404, {"error": f"no job {job_id!r}"}), (who, key, route)


@pytest.mark.parametrize("who", PRINCIPALS)
async def test_artifacts_follow_the_jobs_scope(world: World, who: str) -> None:
    for key, job_id in world.jobs.items():
        listed = await world.call("GET", f"/api/v1/jobs/{job_id}/artifacts", who)
        one = await world.call("GET", f"/api/v1/jobs/{job_id}/artifacts/report.xml", who)
        if key in SEES[who]:  # visible, but it has none
            assert listed[0] == 404 and "has no artifacts" in listed[1]["error"]
            assert one[0] == 404 and "has no artifact 'report.xml'" in one[1]["error"]
        else:
            assert listed == one == (404, {"error": f"no job {job_id!r}"})


@pytest.mark.parametrize("who", PRINCIPALS)
async def test_cancel_needs_an_operator_grant_for_the_jobs_pool_and_repository(world: World, who: str) -> None:
    for key, job_id in world.jobs.items():
        status, body = await world.call("POST", f"/api/v1/jobs/{job_id}/cancel", who)
        if who not in OPERATES:  # no operator grant anywhere: refused before the job is looked at
            assert (status, body["error"].split("; ")[-1]) == (403, "this needs an operator grant"), (who, key)
        elif key in OPERATES[who]:
            assert status == 409 and "already ended" in body["error"], (who, key)  # allowed: it has ended
        elif key in SEES[who]:
            assert status == 403 and "no operator grant" in body["error"] and who in body["error"], (who, key)
        else:
            assert status == 404, (who, key)


APPROVES = {"admin": "AGE", "app_approver": "A"}


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("decision", ["approve", "reject"])
async def test_decisions_need_an_approver_grant_for_the_jobs_scope(world: World, who: str, decision: str) -> None:
    for key, job_id in world.jobs.items():
        status, body = await world.call("POST", f"/api/v1/jobs/{job_id}/{decision}", who)
        if who not in APPROVES:
            assert (status, body["error"].split("; ")[-1]) == (403, "this needs an approver grant"), (who, key)
        elif key in APPROVES[who]:  # allowed; the job has ended, so there is nothing to decide
            assert status == 409 and "not awaiting approval" in body["error"], (who, key, body)
        else:
            assert (status, body) == (404, {"error": f"no job {job_id!r}"}), (who, key)


async def test_a_running_job_is_cancelled_by_an_operator_of_its_pool(world: World) -> None:
    ctl = world.ctl
    ctl.controller.engine.program = lambda spec: runs(b"busy\n", exit_code=None)
    spec = job_spec(pool="gpu", repository="org/other", commands=["sleep 60"])
    assert (await ctl.post_webhook(spec))[0] == 202
    await world.wait(spec["id"], {"running"})
    assert (await world.call("POST", f"/api/v1/jobs/{spec['id']}/cancel", "gpu_viewer"))[0] == 403
    status, body = await world.call("POST", f"/api/v1/jobs/{spec['id']}/cancel", "gpu_operator")
    assert status == 200 and body["status"] == "cancelled" and body["reason"] == "cancelled by gpu_operator"


@pytest.mark.parametrize("who", PRINCIPALS)
async def test_controller_wide_routes_need_a_controller_wide_grant(world: World, who: str) -> None:
    metrics = await world.call("GET", "/metrics", who)
    assert metrics[0] == (200 if who in CONTROLLER_WIDE_VIEWERS else 403), who
    head = await world.call("GET", "/api/v1/audit/head", who)
    assert head[0] == (200 if who in {"auditor", "admin"} else 403), who
    drain = await world.call("POST", "/api/v1/engines/default/drain", who)
    # Allowed for a controller-wide operator: then 404, as this controller has one engine and no [engines].
    assert drain[0] == (404 if who in {"operator", "admin"} else 403), (who, drain)
    if drain[0] == 403:
        assert "controller-wide operator grant" in drain[1]["error"]


@pytest.mark.parametrize("who", PRINCIPALS)
async def test_audit_search_is_for_auditors_and_scoped_like_the_jobs(world: World, who: str) -> None:
    status, body = await world.call("GET", "/api/v1/audit?limit=1000", who)
    if who not in {"auditor", "admin", "app_auditor"}:
        assert status == 403 and "needs an auditor grant" in body["error"], (who, body)
        return
    assert status == 200 and body["next_cursor"] is None
    records = [hit["record"] for hit in body["records"]]
    targets = {r["target"] for r in records}
    if who == "app_auditor":  # only records about job A: nothing about the others, nor about no job
        assert targets == {world.jobs["A"]}, targets
    else:
        assert {world.jobs[k] for k in "AGE"} <= targets and "config.loaded" in {r["action"] for r in records}
    # Each hit carries its record hash: the next record's prev, as `orchestrator audit verify` chains them.
    hits = body["records"]
    for first, second in itertools.pairwise(hits):
        if second["seq"] == first["seq"] + 1:
            assert second["record"]["prev"] == first["hash"]


async def test_audit_search_filters_pages_and_refuses_bad_queries(world: World) -> None:
    job = world.jobs["G"]
    status, body = await world.call("GET", f"/api/v1/audit?job={job}&action=job.state", "auditor")
    assert status == 200 and [h["record"]["outcome"] for h in body["records"]][-1] == "succeeded"
    assert {h["record"]["target"] for h in body["records"]} == {job}
    first = await world.call("GET", "/api/v1/audit?limit=2", "auditor")
    assert len(first[1]["records"]) == 2 and first[1]["next_cursor"] is not None
    second = await world.call("GET", f"/api/v1/audit?limit=2&after={first[1]['next_cursor']}", "auditor")
    assert second[1]["records"][0]["seq"] > first[1]["records"][-1]["seq"]
    bad = await world.call("GET", "/api/v1/audit?since=yesterday", "auditor")
    assert bad[0] == 400 and bad[1]["error"].startswith("since: bad time 'yesterday'")
    assert (await world.call("GET", "/api/v1/audit?limit=0", "auditor"))[0] == 400
    none = await world.call("GET", "/api/v1/audit?until=2000-01-01", "auditor")
    assert none == (200, {"records": [], "next_cursor": None})
    mine = await world.call("GET", "/api/v1/audit?actor=auditor&action=api.*", "admin")
    assert {h["record"]["action"] for h in mine[1]["records"]} == {"api.audit_search"}


@pytest.mark.parametrize("who", PRINCIPALS)
async def test_routes_any_grant_may_use(world: World, who: str) -> None:
    assert (await world.call("GET", "/api/v1/attestation-key", who))[0] == 200
    assert (await world.call("GET", "/api/v1/runners", who)) == (200, {"runners": []})
    assert (await world.call("GET", "/api/v1/engines", who))[0] == 404  # one engine: nothing to list
    status, pools = await world.call("GET", "/api/v1/pools", who)
    expected = ["gpu"] if GRANTS[who][1] == ["gpu"] else ["default", "gpu"]
    assert status == 200 and [p["name"] for p in pools["pools"]] == expected
    assert all(p["queued"] == p["running"] == p["warm"] == 0 and p["max_concurrent"] == 4 for p in pools["pools"])
    status, me = await world.call("GET", "/api/v1/whoami", who)
    role, pools, repositories = GRANTS[who]
    assert status == 200 and me == {
        "name": who, "kind": "token", "grants": [{"role": role, "pools": pools, "repositories": repositories}]
    }  # fmt: skip


ROUTES = [
    ("GET", "/api/v1/jobs"), ("GET", "/api/v1/jobs/{A}"), ("GET", "/api/v1/jobs/{A}/logs"),
    ("POST", "/api/v1/jobs/{A}/cancel"), ("POST", "/api/v1/jobs/{A}/approve"), ("POST", "/api/v1/jobs/{A}/reject"),
    ("GET", "/api/v1/jobs/{A}/attestation"), ("GET", "/api/v1/jobs/{A}/artifacts"),
    ("GET", "/api/v1/jobs/{A}/artifacts/x"), ("GET", "/api/v1/attestation-key"), ("GET", "/api/v1/audit/head"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/engines"), ("POST", "/api/v1/engines/default/drain"), ("POST", "/api/v1/engines/default/undrain"),
    ("GET", "/api/v1/runners"), ("GET", "/api/v1/whoami"), ("GET", "/metrics"), ("GET", "/api/v1/pools"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_refuses_no_token_and_an_unknown_one(world: World, method: str, path: str) -> None:
    path = path.format(**world.jobs)
    status, _ = await world.call(method, path, None)
    assert status == 401
    world.tokens["nobody"] = "not-a-configured-token"
    assert (await world.call(method, path, "nobody"))[0] == 401


async def test_the_matrix_covers_every_api_route(world: World) -> None:
    served = {(r.method, r.path) for r in world.ctl.controller.api.routes() if r.path.startswith(("/api/", "/metrics"))}
    canonical = {"{A}": "{job_id}", "artifacts/x": "artifacts/{name:.+}", "engines/default": "engines/{name}"}
    listed = set()
    for method, path in ROUTES:
        for mine, theirs in canonical.items():
            path = path.replace(mine, theirs)
        listed.add((method, path))
    assert served == listed
