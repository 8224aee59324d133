"""The pure parts of status callbacks: outbox ordering and ids, payloads, the back-off schedule, URL rules, and the
requests the targets build (signatures checked with the intake's own Standard Webhooks verifier, which does not
use the `standardwebhooks` package that signs them)."""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from tenacity import RetryCallState

from orchestrator.callbacks.backoff import RetryPolicy, stop_at_deadline
from orchestrator.callbacks.outbox import CALLBACK, STATUS, Delivery, chains, may_send, new_rows, webhook_id
from orchestrator.callbacks.payload import callback_body, callback_payload, description, forge_state, status_body
from orchestrator.callbacks.routing import check_callback_request, outbox_targets, url_allowed, url_problem
from orchestrator.callbacks.senders import (
    CallbackTarget,
    CommitStatusTarget,
    PermanentDelivery,
    RetryableDelivery,
    outcome_of,
)
from orchestrator.config import Config
from orchestrator.intake.signatures import STANDARD_WEBHOOKS, SignatureError, verify
from orchestrator.jobs.refusal import Refusal
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import Job, JobState, new_job, transition

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"


def job(**spec: Any) -> Job:
    data: dict[str, Any] = {
        "id": "job-1",
        "pool": "default",
        "repository": "acme/app",
        "ref": "refs/heads/main",
        "sha": SHA,
        "commands": ["true"],
        **spec,
    }
    return new_job(JobSpec.model_validate(data), source="ci", controller_id="ctl", timeout_s=60, now=1000.0)


def delivery(seq: int = 1, state: JobState = JobState.QUEUED, **fields: Any) -> Delivery:
    return Delivery(job_id="job-1", target=CALLBACK, seq=seq, state=state, at=1000.0 + seq, attempt=1, **fields)


# --- outbox ---------------------------------------------------------------------------------------------------


def test_webhook_id_is_stable_and_distinct_per_state_change() -> None:
    assert delivery(1).webhook_id == delivery(1, attempts=3, first_attempt_at=5.0).webhook_id  # retries
    assert delivery(1).webhook_id == webhook_id("job-1", 1, JobState.QUEUED, 1001.0)  # restarts: stored values
    ids = {delivery(n).webhook_id for n in range(1, 6)}
    assert len(ids) == 5
    # a re-queued job's second `queued` is another change, with another id
    assert webhook_id("job-1", 4, JobState.QUEUED, 9.0) != webhook_id("job-1", 1, JobState.QUEUED, 9.0)
    assert delivery(1).webhook_id.startswith("msg_")


def test_chains_order_by_seq_and_leave_out_finished_rows() -> None:
    rows = [
        delivery(3, JobState.RUNNING),
        delivery(1),
        dataclasses.replace(delivery(2, JobState.STARTING), status="delivered"),
        dataclasses.replace(delivery(1), target=STATUS),
        dataclasses.replace(delivery(1), job_id="job-2"),
    ]
    grouped = chains(rows)
    assert [d.seq for d in grouped[("job-1", CALLBACK)]] == [1, 3]
    assert [d.seq for d in grouped[("job-1", STATUS)]] == [1]
    assert [d.seq for d in grouped[("job-2", CALLBACK)]] == [1]


def test_only_the_head_of_a_chain_may_be_sent() -> None:
    first, second = delivery(1), delivery(2, JobState.STARTING)
    assert may_send(first, [first, second])
    assert not may_send(second, [first, second])
    assert may_send(second, [dataclasses.replace(first, status="failed"), second])  # given up: no longer holds up
    assert may_send(second, [dataclasses.replace(first, target=STATUS), second])  # other targets are independent
    assert not may_send(dataclasses.replace(first, status="delivered"), [first])


def test_new_rows_take_the_state_as_stored() -> None:
    ended = transition(job(), JobState.ERROR, now=1010.0, reason="boom")
    assert new_rows(ended, 2, [CALLBACK, STATUS]) == [
        ("job-1", 2, CALLBACK, "error", 1010.0, 1, None, "boom"),
        ("job-1", 2, STATUS, "error", 1010.0, 1, None, "boom"),
    ]


