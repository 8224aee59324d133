"""The accept path without HTTP and without Docker: `WebhookIntake.accept` on a real SQLite store and a real
Scheduler (in-memory runtime, a runner that only records), its outcomes and refusals as values, the order
`Scheduler.admit` keeps (stored, then recorded, then queued; the queue slot held while the store commits), and
the one table that turns all of it into the same answer on this port and over the workers' relay."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.config import Config, ServerConfig
from orchestrator.evidence.auditor import Auditor
from orchestrator.intake.answers import INTERNAL_ERROR, REFUSALS, Answer, refusal_answer
from orchestrator.intake.receive import WebhookSource
from orchestrator.intake.signatures import SignatureError, sign
from orchestrator.intake.webhook_listener import WebhookListener
from orchestrator.intake.webhooks import WebhookIntake
from orchestrator.jobs.admission import Accepted, Duplicate
from orchestrator.jobs.refusal import Refusal
from orchestrator.jobs.states import Job, JobState
from orchestrator.platform.metrics import Metrics
from orchestrator.runtime.job_runner import RunControl
from orchestrator.scheduling.scheduler import Scheduler
from orchestrator.store.sqlite import SQLiteJobStore

from fakes import FakeRuntime, RecordingEvents

KEY = b"k" * 32
SECRET = {"path": "ci/x", "key": "k", "name": "POOL_TOKEN"}


class RecordingAuditor(Auditor):
    """Keeps every record it is asked to write, and notes it in the rig's journal."""

    def __init__(self, journal: list[str]) -> None:
        super().__init__(None)
        self.records: list[tuple[Any, ...]] = []
        self.journal = journal

    def _record(self, actor: dict[str, Any], action: str, target: str | None, outcome: str, **kw: Any) -> None:
        self.records.append((actor, action, target, outcome, kw.get("remote"), kw.get("details")))
        self.journal.append(f"audit {outcome}")


class JournalingStore(SQLiteJobStore):
    """A real SQLite store that notes when a create begins and when it has committed; `fail` makes the next
    create fail, `gate` holds creates until it is set."""

    def __init__(self, path: Path, journal: list[str]) -> None:
        super().__init__(path)
        self.journal = journal
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def create(self, job: Job) -> tuple[Job, bool]:
        self.journal.append(f"create {job.id}")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        stored, created = await super().create(job)
        self.journal.append(f"committed {job.id}")
        return stored, created


