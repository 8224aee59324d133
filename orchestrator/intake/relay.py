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
- "answer"    controller → worker: what to send back for delivery `id` (status, retry_after, close; body).
- "rejected"  worker → controller: a delivery the worker refused itself (source, remote, status, reason), so
              the controller counts, audits and logs it like one it refused.
"""

from __future__ import annotations

import asyncio
import json
import struct
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


async def read_frame(reader: asyncio.StreamReader, max_body_bytes: int) -> tuple[dict[str, Any], bytes] | None:
    """The next frame, or None at a clean end of the link (EOF between frames)."""
    try:
        prefix = await reader.readexactly(PREFIX.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise RelayError("link closed inside a frame prefix") from None
    head_len, body_len = PREFIX.unpack(prefix)
    check_lengths(head_len, body_len, max_body_bytes)
    try:
        head = await reader.readexactly(head_len)
        body = await reader.readexactly(body_len) if body_len else b""
    except asyncio.IncompleteReadError:
        raise RelayError("link closed inside a frame") from None
    return decode_header(head), body


def field(header: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """A header field of the expected type, or RelayError naming it."""
    value = header.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise RelayError(f"frame {header.get('t')!r}: field {name!r} is missing or of the wrong type")
    return value