# --- payload --------------------------------------------------------------------------------------------------


def test_callback_payload_from_the_stored_change_and_the_spec() -> None:
    final = delivery(4, JobState.FAILED, exit_code=2, reason="exit code 2")
    payload = callback_payload(job(), final, "https://ci.example/")
    assert payload["type"] == "job.failed"
    assert payload["timestamp"] == "1970-01-01T00:16:44Z"
    data = payload["data"]
    assert (data["state"], data["exit_code"], data["reason"], data["final"], data["sequence"]) == (
        "failed",
        2,
        "exit code 2",
        True,
        4,
    )
    assert (data["repository"], data["sha"], data["ref"]) == ("acme/app", SHA, "refs/heads/main")
    assert data["log_url"] == "https://ci.example/api/v1/jobs/job-1/logs"
    assert data["attestation_url"] == "https://ci.example/api/v1/jobs/job-1/attestation"
    queued = callback_payload(job(), delivery(1), None)["data"]
    assert queued["attestation_url"] is None and queued["log_url"] == "/api/v1/jobs/job-1/logs"


def test_callback_body_is_the_same_bytes_every_time() -> None:
    body = callback_body(job(), delivery(1), None)
    assert body == callback_body(job(), delivery(1, attempts=2), None)
    assert json.loads(body)["data"]["job_id"] == "job-1"


@pytest.mark.parametrize(
    ("state", "github", "gitlab"),
    [
        (JobState.QUEUED, "pending", "pending"),
        (JobState.STARTING, None, None),
        (JobState.RUNNING, "pending", "running"),
        (JobState.SUCCEEDED, "success", "success"),
        (JobState.FAILED, "failure", "failed"),
        (JobState.TIMED_OUT, "failure", "failed"),
        (JobState.CANCELLED, "error", "canceled"),
        (JobState.ERROR, "error", "failed"),
    ],
)
def test_forge_states(state: JobState, github: str | None, gitlab: str | None) -> None:
    assert forge_state("github", state) == github
    assert forge_state("gitea", state) == github
    assert forge_state("gitlab", state) == gitlab


def test_description_is_short_enough_for_github() -> None:
    assert description(delivery(1)) == "queued"
    assert description(delivery(3, JobState.TIMED_OUT)) == "timed out"
    assert description(delivery(3, JobState.FAILED, exit_code=1)) == "failed: exit code 1"
    long = description(delivery(3, JobState.ERROR, reason="x" * 500))
    assert len(long) == 140 and long.endswith("…")


def test_status_body_per_forge() -> None:
    done = delivery(4, JobState.SUCCEEDED, exit_code=0)
    assert status_body("github", done, context="ci", public_url="https://ci.example") == {
        "state": "success",
        "description": "succeeded",
        "context": "ci",
        "target_url": "https://ci.example/api/v1/jobs/job-1/logs",
    }
    gitlab = status_body("gitlab", done, context="ci", public_url=None)
    assert gitlab == {"state": "success", "description": "succeeded", "name": "ci"}  # no target_url without a URL
    assert status_body("github", delivery(2, JobState.STARTING), context="ci", public_url=None) is None


# --- back-off -------------------------------------------------------------------------------------------------


def test_backoff_schedule_doubles_up_to_the_cap() -> None:
    assert RetryPolicy(initial_s=1, max_s=10).schedule(6) == [1, 2, 4, 8, 10, 10]
    assert RetryPolicy(initial_s=0.5, max_s=300).schedule(3) == [0.5, 1, 2]


def test_jitter_stays_within_its_bound() -> None:
    wait = RetryPolicy(initial_s=1, max_s=10, jitter_s=0.5).wait()
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = 3
    assert all(4 <= wait(state) <= 4.5 for _ in range(50))