class RecordingRunner:
    """What the scheduler uses of a JobRunner once a job is queued: `run`, here only noted."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.ran: list[str] = []

    async def run(self, job: Job, control: RunControl) -> Job:
        self.ran.append(job.id)
        self.journal.append(f"run {job.id}")
        return job


@dataclass
class Rig:
    intake: WebhookIntake
    scheduler: Scheduler
    store: JournalingStore
    runner: RecordingRunner
    auditor: RecordingAuditor
    metrics: Metrics
    journal: list[str]
    db: Path

    def durably_stored(self, job_id: str) -> bool:
        """Read through a connection of its own: what another process would find in the file."""
        with sqlite3.connect(self.db) as conn:
            return conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def accepted_count(self, source: str = "ci") -> float:
        value = self.metrics.registry.get_sample_value("orchestrator_webhooks_accepted_total", {"source": source})
        return value or 0.0


def _config(tmp_path: Path, **top: Any) -> Config:
    pool = {"image": "runner:test", "max_queue": 1, "default_timeout_s": 60, "max_timeout_s": 300}
    gpu = {**pool, "secrets": {"POOL_TOKEN": {"file": str(tmp_path / "token")}}}
    raw = {"controller_id": "unit", "data_dir": str(tmp_path), "pools": {"default": pool, "gpu": gpu}, **top}
    return Config.model_validate(raw)


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Any]:
    stores: list[JournalingStore] = []

    async def make(*, credentials: bool = False, **top: Any) -> Rig:
        journal: list[str] = []
        config = _config(tmp_path, **top)
        db = tmp_path / f"jobs{len(stores)}.sqlite3"
        store = JournalingStore(db, journal)
        await store.open()
        stores.append(store)
        runner = RecordingRunner(journal)
        auditor = RecordingAuditor(journal)
        events = RecordingEvents(journal=journal)
        scheduler = Scheduler(config, store, FakeRuntime(), runner, events, auditor)  # type: ignore[arg-type]
        metrics = Metrics()
        sources = {"ci": WebhookSource("ci", "standard-webhooks", (KEY,))}
        intake = WebhookIntake(
            config,
            sources,
            scheduler,
            credentials_configured=credentials,
            metrics=metrics,
            auditor=auditor,  # type: ignore[arg-type]
        )
        return Rig(intake, scheduler, store, runner, auditor, metrics, journal, db)

    yield make
    for store in stores:
        await store.close()


def _body(job_id: str = "j1", **overrides: Any) -> bytes:
    spec = {"id": job_id, "pool": "default", "repository": "r", "ref": "main", "sha": "abcdef0", "commands": ["true"]}
    return json.dumps({**spec, **overrides}).encode()


async def _accept(rig: Rig, body: bytes, delivery: str = "d1") -> Accepted | Duplicate:
    return await rig.intake.accept("ci", delivery, "10.0.0.1", body)


async def _settled() -> None:
    """Lets the job tasks the scheduler started take their turn."""
    for _ in range(3):
        await asyncio.sleep(0)


# -- outcomes ------------------------------------------------------------------------------------------------------


async def test_a_new_job_is_accepted_stored_recorded_and_queued(
    make_rig: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig: Rig = await make_rig()
    caplog.set_level(logging.DEBUG, logger="orchestrator.intake.webhooks")
    outcome = await _accept(rig, _body("j1", timeout_s=90))
    assert isinstance(outcome, Accepted)
    job = outcome.job
    assert (job.id, job.state, job.source, job.timeout_s) == ("j1", JobState.QUEUED, "ci", 90)
    assert await rig.store.get("j1") == job
    actor = {"type": "webhook", "source": "ci", "delivery": "d1"}
    details = {"reason": None, "http_status": 202}
    assert rig.auditor.records == [(actor, "webhook.accepted", "j1", "accepted", "10.0.0.1", details)]
    assert rig.accepted_count() == 1
    (line,) = [r for r in caplog.records if r.name == "orchestrator.intake.webhooks"]
    assert (line.levelno, line.getMessage()) == (logging.DEBUG, "job accepted")
    assert (line.job_id, line.pool, line.source, line.delivery) == ("j1", "default", "ci", "d1")  # type: ignore[attr-defined]
    await _settled()
    assert rig.runner.ran == ["j1"]


async def test_a_redelivery_is_a_duplicate_of_the_stored_job_and_never_runs_twice(
    make_rig: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig: Rig = await make_rig()
    first = await _accept(rig, _body("j1"))
    await _settled()
    caplog.set_level(logging.DEBUG, logger="orchestrator.intake.webhooks")
    again = await _accept(rig, _body("j1", commands=["echo other"]), delivery="d2")  # same id, another body
    assert again == Duplicate(first.job)
    (line,) = [r for r in caplog.records if r.name == "orchestrator.intake.webhooks"]
    assert (line.levelno, line.getMessage()) == (logging.INFO, "duplicate delivery")
    assert (line.job_id, line.source, line.delivery) == ("j1", "ci", "d2")  # type: ignore[attr-defined]
    actor = {"type": "webhook", "source": "ci", "delivery": "d2"}
    details = {"reason": None, "http_status": 200}
    assert rig.auditor.records[-1] == (actor, "webhook.accepted", "j1", "duplicate", "10.0.0.1", details)
    assert rig.accepted_count() == 1  # counted once, as accepted
    await _settled()
    assert rig.runner.ran == ["j1"]


async def test_a_redelivery_is_answered_even_when_the_queue_is_full(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    first = await _accept(rig, _body("j1"))
    rig.scheduler.reserve("default")  # the pool's one queue slot, held by a delivery whose store commit is pending
    assert await _accept(rig, _body("j1"), delivery="d2") == Duplicate(first.job)
    with pytest.raises(Refusal) as caught:
        await _accept(rig, _body("j2"), delivery="d3")
    assert caught.value.reason == "queue_full" and "1 jobs waiting" in caught.value.message
    assert await rig.store.get("j2") is None and not rig.durably_stored("j2")
    assert [r[3] for r in rig.auditor.records] == ["accepted", "duplicate"]  # accept records no refusal itself
    rig.scheduler.release("default")
    assert isinstance(await _accept(rig, _body("j2"), delivery="d4"), Accepted)


async def test_the_controller_wide_queue_limit_holds_too(make_rig: Any) -> None:
    rig: Rig = await make_rig(max_queued_total=1)
    rig.scheduler.reserve("gpu")
    with pytest.raises(Refusal) as caught:
        await _accept(rig, _body("j1"))
    assert caught.value.reason == "queue_full" and "on this controller" in caught.value.message


# -- refusals ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "credentials", "reason"),
    [
        (b"{not json", False, "invalid_json"),
        (b'{"id": "a", "id": "b"}', False, "duplicate_key"),
        (b"[1]", False, "invalid_spec"),
        (_body(sha="nope"), False, "invalid_spec"),
        (_body(pool="elsewhere"), False, "unknown_pool"),
        (_body(secrets=[SECRET]), False, "secrets_unavailable"),
        (_body(pool="gpu", secrets=[SECRET]), True, "secret_name_taken"),
        (_body(timeout_s=301), False, "timeout_too_long"),
    ],
)
async def test_each_refusal_is_a_reason_and_leaves_nothing(
    make_rig: Any, body: bytes, credentials: bool, reason: str
) -> None:
    rig: Rig = await make_rig(credentials=credentials)
    with pytest.raises(Refusal) as caught:
        await _accept(rig, body)
    assert caught.value.reason == reason
    assert rig.journal == [] and rig.accepted_count() == 0  # nothing stored, recorded or queued
    assert rig.scheduler._reserved.get("default", 0) == 0 == rig.scheduler._reserved.get("gpu", 0)


async def test_an_invalid_spec_names_its_fields(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    with pytest.raises(Refusal) as caught:
        await _accept(rig, _body(sha="nope", commands=[]))
    assert [f["field"] for f in caught.value.fields or []] == ["sha", "commands"]


# -- the order Scheduler.admit keeps -------------------------------------------------------------------------------


async def test_the_job_is_durably_stored_before_it_is_recorded_queued_or_accepted(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    seen: list[tuple[bool, bool]] = []  # when it is recorded: (in the file, queued or started)
    record = rig.auditor._record

    def checking(*args: Any, **kw: Any) -> None:
        seen.append((rig.durably_stored("j1"), rig.scheduler.queue_depth() > 0 or rig.scheduler.is_running("j1")))
        record(*args, **kw)

    rig.auditor._record = checking  # type: ignore[method-assign]
    outcome = await _accept(rig, _body("j1"))
    rig.journal.append("accepted returned")
    assert isinstance(outcome, Accepted) and seen == [(True, False)] and rig.scheduler.is_running("j1")
    await _settled()
    j = rig.journal
    assert j[:3] == ["create j1", "committed j1", "audit accepted"]
    assert j.index("committed j1") < j.index("accepted returned") and j.index("audit accepted") < j.index("run j1")


async def test_the_queue_slot_is_held_while_the_store_commits(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    rig.store.gate = asyncio.Event()
    first = asyncio.create_task(_accept(rig, _body("j1")))
    await asyncio.sleep(0.01)
    assert rig.journal == ["create j1"]  # committing: the pool's one slot is taken
    with pytest.raises(Refusal) as caught:
        await asyncio.wait_for(_accept(rig, _body("j2"), delivery="d2"), 5)
    assert caught.value.reason == "queue_full"
    rig.store.gate.set()
    assert isinstance(await first, Accepted)
    assert rig.scheduler._reserved["default"] == 0


async def test_a_store_failure_gives_the_slot_back_and_acknowledges_nothing(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    rig.store.fail = OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        await _accept(rig, _body("j1"))
    assert rig.journal == ["create j1"] and rig.auditor.records == [] and rig.accepted_count() == 0
    assert rig.scheduler._reserved["default"] == 0 and not rig.durably_stored("j1")
    rig.store.fail = None
    assert isinstance(await _accept(rig, _body("j1")), Accepted)  # the pool's one slot is free again
    await _settled()
    assert rig.runner.ran == ["j1"]


# -- the HTTP edge: one table for this port and the relay -----------------------------------------------------------

DOCUMENTED = {  # README, "Webhook answers"
    "body_too_large": (413, True, None),
    "body_timeout": (408, True, None),
    "unsupported_encoding": (415, True, None),
    "unreadable_body": (400, False, None),
    "unknown_source": (404, False, None),
    "invalid_json": (400, False, None),
    "duplicate_key": (400, False, None),
    "invalid_spec": (422, False, None),
    "invalid_payload": (400, False, None),
    "unknown_pool": (422, False, None),
    "secrets_unavailable": (422, False, None),
    "secret_name_taken": (422, False, None),
    "timeout_too_long": (422, False, None),
    "queue_full": (429, False, "30"),
    "shutting_down": (503, False, "30"),
    "controller_unavailable": (503, False, "30"),
    "internal_error": (500, False, None),
    **{reason: (401, False, None) for reason in SignatureError.REASONS},
}


def test_the_table_gives_each_reason_its_documented_answer() -> None:
    assert {reason: tuple(row) for reason, row in REFUSALS.items()} == DOCUMENTED


def test_every_reason_the_code_raises_is_in_the_table() -> None:
    root = Path(__file__).resolve().parents[2] / "orchestrator"
    raised = set()
    for path in root.rglob("*.py"):
        raised |= set(re.findall(r'Refusal\(\s*"([a-z_]+)"', path.read_text()))
    assert len(raised) >= 15 and raised <= set(REFUSALS)


def test_a_refusal_answer_is_its_json_error_and_survives_the_relay() -> None:
    refusal = Refusal("invalid_spec", "invalid job spec: sha", [{"field": "sha", "message": "bad"}])
    sent = refusal_answer(refusal)
    assert sent == Answer(
        422, json.dumps({"error": refusal.message, "reason": "invalid_spec", "fields": refusal.fields}).encode()
    )
    for reason in ("queue_full", "body_too_large", "unknown_pool"):
        sent = refusal_answer(Refusal(reason, "m"))
        assert Answer.from_frame(sent.header(9), sent.body) == sent
    assert INTERNAL_ERROR.body == b'{"error": "internal error", "reason": "internal_error"}'


class _Link:
    def __init__(self) -> None:
        self.frames: list[tuple[dict[str, Any], bytes]] = []

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self.frames.append((header, body))


async def _relayed(rig: Rig, source: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    """What the controller sends an intake worker for a delivery it relayed."""
    listener = WebhookListener(ServerConfig(webhook_port=0, intake_workers=1), rig.intake)
    listener.opened.set()
    worker = SimpleNamespace(link=_Link())
    await listener._answer(worker, 7, source, "d1", "10.0.0.1", body)  # type: ignore[arg-type]
    (frame,) = worker.link.frames
    return frame


async def _posted(rig: Rig, source: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """What this port answers for the same delivery."""
    app = web.Application()
    app.router.add_post("/webhooks/{source}", rig.intake.handle)
    headers = sign("standard-webhooks", KEY, body, msg_id="d1", timestamp=int(time.time()))
    async with (
        TestClient(TestServer(app)) as client,
        client.post(f"/webhooks/{source}", data=body, headers=headers) as resp,
    ):
        kept = {k: v for k, v in resp.headers.items() if k in ("Content-Type", "Retry-After", "Connection")}
        return resp.status, kept, await resp.read()


@pytest.mark.parametrize(
    ("case", "status", "retry_after"),
    [
        ("accepted", 202, None),
        ("duplicate", 200, None),
        ("invalid", 422, None),
        ("queue_full", 429, "30"),
        ("shutting_down", 503, "30"),
        ("unknown_source", 404, None),
    ],
)
async def test_this_port_and_the_relay_answer_alike(
    make_rig: Any, case: str, status: int, retry_after: str | None
) -> None:
    answers = []
    recorded = []
    for send in (_posted, _relayed):
        rig: Rig = await make_rig()
        source, body = "ci", _body("j1")
        if case == "duplicate":
            await _accept(rig, body)
        elif case == "invalid":
            body = _body(pool="elsewhere")
        elif case == "queue_full":
            rig.scheduler.reserve("default")
        elif case == "shutting_down":
            rig.intake.accepting = False
        elif case == "unknown_source":
            source = "nope"
        answers.append(await send(rig, source, body))
        if case in ("accepted", "duplicate"):
            assert await rig.store.get("j1") is not None
        _, action, target, outcome, _, details = rig.auditor.records[-1]  # the sender's address differs
        recorded.append((action, target, outcome, details))
        await _settled()
    (code, headers, posted), (frame, relayed) = answers
    assert code == frame["status"] == status
    if case == "duplicate":  # two stores, two jobs: only their creation times differ
        posted, relayed = (json.dumps({**json.loads(b), "created_at": 0}).encode() for b in (posted, relayed))
    assert posted == relayed
    assert headers.get("Retry-After") == frame.get("retry_after") == retry_after
    assert headers["Content-Type"] == "application/json; charset=utf-8" and "close" not in frame
    assert frame["t"] == "answer" and frame["id"] == 7
    if case == "duplicate":
        assert json.loads(relayed)["duplicate"] is True
    if case == "accepted":
        assert relayed == b'{"job_id": "j1", "status": "queued"}'
    assert recorded[0] == recorded[1]  # counted and audited alike, with the status the sender got
    assert recorded[0][3]["http_status"] == status


async def test_the_relay_answers_500_when_the_accept_path_fails(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    rig.store.fail = OSError("disk full")
    header, body = await _relayed(rig, "ci", _body("j1"))
    assert (header["status"], body) == (500, INTERNAL_ERROR.body)
