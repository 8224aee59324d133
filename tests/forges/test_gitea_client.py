"""GiteaForge against the loopback Gitea fake: registration without the registration token ever leaving the
controller, the `.runner` file act_runner reads, runner list/delete, queued jobs, and the errors that name what to
fix -- bad token, unknown repository, missing scope, an old Gitea -- and bounded retries on 5xx / 429."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from orchestrator.forges.gitea import RUNNER_FILE, GiteaForge
from orchestrator.forges.gitea.client import split_labels
from orchestrator.forges.protocol import ForgeError, RunnerScope

from fake_gitea import FakeGitea

REPO = RunnerScope("repo", "alice/app")
ORG = RunnerScope("org", "acme")


def token_file(tmp_path: Path, token: str, mode: int = 0o600) -> Path:
    path = tmp_path / f"gitea-token-{os.urandom(3).hex()}"
    path.write_text(token + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
async def gitea() -> AsyncIterator[FakeGitea]:
    async with FakeGitea() as fake:
        fake.add_repo("alice/app")
        fake.add_org("acme", owners={"bob"})
        fake.add_repo("acme/lib", admins={"bob"})
        yield fake


@pytest.fixture
async def make(gitea: FakeGitea, tmp_path: Path) -> AsyncIterator[Callable[..., GiteaForge]]:
    made: list[GiteaForge] = []

    def factory(token: str | None = None, **kwargs: object) -> GiteaForge:
        value = token if token is not None else gitea.add_token("alice", "write:repository")
        kwargs.setdefault("retry_budget_s", 2.0)
        kwargs.setdefault("backoff_s", 0.01)
        forge = GiteaForge(gitea.url, token_file(tmp_path, value), **kwargs)  # type: ignore[arg-type]
        made.append(forge)
        return forge

    yield factory
    for forge in made:
        await forge.close()


async def agent_session(
    gitea: FakeGitea, runner_file: dict[str, object]
) -> tuple[aiohttp.ClientSession, dict[str, str]]:
    """What `act_runner daemon` does with the file: the runner RPC with x-runner-uuid / x-runner-token."""
    assert runner_file["address"] == gitea.url
    headers = {
        "Content-Type": "application/json",
        "x-runner-uuid": str(runner_file["uuid"]),
        "x-runner-token": str(runner_file["token"]),
    }
    return aiohttp.ClientSession(base_url=str(runner_file["address"])), headers


async def test_register_writes_the_runner_file_act_runner_reads(
    gitea: FakeGitea, make: Callable[..., GiteaForge]
) -> None:
    forge = make()
    reg = await forge.register(REPO, name="ctl-job1", labels=["linux", "self-hosted", "Linux"], runner_group_id=None)
    assert reg.file_name == RUNNER_FILE == ".runner" and reg.name == "ctl-job1"
    assert reg.credential not in repr(reg)
    runner_file = json.loads(reg.credential)
    # internal/pkg/config/registration.go: the fields `act_runner register` writes
    assert set(runner_file) == {"WARNING", "id", "uuid", "name", "token", "address", "labels", "ephemeral"}
    assert runner_file["id"] == reg.runner_id and runner_file["ephemeral"] is True
    assert runner_file["labels"] == ["linux:host", "self-hosted:host", "Linux:host"]  # host mode, no Docker
    at_gitea = gitea.runners[reg.runner_id]
    assert (
        at_gitea.ephemeral
        and at_gitea.labels == ["linux", "self-hosted", "Linux"]
        and at_gitea.scope == ("repo", "alice/app")
    )
    # the scope's registration token never leaves the controller
    for registration_token in gitea.registration_tokens.values():
        assert registration_token not in reg.credential

    # the file is all the agent needs: it declares itself and takes exactly one job, then Gitea deletes it
    session, headers = await agent_session(gitea, runner_file)
    async with session:
        rpc = "/api/actions/runner.v1.RunnerService"
        async with session.post(
            f"{rpc}/Declare", json={"labels": ["linux"], "version": "v0.2.13"}, headers=headers
        ) as resp:
            assert resp.status == 200
        job = gitea.queue_job("alice/app", ["linux"])
        async with session.post(f"{rpc}/FetchTask", json={}, headers=headers) as resp:
            task = (await resp.json())["task"]
        assert task["id"] == str(job.id)
        listed = {r.id: r for r in await forge.runners(REPO)}
        assert listed[reg.runner_id].busy and listed[reg.runner_id].status == "online"
        body = {"state": {"id": task["id"], "result": "RESULT_FAILURE"}}
        async with session.post(f"{rpc}/UpdateTask", json=body, headers=headers) as resp:
            assert resp.status == 200
    assert gitea.jobs[job.id].conclusion == "failure"
    assert await forge.runners(REPO) == []
    assert await forge.delete_runner(REPO, reg.runner_id) is False  # already gone: Gitea deleted it


async def test_one_registration_token_call_serves_many_runners(
    gitea: FakeGitea, make: Callable[..., GiteaForge]
) -> None:
    forge = make()
    for i in range(3):
        await forge.register(REPO, name=f"ctl-{i}", labels=["linux"], runner_group_id=1)
    stats = forge.stats()
    assert stats["registration_token_calls"] == 1 and stats["registration_token_cache_hits"] == 2
    assert stats["register_calls"] == 3
    assert gitea.count("POST", "/api/v1/repos/alice/app/actions/runners/registration-token") == 1


async def test_a_reset_registration_token_is_fetched_anew(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make()
    await forge.register(REPO, name="ctl-a", labels=["linux"], runner_group_id=None)
    gitea.reset_registration_token("repo", "alice/app")
    reg = await forge.register(REPO, name="ctl-b", labels=["linux"], runner_group_id=None)
    assert reg.runner_id in gitea.runners
    assert forge.stats()["registration_token_calls"] == 2


async def test_org_scope_register_list_delete(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make(gitea.add_token("bob", "write:organization"))
    regs = [await forge.register(ORG, name=f"ctl-{i}", labels=["linux"], runner_group_id=None) for i in range(3)]
    listed = await forge.runners(ORG)
    assert [r.name for r in listed] == ["ctl-0", "ctl-1", "ctl-2"]
    assert listed[0].labels == ("linux",) and listed[0].status == "offline" and not listed[0].busy
    assert await forge.delete_runner(ORG, regs[1].runner_id) is True
    assert await forge.delete_runner(ORG, regs[1].runner_id) is False
    assert [r.id for r in await forge.runners(ORG)] == [regs[0].runner_id, regs[2].runner_id]


async def test_runners_reads_every_page(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make()
    for i in range(120):
        await forge.register(REPO, name=f"ctl-{i:03d}", labels=["linux"], runner_group_id=None)
    before = gitea.count("GET", "/api/v1/repos/alice/app/actions/runners")
    listed = await forge.runners(REPO)
    assert len(listed) == 120 and len({r.id for r in listed}) == 120
    assert gitea.count("GET", "/api/v1/repos/alice/app/actions/runners") - before == 3  # 50 + 50 + 20


async def test_runners_follows_a_smaller_page_size(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    gitea.max_response_items = 20  # an instance configured below Gitea's default
    forge = make()
    for i in range(45):
        await forge.register(REPO, name=f"ctl-{i:03d}", labels=["linux"], runner_group_id=None)
    assert len(await forge.runners(REPO)) == 45


async def test_queued_jobs(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make(gitea.add_token("alice", "read:repository"))
    first = gitea.queue_job("alice/app", ["linux", "big"], name="build", sha="a" * 40)
    gitea.queue_job("alice/app", ["linux"], name="blocked", waiting=True)
    jobs = await forge.queued_jobs("alice/app", None)
    assert [(j.id, j.run_id, j.labels, j.name, j.head_sha, j.head_branch) for j in jobs] == [
        (first.id, first.run_id, ("linux", "big"), "build", "a" * 40, "main")
    ]
    assert jobs[0].repository == "alice/app" and forge.stats()["queued_jobs_api"] == 1


async def test_queued_jobs_on_a_gitea_without_the_jobs_api(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    gitea.jobs_api = False  # Gitea 1.24
    forge = make()
    gitea.queue_job("alice/app", ["linux"])
    assert forge.stats()["queued_jobs_api"] == -1
    assert await forge.queued_jobs("alice/app", None) == []
    assert forge.stats()["queued_jobs_api"] == 0
    with pytest.raises(ForgeError) as err:
        await forge.queued_jobs("alice/nope", None)  # an unknown repository is still an error
    assert err.value.status == 404 and "repository alice/nope" in err.value.message


async def test_repositories_the_token_reaches(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    for i in range(60):  # more than one page (Gitea's page limit is 50)
        gitea.add_repo(f"alice/svc-{i:02d}")
    gitea.add_repo("mallory/secret")
    found = await make(gitea.add_token("alice", "read:repository")).repositories()
    names = [name for name, _ in found]
    assert len(names) == 61 and "alice/app" in names and "alice/svc-59" in names and "mallory/secret" not in names
    assert all(installation is None for _, installation in found)
    assert gitea.count("GET", "/api/v1/user/repos") == 2
    assert [name for name, _ in await make(gitea.add_token("bob", "read:repository")).repositories()] == ["acme/lib"]
    with pytest.raises(ForgeError) as err:
        await make(gitea.add_token("alice", "read:organization")).repositories()
    assert err.value.status == 403 and "read:repository" in err.value.message


async def test_bad_token_is_401_naming_the_token_file(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make("f" * 40)
    with pytest.raises(ForgeError) as err:
        await forge.register(REPO, name="ctl-x", labels=["linux"], runner_group_id=None)
    assert err.value.status == 401
    assert str(forge.token_file) in err.value.message and "write:repository" in err.value.message
    assert "f" * 40 not in err.value.message
    assert forge.stats()["errors"] == 1


async def test_token_file_must_be_chmod_600(gitea: FakeGitea, tmp_path: Path) -> None:
    forge = GiteaForge(gitea.url, token_file(tmp_path, gitea.add_token("alice"), mode=0o644))
    try:
        with pytest.raises(ForgeError, match="chmod 600"):
            await forge.runners(REPO)
        assert gitea.requests == []  # nothing was sent
        forge.token_file.chmod(0o600)
        assert await forge.runners(REPO) == []
        forge.token_file.write_text("", encoding="utf-8")
        with pytest.raises(ForgeError, match="empty"):
            await forge.runners(REPO)
    finally:
        await forge.close()


async def test_rotated_token_file_is_read_again(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make("0" * 40)
    with pytest.raises(ForgeError):
        await forge.runners(REPO)
    forge.token_file.write_text(gitea.add_token("alice", "write:repository"), encoding="utf-8")
    assert await forge.runners(REPO) == []


async def test_unknown_repository_is_404_naming_it(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make()
    scope = RunnerScope("repo", "alice/nope")
    with pytest.raises(ForgeError) as err:
        await forge.register(scope, name="ctl-x", labels=["linux"], runner_group_id=None)
    assert err.value.status == 404 and "repository alice/nope" in err.value.message
    assert gitea.count("GET", "/api/v1/repos/alice/nope/actions/runners/registration-token") == 1  # the 1.21-1.23 form
    with pytest.raises(ForgeError) as err:
        await make(gitea.add_token("bob", "write:organization")).runners(RunnerScope("org", "nobody"))
    assert err.value.status == 404 and "organization nobody" in err.value.message


async def test_missing_scope_or_role_is_403(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make(gitea.add_token("alice", "read:repository"))
    with pytest.raises(ForgeError) as err:
        await forge.register(REPO, name="ctl-x", labels=["linux"], runner_group_id=None)
    assert err.value.status == 403 and "write:repository" in err.value.message
    not_owner = make(gitea.add_token("alice", "write:organization"))
    with pytest.raises(ForgeError) as err:
        await not_owner.runners(ORG)
    assert err.value.status == 403 and "owner of organization acme" in err.value.message


async def test_older_gitea_serves_the_registration_token_by_get(
    gitea: FakeGitea, make: Callable[..., GiteaForge]
) -> None:
    gitea.fail("POST", "/api/v1/repos/alice/app/actions/runners/registration-token", 405, times=1)
    forge = make()
    reg = await forge.register(REPO, name="ctl-old", labels=["linux"], runner_group_id=None)
    assert reg.runner_id in gitea.runners
    assert gitea.count("GET", "/api/v1/repos/alice/app/actions/runners/registration-token") == 1


async def test_a_gitea_without_ephemeral_runners_is_refused_and_cleaned(
    gitea: FakeGitea, make: Callable[..., GiteaForge]
) -> None:
    gitea.supports_ephemeral = False  # Gitea < 1.24 ignores the flag
    forge = make()
    with pytest.raises(ForgeError) as err:
        await forge.register(REPO, name="ctl-p", labels=["linux"], runner_group_id=None)
    assert "1.24" in err.value.message and "was deleted" in err.value.message
    assert gitea.runners == {}


async def test_retries_5xx_then_succeeds(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make()
    gitea.fail("GET", "/api/v1/repos/alice/app/actions/runners", 503, times=2)
    assert await forge.runners(REPO) == []
    assert forge.stats()["retries"] == 2 and forge.stats()["calls"] == 3
    gitea.fail("POST", "/api/v1/repos/alice/app/actions/runners/registration-token", 500, times=1)
    gitea.fail("POST", "/api/actions/runner.v1.RunnerService/Register", 502, times=1)  # the proxy, not Gitea
    reg = await forge.register(REPO, name="ctl-r", labels=["linux"], runner_group_id=None)
    assert reg.runner_id in gitea.runners and forge.stats()["retries"] == 4


async def test_retries_are_bounded(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make(retry_budget_s=0.3, backoff_s=0.05)
    gitea.fail("DELETE", "/api/v1/repos/alice/app/actions/runners/", 503, times=1000)
    with pytest.raises(ForgeError) as err:
        await forge.delete_runner(REPO, 7)
    assert err.value.status == 503 and "retrying" in err.value.message
    assert 2 <= gitea.count("DELETE", "/api/v1/repos/alice/app/actions/runners/7") <= 6


async def test_register_is_not_repeated_after_a_500(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make()
    gitea.fail("POST", "/api/actions/runner.v1.RunnerService/Register", 500, times=5)
    with pytest.raises(ForgeError) as err:
        await forge.register(REPO, name="ctl-z", labels=["linux"], runner_group_id=None)
    assert err.value.status == 500
    assert gitea.count("POST", "/api/actions/runner.v1.RunnerService/Register") == 1


async def test_429_retry_after_is_waited_within_the_budget(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make(retry_budget_s=1.0)
    gitea.fail("GET", "/api/v1/repos/alice/app/actions/runners", 429, times=1, retry_after=0.2)
    assert await forge.runners(REPO) == []
    assert forge.stats()["rate_limit_waits"] == 1
    gitea.fail("GET", "/api/v1/repos/alice/app/actions/runners", 429, times=1, retry_after=60)
    with pytest.raises(ForgeError) as err:
        await forge.runners(REPO)  # a wait longer than the budget is not slept
    assert err.value.status == 429 and forge.stats()["rate_limit_remaining"] == -1


async def test_unreachable_gitea_is_status_0(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        forge = GiteaForge(
            f"http://127.0.0.1:{port}", token_file(tmp_path, "a" * 40), retry_budget_s=0.2, backoff_s=0.05
        )
        try:
            with pytest.raises(ForgeError) as err:
                await forge.runners(REPO)
        finally:
            await forge.close()
    assert err.value.status == 0 and "unreachable" in err.value.message and "a" * 40 not in err.value.message


async def test_labels_are_checked_before_any_call(gitea: FakeGitea, make: Callable[..., GiteaForge]) -> None:
    forge = make()
    with pytest.raises(ForgeError, match="no Docker"):
        await forge.register(REPO, name="ctl", labels=["ubuntu-latest:docker://node:20"], runner_group_id=None)
    with pytest.raises(ForgeError, match="at least one label"):
        await forge.register(REPO, name="ctl", labels=[" "], runner_group_id=None)
    with pytest.raises(ForgeError, match="owner/name"):
        await forge.runners(RunnerScope("repo", "no-slash"))
    assert gitea.requests == []
    assert split_labels(["linux:host", "pool:1234", "linux"]) == (["linux", "pool:1234"], ["linux:host", "pool:1234"])