def test_the_deadline_counts_from_the_first_attempt() -> None:
    policy = RetryPolicy(retry_for_s=60)
    assert policy.deadline(1000.0) == 1060.0
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.upcoming_sleep = 5.0
    assert not stop_at_deadline(1060.0, lambda: 1054.0)(state)
    assert stop_at_deadline(1060.0, lambda: 1055.0)(state)  # the next attempt would start at the deadline


# --- URLs and routing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/x",
        "https:///x",
        "https://user:pw@h/x",
        "https://h/x#frag",
        "https://h/a/../b",
        "https://h/a/%2e%2e/b",
        "https://h/a\\b",
        "https://h/a b",
        "https://h:99999/",
    ],
)
def test_bad_callback_urls(url: str) -> None:
    assert url_problem(url) is not None


PREFIXES = ["https://hooks.example.com/ci/", "http://127.0.0.1:8099/cb"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/ci/x", True),
        ("https://HOOKS.example.com:443/ci/x?job=1", True),
        ("https://hooks.example.com/ci/", True),
        ("https://hooks.example.com/ci", False),
        ("https://hooks.example.com/cix", False),
        ("https://hooks.example.com.evil.net/ci/x", False),
        ("http://hooks.example.com/ci/x", False),
        ("https://hooks.example.com:8443/ci/x", False),
        ("https://hooks.example.com/ci/../admin", False),
        ("http://127.0.0.1:8099/cb", True),
        ("http://127.0.0.1:8099/cb/job", True),
        ("http://127.0.0.1:8099/cbx", False),
        ("http://127.0.0.1:8098/cb", False),
    ],
)
def test_url_allowed(url: str, allowed: bool) -> None:
    assert url_allowed(url, PREFIXES) is allowed


def config(tmp_path: Path, **source: Any) -> Config:
    secret = tmp_path / "s"
    secret.write_text("whsec_" + base64.b64encode(b"k" * 24).decode())
    raw = {
        "controller_id": "ctl",
        "data_dir": str(tmp_path / "data"),
        "sources": {"ci": {"scheme": "standard-webhooks", "secret_file": str(secret), **source}},
        "pools": {"default": {"image": "x"}},
    }
    return Config.model_validate(raw)


def test_targets_of_a_state_change(tmp_path: Path) -> None:
    callbacks = {"url": "https://h/cb", "secret_file": str(tmp_path / "cb")}
    status = {"kind": "github", "token_file": str(tmp_path / "t")}
    targets = outbox_targets(config(tmp_path, callbacks=callbacks, commit_status=status))
    assert targets(job()) == (CALLBACK, STATUS)
    assert targets(transition(job(), JobState.STARTING, now=1.0)) == (CALLBACK,)  # no commit status for starting
    assert outbox_targets(config(tmp_path))(job()) == ()
    other = dataclasses.replace(job(), source="elsewhere")
    assert outbox_targets(config(tmp_path, callbacks=callbacks))(other) == ()
    per_job = {"secret_file": str(tmp_path / "cb"), "allowed_url_prefixes": ["https://h/jobs/"]}
    allowed = outbox_targets(config(tmp_path, callbacks=per_job))
    assert allowed(job(callback_url="https://h/jobs/1")) == (CALLBACK,)
    assert allowed(job(callback_url="https://h/other")) == ()
    assert allowed(job()) == ()  # no source URL and none of its own


def test_a_job_may_name_only_an_allowed_callback_url(tmp_path: Path) -> None:
    cfg = config(tmp_path, callbacks={"secret_file": str(tmp_path / "cb"), "allowed_url_prefixes": ["https://h/j/"]})
    source = cfg.sources["ci"]
    check_callback_request(job(callback_url="https://h/j/1").spec, "ci", source)
    check_callback_request(job().spec, "ci", source)
    for url in ("https://h/x", "https://u:p@h/j/1", "https://h/j/../x"):
        with pytest.raises(Refusal) as refused:
            check_callback_request(job(callback_url=url).spec, "ci", source)
        assert refused.value.reason == "invalid_spec"
        assert refused.value.fields is not None and refused.value.fields[0]["field"] == "callback_url"
    with pytest.raises(Refusal, match="has no"):
        check_callback_request(job(callback_url="https://h/j/1").spec, "ci", config(tmp_path).sources["ci"])


