"""The relay between intake workers and the controller: frames, limits checked before reading, and what each end
does when the other breaks the protocol or goes away."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.config import ServerConfig
from orchestrator.intake import relay
from orchestrator.intake.answers import Answer, refusal_answer
from orchestrator.intake.receive import WebhookSource
from orchestrator.intake.signatures import sign
from orchestrator.intake.webhook_listener import WebhookListener, WorkerStartError
from orchestrator.intake.worker import ControllerLink
from orchestrator.jobs.admission import Accepted
from orchestrator.jobs.refusal import Refusal
from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import new_job


@given(
    rid=st.integers(min_value=0, max_value=2**53),
    source=st.text(min_size=1, max_size=40),
    remote=st.none() | st.text(max_size=40),
    body=st.binary(max_size=2048),
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=6),
)
def test_frames_survive_any_cut_of_the_stream(
    rid: int, source: str, remote: str | None, body: bytes, cuts: list[int]
) -> None:
    header = {"t": "delivery", "id": rid, "source": source, "delivery": None, "remote": remote}
    stream = relay.encode(header, body) + relay.encode({"t": "ready"})
    decoder = relay.FrameDecoder(4096)
    frames = []
    at = 0
    for cut in [*sorted({min(c, len(stream)) for c in cuts}), len(stream)]:
        frames += decoder.feed(stream[at:cut])
        at = cut
    assert frames == [(header, body), ({"t": "ready"}, b"")]
    assert not decoder.inside_frame


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (struct.pack(">II", 10, 5_000), "exceeds the limit of 4096"),  # refused before the body arrives
        (struct.pack(">II", 0, 0), "outside 1.."),
        (struct.pack(">II", relay.MAX_HEADER_BYTES + 1, 0), "outside 1.."),
        (struct.pack(">II", 5, 0) + b"nope!", "not JSON"),
        (struct.pack(">II", 2, 0) + b"[]", "no known kind"),
        (struct.pack(">II", 12, 0) + b'{"t":"exec"}', "no known kind"),
    ],
)
def test_broken_frames_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(relay.RelayError, match=message):
        relay.FrameDecoder(4096).feed(data)


def test_a_partial_frame_is_kept_until_the_rest_arrives() -> None:
    decoder = relay.FrameDecoder(4096)
    frame = relay.encode({"t": "ready"})
    assert decoder.feed(frame[:3]) == [] and decoder.inside_frame
    assert decoder.feed(frame[3:]) == [({"t": "ready"}, b"")] and not decoder.inside_frame


def test_field_checks_presence_and_type() -> None:
    header = {"t": "answer", "id": True, "status": 202}
    assert relay.field(header, "status", int) == 202
    with pytest.raises(relay.RelayError, match="'id'"):
        relay.field(header, "id", int)  # a bool is not an id
    with pytest.raises(relay.RelayError, match="'source'"):
        relay.field(header, "source", str)


async def _worker_relay() -> tuple[ControllerLink, socket.socket]:
    ours, theirs = socket.socketpair()
    link = ControllerLink()
    await asyncio.get_running_loop().create_unix_connection(lambda: link.frames, sock=ours)
    theirs.sendall(relay.encode({"t": "hello", "sources": {}, "max_body_bytes": 4096, "body_timeout_s": 1}))
    await asyncio.wait_for(link.hello, 5)
    return link, theirs


async def test_worker_answers_503_for_what_it_relayed_when_the_controller_goes_away() -> None:
    link, theirs = await _worker_relay()
    waiting = asyncio.create_task(link.forward("ci", "msg_1", "127.0.0.1", b"{}"))
    await asyncio.sleep(0.05)
    sent = theirs.recv(4096)
    assert b'"t":"delivery"' in sent and sent.endswith(b"{}")
    theirs.close()  # the controller died
    response = await asyncio.wait_for(waiting, 5)
    assert response.status == 503 and response.headers["Retry-After"] == "30"
    assert link.closed.is_set()
    late = await link.forward("ci", "msg_2", None, b"{}")  # and so does every later one, without waiting
    assert late.status == 503


async def test_worker_matches_answers_to_deliveries_and_sends_a_burst_in_one_write() -> None:
    link, theirs = await _worker_relay()
    first = asyncio.create_task(link.forward("ci", "a", None, b"1"))
    second = asyncio.create_task(link.forward("ci", "b", None, b"2"))
    await asyncio.sleep(0.05)
    sent = relay.FrameDecoder(4096).feed(theirs.recv(65536))  # both deliveries, sent in the same loop turn
    assert [(h["id"], h["delivery"], b) for h, b in sent] == [(0, "a", b"1"), (1, "b", b"2")]
    theirs.sendall(
        relay.encode({"t": "answer", "id": 1, "status": 200}, b'{"n": 2}')
        + relay.encode({"t": "answer", "id": 0, "status": 429, "retry_after": "30", "close": True}, b'{"n": 1}')
    )
    one, two = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert (one.status, one.body, one.headers["Retry-After"], one.keep_alive) == (429, b'{"n": 1}', "30", False)
    assert (two.status, two.body, "Retry-After" in two.headers) == (200, b'{"n": 2}', False)
    theirs.close()


async def test_worker_hangs_up_on_a_controller_that_breaks_the_protocol() -> None:
    link, theirs = await _worker_relay()
    waiting = asyncio.create_task(link.forward("ci", "a", None, b"1"))
    await asyncio.sleep(0.05)
    theirs.sendall(relay.encode({"t": "delivery", "id": 0, "source": "x"}))  # the controller never delivers
    assert (await asyncio.wait_for(waiting, 5)).status == 503
    assert theirs.recv(65536) and theirs.recv(65536) == b""  # the delivery, then the hang-up
    theirs.close()


def test_a_header_too_large_for_the_peer_is_not_sent() -> None:
    with pytest.raises(relay.RelayError, match="exceeds"):
        relay.encode({"t": "hello", "sources": {"s": "x" * relay.MAX_HEADER_BYTES}})


async def test_the_controller_kills_a_worker_that_breaks_the_protocol() -> None:
    server = ServerConfig(webhook_port=0, intake_workers=1)
    intake = SimpleNamespace(config=SimpleNamespace(server=server), sources={})
    listener = WebhookListener(server, intake)  # type: ignore[arg-type]
    process = await asyncio.create_subprocess_exec("sleep", "60")
    ours, theirs = socket.socketpair()
    worker = await listener._connect(0, process, ours)
    theirs.sendall(relay.encode({"t": "hello"}))  # only the controller says hello
    assert await asyncio.wait_for(process.wait(), 5) == -9
    assert worker.link_closed.is_set()
    theirs.close()


async def test_a_worker_that_cannot_start_stops_the_controller_start(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ServerConfig(webhook_port=0, intake_workers=2, max_body_bytes=4096)
    intake = SimpleNamespace(config=SimpleNamespace(server=server), sources={})
    listener = WebhookListener(server, intake)  # type: ignore[arg-type]
    monkeypatch.setattr("orchestrator.intake.webhook_listener.sys.executable", "/bin/false")
    with pytest.raises(WorkerStartError, match=r"intake worker \d did not start \(exit code 1\)"):
        await listener.start()
    assert listener.sock is None and listener.workers == {}


def test_a_worker_imports_neither_the_store_nor_the_scheduler_nor_docker() -> None:
    """A worker (re)starts in well under a second and holds no more than it needs (no Docker client, no store)."""
    heavy = ("docker", "orchestrator.store", "orchestrator.scheduling.scheduler", "orchestrator.credentials")
    probe = f"import sys, orchestrator.intake.worker; print(sorted(m for m in sys.modules if m.startswith({heavy})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _StubIntake:
    """What the listener uses of WebhookIntake: its config and sources, and the accept path (here: recorded)."""

    def __init__(self, server: ServerConfig, key: bytes) -> None:
        self.config = SimpleNamespace(server=server)
        self.sources = {"ci": WebhookSource("ci", "standard-webhooks", (key,))}
        self.accepting = True
        self.accepted: list[tuple[str, str | None, bytes]] = []
        self.refused: list[tuple[str, int, str]] = []

    async def accept(self, name: str, delivery: str | None, remote: str | None, body: bytes) -> Accepted:
        self.accepted.append((name, delivery, body))
        spec = JobSpec.model_validate(
            {"id": "j", "pool": "p", "repository": "r", "ref": "main", "sha": "abcdef0", "commands": ["true"]}
        )
        return Accepted(new_job(spec, source=name, controller_id="c", timeout_s=1, now=1.0))

    def rejected(self, source: str, remote: str | None, rej: Refusal) -> Answer:
        answer = refusal_answer(rej)
        self.record_rejection(source, remote, answer.status, rej.reason)
        return answer

    def record_rejection(self, source: str, remote: str | None, status: int, reason: str) -> None:
        self.refused.append((source, status, reason))


async def _eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _post(port: int, key: bytes, body: bytes) -> tuple[int, Any]:
    headers = sign("standard-webhooks", key, body, msg_id="msg_held", timestamp=int(time.time()))
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/webhooks/ci", data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def _stub_listener(key: bytes) -> tuple[WebhookListener, _StubIntake]:
    """A real listener with one real worker process, in front of a stub accept path."""
    server = ServerConfig(webhook_port=0, intake_workers=1, max_body_bytes=4096)
    intake = _StubIntake(server, key)
    listener = WebhookListener(server, intake)  # type: ignore[arg-type]
    await listener.start()
    return listener, intake


async def test_deliveries_relayed_before_open_wait_for_it_and_a_stop_answers_them() -> None:
    key = b"k" * 32
    listener, intake = await _stub_listener(key)
    try:
        held = asyncio.create_task(_post(listener.port, key, b'{"id": "first"}'))
        await asyncio.sleep(1.0)
        assert not held.done() and intake.accepted == []  # relayed, and held until the scheduler is ready
        await listener.open()
        assert await asyncio.wait_for(held, 10) == (202, {"job_id": "j", "status": "queued"})
        assert intake.accepted == [("ci", "msg_held", b'{"id": "first"}')]
        assert (await _post(listener.port, b"wrong" * 8, b"{}"))[0] == 401
        await _eventually(lambda: intake.refused == [("ci", 401, "bad_signature")])  # reported after the answer
    finally:
        await listener.stop()
    assert listener.alive() == 0 and listener.sock is None


async def test_a_stop_before_open_answers_held_deliveries_503() -> None:
    key = b"k" * 32
    listener, intake = await _stub_listener(key)
    held = asyncio.create_task(_post(listener.port, key, b'{"id": "never"}'))
    await asyncio.sleep(1.0)
    await asyncio.wait_for(listener.stop(), 30)
    status, answer = await asyncio.wait_for(held, 10)
    assert (status, answer["reason"]) == (503, "shutting_down") and intake.accepted == []
