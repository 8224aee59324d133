"""Receiving a webhook delivery up to and including its authentication: size, encoding and time limits on the
body, then the signature on the raw bytes. Kept apart from the accept path (webhooks.py) because intake worker
processes run exactly this and nothing else: importing it must not pull in the store, scheduler or Docker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from orchestrator.intake.signatures import SignatureError, verify
from orchestrator.jobs.refusal import Refusal


@dataclass(frozen=True)
class WebhookSource:
    name: str
    scheme: str
    secrets: tuple[bytes, ...]


async def read_capped(request: web.Request, cap: int) -> bytes:
    """Reads at most `cap` bytes; a declared or actual larger body is refused without reading the rest.
    Compressed bodies are refused: the signature covers the bytes as sent, and inflating them first would be
    a decompression-bomb risk for no benefit."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Refusal("unsupported_encoding", f"Content-Encoding {encoding!r} is not accepted; send the body as is")
    declared = request.content_length
    if declared is not None and declared > cap:
        raise Refusal("body_too_large", f"body of {declared} bytes exceeds the limit of {cap} bytes")
    if request.content.is_eof():  # all of it is already buffered (the usual case): take it in one piece
        body = request.content.read_nowait()
        if len(body) > cap:
            raise Refusal("body_too_large", f"body exceeds the limit of {cap} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await request.content.read(min(65536, cap + 1 - size))
        except web.HTTPException:
            raise
        except (aiohttp.ClientPayloadError, web.RequestPayloadError, ConnectionError) as exc:
            raise Refusal("unreadable_body", f"body could not be read: {type(exc).__name__}") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            raise Refusal("body_too_large", f"body exceeds the limit of {cap} bytes")
    return b"".join(chunks)


async def authenticate(
    request: web.Request, sources: Mapping[str, WebhookSource], name: str, max_body_bytes: int, body_timeout_s: float
) -> tuple[str | None, bytes]:
    """The raw body, read within its size and time limits, and the delivery id its valid signature for source
    `name` vouches for. Shared by the controller's own listener and the intake worker processes. Raises Refusal.

    The body is read before the source is looked up: a refusal that leaves the body unread closes the connection
    (or not, depending on whether the body had fully arrived), and an unknown source is no reason to lose the
    requests a client pipelined behind it. Reading costs no more than a wrong signature on a known source."""
    try:
        if request.content.is_eof():  # the whole body has arrived (the usual case): no timer needed
            body = await read_capped(request, max_body_bytes)
        else:
            async with asyncio.timeout(body_timeout_s):
                body = await read_capped(request, max_body_bytes)
    except TimeoutError:
        raise Refusal("body_timeout", f"body not received within {body_timeout_s:g} s") from None
    source = sources.get(name)
    if source is None:
        raise Refusal("unknown_source", f"unknown webhook source {name!r}")
    try:
        delivery = verify(source.scheme, source.secrets, request.headers, body, time.time())
    except SignatureError as exc:
        raise Refusal(exc.reason, exc.message) from None
    return delivery, body