# --- targets' requests ----------------------------------------------------------------------------------------


def test_a_callback_request_verifies_with_an_independent_implementation() -> None:
    key = secrets.token_bytes(32)
    target = CallbackTarget("whsec_" + base64.b64encode(key).decode(), lambda j: "https://h/cb", public_url=None)
    request = target.request(job(), delivery(2, JobState.STARTING), now=1_700_000_000.7)
    assert request.url == "https://h/cb"
    headers = dict(request.headers)
    assert headers["webhook-id"] == delivery(2, JobState.STARTING).webhook_id
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].startswith("v1,")
    assert verify(STANDARD_WEBHOOKS, [key], headers, request.body, now=1_700_000_010) == headers["webhook-id"]
    with pytest.raises(SignatureError):
        verify(STANDARD_WEBHOOKS, [secrets.token_bytes(32)], headers, request.body, now=1_700_000_010)
    with pytest.raises(SignatureError):
        verify(STANDARD_WEBHOOKS, [key], headers, request.body + b" ", now=1_700_000_010)
    assert key.hex() not in repr(target) and base64.b64encode(key).decode() not in repr(target)


def test_a_callback_to_a_url_no_longer_allowed_is_given_up() -> None:
    target = CallbackTarget("whsec_" + base64.b64encode(b"k" * 24).decode(), lambda j: None, public_url=None)
    with pytest.raises(PermanentDelivery):
        target.request(job(), delivery(1), now=1.0)


def test_commit_status_requests() -> None:
    done = delivery(4, JobState.FAILED, exit_code=1)
    github = CommitStatusTarget("github", "https://api.github.com/", "ghp_tok", context="ci", public_url="https://c")
    request = github.request(job(), done, now=1.0)
    assert request is not None
    assert request.url == f"https://api.github.com/repos/acme/app/statuses/{SHA}"
    assert request.headers["Authorization"] == "Bearer ghp_tok"
    assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    body = json.loads(request.body)
    assert body == {
        "state": "failure",
        "context": "ci",
        "description": "failed: exit code 1",
        "target_url": "https://c/api/v1/jobs/job-1/logs",
    }
    gitea = CommitStatusTarget("gitea", "https://gitea.example", "tok", context="ci", public_url=None)
    request = gitea.request(job(), done, now=1.0)
    assert request is not None
    assert request.url == f"https://gitea.example/api/v1/repos/acme/app/statuses/{SHA}"
    assert request.headers["Authorization"] == "token tok"
    gitlab = CommitStatusTarget("gitlab", "https://gitlab.example", "glpat", context="ci", public_url=None)
    request = gitlab.request(job(repository="group/sub/app"), done, now=1.0)
    assert request is not None
    assert request.url == f"https://gitlab.example/api/v4/projects/group%2Fsub%2Fapp/statuses/{SHA}"
    assert request.headers["PRIVATE-TOKEN"] == "glpat"
    assert json.loads(request.body)["state"] == "failed" and json.loads(request.body)["name"] == "ci"
    assert gitlab.request(job(), delivery(2, JobState.STARTING), now=1.0) is None
    assert "glpat" not in repr(gitlab)
    with pytest.raises(PermanentDelivery):
        github.request(job(repository="no-owner"), done, now=1.0)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        *[(200, None), (201, None), (204, None), (408, RetryableDelivery), (429, RetryableDelivery)],
        *[(500, RetryableDelivery), (503, RetryableDelivery), (400, PermanentDelivery), (404, PermanentDelivery)],
        *[(422, PermanentDelivery), (301, PermanentDelivery)],
    ],
)
def test_outcome_of_an_answer(status: int, kind: type[Exception] | None) -> None:
    outcome = outcome_of(status)
    assert (None if outcome is None else type(outcome)) is kind
    if outcome is not None:
        assert str(outcome) == f"HTTP {status}"
