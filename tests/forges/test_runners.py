"""Forge runners through a whole controller on the in-memory runtime and an in-memory forge: GitHub's published
`workflow_job` payloads (signed as GitHub signs them) become runner jobs whose containers get a one-time
registration over stdin; the forge's progress is recorded; overstaying runners are removed; reconciliation deletes
orphan registrations and serves queued jobs no webhook announced. No Docker, no HTTP forge: the real client and
container are tested against the loopback fakes and dockerd elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from memory_forge import MemoryForge

from orchestrator.forges.protocol import ForgeError, QueuedJob
from orchestrator.intake.signatures import sign

from conftest import RunningController
from fakes import FakeRuntime, runs

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "github-webhooks"  # copies of ../shared/fixtures
REPO = "Codertocat/Hello-World"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.payload.json").read_bytes()


def variant(name: str, **job: Any) -> bytes:
    """A fixture with workflow_job fields replaced (made in memory: the fixture files stay as published)."""
    data = json.loads(fixture(name))
    data["workflow_job"].update(job)
    return json.dumps(data).encode()


async def started(fake_controller_factory: Any, tmp_path: Path, forge: MemoryForge, **runner: Any) -> RunningController:
    hook_secret = secrets.token_hex(16)
    (tmp_path / "gh.secret").write_text(hook_secret)
    (tmp_path / "gh.secret").chmod(0o600)
    (tmp_path / "gh.token").write_text("github_pat_" + "x" * 40)
    (tmp_path / "gh.token").chmod(0o600)
    pool = {
        "image": "runner-orchestrator/test-runner:local",
        "max_concurrent": 2,
        "default_timeout_s": 120,
        "runner": {"source": "github", "labels": ["ubuntu-latest"], "repositories": ["Codertocat/*"], **runner},
    }
    settings = {
        "sources": {
            "github": {
                "scheme": "hub-sha256",
                "secret_file": str(tmp_path / "gh.secret"),
                "forge": {"kind": "github", "token_file": str(tmp_path / "gh.token"), "reconcile_interval_s": 3600},
            }
        },
        "pools": {"gh": pool},
    }
    ctl: RunningController = await fake_controller_factory(settings=settings, forges={"github": forge})
    for task in ctl.controller.background:  # the tests drive supervision and reconciliation themselves
        if task.get_name() == "forge-runners":
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # its first pass may have begun before the cancel: let it end here, not mid-test
    ctl.hook_secret = hook_secret.encode()  # type: ignore[attr-defined]
    return ctl


async def deliver(ctl: RunningController, body: bytes, event: str = "workflow_job") -> tuple[int, dict[str, Any]]:
    headers = sign("hub-sha256", ctl.hook_secret, body)  # type: ignore[attr-defined]
    headers |= {"X-GitHub-Event": event, "X-GitHub-Delivery": secrets.token_hex(8), "Content-Type": "application/json"}
    async with ctl.session.post(f"{ctl.url}/webhooks/github", data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def engine(ctl: RunningController) -> FakeRuntime:
    runtime = ctl.controller.engine
    assert isinstance(runtime, FakeRuntime)
    return runtime


async def test_published_queued_payload_gets_a_runner_with_its_registration_on_stdin_only(
    fake_controller_factory: Any, tmp_path: Path
) -> None:
    forge = MemoryForge()
    ctl = await started(fake_controller_factory, tmp_path, forge)
    engine(ctl).program = lambda spec: runs(b"agent up\n", exit_code=None)
    status, body = await deliver(ctl, fixture("workflow_job.queued"))
    assert status == 202, body
    job_id = body["job_id"]
    assert job_id == "github-289782451"
    await ctl.wait_status(job_id, {"running"})
    # The registration: one call, named <controller_id>-<job id>, on the repository.
    name = f"{ctl.controller_id}-{job_id}"
    assert forge.calls == [("register", name)]
    assert forge.registered(f"repo:{REPO}") == [name]
    (credential,) = forge.credentials.values()
    container = engine(ctl).by_job(job_id)
    stdin = bytes(container.stdin)
    assert b"/run/secrets/ACTIONS_RUNNER_INPUT_JITCONFIG" in stdin and credential.encode() in stdin  # stdin → tmpfs
    inspectable = json.dumps([container.spec.create, container.spec.host])
    assert credential not in inspectable and "JITCONFIG" not in inspectable  # never env, command line or labels
    job = await ctl.api("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert job[1]["status"] == "cancelled"
    # After the job its registration is deleted (GitHub removes a used JIT runner itself; this one was unused).
    assert forge.registered(f"repo:{REPO}") == [] and forge.calls[-1][0] == "delete"
    (runner,) = (await ctl.api("GET", "/api/v1/runners"))[1]["runners"]
    assert runner["name"] == name and runner["trigger_job_id"] == 289782451 and runner["status"] == "cancelled"
    assert runner["registration_id"] == 1000 and runner["pool"] == "gh"


async def test_a_redelivered_queued_is_a_duplicate(fake_controller_factory: Any, tmp_path: Path) -> None:
    forge = MemoryForge()
    ctl = await started(fake_controller_factory, tmp_path, forge)
    engine(ctl).program = lambda spec: runs(exit_code=None)
    first = await deliver(ctl, fixture("workflow_job.queued"))
    again = await deliver(ctl, fixture("workflow_job.queued"))
    assert first[0] == 202 and again[0] == 200 and again[1]["duplicate"] is True
    await ctl.api("POST", f"/api/v1/jobs/{first[1]['job_id']}/cancel")
    assert [c for c in forge.calls if c[0] == "register"] == [("register", f"{ctl.controller_id}-github-289782451")]


async def test_progress_is_recorded_and_a_runner_that_ran_another_job_says_so(
    fake_controller_factory: Any, tmp_path: Path
) -> None:
    forge = MemoryForge()
    ctl = await started(fake_controller_factory, tmp_path, forge)
    engine(ctl).program = lambda spec: runs(exit_code=None)
    _, body = await deliver(ctl, fixture("workflow_job.queued"))
    await ctl.wait_status(body["job_id"], {"running"})
    name = f"{ctl.controller_id}-{body['job_id']}"
    status, taken = await deliver(ctl, variant("workflow_job.in_progress", runner_name=name, id=777))
    assert status == 200 and taken["status"] == "recorded", taken
    status, done = await deliver(
        ctl, variant("workflow_job.completed.success.with-organization", runner_name=name, id=777)
    )
    assert status == 200 and done["status"] == "recorded"
    (runner,) = (await ctl.api("GET", "/api/v1/runners"))[1]["runners"]
    assert (runner["trigger_job_id"], runner["ran_job_id"], runner["conclusion"]) == (289782451, 777, "success")
    assert runner["online_at"] is not None and runner["completed_at"] is not None
    # Another runner's progress (GitHub's own hosted one in the fixture) is not ours.
    status, other = await deliver(ctl, fixture("workflow_job.in_progress"))
    assert status == 202 and other["runner"] == "not ours"
    await ctl.api("POST", f"/api/v1/jobs/{body['job_id']}/cancel")
    ctl.controller.auditor.flush()
    trail = [json.loads(x) for x in (ctl.config.data_dir / "audit.jsonl").read_text().splitlines()]
    took = [r for r in trail if r["action"] == "runner.took_job"]
    assert took and took[0]["details"]["note"] == "took another queued job than the one that asked for it"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (variant("workflow_job.queued", labels=["self-hosted", "gpu"]), "no_pool_for_labels"),
        (
            fixture("workflow_job.queued").replace(b"Codertocat/Hello-World", b"Evil/Hello-World"),
            "repository_not_allowed",
        ),
    ],
)
async def test_nothing_is_registered_for_unmatched_labels_or_repositories(
    fake_controller_factory: Any, tmp_path: Path, body: bytes, reason: str
) -> None:
    forge = MemoryForge()
    ctl = await started(fake_controller_factory, tmp_path, forge)
    status, answer = await deliver(ctl, body)
    assert status == 202 and answer["status"] == "unmatched" and answer["reason"] == reason, answer
    assert (await ctl.api("GET", "/api/v1/jobs"))[1]["jobs"] == []
    assert forge.calls == []
    ctl.controller.auditor.flush()
    trail = [json.loads(x) for x in (ctl.config.data_dir / "audit.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in trail if r["action"] == "runner.unmatched"] == [reason]


async def test_bad_signature_registers_nothing(fake_controller_factory: Any, tmp_path: Path) -> None:
    forge = MemoryForge()
    ctl = await started(fake_controller_factory, tmp_path, forge)
    body = fixture("workflow_job.queued")
    headers = sign("hub-sha256", b"not the secret", body) | {"X-GitHub-Event": "workflow_job"}
    async with ctl.session.post(f"{ctl.url}/webhooks/github", data=body, headers=headers) as resp:
        assert resp.status == 401
    assert forge.calls == [] and (await ctl.api("GET", "/api/v1/jobs"))[1]["jobs"] == []


async def test_ping_and_other_events_are_acknowledged(fake_controller_factory: Any, tmp_path: Path) -> None:
    forge = MemoryForge()
    ctl = await started(fake_controller_factory, tmp_path, forge)
    assert (await deliver(ctl, fixture("ping.with-organization"), "ping"))[0] == 200
    assert (await deliver(ctl, fixture("workflow_job.waiting")))[0] == 202
    assert (await deliver(ctl, b'{"action": "requested", "workflow_run": {"id": 1}}', "workflow_run"))[0] == 202
    assert forge.calls == []


async def test_queued_is_never_refused_for_capacity(fake_controller_factory: Any, tmp_path: Path) -> None:
    """max_queue applies to job specs only: GitHub does not redeliver a refused `queued`."""
    forge = MemoryForge()
    ctl = await started(fake_controller_factory, tmp_path, forge)
    ctl.config.pools["gh"].__dict__["max_queue"] = 0  # no queue room at all
    engine(ctl).program = lambda spec: runs(0.05)
    statuses = [(await deliver(ctl, variant("workflow_job.queued", id=5000 + i)))[0] for i in range(10)]
    assert statuses == [202] * 10
    for i in range(10):
        assert (await ctl.wait_final(f"github-{5000 + i}"))["status"] == "succeeded"


async def test_a_registration_failure_ends_the_runner_job_in_error(
    fake_controller_factory: Any, tmp_path: Path
) -> None:
    forge = MemoryForge(fail_register=ForgeError("GitHub has no repository Codertocat/Hello-World", status=404))
    ctl = await started(fake_controller_factory, tmp_path, forge)
    _, body = await deliver(ctl, fixture("workflow_job.queued"))
    job = await ctl.wait_final(body["job_id"])
    assert job["status"] == "error" and job["container_id"] is None
    assert job["reason"] == "forge: GitHub has no repository Codertocat/Hello-World"


async def test_overstaying_runners_are_removed(fake_controller_factory: Any, tmp_path: Path) -> None:
    forge = MemoryForge()
    ctl = await started(fake_controller_factory, tmp_path, forge, bootstrap_timeout_s=30, completed_grace_s=5)
    runners = ctl.controller.runners
    assert runners is not None
    engine(ctl).program = lambda spec: runs(exit_code=None)
    idle = (await deliver(ctl, variant("workflow_job.queued", id=1)))[1]["job_id"]
    done = (await deliver(ctl, variant("workflow_job.queued", id=2)))[1]["job_id"]
    await ctl.wait_status(idle, {"running"})
    await ctl.wait_status(done, {"running"})
    name = f"{ctl.controller_id}-{done}"
    await deliver(ctl, variant("workflow_job.in_progress", runner_name=name, id=2))
    await deliver(ctl, variant("workflow_job.completed.success.with-organization", runner_name=name, id=2))
    scheduler = ctl.controller.scheduler
    real_clock = runners.clock
    runners.clock = lambda: real_clock() + 31  # past the bootstrap timeout and the completed grace
    await runners.supervise(scheduler.cancel)
    await runners.settle()
    assert (await ctl.job(idle))["reason"] == "runner took no job within bootstrap_timeout_s (30 s)"
    assert (await ctl.job(done))["reason"].startswith("the forge reported its job completed")
    assert forge.registered(f"repo:{REPO}") == []


async def test_reconcile_deletes_orphans_and_serves_lost_jobs(fake_controller_factory: Any, tmp_path: Path) -> None:
    forge = MemoryForge()
    ctl = await started(fake_controller_factory, tmp_path, forge, repositories=[REPO])
    runners = ctl.controller.runners
    assert runners is not None
    engine(ctl).program = lambda spec: runs(exit_code=None)
    # A registration of ours that no job owns (a crash between registering and starting), another's, and a lost job.
    from orchestrator.forges.protocol import RunnerScope

    scope = RunnerScope("repo", REPO)
    await forge.register(scope, name=f"{ctl.controller_id}-github-999", labels=["x"], runner_group_id=None)
    await forge.register(scope, name="someone-elses-runner", labels=["x"], runner_group_id=None)
    forge.queued[REPO] = [QueuedJob(id=4242, run_id=1, repository=REPO, labels=("ubuntu-latest",))]
    scheduler = ctl.controller.scheduler

    async def admit(job: Any) -> Any:
        return await scheduler.admit(job, lambda stored, created: None, capped=False)

    done = await runners.reconcile("github", admit, scheduler.cancel)
    assert done == {"orphans_deleted": 1, "vanished_removed": 0, "lost_jobs_served": 1}
    assert forge.registered(f"repo:{REPO}") == ["someone-elses-runner"]
    job = await ctl.wait_status("github-4242", {"running"})
    assert job["pool"] == "gh"
    # Served once: the next pass sees a live runner for it.
    assert (await runners.reconcile("github", admit, scheduler.cancel))["lost_jobs_served"] == 0
    await ctl.api("POST", "/api/v1/jobs/github-4242/cancel")
    await asyncio.sleep(0)


async def test_reconcile_asks_the_forge_which_repositories_a_globbed_pool_may_serve(
    fake_controller_factory: Any, tmp_path: Path
) -> None:
    """A pool allowing `Codertocat/*`: a repository no webhook and no record ever named is found through the
    forge's list of reachable repositories; one the pool does not allow is never asked about."""
    forge = MemoryForge(visible={"Codertocat/never-seen", "mallory/app"})
    ctl = await started(fake_controller_factory, tmp_path, forge)
    runners = ctl.controller.runners
    assert runners is not None
    engine(ctl).program = lambda spec: runs(exit_code=None)
    forge.queued["Codertocat/never-seen"] = [
        QueuedJob(id=777, run_id=1, repository="Codertocat/never-seen", labels=("ubuntu-latest",))
    ]
    forge.queued["mallory/app"] = [QueuedJob(id=778, run_id=2, repository="mallory/app", labels=("ubuntu-latest",))]
    scheduler = ctl.controller.scheduler

    async def admit(job: Any) -> Any:
        return await scheduler.admit(job, lambda stored, created: None, capped=False)

    done = await runners.reconcile("github", admit, scheduler.cancel)
    assert done["lost_jobs_served"] == 1
    assert ("repositories", "") in forge.calls
    assert ("queued", "Codertocat/never-seen") in forge.calls and ("queued", "mallory/app") not in forge.calls
    await ctl.wait_status("github-777", {"running"})
    assert (await ctl.api("GET", "/api/v1/jobs/github-778"))[0] == 404
    await ctl.api("POST", "/api/v1/jobs/github-777/cancel")
    await asyncio.sleep(0)


