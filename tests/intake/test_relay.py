"""The relay between intake workers and the controller: frames, limits checked before reading, and what each end
does when the other breaks the protocol or goes away."""

from __future__ import annotations

import asyncio
import socket
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.config import ServerConfig
from orchestrator.intake import relay
from orchestrator.intake.webhook_listener import WebhookListener, WorkerStartError, _Worker
from orchestrator.intake.worker import Relay


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


@given(
    rid=st.integers(min_value=0, max_value=2**53),
    source=st.text(min_size=1, max_size=40),
    remote=st.none() | st.text(max_size=40),
    body=st.binary(max_size=2048),
)
def test_frames_round_trip(rid: int, source: str, remote: str | None, body: bytes) -> None:
    header = {"t": "delivery", "id": rid, "source": source, "delivery": None, "remote": remote}

    async def read() -> Any:
        return await relay.read_frame(_reader(relay.encode(header, body)), 4096)

    assert asyncio.run(read()) == (header, body)


async def test_several_frames_then_a_clean_end() -> None:
    reader = _reader(relay.encode({"t": "ready"}) + relay.encode({"t": "answer", "id": 1, "status": 202}, b"{}"))
    assert await relay.read_frame(reader, 10) == ({"t": "ready"}, b"")
    assert await relay.read_frame(reader, 10) == ({"t": "answer", "id": 1, "status": 202}, b"{}")
    assert await relay.read_frame(reader, 10) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (struct.pack(">II", 10, 5_000), "exceeds the limit of 4096"),  # refused before the body is read
        (struct.pack(">II", 0, 0), "outside 1.."),
        (struct.pack(">II", relay.MAX_HEADER_BYTES + 1, 0), "outside 1.."),
        (struct.pack(">II", 5, 0) + b"nope!", "not JSON"),
        (struct.pack(">II", 2, 0) + b"[]", "no known kind"),
        (struct.pack(">II", 12, 0) + b'{"t":"exec"}', "no known kind"),
        (struct.pack(">II", 12, 3) + b'{"t":"ready"}', "inside a frame"),
        (b"\x00\x00", "inside a frame prefix"),
    ],
)
async def test_broken_frames_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(relay.RelayError, match=message):
        await relay.read_frame(_reader(data), 4096)


def test_field_checks_presence_and_type() -> None:
    header = {"t": "answer", "id": True, "status": 202}
    assert relay.field(header, "status", int) == 202
    with pytest.raises(relay.RelayError, match="'id'"):
        relay.field(header, "id", int)  # a bool is not an id
    with pytest.raises(relay.RelayError, match="'source'"):
        relay.field(header, "source", str)


async def test_worker_answers_503_for_what_it_relayed_when_the_controller_goes_away() -> None:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    link = Relay(reader, writer, 4096)
    answers = asyncio.create_task(link.read_answers())
    waiting = asyncio.create_task(link.forward("ci", "msg_1", "127.0.0.1", b"{}"))
    await asyncio.sleep(0.05)
    sent = theirs.recv(4096)
    assert b'"t":"delivery"' in sent and sent.endswith(b"{}")
    theirs.close()  # the controller died
    response = await asyncio.wait_for(waiting, 5)
    assert response.status == 503 and response.headers["Retry-After"] == "30"
    await answers
    late = await link.forward("ci", "msg_2", None, b"{}")  # and so does every later one, without waiting
    assert late.status == 503
    writer.close()


async def test_worker_matches_answers_to_deliveries() -> None:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    link = Relay(reader, writer, 4096)
    answers = asyncio.create_task(link.read_answers())
    first = asyncio.create_task(link.forward("ci", "a", None, b"1"))
    second = asyncio.create_task(link.forward("ci", "b", None, b"2"))
    await asyncio.sleep(0.05)
    theirs.sendall(
        relay.encode({"t": "answer", "id": 1, "status": 200}, b'{"n": 2}')
        + relay.encode({"t": "answer", "id": 0, "status": 429, "retry_after": "30", "close": True}, b'{"n": 1}')
    )
    one, two = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert (one.status, one.body, one.headers["Retry-After"], one.keep_alive) == (429, b'{"n": 1}', "30", False)
    assert (two.status, two.body, "Retry-After" in two.headers) == (200, b'{"n": 2}', False)
    theirs.close()
    await answers
    writer.close()


def test_a_header_too_large_for_the_peer_is_not_sent() -> None:
    with pytest.raises(relay.RelayError, match="exceeds"):
        relay.encode({"t": "hello", "sources": {"s": "x" * relay.MAX_HEADER_BYTES}})


async def test_the_controller_kills_a_worker_that_breaks_the_protocol() -> None:
    server = ServerConfig(webhook_port=0, intake_workers=1)
    intake = SimpleNamespace(config=SimpleNamespace(server=server), sources={})
    listener = WebhookListener(server, intake)  # type: ignore[arg-type]
    process = await asyncio.create_subprocess_exec("sleep", "60")
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    theirs.sendall(relay.encode({"t": "hello"}))  # only the controller says hello
    await asyncio.wait_for(listener._serve_link(_Worker(0, process, writer, 0.0), reader), 5)
    assert await asyncio.wait_for(process.wait(), 5) == -9
    theirs.close()


async def test_a_worker_that_cannot_start_stops_the_controller_start(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ServerConfig(webhook_port=0, intake_workers=2, max_body_bytes=4096)
    intake = SimpleNamespace(config=SimpleNamespace(server=server), sources={})
    listener = WebhookListener(server, intake)  # type: ignore[arg-type]
    monkeypatch.setattr("orchestrator.intake.webhook_listener.sys.executable", "/bin/false")
    with pytest.raises(WorkerStartError, match=r"intake worker \d did not start \(exit code 1\)"):
        await listener.start()
    assert listener.sock is None and listener.workers == {}
