"""The job runner on the in-memory runtime (tests/fakes.py): every way a run ends, and the order of its teardown.
No Docker; each test runs in a fraction of a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.artifacts.store import ArtifactStore
from orchestrator.caches.store import CacheStore
from orchestrator.config import Config
from orchestrator.credentials.base import CredentialsError
from orchestrator.evidence.attestation import JobFacts
from orchestrator.evidence.attestation_store import AttestationStore
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import Job, JobState, new_job
from orchestrator.logs.store import LogStore
from orchestrator.runtime.container_spec import LABEL_JOB
from orchestrator.runtime.job_runner import JobRunner, RunControl
from orchestrator.runtime.protocol import EngineError
from orchestrator.runtime.workspace import Workspaces
from orchestrator.store.sqlite import SQLiteJobStore

from fakes import FakeCredentials, FakeRuntime, Program, RecordingEvents, Side, eventually, runs
from tarballs import tar_bytes

IMAGE = "runner-orchestrator/test-runner:local"


def config(tmp_path: Path, **pool: Any) -> Config:
    return Config.model_validate(
        {
            "controller_id": "unit",
            "data_dir": str(tmp_path / "data"),
            "docker": {"stop_grace_s": 0.2},
            "pools": {"default": {"image": IMAGE, "max_timeout_s": 3600, **pool}},
        }
    )


class JournalingLogs(LogStore):
    def __init__(self, directory: Path, journal: list[str]) -> None:
        super().__init__(directory)
        self.journal = journal

    async def close(self, job_id: str) -> None:
        await super().close(job_id)
        self.journal.append("log closed")


class JournalingAttestations(AttestationStore):
    def __init__(self, directory: Path, journal: list[str]) -> None:
        super().__init__(directory, Ed25519PrivateKey.generate())
        self.journal = journal
        self.facts: list[JobFacts] = []

    async def attest(self, facts: JobFacts) -> None:
        await super().attest(facts)
        self.facts.append(facts)
        self.journal.append("attested")


@dataclass
class Rig:
    runner: JobRunner
    runtime: FakeRuntime
    store: SQLiteJobStore
    logs: JournalingLogs
    events: RecordingEvents
    credentials: FakeCredentials
    attestations: JournalingAttestations
    journal: list[str]

    async def submit(self, commands: list[str] | None = None, **spec: Any) -> Job:
        timeout_s = spec.pop("timeout_s", 30)
        job_spec = JobSpec.model_validate(
            {
                "id": spec.pop("id", f"job-{time.monotonic_ns()}"),
                "pool": "default",
                "repository": "example/app",
                "ref": "refs/heads/main",
                "sha": "3f786850e387550fdab836ed7e6dc881de23001b",
                "commands": commands or ["true"],
                **spec,
            }
        )
        job, created = await self.store.create(
            new_job(job_spec, source="test", controller_id="unit", timeout_s=timeout_s, now=time.time())
        )
        assert created
        return job

    async def run(self, job: Job, control: RunControl | None = None) -> Job:
        return await asyncio.wait_for(self.runner.run(job, control or RunControl(cancel=asyncio.Event())), 10)

    def log(self, job: Job) -> bytes:
        return self.logs.read(job.id, 0, 1 << 20)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Any]:
    stores: list[SQLiteJobStore] = []

    async def make(program: Program | None = None, *, secrets: dict[str, str] | None = None, **pool: Any) -> Rig:
        journal: list[str] = []
        cfg = config(tmp_path, **pool)
        store = SQLiteJobStore(tmp_path / f"jobs{len(stores)}.sqlite3")
        await store.open()
        stores.append(store)
        runtime = FakeRuntime((lambda spec: program) if program else None, journal=journal)
        logs = JournalingLogs(tmp_path / "logs", journal)
        events = RecordingEvents(journal=journal)
        credentials = FakeCredentials(secrets, journal=journal)
        attestations = JournalingAttestations(tmp_path / "attestations", journal)
        workspaces = Workspaces(
            cfg,
            artifacts=ArtifactStore(tmp_path / "artifacts"),
            caches=CacheStore(tmp_path / "caches", max_total_bytes=10**8, fallback_refs=["refs/heads/main"]),
            work_dir=tmp_path / "work",
        )
        runner = JobRunner(
            cfg, store, runtime, logs, events, credentials=credentials, attestations=attestations,
            workspaces=workspaces,
        )  # fmt: skip
        return Rig(runner, runtime, store, logs, events, credentials, attestations, journal)

    yield make
    for store in stores:
        await store.close()


async def test_exit_zero_succeeds_and_the_container_is_gone(rig: Any) -> None:
    r: Rig = await rig(runs(b"hello\n", exit_code=0))
    job = await r.run(await r.submit(["echo hello"]))
    assert (job.state, job.exit_code, job.reason) == (JobState.SUCCEEDED, 0, None)
    assert r.log(job) == b"hello\n"
    assert r.runtime.containers == {} and len(r.runtime.removed) == 1
    assert r.events.states(job.id) == ["starting", "running", "succeeded"]
    assert r.events.started_jobs == [job.id] and r.events.teardowns[0][0] == job.id
    stored = await r.store.get(job.id)
    assert stored is not None and stored.state is JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("code", "state", "reason"),
    [
        (3, JobState.FAILED, "exit code 3"),
        (127, JobState.FAILED, "exit code 127: command not found"),
        (137, JobState.FAILED, "exit code 137: killed (SIGKILL), often the pool's memory limit"),
    ],
)
async def test_a_non_zero_exit_fails_with_its_reason(rig: Any, code: int, state: JobState, reason: str) -> None:
    r: Rig = await rig(runs(b"oops\n", exit_code=code))
    job = await r.run(await r.submit(["false"]))
    assert (job.state, job.exit_code, job.reason) == (state, code, reason)


async def test_the_script_and_secrets_travel_over_stdin_only(rig: Any) -> None:
    r: Rig = await rig(runs(b"ok\n"), secrets={"DB_PASSWORD": "s3cret-pa55word"})
    job = await r.submit(["echo ok"], secrets=[{"path": "ci/db", "key": "password", "name": "DB_PASSWORD"}])
    container_seen: dict[str, Any] = {}
    original = r.runtime.start

    async def start(container_id: str) -> None:
        container_seen["c"] = r.runtime.containers[container_id]
        await original(container_id)

    r.runtime.start = start  # type: ignore[method-assign]
    await r.run(job)
    container = container_seen["c"]
    assert b"s3cret-pa55word" in container.stdin and b"echo ok" in container.stdin
    assert "s3cret-pa55word" not in repr(container.spec)
    assert container.spec.create["labels"][LABEL_JOB] == job.id
    assert r.credentials.released == [job.id]


async def test_a_timeout_stops_the_container_and_says_so(rig: Any) -> None:
    r: Rig = await rig(runs(b"started\n", exit_code=None))
    began = time.monotonic()
    job = await r.run(await r.submit(["sleep 600"], timeout_s=0.3))  # sub-second: the spec allows only whole ones
    assert job.state is JobState.TIMED_OUT and job.reason == "timed out after 0.3 s"
    assert 0.3 <= time.monotonic() - began < 2
    assert ("stop", r.runtime.removed[0]) in r.runtime.calls
    assert r.log(job) == b"started\n"


async def test_a_job_ignoring_sigterm_is_killed_after_the_grace(rig: Any) -> None:
    r: Rig = await rig(runs(b"stubborn\n", exit_code=None, ignores_sigterm=True))
    job = await r.run(await r.submit(["trap '' TERM; sleep 600"], timeout_s=0.2))
    assert job.state is JobState.TIMED_OUT
    assert r.runtime.containers == {}


async def test_cancel_while_running(rig: Any) -> None:
    r: Rig = await rig(runs(b"working\n", exit_code=None))
    job = await r.submit(["sleep 600"])
    control = RunControl(cancel=asyncio.Event(), cancel_reason="cancelled by ops")
    task = asyncio.create_task(r.run(job, control))
    await eventually(lambda: "running" in r.events.states(job.id))
    control.cancel.set()
    ended = await task
    assert (ended.state, ended.reason) == (JobState.CANCELLED, "cancelled by ops")
    assert r.runtime.containers == {}


async def test_cancel_before_the_container_exists_creates_none(rig: Any) -> None:
    r: Rig = await rig()
    control = RunControl(cancel=asyncio.Event(), cancel_reason="cancelled early")
    control.cancel.set()
    job = await r.run(await r.submit(), control)
    assert job.state is JobState.CANCELLED
    assert [m for m, _ in r.runtime.calls if m == "create"] == []


async def test_an_engine_outage_while_running_makes_the_exit_code_untrusted(rig: Any) -> None:
    r: Rig = await rig(runs(b"a\n", 0.3, b"b\n", exit_code=0))
    job = await r.submit(["make"])
    task = asyncio.create_task(r.run(job))
    await eventually(lambda: "running" in r.events.states(job.id))
    r.runtime.outages += 1  # the daemon could not be reached meanwhile (a restart kills containers)
    ended = await task
    assert ended.state is JobState.ERROR and ended.exit_code == 0
    assert ended.reason is not None and "cannot be trusted" in ended.reason


async def test_a_create_the_engine_refuses_ends_in_error_without_a_container(rig: Any) -> None:
    r: Rig = await rig()
    r.runtime.fail["create"] = [EngineError("Docker API error 400: invalid mount config", status=400)]
    job = await r.run(await r.submit())
    assert job.state is JobState.ERROR
    assert job.reason == "docker: Docker API error 400: invalid mount config"
    assert r.runtime.containers == {} and r.credentials.released == []
    assert b"[orchestrator] job ended in error: docker: Docker API error 400" in r.log(job)


async def test_a_broken_output_stream_is_an_error(rig: Any) -> None:
    r: Rig = await rig(runs(b"x\n", exit_code=None))

    def broken(on_output: Any, on_side: Any = None) -> None:
        raise OSError("connection reset by peer")

    original = r.runtime.attach

    async def attach(container_id: str) -> Any:
        stream = await original(container_id)
        stream.pump = broken
        return stream

    r.runtime.attach = attach  # type: ignore[method-assign]
    job = await r.run(await r.submit())
    assert job.state is JobState.ERROR and "output stream broke: OSError" in (job.reason or "")
    assert r.runtime.containers == {}


async def test_credentials_refused_end_in_error_before_any_container(rig: Any) -> None:
    r: Rig = await rig(secrets={"X": "value-long-enough"})
    r.credentials.fail_acquire = CredentialsError("vault: login denied for role ci-default")
    job = await r.submit(secrets=[{"path": "ci/x", "key": "k", "name": "X"}])
    ended = await r.run(job)
    assert (ended.state, ended.reason) == (JobState.ERROR, "credentials: vault: login denied for role ci-default")
    assert [m for m, _ in r.runtime.calls if m == "create"] == []


async def test_teardown_order_container_token_log_attestation_final_state(rig: Any) -> None:
    """Whoever sees the final state can rely on nothing of the job being left and on its evidence existing."""
    r: Rig = await rig(runs(b"done\n"), secrets={"TOKEN": "token-value-123"})
    job = await r.run(await r.submit(secrets=[{"path": "ci/t", "key": "k", "name": "TOKEN"}]))
    assert job.state is JobState.SUCCEEDED
    assert r.journal == ["container removed", "token revoked", "log closed", "attested", "final state succeeded"]
    (facts,) = r.attestations.facts
    assert (facts.state, facts.image_id) == ("succeeded", r.runtime.images[IMAGE])


async def test_teardown_order_holds_when_the_job_fails_too(rig: Any) -> None:
    r: Rig = await rig(runs(b"x\n", exit_code=None), secrets={"TOKEN": "token-value-123"})
    job = await r.run(await r.submit(secrets=[{"path": "ci/t", "key": "k", "name": "TOKEN"}], timeout_s=0.2))
    assert job.state is JobState.TIMED_OUT
    assert r.journal == ["container removed", "token revoked", "log closed", "attested", "final state timed_out"]


async def test_a_job_moved_by_another_writer_is_left_alone(rig: Any) -> None:
    r: Rig = await rig(runs(b"x\n", 0.2, b"y\n"))
    job = await r.submit()
    task = asyncio.create_task(r.run(job))
    await eventually(lambda: "running" in r.events.states(job.id))
    current = await r.store.get(job.id)
    assert current is not None
    from orchestrator.jobs.states import transition

    moved = transition(current, JobState.ERROR, now=time.time(), reason="reconciled by another controller")
    assert await r.store.update(moved, expected=JobState.RUNNING)
    result = await task
    assert result.state is JobState.RUNNING  # the runner's view; it stored nothing over the other writer
    stored = await r.store.get(job.id)
    assert stored is not None and stored.reason == "reconciled by another controller"
    assert r.runtime.containers == {}  # its container is still removed


# -- artifacts over the side channel (the fake container writes what the job script would) -----------------------


NONCE = "ab" * 16


@pytest.fixture
def fixed_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.runtime.workspace.secrets.token_hex", lambda n: NONCE)


async def test_artifacts_from_the_side_channel_are_kept_and_attested(rig: Any, fixed_nonce: None) -> None:
    section = f"ORCH1 {NONCE} artifacts\n".encode() + tar_bytes({"dist/app": b"APP"})
    r: Rig = await rig(runs(b"built\n", Side(b"sh: a bootstrap warning\n"), Side(section), exit_code=0))
    job = await r.run(await r.submit(["make"], artifacts={"paths": ["dist"]}))
    assert job.state is JobState.SUCCEEDED, job.reason
    log = r.log(job)
    assert b"sh: a bootstrap warning" in log and b"[orchestrator] artifacts: 1 files, 3 bytes kept" in log
    manifest = r.runner.workspaces.artifacts.manifest(job.id)  # type: ignore[union-attr]
    assert manifest is not None and [(f.name, f.size) for f in manifest.files] == [("dist/app", 3)]
    assert list((r.runner.workspaces.work_dir).iterdir()) == []  # type: ignore[union-attr]  # the spool is gone


async def test_a_succeeded_job_that_handed_back_no_artifacts_is_an_error(rig: Any, fixed_nonce: None) -> None:
    r: Rig = await rig(runs(b"built\n", exit_code=0))
    job = await r.run(await r.submit(["make"], artifacts={"paths": ["dist"]}))
    assert job.state is JobState.ERROR and "handed none back" in (job.reason or "")


async def test_a_failed_job_keeps_its_state_and_hands_back_nothing_by_default(rig: Any, fixed_nonce: None) -> None:
    r: Rig = await rig(runs(b"boom\n", exit_code=2))
    job = await r.run(await r.submit(["make"], artifacts={"paths": ["dist"]}))
    assert (job.state, job.exit_code) == (JobState.FAILED, 2)
