"""forges/events.py on GitHub's published payloads (tests/forges/fixtures: unchanged copies of ../shared/fixtures)
and on the mistakes a sender can make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.forges.events import OtherEvent, Ping, WorkflowJob, parse_event
from orchestrator.jobs.refusal import Refusal

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "github-webhooks"  # copies of ../shared/fixtures


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.payload.json").read_bytes()


def test_queued() -> None:
    event = parse_event(fixture("workflow_job.queued"))
    assert isinstance(event, WorkflowJob)
    assert event.action == "queued"
    assert (event.job_id, event.run_id, event.run_attempt) == (289782451, 2202229078, 1)
    assert event.labels == ("ubuntu-latest",)
    assert event.repository == "Codertocat/Hello-World" and event.owner == "Codertocat"
    assert event.installation_id == 3456996
    assert event.head_sha == "3484a3fb816e0859fd6e1cea078d76385ff50625" and event.head_branch == "main"
    assert event.conclusion is None


@pytest.mark.parametrize(
    ("name", "action"),
    [
        ("workflow_job.in_progress", "in_progress"),
        ("workflow_job.completed.success.with-organization", "completed"),
        ("workflow_job.waiting", "waiting"),
        ("workflow_job.queued.with-deployment", "queued"),
    ],
)
def test_every_fixture_parses(name: str, action: str) -> None:
    event = parse_event(fixture(name))
    assert isinstance(event, WorkflowJob) and event.action == action
    raw = json.loads(fixture(name))
    assert event.job_id == raw["workflow_job"]["id"]
    assert event.runner_name == (raw["workflow_job"].get("runner_name") or None)


def test_completed_carries_conclusion_runner_and_organization() -> None:
    event = parse_event(fixture("workflow_job.completed.success.with-organization"))
    raw = json.loads(fixture("workflow_job.completed.success.with-organization"))
    assert isinstance(event, WorkflowJob)
    assert event.conclusion == "success"
    assert event.runner_id == raw["workflow_job"]["runner_id"]
    assert event.organization == raw["organization"]["login"]


def test_ping_and_other_events() -> None:
    ping = parse_event(fixture("ping.with-organization"))
    assert isinstance(ping, Ping) and ping.hook_id == json.loads(fixture("ping.with-organization"))["hook_id"]
    assert parse_event(b'{"action": "requested", "workflow_run": {}}') == OtherEvent("workflow_run")
    assert parse_event(b'{"ref": "refs/heads/main", "commits": []}') == OtherEvent("other")


@pytest.mark.parametrize(
    ("body", "reason", "text"),
    [
        (b"not json", "invalid_json", "not valid JSON"),
        (b"[1]", "invalid_json", "JSON object"),
        (b'{"action": "queued", "workflow_job": 3, "repository": {}}', "invalid_payload", "workflow_job must be"),
        (
            b'{"action": "queued", "workflow_job": {"id": 1, "run_id": 2, "labels": "x"}, "repository": '
            b'{"full_name": "a/b"}}',
            "invalid_payload",
            "labels",
        ),
        (
            b'{"action": "queued", "workflow_job": {"id": "1", "run_id": 2, "labels": []}, "repository": '
            b'{"full_name": "a/b"}}',
            "invalid_payload",
            "workflow_job.id",
        ),
        (
            b'{"action": "queued", "workflow_job": {"id": 1, "run_id": 2, "labels": []}, "repository": '
            b'{"full_name": "nope"}}',
            "invalid_payload",
            "owner/name",
        ),
        (
            b'{"action": "queued", "workflow_job": {"id": 1, "run_id": 2, "labels": []}}',
            "invalid_payload",
            "repository must be",
        ),
    ],
)
def test_malformed_payloads_are_refused_naming_the_field(body: bytes, reason: str, text: str) -> None:
    with pytest.raises(Refusal) as refused:
        parse_event(body)
    assert refused.value.reason == reason and text in str(refused.value)