async def test_a_pool_naming_its_repositories_does_not_list_the_forges(
    fake_controller_factory: Any, tmp_path: Path
) -> None:
    forge = MemoryForge()
    ctl = await started(fake_controller_factory, tmp_path, forge, repositories=[REPO])
    runners = ctl.controller.runners
    assert runners is not None
    scheduler = ctl.controller.scheduler

    async def admit(job: Any) -> Any:
        return await scheduler.admit(job, lambda stored, created: None, capped=False)

    await runners.reconcile("github", admit, scheduler.cancel)
    assert ("repositories", "") not in forge.calls and ("queued", REPO) in forge.calls


async def test_min_idle_keeps_warm_runners_waiting_and_replaces_them_as_they_are_used(
    fake_controller_factory: Any, tmp_path: Path
) -> None:
    forge = MemoryForge()
    ctl = await started(fake_controller_factory, tmp_path, forge, repositories=[REPO], min_idle=2)
    runners = ctl.controller.runners
    assert runners is not None
    engine(ctl).program = lambda spec: runs(exit_code=None)
    scheduler = ctl.controller.scheduler

    async def admit(job: Any) -> Any:
        return await scheduler.admit(job, lambda stored, created: None, capped=False)

    await runners.keep_warm(admit)  # (the background loop's first pass, cancelled at start, may have begun it)
    assert await runners.keep_warm(admit) == 0  # two are waiting already
    warm = [r["job_id"] for r in (await ctl.api("GET", "/api/v1/runners"))[1]["runners"]]
    assert len(warm) == 2
    for job_id in warm:
        await ctl.wait_status(job_id, {"running"})
    assert len(forge.registered(f"repo:{REPO}")) == 2
    await runners.supervise(scheduler.cancel)  # run_forever hands its count to keep_warm: one read per tick
    assert runners.last_waiting == {"gh": 2} and await runners.keep_warm(admit, runners.last_waiting) == 0
    # One takes a job: one more is asked for, so two wait again.
    name = f"{ctl.controller_id}-{warm[0]}"
    await deliver(ctl, variant("workflow_job.in_progress", runner_name=name, id=31337))
    assert await runners.keep_warm(admit) == 1
    for job_id in [r["job_id"] for r in (await ctl.api("GET", "/api/v1/runners"))[1]["runners"]]:
        await ctl.api("POST", f"/api/v1/jobs/{job_id}/cancel")


