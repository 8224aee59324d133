"""Gitea runners through a whole controller on the in-memory container runtime, with the real `GiteaForge` client
built from the config (`[sources.gitea.forge] kind = "gitea"`) against the loopback Gitea fake: the fake's signed
`workflow_job` webhooks become runner jobs whose containers get act_runner's `.runner` file over stdin only; a
Python stand-in of act_runner takes the job with that file, the forge's progress is recorded, and the ephemeral
registration is gone after the job. Jobs no pool serves, and jobs still blocked, register nothing. No Docker: the
runner image and dockerd are tested in tests/integration."""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.forges.gitea.client import REGISTER_RPC
from orchestrator.runtime.container_spec import SECRETS_DIR

from conftest import RunningController
from fake_gitea import Delivery, FakeGitea
from fakes import FakeContainer, FakeRuntime, eventually, runs

REPO = "alice/app"
LABELS = ["linux"]
RPC = "/api/actions/runner.v1.RunnerService"
REGISTRATION_TOKEN = f"/api/v1/repos/{REPO}/actions/runners/registration-token"


@pytest.fixture
async def gitea() -> AsyncIterator[FakeGitea]:
    """Set up before the controller (so it outlives it: the controller's shutdown may still delete runners)."""
    async with FakeGitea(webhook_secret=secrets.token_hex(16)) as fake:
        fake.add_repo(REPO)
        fake.add_repo("mallory/app")
        yield fake


@pytest.fixture
async def ctl(gitea: FakeGitea, fake_controller_factory: Any, tmp_path: Path) -> RunningController:
    (tmp_path / "gitea.secret").write_text(gitea.webhook_secret)
    (tmp_path / "gitea.secret").chmod(0o600)
    (tmp_path / "gitea.token").write_text(gitea.add_token("alice", "write:repository") + "\n")
    (tmp_path / "gitea.token").chmod(0o600)
    settings = {
        "sources": {
            "gitea": {
                "scheme": "gitea-sha256",
                "secret_file": str(tmp_path / "gitea.secret"),
                "forge": {
                    "kind": "gitea",
                    "api_url": gitea.url,
                    "token_file": str(tmp_path / "gitea.token"),
                    "reconcile_interval_s": 3600,
                },
            }
        },
        "pools": {
            "gt": {
                "image": "runner-orchestrator/test-runner:local",
                "max_concurrent": 2,
                "default_timeout_s": 120,
                "runner": {"source": "gitea", "labels": LABELS, "repositories": ["alice/*"]},
            }
        },
    }
    running: RunningController = await fake_controller_factory(settings=settings)  # the forge built from config
    for task in running.controller.background:  # the tests drive supervision and reconciliation themselves
        if task.get_name() == "forge-runners":
            task.cancel()
    gitea.webhook_url = f"{running.url}/webhooks/gitea"
    return running


def engine(ctl: RunningController) -> FakeRuntime:
    runtime = ctl.controller.engine
    assert isinstance(runtime, FakeRuntime)
    return runtime


async def delivered(gitea: FakeGitea) -> Delivery:
    """The webhook Gitea sent last, once the controller answered it."""
    await gitea.drain()
    return gitea.deliveries[-1]


async def resend(ctl: RunningController, delivery: Delivery) -> tuple[int, dict[str, Any]]:
    """The same request again (Gitea's "redeliver"), to read the controller's answer body."""
    async with ctl.session.post(f"{ctl.url}/webhooks/gitea", data=delivery.body, headers=delivery.headers) as resp:
        return resp.status, await resp.json(content_type=None)


def runner_file_from_stdin(container: FakeContainer) -> tuple[bytes, dict[str, Any]]:
    """The script the container read from stdin, and the `.runner` file it writes to its secrets tmpfs."""
    stdin = bytes(container.stdin)
    size, _, script = stdin.partition(b"\n")
    assert int(size) == len(script)
    words = shlex.split(script.decode())
    target = words.index(f"{SECRETS_DIR}/.runner")
    assert words[target - 4 : target - 2] == ["printf", "%s"] and words[target - 1] == ">"
    return stdin, json.loads(words[target - 2])


def audit_trail(ctl: RunningController) -> list[dict[str, Any]]:
    ctl.controller.auditor.flush()
    return [json.loads(x) for x in (ctl.config.data_dir / "audit.jsonl").read_text().splitlines()]


