"""The link between an intake worker process and the controller: length-prefixed frames on a socket pair.

A frame is an 8-byte prefix (header length, body length; big-endian), a JSON object header, then the raw body.
Webhook bodies travel as raw bytes, not inside JSON, so they are neither re-encoded nor copied into text, and
the receiving side checks both lengths before it reads anything, so a confused or hostile peer cannot make the
other side allocate more than a webhook body's cap. JSON rather than pickle: a worker is trusted to verify
signatures, not to run code in the controller.

Frames (the header's "t"):
- "hello"     controller → worker, first frame: the webhook sources (secrets base64) and the body limits.
- "ready"     worker → controller: its listener is serving.
- "delivery"  worker → controller: an authenticated delivery (id, source, delivery, remote; body = raw body).
- "answer"    controller → worker: what to send back for delivery `id` (status, retry_after, close; body): an
              `intake.answers.Answer`, as data, which the worker sends as the response the controller would.
- "rejected"  worker → controller: a delivery the worker refused itself (source, remote, status, reason), so
              the controller counts, audits and logs it like one it refused.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from typing import Any

PREFIX = struct.Struct(">II")
MAX_HEADER_BYTES = 64 * 1024
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_KINDS = frozenset({"hello", "ready", "delivery", "answer", "rejected"})


class RelayError(Exception):
    """The peer broke the protocol; the link is closed (the worker is restarted)."""


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = _ENCODER.encode(header).encode()
    if len(head) > MAX_HEADER_BYTES:  # e.g. a hello with very many webhook secrets: the peer would refuse it
        raise RelayError(f"frame header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    return PREFIX.pack(len(head), len(body)) + head + body


def decode_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RelayError(f"frame header is not JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict) or header.get("t") not in _KINDS:
        raise RelayError("frame header has no known kind")
    return header


def check_lengths(head_len: int, body_len: int, max_body_bytes: int) -> None:
    if not 0 < head_len <= MAX_HEADER_BYTES:
        raise RelayError(f"frame header of {head_len} bytes is outside 1..{MAX_HEADER_BYTES}")
    if body_len > max_body_bytes:
        raise RelayError(f"frame body of {body_len} bytes exceeds the limit of {max_body_bytes}")


class FrameDecoder:
    """Bytes in, complete frames out, however the stream was cut. Lengths are checked as soon as a prefix is
    complete, before the rest is waited for."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        buf = self.buffer
        buf += data
        frames = []
        at = 0
        while len(buf) - at >= PREFIX.size:
            head_len, body_len = PREFIX.unpack_from(buf, at)
            check_lengths(head_len, body_len, self.max_body_bytes)
            end = at + PREFIX.size + head_len + body_len
            if len(buf) < end:
                break
            head_end = at + PREFIX.size + head_len
            frames.append((decode_header(bytes(buf[at + PREFIX.size : head_end])), bytes(buf[head_end:end])))
            at = end
        del buf[:at]
        return frames

    @property
    def inside_frame(self) -> bool:
        return bool(self.buffer)


class FrameLink(asyncio.Protocol):
    """One end of the link. Frames are handed to `on_frame` as they complete; frames sent within one turn of
    the event loop leave in one write: answers come in bursts (one per group commit), and a system call per
    frame would cost more than the frame."""

    def __init__(
        self,
        max_body_bytes: int,
        on_frame: Callable[[dict[str, Any], bytes], None],
        on_close: Callable[[Exception | None], None],
    ) -> None:
        self.decoder = FrameDecoder(max_body_bytes)
        self.on_frame = on_frame
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.outgoing: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            for header, body in self.decoder.feed(data):
                self.on_frame(header, body)
        except RelayError as exc:
            self.close(exc)

    def eof_received(self) -> bool | None:
        if self.decoder.inside_frame:
            self.close(RelayError("link closed inside a frame"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(exc)

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        if self.closed or self.transport is None:
            return
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outgoing.append(encode(header, body))

    def _flush(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def close(self, exc: Exception | None = None) -> None:
        """Ends the link once; `on_close` learns why (None: the peer hung up cleanly)."""
        if self.closed:
            return
        if self.outgoing:
            self._flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self.on_close(exc)


def field(header: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """A header field of the expected type, or RelayError naming it."""
    value = header.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise RelayError(f"frame {header.get('t')!r}: field {name!r} is missing or of the wrong type")
    return value