def test_min_idle_needs_one_place_and_fits_the_pool() -> None:
    from pydantic import ValidationError

    from orchestrator.config import RunnerPoolConfig

    with pytest.raises(ValidationError, match="min_idle needs a place"):
        RunnerPoolConfig(source="gh", labels=["x"], repositories=["acme/*"], min_idle=1)
    assert RunnerPoolConfig(source="gh", labels=["x"], repositories=["acme/app"], min_idle=1).warm_scope() == "acme/app"
    org = RunnerPoolConfig(source="gh", labels=["x"], organizations=["acme"], scope="org", min_idle=1)
    assert org.warm_scope() == "acme"


async def test_a_gitea_source_signed_as_gitea_signs(fake_controller_factory: Any, tmp_path: Path) -> None:
    """Gitea (1.24+) sends GitHub-shaped workflow_job payloads without `installation`, signed in X-Gitea-Signature
    (hex HMAC-SHA256 of the body); its registration is the `.runner` file (GiteaForge is tested on fake_gitea.py)."""
    forge = MemoryForge()
    hook_secret = "gitea-hook-secret-0123"
    (tmp_path / "gitea.secret").write_text(hook_secret)
    (tmp_path / "gitea.secret").chmod(0o600)
    (tmp_path / "gitea.token").write_text("gitea-token-" + "y" * 30)
    (tmp_path / "gitea.token").chmod(0o600)
    settings = {
        "sources": {
            "gitea": {
                "scheme": "gitea-sha256",
                "secret_file": str(tmp_path / "gitea.secret"),
                "forge": {
                    "kind": "gitea",
                    "api_url": "http://127.0.0.1:9",
                    "token_file": str(tmp_path / "gitea.token"),
                },
            }
        },
        "pools": {
            "tea": {
                "image": "runner-orchestrator/test-runner:local",
                "runner": {"source": "gitea", "labels": ["linux"], "organizations": ["Codertocat"]},
            }
        },
    }
    ctl: RunningController = await fake_controller_factory(settings=settings, forges={"gitea": forge})
    engine(ctl).program = lambda spec: runs(exit_code=None)
    data = json.loads(variant("workflow_job.queued", labels=["linux"], id=55))
    del data["installation"]
    body = json.dumps(data).encode()
    headers = sign("gitea-sha256", hook_secret.encode(), body) | {"X-Gitea-Event": "workflow_job"}
    async with ctl.session.post(f"{ctl.url}/webhooks/gitea", data=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        job_id = (await resp.json())["job_id"]
    assert job_id == "gitea-55"
    await ctl.wait_status(job_id, {"running"})
    assert [c for c in forge.calls if c[0] == "register"] == [("register", f"{ctl.controller_id}-gitea-55")]
    await ctl.api("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert forge.registered(f"repo:{REPO}") == []