async def act_runner(address: str, runner_file: dict[str, Any], rpc: str, body: dict[str, Any]) -> dict[str, Any]:
    """One runner RPC as `act_runner daemon` makes it with its `.runner` file (Connect, JSON)."""
    headers = {"x-runner-uuid": str(runner_file["uuid"]), "x-runner-token": str(runner_file["token"])}
    async with (
        aiohttp.ClientSession(base_url=address) as session,
        session.post(f"{RPC}/{rpc}", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_a_queued_webhook_gets_an_ephemeral_runner_whose_runner_file_goes_over_stdin_only(
    gitea: FakeGitea, ctl: RunningController
) -> None:
    engine(ctl).program = lambda spec: runs(b"act_runner up\n", exit_code=None)
    forge_job = gitea.queue_job(REPO, LABELS)
    queued = await delivered(gitea)
    assert queued.headers["X-Gitea-Event"] == "workflow_job" and "X-Gitea-Signature" in queued.headers
    assert json.loads(queued.body)["action"] == "queued" and queued.status == 202
    job_id = f"gitea-{forge_job.id}"
    job = await ctl.wait_status(job_id, {"running"})
    assert job["pool"] == "gt"
    # One registration-token call and one Register RPC, made by the controller itself.
    assert gitea.count("POST", REGISTRATION_TOKEN) == 1 and gitea.count("POST", REGISTER_RPC) == 1
    name = f"{ctl.controller_id}-{job_id}"
    (at_gitea,) = gitea.runners.values()
    assert at_gitea.name == name and at_gitea.ephemeral and at_gitea.scope == ("repo", REPO)
    assert at_gitea.labels == LABELS
    # The .runner file reaches the container over stdin, to /run/secrets, and nowhere in what `docker inspect` shows.
    container = engine(ctl).by_job(job_id)
    stdin, runner_file = runner_file_from_stdin(container)
    assert b"/run/secrets/.runner" in stdin
    assert (runner_file["id"], runner_file["uuid"], runner_file["token"]) == (
        at_gitea.id,
        at_gitea.uuid,
        at_gitea.token,
    )
    assert runner_file["name"] == name and runner_file["address"] == gitea.url and runner_file["ephemeral"] is True
    assert runner_file["labels"] == ["linux:host"]
    inspectable = json.dumps([container.spec.name, container.spec.create, container.spec.host])
    for secret in (at_gitea.token, at_gitea.uuid, "secrets/.runner"):
        assert secret not in inspectable  # never env, command line or labels
    # Neither the scope's registration token nor the controller's access token reaches the container.
    for secret in [*gitea.registration_tokens.values(), *gitea.tokens]:
        assert secret.encode() not in stdin and secret not in inspectable
    # A redelivery of the same `queued` is a duplicate: nothing more registered.
    status, again = await resend(ctl, queued)
    assert status == 200 and again["duplicate"] is True and again["job_id"] == job_id
    assert gitea.count("POST", REGISTER_RPC) == 1
    # A runner that took no job is deleted at Gitea when its job ends.
    cancelled = await ctl.api("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert cancelled[1]["status"] == "cancelled"
    assert gitea.runners == {}
    assert ("DELETE", f"/api/v1/repos/{REPO}/actions/runners/{at_gitea.id}", 204) in gitea.requests
    (record,) = (await ctl.api("GET", "/api/v1/runners"))[1]["runners"]
    assert record["name"] == name and record["trigger_job_id"] == forge_job.id and record["status"] == "cancelled"
    assert record["registration_id"] == at_gitea.id and record["pool"] == "gt"


async def test_act_runner_takes_the_job_and_its_progress_is_recorded_until_the_registration_is_gone(
    gitea: FakeGitea, ctl: RunningController
) -> None:
    engine(ctl).program = lambda spec: runs(b"act_runner up\n", exit_code=None)
    forge_job = gitea.queue_job(REPO, LABELS, name="test")
    assert (await delivered(gitea)).status == 202
    job_id = f"gitea-{forge_job.id}"
    await ctl.wait_status(job_id, {"running"})
    name = f"{ctl.controller_id}-{job_id}"
    container = engine(ctl).by_job(job_id)
    _, runner_file = runner_file_from_stdin(container)
    address = str(runner_file["address"])

    # act_runner daemon: declares the names of the file's labels (`linux:host` -> `linux`), fetches its one task.
    names = [str(label).partition(":")[0] for label in runner_file["labels"]]
    declared = await act_runner(address, runner_file, "Declare", {"labels": names, "version": "v0.2.13"})
    assert declared["runner"]["name"] == name
    fetched = await act_runner(address, runner_file, "FetchTask", {})
    assert fetched["task"]["id"] == str(forge_job.id)
    taken = await delivered(gitea)
    payload = json.loads(taken.body)
    assert payload["action"] == "in_progress" and payload["workflow_job"]["runner_name"] == name
    assert taken.status == 200
    (record,) = (await ctl.api("GET", "/api/v1/runners"))[1]["runners"]
    assert record["ran_job_id"] == forge_job.id and record["online_at"] is not None and record["conclusion"] is None

    # The task's result: Gitea marks the job completed and deletes the ephemeral runner.
    state = {"state": {"id": fetched["task"]["id"], "result": "RESULT_SUCCESS"}}
    assert (await act_runner(address, runner_file, "UpdateTask", state))["state"]["result"] == "RESULT_SUCCESS"
    done = await delivered(gitea)
    payload = json.loads(done.body)
    assert payload["action"] == "completed" and payload["workflow_job"]["conclusion"] == "success"
    assert payload["workflow_job"]["runner_name"] == name and done.status == 200
    (record,) = (await ctl.api("GET", "/api/v1/runners"))[1]["runners"]
    assert (record["trigger_job_id"], record["ran_job_id"], record["conclusion"]) == (
        forge_job.id,
        forge_job.id,
        "success",
    )
    assert record["completed_at"] is not None
    assert gitea.runners == {}

    # The agent exits; the job succeeds, and the controller's delete finds the registration already gone.
    container.exit(0)
    job = await ctl.wait_final(job_id)
    assert job["status"] == "succeeded" and job["exit_code"] == 0
    assert ("DELETE", f"/api/v1/repos/{REPO}/actions/runners/{runner_file['id']}", 404) in gitea.requests
    assert gitea.runners == {} and gitea.count("POST", REGISTER_RPC) == 1
    trail = audit_trail(ctl)
    assert [r["outcome"] for r in trail if r["action"] == "runner.deleted"] == ["already_gone"]
    assert [r["outcome"] for r in trail if r["action"] == "runner.job_completed"] == ["success"]
    took = [r for r in trail if r["action"] == "runner.took_job"]
    assert len(took) == 1 and "note" not in took[0]["details"]  # it ran the job that asked for it


@pytest.mark.parametrize(
    ("repository", "labels", "reason"),
    [(REPO, ["gpu"], "no_pool_for_labels"), ("mallory/app", LABELS, "repository_not_allowed")],
)
async def test_nothing_is_registered_for_labels_no_pool_has_or_a_repository_not_allowed(
    gitea: FakeGitea, ctl: RunningController, repository: str, labels: list[str], reason: str
) -> None:
    gitea.queue_job(repository, labels)
    delivery = await delivered(gitea)
    assert delivery.status == 202
    status, answer = await resend(ctl, delivery)
    assert status == 202 and answer["status"] == "unmatched" and answer["reason"] == reason, answer
    assert (await ctl.api("GET", "/api/v1/jobs"))[1]["jobs"] == []
    assert gitea.runners == {} and gitea.count("POST", "/api/v1/repos") == 0 and gitea.count("POST", RPC) == 0
    await eventually(lambda: len([r for r in audit_trail(ctl) if r["action"] == "runner.unmatched"]) == 2)
    assert {r["outcome"] for r in audit_trail(ctl) if r["action"] == "runner.unmatched"} == {reason}


async def test_a_waiting_job_is_ignored(gitea: FakeGitea, ctl: RunningController) -> None:
    gitea.queue_job(REPO, LABELS, waiting=True)  # blocked on other jobs (`needs:`): no runner can take it yet
    delivery = await delivered(gitea)
    assert json.loads(delivery.body)["action"] == "waiting"
    assert delivery.status == 202
    status, answer = await resend(ctl, delivery)
    assert status == 202 and answer == {"status": "ignored", "event": "workflow_job", "action": "waiting"}
    assert (await ctl.api("GET", "/api/v1/jobs"))[1]["jobs"] == []
    assert gitea.runners == {} and gitea.count("POST", "/api/v1/repos") == 0 and gitea.count("POST", RPC) == 0
