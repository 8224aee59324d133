"""Webhook intake fuzzing over real HTTP: hostile headers, signatures, JSON bodies, framing and paths.

How it runs
    Each family test starts one controller with ``controller_factory`` on 127.0.0.1 against the real Docker
    engine, configured with ``body_timeout_s = 0.5``, ``max_body_bytes = 64 KiB`` and a pool whose image does
    not exist, so an accepted job ends in ``error`` at container creation and never starts a container.

    Hypothesis is synchronous and the controller lives on the test's event loop, so the ``@given`` function
    runs in a worker thread (``asyncio.to_thread``) and hands every exchange to the loop with
    ``asyncio.run_coroutine_threadsafe``, each bounded by ``asyncio.wait_for``: a hang fails as a timeout
    instead of stalling the suite.  Every request goes through the small raw HTTP/1.1 client below (asyncio
    streams), so header bytes, framing and request targets are exactly what a case says; aiohttp's client would
    normalise or refuse many of them.  Settings: no example database (runs do not replay each other),
    ``deadline=None`` (latency is the controller's, not the strategy's), the failing blob is printed.

    Hypothesis costs ~1 ms per example and 0.1-0.3 ms per draw here, so drawing every character would cost
    10-50 ms per case.  A case is therefore a small genome hypothesis draws (kinds, sizes, counts and a seed),
    expanded by a seeded ``random.Random``, and an example carries several cases.  Hypothesis still explores,
    shrinks (kinds, sizes and counts first, then the seed) and reproduces; the expanded case is in every
    assertion message.

Families and oracles (counts are asserted per family; the minimums add up to >= 10,000)
    1. forged deliveries: a correct Standard Webhooks signature broken by one to three mutations (wrong key,
       tampered body/id/timestamp, stale timestamp, wrong scheme version, mangled base64, missing, empty,
       garbled, non-ASCII or huge headers, many signatures) plus noise (random extra headers, header-name
       case, other schemes' headers).  A third of the bodies are valid job specs, so a bypass would create a
       job.  Requests the HTTP parser takes must get exactly 401 with a documented reason; those it refuses
       (control bytes, lines over 8 KiB) a 400/431 or a closed connection; never a 2xx, never a 5xx.
    2. valid signatures over hostile JSON: nesting bombs, huge numbers, NaN/Infinity, duplicate keys, lone
       surrogate escapes, Unicode/emoji/RTL/NUL in every field, wrong types, extra fields, BOM/UTF-16/UTF-32/
       Latin-1 encodings, credential-shaped ids, replays of accepted ids.  The stdlib ``json`` decides 400 or
       not; a spec valid by construction must be 202 (200 for a replay); anything else 202/200/422.  Every 202
       id is new, every 200 a known id.
    3. raw framing: header lines over 8 KiB, hundreds of headers, Content-Length over the cap, bodies that stall
       (408 after the timeout), clients that shut their side mid-body, broken chunked encoding, Transfer-
       Encoding/Content-Length conflicts, garbage Content-Length, Content-Encoding (415), HTTP/1.0 and 0.9,
       Expect: 100-continue, pipelined requests (answered in order), garbage request lines.  Each must answer a
       4xx (or close) in time.
    4. paths and methods: unknown and credential-shaped sources, traversal (``..%2f``, dot segments), percent-
       encoded and raw Unicode, NUL, overlong UTF-8, other methods.  404 unless the decoded source is ``test``
       (then 401, unsigned), 400 for bytes not allowed in a request target, 405 for other methods.
    After each family: no 5xx anywhere; the store and ``GET /api/v1/jobs`` hold exactly the 202 ids (so none
    outside family 2); every accepted job ended in ``error`` (image not found) without a container; no container
    exists for the controller; a normal signed job is still accepted with 202; and the captured log records hold
    no traceback and no error (aiohttp's own refusal of a malformed request line or header is the one tolerated:
    it never reaches the intake).

Bugs it found are reproduced at the end of this module.  Fixed ones (dcd427b) are regression tests and the
fuzzer covers their inputs again; the open ones are strict xfails whose inputs the strategies leave out
(undecodable compressed bodies; how long a refused connection stays open is only measured there), so that a
fix turns the reproduction into an XPASS failure that says: widen the fuzzer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import hmac
import itertools
import json
import logging
import math
import random
import re
import secrets
import time
import unicodedata
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, unquote_to_bytes

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RunningController, job_spec, managed_containers

pytestmark = pytest.mark.docker

T = TypeVar("T")

MISSING_IMAGE = "runner-orchestrator/does-not-exist:fuzz"
CAP = 65536
BODY_TIMEOUT_S = 0.5
SERVER = {"host": "127.0.0.1", "port": 0, "body_timeout_s": BODY_TIMEOUT_S, "max_body_bytes": CAP}
MAX_LINE = 8190  # aiohttp's max_line_size / max_field_size
MIN_CASES = {"forged": 3400, "signed": 3400, "raw": 1300, "paths": 1900}
assert sum(MIN_CASES.values()) >= 10_000
EXCHANGE_TIMEOUT_S = 8.0
SIGNATURE_REASONS = {"missing_signature", "malformed_signature", "bad_signature", "stale_timestamp", "missing_header"}
JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
RUN = uuid.uuid4().hex[:6]
_serial = itertools.count()

# Text shaped like a credential (the audit trail withholds it): senders may still choose it for ids and names.
TOKEN_SHAPED = ["s." + "A" * 24, "hvs." + "B" * 24, "eyJhbGciOi.eyJzdWIi.c2ln", "whsec_" + "C" * 20]


def unique_id(prefix: str) -> str:
    """Fixed width: strategies draw bounds from request lengths, and an id that grows a digit between two
    examples with the same choices makes hypothesis fail them as an inconsistent strategy."""
    return f"{prefix}-{RUN}-{next(_serial):09d}"


def settings_for(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# -- raw HTTP/1.1 client -----------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int | None  # None: the connection was closed (or reset) without a response
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    elapsed: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


Part = bytes | float  # bytes to send, or seconds to wait


def http_request(
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    method: bytes = b"POST",
    version: bytes = b"HTTP/1.1",
    length: bool = True,
    close: bool = True,
) -> bytes:
    lines = [method + b" " + target + b" " + version, b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readline()


async def read_reply(reader: asyncio.StreamReader, started: float) -> Reply:
    try:
        while True:
            line = await reader.readline()
            if not line:
                return Reply(None, elapsed=time.monotonic() - started)
            status = int(line.split(None, 2)[1])
            headers: dict[str, str] = {}
            while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = raw.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if status >= 200:
                break
        elapsed = time.monotonic() - started
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            body = await reader.read()
        return Reply(status, headers, body, elapsed)
    except (ConnectionResetError, asyncio.IncompleteReadError):
        return Reply(None, elapsed=time.monotonic() - started)


async def exchange(port: int, parts: Sequence[Part], *, replies: int = 1, half_close: bool = False) -> list[Reply]:
    """Sends `parts` on one connection, then reads up to `replies` responses (stops at a close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    out: list[Reply] = []
    try:
        try:
            for part in parts:
                if isinstance(part, float):
                    await asyncio.sleep(part)
                    continue
                writer.write(part)
                await writer.drain()
            if half_close:
                writer.write_eof()
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server answered early and closed; read what it said
        for _ in range(replies):
            reply = await read_reply(reader, started)
            out.append(reply)
            if reply.status is None or reply.headers.get("connection", "").lower() == "close":
                break
        return out
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# Every family runs twice: against the controller's own port, and against webhook_port served by intake worker
# processes (limits and signature checked there, the rest relayed to the controller).
VIA = ["controller", "workers"]


async def start(controller_factory: Any, via: str = "controller") -> RunningController:
    """A controller whose pool image does not exist: an accepted job ends in error before any container."""
    server = SERVER if via == "controller" else {**SERVER, "webhook_port": 0, "intake_workers": 2}
    ctl: RunningController = await controller_factory(
        settings={"server": server}, image=MISSING_IMAGE, max_concurrent=8
    )
    return ctl


def port_of(ctl: RunningController) -> int:
    """The port the fuzzer sends to: the workers' when the controller has them."""
    listener = ctl.controller.webhook_listener
    return listener.port if listener is not None else int(ctl.url.rsplit(":", 1)[1])


class LoopBridge:
    """Runs coroutines on the test's event loop from the hypothesis worker thread, each with a hard bound."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waited_s = 0.0  # time spent waiting for the controller, as opposed to generating cases

    def __call__(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = EXCHANGE_TIMEOUT_S) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(make(), timeout)

        future = asyncio.run_coroutine_threadsafe(bounded(), self.loop)
        started = time.monotonic()
        try:
            return future.result(timeout + 10)
        except TimeoutError:
            raise AssertionError(f"no answer within {timeout} s: the controller hung") from None
        finally:
            self.waited_s += time.monotonic() - started


@dataclass
class Tally:
    cases: int = 0
    statuses: Counter[int | None] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, int] = field(default_factory=dict)  # job id -> case number that got the 202
    started: float = field(default_factory=time.monotonic)
    slow: Counter[str] = field(default_factory=Counter)  # cases answered after more than 0.3 s, by kind

    def saw(self, reply: Reply, kind: str) -> None:
        self.cases += 1
        self.statuses[reply.status] += 1
        self.kinds[kind] += 1
        if reply.elapsed > 0.3:
            self.slow[kind] += 1
        assert reply.status is None or reply.status < 500, f"{kind}: {reply.status} {reply.body[:300]!r}"


# -- signing ------------------------------------------------------------------------------------------------------


def sw_signature(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def signed_headers(key: bytes, body: bytes, msg_id: str, *, timestamp: int | None = None) -> list[tuple[bytes, bytes]]:
    ts = int(time.time()) if timestamp is None else timestamp
    return [
        (b"webhook-id", msg_id.encode()),
        (b"webhook-timestamp", str(ts).encode()),
        (b"webhook-signature", b"v1," + sw_signature(key, msg_id.strip(), ts, body).encode()),
        (b"Content-Type", b"application/json"),
    ]


def spec_bytes(job_id: str, **overrides: Any) -> bytes:
    return json.dumps(job_spec(job_id, **overrides)).encode()


# -- shared generators ----------------------------------------------------------------------------------------------

# Hypothesis costs 0.1-0.3 ms per draw on this machine plus ~1 ms per example, and st.text / st.binary /
# st.from_regex draw per element: 10-50 ms per case, far too slow for 10,000 cases.  So a case is a small genome
# that hypothesis draws (kinds, sizes, counts and one seed), expanded into content by a seeded random.Random;
# several cases share one example.  Hypothesis still explores, shrinks (kinds, sizes and counts towards the
# simplest, then the seed) and reproduces (the printed blob), and the expanded case is printed with a failure.
ASCII = [chr(c) for c in range(0x20, 0x7F)]
SPECIAL = [
    *"\x00\t\n\r\x0b\x0c\x1b\x7f\x85\xa0\xad",
    *"\u0301\u034f\u200b\u200c\u200d\u200e\u200f\u202a\u202e\u2066\u2069\u2028\u2029\u3000",
    *"\ufeff\ufffd\uffff\ufdd0\U0010ffff\U000e0001",
    *"éßøÆİıǅﬀⅫ١１中文한글شعאבёЖ",
    "\U0001f600",
    "\U0001f469\u200d\U0001f4bb",
    "\U0001f1fa\U0001f1f8",
    "\U0001d54f",
    "e\u0301",
    "..",
    "../",
    "%2e",
    "%00",
    "\\u0000",
]
HOSTILE_POOL = ASCII + SPECIAL
ALNUM = [*"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"]
SEEDS = st.integers(0, 2**32 - 1)


def without(pool: Sequence[str], *categories: str, chars: str = "") -> list[str]:
    return [p for p in pool if not any(unicodedata.category(c) in categories or c in chars for c in p)]


def clean_header_value(value: bytes) -> bool:
    """What aiohttp's parser takes in a header value: no control bytes except tab, within the line limit."""
    return len(value) < MAX_LINE - 100 and not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value)


def code_points(rng: random.Random, size: int) -> str:
    """Any code points but surrogates, from every plane."""
    ranges = [(0x20, 0x7E), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(size))


def rand_text(rng: random.Random, low: int = 0, high: int = 40, pool: Sequence[str] = HOSTILE_POOL) -> str:
    size = rng.randint(low, high) if rng.random() < 0.9 else rng.randint(low, max(low, high * 5))
    return code_points(rng, size) if rng.random() < 0.25 else "".join(rng.choices(pool, k=size))


# st strategies for families 3 and 4, whose cases are few draws anyway
def bytes_of(min_size: int = 0, max_size: int = 64) -> st.SearchStrategy[bytes]:
    return st.tuples(st.integers(min_size, max_size), SEEDS).map(lambda t: random.Random(t[1]).randbytes(t[0]))


hostile_text = st.tuples(st.integers(0, 40), SEEDS).map(lambda t: rand_text(random.Random(t[1]), t[0], t[0]))
MSG_POOL = without(HOSTILE_POOL, "Cc", "Cs")


def rand_msg_id(rng: random.Random, kind: int) -> str:
    """Delivery ids a sender may legitimately use: no control characters, valid UTF-8, anything else goes."""
    if kind == 0:
        msg_id = "msg_" + "".join(rng.choices(ALNUM, k=rng.randint(1, 40)))
    elif kind == 1:
        msg_id = "".join(rng.choices(MSG_POOL, k=rng.randint(1, 60)))
    elif kind == 2:
        msg_id = "".join(c for c in code_points(rng, rng.randint(1, 12)) if unicodedata.category(c) != "Cc")
    elif rng.random() < 0.25:
        msg_id = "".join(rng.choices(ASCII, k=rng.randint(1000, 3000)))
    elif rng.random() < 0.2:
        msg_id = rng.choice(TOKEN_SHAPED)
    else:
        msg_id = rng.choice(["x", "msg_1", " msg_2 ", "\u00a0msg\u3000", "0", "-", "msg_" + "é" * 30])
    return msg_id if msg_id.strip() else "msg_fallback"


# -- family 1: forged deliveries -------------------------------------------------------------------------------

BREAKERS = (
    "wrong_key",
    "tamper_body",
    "tamper_id",
    "tamper_ts",
    "stale",
    "ts_garbage",
    "version",
    "mangle_sig",
    "missing",
    "empty",
    "garbage_value",
    "many_wrong",
    "huge_value",
)
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
SW_HEADERS = (b"webhook-id", b"webhook-timestamp", b"webhook-signature")
HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "host", "expect", "upgrade", "content-encoding"}
TS_FORMS = ["+{}", "{}.0", "-{}", "{}e0", "0x{:x}", "{} 1", "{}_0", "1{}", "{}0", " {}x", "\uff11\uff12\uff13{}"]
VERSIONS = ["v2,", "v1a,", "V1,", "v0,", "v1;", "", "v1 ,", "v11,", "1,", "v1=", "v1,,"]
TOKEN_CHARS = [*ALNUM, *"!#$%&'*+.^_`|~-"]


@dataclass
class Forged:
    body: bytes | None  # None: a valid job spec with a fresh id, so a bypass would create a job
    msg_id: str
    breakers: list[tuple[str, Any]]
    noise: list[tuple[str, Any]]


def rand_header_value(rng: random.Random) -> bytes:
    """Mostly values the HTTP parser passes on (obs-text included), sometimes raw bytes it refuses."""
    if rng.random() < 0.15:
        return rng.randbytes(rng.randint(0, 200)).replace(b"\r", b"").replace(b"\n", b"")
    value = rand_text(rng).encode("utf-8", "surrogatepass")
    return re.sub(rb"[\x00-\x08\x0a-\x1f\x7f]", b"", value)


def rand_header_name(rng: random.Random) -> bytes:
    while True:
        name = "".join(rng.choices(TOKEN_CHARS, k=rng.randint(1, 30)))
        if name.lower() not in HOP_BY_HOP and not name.lower().startswith("webhook-"):
            return name.encode()


def breaker_arg(rng: random.Random, name: str) -> Any:
    which = rng.choice(SW_HEADERS)
    if name == "wrong_key":
        return rng.randbytes(rng.randint(1, 64))
    if name == "tamper_body":
        return rng.randint(0, 10**6), rng.randint(1, 255)
    if name == "tamper_id":
        return "".join(rng.choices("abcXYZ019_-", k=rng.randint(1, 5)))
    if name == "tamper_ts":
        return rng.choice([1, -1, 2, -60, 290, -290, rng.randint(1, 290) * rng.choice((1, -1))])
    if name == "stale":
        return rng.choice([330, -330, 10**9, -(10**9), rng.randint(330, 10**9) * rng.choice((1, -1))])
    if name == "ts_garbage":
        if rng.random() < 0.5:
            return "form", rng.choice(TS_FORMS)
        text = rand_text(rng).replace("\r", "").replace("\n", "")
        return "text", text + "x" if text.strip().isdigit() else text
    if name == "version":
        return rng.choice(VERSIONS)
    if name == "mangle_sig":
        return (
            rng.choice(["flip", "truncate", "extend", "unpad", "urlsafe", "hex"]),
            rng.randint(0, 41),
            rng.randint(1, 63),
        )
    if name == "missing":
        return which, ""
    if name == "empty":
        return which, rng.choice(["", " ", "\t", "  \t "])
    if name == "garbage_value":
        return which, rand_header_value(rng)
    if name == "many_wrong":
        return rng.randint(1, 150)
    assert name == "huge_value"
    return which, rng.randint(MAX_LINE - 200, 20_000)


def noise_item(rng: random.Random) -> tuple[str, Any]:
    kind = rng.choice(["extra", "extra", "case", "ows", "other_versions", "other_schemes", "dup_garbage"])
    if kind == "extra":
        return kind, (rand_header_name(rng), rand_header_value(rng))
    if kind == "other_versions":
        return kind, rng.choices(["v1a,", "v2,", "v0,", "x,"], k=rng.randint(1, 5))
    if kind == "dup_garbage":
        return kind, (rng.choice(SW_HEADERS), rand_header_value(rng))
    return kind, rng.getrandbits(16)


def make_forged(body_kind: int, msg_kind: int, breakers: int, noise: int, seed: int) -> Forged:
    rng = random.Random(seed)
    body: bytes | None = None
    if body_kind == 1:
        body = rng.randbytes(rng.randint(0, 2048))
    elif body_kind == 2:
        body = rand_text(rng, 0, 400).encode("utf-8", "surrogatepass")
    return Forged(
        body=body,
        msg_id=rand_msg_id(rng, msg_kind),
        breakers=[(name, breaker_arg(rng, name)) for name in rng.sample(BREAKERS, breakers)],
        noise=[noise_item(rng) for _ in range(noise)],
    )


forged_deliveries = st.builds(
    make_forged,
    body_kind=st.integers(0, 2),
    msg_kind=st.integers(0, 3),
    breakers=st.integers(1, 3),
    noise=st.integers(0, 3),
    seed=SEEDS,
)


def build_forged(case: Forged, key: bytes, body: bytes) -> list[tuple[bytes, bytes]]:
    """The headers at send time (the timestamp is 'now'), with every breaker and noise item applied."""
    now = int(time.time())
    msg_id, sign_key = case.msg_id.strip(), key
    ts: int = now
    header_ts: str = str(now)
    version = "v1,"
    sig_override: str | None = None
    body_for_sig, id_for_sig, ts_for_sig = body, msg_id, ts
    replace: dict[bytes, bytes | None] = {}
    for name, arg in case.breakers:
        if name == "wrong_key":
            sign_key = arg if arg != key else arg + b"x"
        elif name == "tamper_body":
            index, xor = arg
            if body_for_sig:
                i = index % len(body_for_sig)
                body_for_sig = body_for_sig[:i] + bytes([body_for_sig[i] ^ xor]) + body_for_sig[i + 1 :]
            else:
                body_for_sig = b"x"
        elif name == "tamper_id":
            id_for_sig = msg_id + arg
        elif name == "tamper_ts":
            ts_for_sig = ts + arg
        elif name == "stale":
            ts = ts_for_sig = max(now + arg, 1)
            header_ts = str(ts)
        elif name == "ts_garbage":
            header_ts = arg[1].format(now) if arg[0] == "form" else arg[1]
        elif name == "version":
            version = arg
        elif name == "many_wrong":
            sig_override = " ".join("v1," + base64.b64encode(secrets.token_bytes(32)).decode() for _ in range(arg))
        elif name in ("missing", "empty"):
            which, blank = arg
            replace[which] = None if name == "missing" else blank.encode()
        elif name == "garbage_value":
            which, value = arg
            replace[which] = value
        elif name == "huge_value":
            which, size = arg
            replace[which] = b"v1," + b"A" * size if which == b"webhook-signature" else b"9" * size
    sig = sw_signature(sign_key, id_for_sig, ts_for_sig, body_for_sig)
    mangle = next((arg for name, arg in case.breakers if name == "mangle_sig"), None)
    if mangle is not None:
        how, index, other = mangle
        if how == "flip":  # index <= 41: the last data character only carries padding bits
            sig = sig[:index] + B64[(B64.index(sig[index]) + other) % 64] + sig[index + 1 :]
        elif how == "truncate":
            sig = sig[: index % 40]
        elif how == "extend":
            sig = sig.rstrip("=") + "AAAA" + "=" * (other % 3)
        elif how == "unpad":
            sig = sig.rstrip("=")
        elif how == "urlsafe":
            sig = base64.urlsafe_b64encode(base64.b64decode(sig)).decode().rstrip("=") + "-_"
        else:
            sig = base64.b64decode(sig).hex()
    signature = sig_override if sig_override is not None else version + sig
    headers: list[tuple[bytes, bytes]] = []
    for name, value in [
        (b"webhook-id", case.msg_id.encode()),
        (b"webhook-timestamp", header_ts.encode("utf-8", "surrogatepass")),
        (b"webhook-signature", signature.encode()),
    ]:
        new = replace.get(name, value)
        if new is not None:
            headers.append((name, new))
    for kind, arg in case.noise:
        if kind == "extra":
            headers.append(arg)
        elif kind == "case":
            headers = [
                (bytes(c ^ 0x20 if 0x61 <= c <= 0x7A and (arg >> i) & 1 else c for i, c in enumerate(n)), v)
                for n, v in headers
            ]
        elif kind == "ows":
            headers = [(n, b" \t" + v + b"\t ") if n in SW_HEADERS and arg & 1 else (n, v) for n, v in headers]
        elif kind == "other_versions":
            extra = " ".join(p + "AAAA" for p in arg).encode()
            headers = [(n, v + b" " + extra) if n == b"webhook-signature" else (n, v) for n, v in headers]
        elif kind == "other_schemes":
            mac = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
            headers += [(b"X-Hub-Signature-256", b"sha256=" + mac), (b"X-Gitea-Signature", mac)]
        elif kind == "dup_garbage":
            which, value = arg
            if any(n == which for n, _ in headers):
                headers.append((which, value))
    return headers


@dataclass
class Family:
    """What a fuzz family works with: its controller, where it sends, what it saw, and what checks it after."""

    ctl: RunningController
    bridge: LoopBridge
    port: int
    tally: Tally
    docker_client: Any
    caplog: pytest.LogCaptureFixture
    capfd: pytest.CaptureFixture[str]

    async def aftermath(self) -> None:
        await aftermath(self.ctl, self.docker_client, self.caplog, self.capfd, self.tally, self.bridge)


@pytest.fixture(params=VIA)
async def family(
    request: pytest.FixtureRequest,
    controller_factory: Any,
    docker_client: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> Family:
    ctl = await start(controller_factory, request.param)
    bridge = LoopBridge(asyncio.get_running_loop())
    return Family(ctl, bridge, port_of(ctl), Tally(), docker_client, caplog, capfd)


BATCH = 4  # cases per hypothesis example: the engine's per-example cost is larger than a case's


async def test_fuzz_forged_deliveries_never_create_a_job(family: Family) -> None:
    ctl, bridge, port, tally = family.ctl, family.bridge, family.port, family.tally

    def check(case: Forged) -> None:
        body = spec_bytes(unique_id("forged")) if case.body is None else case.body
        headers = build_forged(case, ctl.webhook_secret, body)
        request = http_request(b"/webhooks/test", headers, body)
        (reply,) = bridge(lambda: exchange(port, [request]))
        tally.saw(reply, "+".join(name for name, _ in case.breakers))
        context = (reply.status, reply.body[:300], case)
        if all(clean_header_value(v) for _, v in headers):
            assert reply.status == 401, context
            assert reply.json()["reason"] in SIGNATURE_REASONS, context
        else:  # the HTTP parser refuses it first (control bytes, a line over 8 KiB), or closes
            assert reply.status in (None, 400, 401, 431), context

    @settings_for(MIN_CASES["forged"] // BATCH)
    @given(cases=st.lists(forged_deliveries, min_size=BATCH, max_size=BATCH))
    def fuzz(cases: list[Forged]) -> None:
        for case in cases:
            check(case)

    await asyncio.to_thread(fuzz)
    assert tally.cases >= MIN_CASES["forged"], tally
    assert not tally.statuses.keys() & {200, 201, 202}
    await family.aftermath()


# -- family 2: valid signatures over hostile JSON ------------------------------------------------------------------

SPEC_FIELDS = ("version", "id", "pool", "repository", "ref", "sha", "commands", "env", "timeout_s", "secrets")
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1")
SURROGATE_ESCAPES = ["\\ud800", "\\udfff", "\\udc80", "\\ud83d", "\\ud83d\\ud83d", "\\udfff\\ud800"]
NUMBER_LITERALS = [  # Python's json takes all of these (NaN and Infinity too) but for the 4301+ digit ones
    *("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "-0", "0.0", "1E+2", "1e-999", "1" + "0" * 300),
    *("9" * 4300, "0.1e1", "1.5", "-1", "2", "1e0", "4294967296", "18446744073709551616", "-9223372036854775809"),
]
BAD_NUMBERS = ["9" * 4301, "-" + "9" * 5000, "01", "+1", ".5", "1.", "0x10", "1_000"]
PRINTABLE = [p for p in HOSTILE_POOL if p.isprintable() and ":" not in p]
NO_NUL = without(HOSTILE_POOL, "Cs", chars="\x00")
RESERVED = {"HOME", "PATH", "USER", "PWD", "SHELL", "IFS", "ENV", "BASH_ENV", "CI"}
SPECIAL_IDS = ["-", "_", "...", "-rf", "--help", ".hidden", "a" * 128, "0", "....", "a.-_", *TOKEN_SHAPED[:2]]


def rand_json_string(rng: random.Random, *, surrogates: bool) -> str:
    text = rand_text(rng)
    encoded = json.dumps(text, ensure_ascii=rng.random() < 0.5)
    if surrogates and rng.random() < 0.1:
        cut = rng.randint(1, len(encoded) - 1)
        encoded = encoded[:cut] + rng.choice(SURROGATE_ESCAPES) + encoded[cut:]  # may break an escape: fine
    return encoded


def rand_number(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.03:
        return rng.choice(BAD_NUMBERS)
    if roll < 0.4:
        return rng.choice(NUMBER_LITERALS)
    if roll < 0.7:
        return str(rng.randint(-(10 ** rng.randint(0, 30)), 10 ** rng.randint(0, 30)))
    return json.dumps(rng.choice([math.nan, math.inf, -math.inf, rng.uniform(-1e308, 1e308), rng.random()]))


def rand_json(rng: random.Random, *, surrogates: bool, depth: int = 0) -> str:
    """JSON text, not a value: it can carry NaN, duplicate keys and numbers json.dumps would not write."""
    roll = rng.random()
    if depth >= 4 or roll < 0.55:
        pick = rng.random()
        if pick < 0.2:
            return rng.choice(["null", "true", "false"])
        if pick < 0.5:
            return rand_number(rng)
        return rand_json_string(rng, surrogates=surrogates)
    children = [rand_json(rng, surrogates=surrogates, depth=depth + 1) for _ in range(rng.randint(0, 4))]
    if roll < 0.78:
        return "[" + ",".join(children) + "]"
    return "{" + ",".join(f"{rand_json_string(rng, surrogates=surrogates)}:{c}" for c in children) + "}"


def nesting_bomb(depth: int, kind: str) -> str:
    if kind == "array":
        return "[" * depth + "]" * depth
    if kind == "object":
        return '{"a":' * depth + "1" + "}" * depth
    return '[{"a":' * (depth // 2) + "null" + "}]" * (depth // 2)


def rand_pristine(rng: random.Random) -> dict[str, Any]:
    """A spec the controller must accept: hostile only within what the spec allows."""
    roll = rng.random()
    if roll < 0.6:
        job_id = unique_id("sig")
    elif roll < 0.8:
        job_id = "".join(rng.choices([*ALNUM, *"._-"], k=rng.randint(1, 128)))
    else:
        job_id = rng.choice(SPECIAL_IDS)
    if job_id in (".", ".."):
        job_id = unique_id("sig")
    roll = rng.random()
    if roll < 0.3:
        ref = "refs/heads/main"
    elif roll < 0.8:
        ref = "".join(rng.choices(PRINTABLE, k=rng.randint(1, 120)))
    else:
        ref = "".join(c for c in code_points(rng, rng.randint(1, 12)) if c.isprintable() and c != ":") or "r"
    spec: dict[str, Any] = {
        "version": 1,
        "id": job_id,
        "pool": "default",
        "repository": "".join(rng.choices([*ALNUM, *"._/-"], k=rng.randint(1, 80))),
        "ref": ref[:256],
        "sha": "".join(rng.choices("0123456789abcdefABCDEF", k=rng.randint(7, 64))),
        "commands": [],
    }
    for _ in range(rng.choice([1, 1, 2, 3, rng.randint(1, 20)])):
        if rng.random() < 0.8:
            command = "".join(rng.choices(NO_NUL, k=rng.choice([rng.randint(1, 20), rng.randint(1, 200)])))
        else:
            command = "echo " + code_points(rng, rng.randint(0, 8))
        spec["commands"].append(command if command.strip() else "true")
    if rng.random() < 0.5:
        env = {}
        for _ in range(rng.randint(0, 10)):
            name = rng.choice([*ALNUM[:52], "_"]) + "".join(rng.choices([*ALNUM, "_"], k=rng.randint(0, 20)))
            if name not in RESERVED and not name.startswith(("ORCHESTRATOR_", "CI_", "LD_")):
                env[name] = "".join(rng.choices(NO_NUL, k=rng.randint(0, 100)))
        spec["env"] = env
    if rng.random() < 0.5:
        spec["timeout_s"] = rng.choice([1, 300, rng.randint(1, 300)])
    if rng.random() < 0.3:
        spec["secrets"] = []
    return spec


def hostile_value(rng: random.Random, name: str) -> str:
    """Hostile JSON text for one spec field: usually of the right type, lone surrogate escapes included."""
    if rng.random() < 0.3:
        return rand_json(rng, surrogates=True)
    any_string = rand_json_string(rng, surrogates=True)
    if name == "version":
        return rng.choice(["0", "2", '"1"', "1.0", "true", "null", "-1", "1e0", "[1]", "1.5", rand_number(rng)])
    if name == "id":
        return rng.choice(
            [any_string, '"a b"', '"a/b"', '"' + "a" * 129 + '"', '""', '"id\\u0000"', '"\\u00e9"', '"."', '".."']
        )
    if name == "pool":
        return rng.choice([any_string, '"DEFAULT"', '"default\\u0000"', '""', '"default "', '"__proto__"'])
    if name == "repository":
        return rng.choice([any_string, '"../../etc"', '"a b"', '""', '"' + "a" * 257 + '"'])
    if name == "sha":
        return rng.choice([any_string, '"abcdef"', '"' + "a" * 65 + '"', '"\\uff10abcdef0"'])
    if name == "ref":
        return rng.choice([any_string, '"a:b"', '"refs/\\u202e"', '"\\t"', '"' + "r" * 257 + '"'])
    if name == "commands":
        items = [rand_json_string(rng, surrogates=True) for _ in range(rng.randint(0, 5))]
        return rng.choice(
            [
                "[" + ",".join(items) + "]",
                *('[""]', '["  "]', '["a\\u0000b"]', "[]", '"echo"', '["' + "x" * 65537 + '"]'),
                "[" + ",".join(['"x"'] * rng.choice([500, 501, 600])) + "]",
            ]
        )
    if name == "env":
        pairs = [
            f"{rand_json_string(rng, surrogates=True)}:{rand_json_string(rng, surrogates=True)}"
            for _ in range(rng.randint(0, 4))
        ]
        return rng.choice(
            [
                "{" + ",".join(pairs) + "}",
                *('{"PATH":"x"}', '{"LD_PRELOAD":"x"}', '{"ORCHESTRATOR_X":"1"}', '{"CI_JOB_TOKEN":"1"}'),
                *('{"A":"a\\u0000"}', '{"1A":"x"}', '{"A":1}', '{"A":"' + "x" * 32769 + '"}'),
                "{" + ",".join(f'"V{i}":"x"' for i in range(rng.choice([199, 200, 201, 210]))) + "}",
            ]
        )
    if name == "timeout_s":
        return rng.choice([rand_number(rng), '"5"', '" 12 "', "true", "0", "-1", "301", "300", '"1' + "0" * 5000 + '"'])
    assert name == "secrets"
    return rng.choice(
        [
            '[{"path":"ci/x","key":"k","name":"TOKEN"}]',
            "[" + ",".join(rand_json(rng, surrogates=True) for _ in range(rng.randint(0, 3))) + "]",
            "[" + ",".join(['{"path":"a","key":"k","name":"N"}'] * rng.choice([99, 100, 101])) + "]",
        ]
    )


@dataclass
class Hostile:
    body: bytes
    pristine: bool
    msg_id: str
    replay: int | None  # index into the accepted ids: resend one of them (same id, maybe another body)
    what: str


SHAPES = ("pristine", "mutated", "bomb", "top", "bytes")


def make_hostile(shape: int, mutations: int, wrap: int, msg_kind: int, replay: int | None, seed: int) -> Hostile:
    rng = random.Random(seed)
    kind = SHAPES[shape]
    base = rand_pristine(rng) if kind in ("pristine", "mutated", "bomb") else {}
    pairs = [(json.dumps(k), json.dumps(v)) for k, v in base.items()]
    what = kind
    if kind == "mutated":
        actions = []
        for _ in range(mutations):
            action = rng.choice(["drop", "hostile", "hostile", "dup", "add", "extra"])
            name = rng.choice(SPEC_FIELDS)
            key = json.dumps(name)
            if action == "drop":
                pairs = [(k, v) for k, v in pairs if k != key]
            elif action == "hostile":
                pairs = [(k, v) for k, v in pairs if k != key] + [(key, hostile_value(rng, name))]
            elif action in ("dup", "add"):  # dup: the key twice (the last one wins in Python's json)
                pairs.append((key, hostile_value(rng, name)))
            else:
                key = rand_json_string(rng, surrogates=True)
                pairs.append((key, rand_json(rng, surrogates=True)))
            actions.append(f"{action}:{name if action != 'extra' else key}")
        what = "mutated " + " ".join(actions)
    if kind == "bomb":
        depth = rng.choice([rng.randint(50, 1200), rng.randint(1200, 40_000)])
        nest = rng.choice(["array", "object", "mixed"])
        where = rng.choice((None, *SPEC_FIELDS))
        if where is None:
            text = nesting_bomb(depth, nest)
        else:
            key = json.dumps(where)
            pairs = [(k, v) for k, v in pairs if k != key] + [(key, nesting_bomb(depth, nest))]
            text = "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        what = f"bomb {nest} depth {depth} in {where}"
    elif kind == "top":
        text = rand_json(rng, surrogates=True)
    elif kind == "bytes":
        text = ""
    else:
        text = "{" + rng.choice([",", " , ", ",\n", ",\t"]).join(f"{k}:{v}" for k, v in pairs) + "}"
    if kind == "bytes":
        body = rng.randbytes(rng.randint(0, 4096))
    else:
        if wrap:  # whitespace is fine, trailing garbage is not
            text = rng.choice(["", " ", "\n", "\t\r\n"]) + text + rng.choice(["", " ", "\n", "\r\n", " x", "}"])
        encoding = ENCODINGS[0] if wrap < 3 else rng.choice(ENCODINGS)
        body = text.encode(encoding, "surrogatepass" if encoding.startswith("utf-8") else "replace")
        what += f" [{encoding}]"
    pristine = kind == "pristine" and len(body) <= CAP and local_parse(body) == ("object", base)
    replay = replay if kind in ("pristine", "mutated") else None
    return Hostile(body=body, pristine=pristine, msg_id=rand_msg_id(rng, msg_kind), replay=replay, what=what)


hostile_bodies = st.builds(
    make_hostile,
    shape=st.sampled_from([0, 0, 0, 1, 1, 1, 1, 2, 3, 4]),
    mutations=st.integers(1, 4),
    wrap=st.integers(0, 3),
    msg_kind=st.integers(0, 3),
    replay=st.one_of(st.none(), st.none(), st.integers(0, 10**6)),
    seed=SEEDS,
)


# json's C decoder refuses nesting deeper than the recursion limit minus the calling thread's own stack depth,
# and the limit is interpreter-wide (hypothesis raises it while it runs): how deep is "too deep" differs between
# this thread and the controller's.  Nesting from here on may get either answer; no spec needs a tenth of it.
DEEP = 400


JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def nesting_depth(body: bytes) -> int:
    """Bracket depth of the text as sent (values a duplicate key drops count too: the decoder saw them)."""
    try:
        text = body.decode(json.detect_encoding(body))
    except (UnicodeDecodeError, LookupError):
        return 0
    steps = [1 if c in "[{" else -1 for c in JSON_STRING.sub("", text) if c in "[]{}"]
    return max(itertools.accumulate(steps), default=0)


class _Twice(Exception):
    pass


def _pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise _Twice
    return dict(pairs)


def local_parse(body: bytes) -> tuple[str, Any]:
    """The stdlib's verdict, independent of the controller: 'invalid', 'deep', 'duplicate' (some object names a key
    twice) or ('object' | 'other', value)."""
    try:
        value = json.loads(body)
    except RecursionError:
        return "deep", None
    except ValueError:
        return "invalid", None
    if nesting_depth(body) >= DEEP:
        return "deep", value
    try:
        json.loads(body, object_pairs_hook=_pairs_once)
    except _Twice:
        return "duplicate", value
    return ("object" if isinstance(value, dict) else "other"), value


def with_replayed_id(body: bytes, job_id: str) -> bytes | None:
    verdict, value = local_parse(body)
    if verdict != "object":
        return None
    value["id"] = job_id
    try:
        return json.dumps(value, allow_nan=True).encode()
    except (ValueError, UnicodeEncodeError):
        return None


async def test_fuzz_signed_hostile_json(family: Family) -> None:
    ctl, bridge, port, tally = family.ctl, family.bridge, family.port, family.tally
    accepted_order: list[str] = []

    def check(case: Hostile) -> None:
        body, replayed = case.body, None
        if case.replay is not None and accepted_order:
            replayed = accepted_order[case.replay % len(accepted_order)]
            body = with_replayed_id(body, replayed) or body
        verdict, value = local_parse(body)
        job_id = value.get("id") if verdict == "object" else None
        headers = signed_headers(ctl.webhook_secret, body, case.msg_id)
        (reply,) = bridge(lambda: exchange(port, [http_request(b"/webhooks/test", headers, body)]))
        tally.saw(reply, case.what.split(" ", 1)[0])
        context = (reply.status, reply.body[:400], case.what, body[:300])
        assert reply.status is not None, context
        answer = reply.json()
        if len(body) > CAP:
            assert reply.status == 413, context
        elif verdict == "invalid":
            assert reply.status == 400 and answer["reason"] == "invalid_json", context
        elif verdict == "deep":  # refused as nested too deeply (or for a key twice), or refused as a spec
            assert reply.status in (400, 422), context
            expected = {"invalid_json", "duplicate_key"} if reply.status == 400 else {"invalid_spec"}
            assert answer["reason"] in expected, context
        elif verdict == "duplicate":
            assert reply.status == 400 and answer["reason"] == "duplicate_key", context
        elif verdict == "other":
            assert reply.status == 422, context
        elif reply.status == 422:
            assert not (case.pristine and replayed is None), context
            assert answer["reason"] in {"invalid_spec", "unknown_pool", "secrets_unavailable", "timeout_too_long"}
        else:
            assert reply.status in (200, 202), context
            assert isinstance(job_id, str) and JOB_ID.fullmatch(job_id), context
            if reply.status == 202:
                assert answer == {"job_id": job_id, "status": "queued"}, context
                assert job_id not in tally.accepted, context
                tally.accepted[job_id] = tally.cases
                accepted_order.append(job_id)
            else:
                assert answer["duplicate"] is True and answer["job_id"] == job_id, context
                assert job_id in tally.accepted, context

    @settings_for(MIN_CASES["signed"] // BATCH + 10)
    @given(cases=st.lists(hostile_bodies, min_size=BATCH, max_size=BATCH))
    def fuzz(cases: list[Hostile]) -> None:
        for case in cases:
            check(case)

    await asyncio.to_thread(fuzz)
    assert tally.cases >= MIN_CASES["signed"], tally
    assert len(tally.accepted) >= 200, f"too few accepted jobs for the oracle to mean much: {tally}"
    await family.aftermath()


# -- family 3: raw framing -----------------------------------------------------------------------------------------

FAST_KINDS = (
    "huge_line",
    "many_headers",
    "over_cap",
    "chunked_bad",
    "chunked_over_cap",
    "te_cl",
    "cl_garbage",
    "http10",
    "http09",
    "pipelined",
    "garbage",
    "expect",
    "content_encoding",
    "half_close",
)
SLOW_KINDS = ("stall", "trickle_stall", "chunked_stall", "expect_stall", "chunked_late")
BROKEN_CHUNKS = [
    b"zz\r\nabc\r\n0\r\n\r\n",
    b"-3\r\nabc\r\n0\r\n\r\n",
    b"3\r\nabcdef\r\n0\r\n\r\n",
    b"3 3\r\nabc\r\n0\r\n\r\n",
    b"0x3\r\nabc\r\n0\r\n\r\n",
    b"3\nabc\n0\n\n",
    b"\r\n\r\n",
    b"3;" + b"e" * 9000 + b"\r\nabc\r\n0\r\n\r\n",
    b"3\r\nabc\r\n0\r\n" + b"X: y\r\n" * 200 + b"\r\n",
]


@dataclass
class RawCase:
    kind: str
    parts: list[Part]
    allowed: frozenset[int | None]
    replies: int = 1
    expect: list[int] | None = None  # exact statuses for pipelined requests
    within: float = 5.0  # the first status line must arrive within this many seconds (a loaded 2-core box)
    half_close: bool = False


unsigned = [(b"Content-Type", b"application/json")]


@st.composite
def raw_cases(draw: st.DrawFn, kinds: Sequence[str]) -> RawCase:
    kind = draw(st.sampled_from(kinds))
    target = b"/webhooks/test"
    small = spec_bytes(unique_id("raw"))
    if kind == "huge_line":
        size = draw(st.integers(MAX_LINE, 70_000))
        where = draw(st.sampled_from(["value", "name", "target"]))
        if where == "target":
            request = http_request(target + b"?" + b"a" * size, unsigned, small)
        elif where == "name":
            request = http_request(target, [(b"X" * size, b"v")], small)
        else:
            request = http_request(target, [(b"webhook-signature", b"v1," + b"A" * size)], small)
        return RawCase(kind, [request], frozenset({None, 400, 431}))
    if kind == "many_headers":
        count = draw(st.integers(100, 3000))
        request = http_request(target, [(b"X-%d" % i, b"v") for i in range(count)], small)
        return RawCase(kind, [request], frozenset({None, 400, 401, 431}))
    if kind == "over_cap":
        declared = draw(st.one_of(st.integers(CAP + 1, 2**63 - 1), st.sampled_from([CAP + 1, 2**31, 2**32 + 1])))
        sent = draw(st.integers(0, 2048))
        request = http_request(target, [*unsigned, (b"Content-Length", b"%d" % declared)], b"{" * sent, length=False)
        return RawCase(kind, [request], frozenset({413}))
    if kind in ("chunked_bad", "chunked_late"):
        head = http_request(target, [*unsigned, (b"Transfer-Encoding", b"chunked")], length=False)
        if kind == "chunked_bad":  # complete and broken, in one write: the parser refuses it at once
            chunks = draw(st.sampled_from(BROKEN_CHUNKS))
            return RawCase(kind, [head + chunks], frozenset({None, 400, 401, 413}))
        # incomplete, or broken after the handler started reading: aiohttp leaves the read waiting, so 408
        chunks = draw(st.sampled_from([*BROKEN_CHUNKS, b"ffffffffffffffffffff\r\nabc\r\n", b"3\r\nabc"]))
        split = draw(st.integers(0, len(chunks)))
        return RawCase(kind, [head + chunks[:split], 0.05, chunks[split:]], frozenset({None, 400, 401, 408, 413}))
    if kind == "chunked_over_cap":
        size = draw(st.integers(1, 16384))
        count = CAP // size + 1 + draw(st.integers(0, 3))
        head = http_request(target, [*unsigned, (b"Transfer-Encoding", b"chunked")], length=False)
        body = (b"%x\r\n" % size + b"a" * size + b"\r\n") * count + b"0\r\n\r\n"
        return RawCase(kind, [head + body], frozenset({None, 413}))
    if kind == "te_cl":
        te = draw(
            st.sampled_from(
                [
                    b"chunked",
                    b"gzip",
                    b"gzip, chunked",
                    b"chunked, gzip",
                    b"identity",
                    b"Chunked",
                    b"chunked, chunked",
                    b" chunked",
                    b"xchunked",
                    b"chunked\x0b",
                    b"\xffchunked",
                    b"",
                ]
            )
        )
        with_cl = draw(st.booleans())
        headers = [*unsigned, (b"Transfer-Encoding", te)] + ([(b"Content-Length", b"3")] if with_cl else [])
        if draw(st.booleans()):
            headers.append((b"Transfer-Encoding", b"chunked"))
        request = http_request(target, headers, length=False) + b"3\r\nabc\r\n0\r\n\r\n"
        return RawCase(kind, [request], frozenset({None, 400, 401, 408, 411, 413}))
    if kind == "cl_garbage":
        value = draw(
            st.one_of(
                st.sampled_from(
                    [b"+5", b"0x10", b"5, 5", b"5 5", b"", b"-1", b"99999999999999999999999", b"1e3", b"5\x00"]
                ),
                st.sampled_from([b"18446744073709551616", b"\xd9\xa1\xd9\xa2", b"\xef\xbc\x95", b"5.0", b" 5", b"05"]),
            )
        )
        headers = [*unsigned, (b"Content-Length", value)]
        if draw(st.booleans()):
            headers.append((b"Content-Length", b"7"))
        return RawCase(
            kind, [http_request(target, headers, b"{}", length=False)], frozenset({None, 400, 401, 408, 413})
        )
    if kind == "http10":
        length = draw(st.booleans())
        keep = [(b"Connection", b"keep-alive")] if draw(st.booleans()) else []
        request = http_request(target, unsigned + keep, small, version=b"HTTP/1.0", length=length, close=False)
        return RawCase(kind, [request], frozenset({400, 401} if length else {None, 400, 401, 408}))
    if kind == "http09":
        method = draw(st.sampled_from([b"GET", b"POST"]))
        return RawCase(kind, [method + b" /webhooks/test\r\n\r\n"], frozenset({None, 400, 401, 404, 405}))
    if kind == "pipelined":
        items = draw(st.lists(st.sampled_from(["unsigned", "unknown", "get", "bad_sig"]), min_size=2, max_size=8))
        requests, expect = [], []
        for i, item in enumerate(items):
            close = i == len(items) - 1
            if item == "unsigned":
                requests.append(http_request(target, unsigned, small, close=close))
                expect.append(401)
            elif item == "unknown":
                requests.append(http_request(b"/webhooks/nope", unsigned, small, close=close))
                expect.append(404)
            elif item == "get":
                requests.append(http_request(target, [], method=b"GET", length=False, close=close))
                expect.append(405)
            else:
                headers = signed_headers(b"not-the-key", small, "msg_pipe")
                requests.append(http_request(target, headers, small, close=close))
                expect.append(401)
        joined = b"".join(requests)
        split = draw(st.integers(0, len(joined)))
        return RawCase(kind, [joined[:split], joined[split:]], frozenset(expect), replies=len(items), expect=expect)
    if kind == "garbage":
        junk = draw(bytes_of(1, 300))
        return RawCase(kind, [junk + b"\r\n\r\n"], frozenset({None, 400, 404, 405, 401, 408, 413, 431}))
    if kind == "expect":
        declared = draw(st.one_of(st.integers(CAP + 1, 10**9), st.integers(0, 64)))
        headers = [*unsigned, (b"Expect", b"100-continue"), (b"Content-Length", b"%d" % declared)]
        head = http_request(target, headers, length=False)
        if declared > CAP:
            return RawCase(kind, [head], frozenset({413}))
        return RawCase(kind, [head, 0.02, b"{" * declared], frozenset({400, 401}))
    if kind == "content_encoding":
        # compressed bodies are refused with 415; only decodable ones here (undecodable: open bug, see the end)
        encoding = draw(st.sampled_from([b"gzip", b"deflate", b"br", b"zstd", b"xyz", b"identity", b"compress"]))
        body = {b"gzip": gzip.compress, b"deflate": zlib.compress}.get(encoding, bytes)(small)
        headers = [*unsigned, (b"Content-Encoding", encoding)]
        allowed = {b"identity": {401}, b"br": {400, 415}, b"zstd": {400, 415}}.get(encoding, {415})
        return RawCase(kind, [http_request(target, headers, body)], frozenset(allowed))
    if kind == "half_close":  # part of the body, then the client shuts its side: 400 or just a close
        declared = draw(st.integers(2, CAP))
        head = http_request(target, [*unsigned, (b"Content-Length", b"%d" % declared)], length=False)
        return RawCase(
            kind, [head + b"{" * draw(st.integers(0, declared - 1))], frozenset({None, 400}), half_close=True
        )
    # slow kinds: the body stalls below its declared size; the controller must answer 408 within its timeout
    declared = draw(st.integers(2, CAP))
    sent = draw(st.integers(0, min(declared - 1, 4096)))
    length = (b"Content-Length", b"%d" % declared)
    if kind == "expect_stall":
        return RawCase(
            kind, [http_request(target, [(b"Expect", b"100-continue"), length], length=False)], frozenset({408})
        )
    if kind == "chunked_stall":
        head = http_request(target, [(b"Transfer-Encoding", b"chunked")], length=False)
        partial = b"%x\r\n" % max(sent, 1) + b"{" * (sent // 2)
        return RawCase(kind, [head + partial], frozenset({408}))
    head = http_request(target, [*unsigned, length], length=False)
    if kind == "stall":
        return RawCase(kind, [head + b"{" * sent], frozenset({408}))
    pieces = draw(st.integers(2, 6))
    parts = [head]
    for _ in range(pieces):
        parts += [0.04, b"{" * (sent // pieces)]
    return RawCase(kind, parts, frozenset({408}))


def check_raw(case: RawCase, replies: list[Reply]) -> None:
    context = (case.kind, [(r.status, r.body[:200]) for r in replies], case.parts[0][:200] if case.parts else b"")
    assert replies, context
    first = replies[0]
    assert first.status in case.allowed, context
    if first.status is not None:
        assert first.elapsed <= case.within, context
    if case.kind in SLOW_KINDS and first.status == 408:
        assert first.elapsed >= BODY_TIMEOUT_S * 0.9, context
    if case.expect is not None:
        assert [r.status for r in replies] == case.expect, context


async def test_fuzz_raw_framing(family: Family) -> None:
    bridge, port, tally = family.bridge, family.port, family.tally

    def run_batch(batch: list[RawCase]) -> None:
        async def all_of() -> list[list[Reply]]:
            return await asyncio.gather(
                *(exchange(port, c.parts, replies=c.replies, half_close=c.half_close) for c in batch)
            )

        for case, replies in zip(batch, bridge(all_of), strict=True):
            for reply in replies:
                tally.saw(reply, case.kind)
            check_raw(case, replies)

    # 70 batches of 16 concurrent fast cases (a few stall into a 408 anyway) + 8 batches of 30 stalling ones:
    # a batch costs about its slowest case, so stalls are grouped; >= 1,360 cases
    @settings_for(70)
    @given(batch=st.lists(raw_cases(FAST_KINDS), min_size=16, max_size=16))
    def fuzz_fast(batch: list[RawCase]) -> None:
        run_batch(batch)

    @settings_for(8)
    @given(batch=st.lists(raw_cases(SLOW_KINDS), min_size=30, max_size=30))
    def fuzz_slow(batch: list[RawCase]) -> None:
        run_batch(batch)

    await asyncio.to_thread(fuzz_fast)
    await asyncio.to_thread(fuzz_slow)
    assert tally.cases >= MIN_CASES["raw"], tally
    await family.aftermath()


# -- family 4: paths and methods ---------------------------------------------------------------------------------

TRAVERSALS = [
    "..",
    ".",
    "..%2f",
    "..%2F..%2Fapi%2Fv1%2Fjobs",
    "%2e%2e",
    "%2e%2e%2f",
    "..\\",
    "%c0%ae%c0%ae",
    "%c0%af",
    "test%00",
    "test%2f",
    "test%2F..",
    "./test",
    "x/../test",
    "test/",
    "/test",
    "TEST",
    "Test",
    "test%20",
    "t%c3%abst",
    "%ef%bd%94%ef%bd%85%ef%bd%93%ef%bd%94",
    "test%e2%80%8b",
    "%74%65%73%74",
    "%74est",
    "%",
    "%zz",
    "%ff%fe",
    "%ed%a0%80",
    "..%252f",
    "%u002e%u002e",
    "nope",
    "",
    *TOKEN_SHAPED,
]


@dataclass
class PathCase:
    target: bytes
    method: bytes
    signed: bool
    allowed: frozenset[int]


def source_status(segment: bytes, *, signed: bool) -> frozenset[int]:
    """What a POST to /webhooks/<segment> must answer, by an oracle independent of the controller."""
    if re.search(rb"[^\x21-\x7e]", segment):
        return frozenset({400})
    if b"/" in segment or b"?" in segment or b"#" in segment or segment in (b"", b".", b".."):
        # another route, no route, a query or a dot segment: never the known source with a signature
        head = re.split(rb"[?#]", segment, maxsplit=1)[0]
        if unquote_to_bytes(head) == b"test":
            return frozenset({401} if not signed else {401, 202})
        return frozenset({404, 405})
    if unquote_to_bytes(segment) == b"test":
        return frozenset({202} if signed else {401})
    return frozenset({404})


PATH_HOWS = st.sampled_from(["traversal", "traversal", "quoted", "quoted_all", "raw", "mixed", "method"])
TRAVERSAL_PARTS = st.tuples(
    st.sampled_from(["", "..%2f", "nope"]), st.sampled_from(TRAVERSALS), st.sampled_from(["", "x", "%00"])
)
METHODS = st.sampled_from([b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"FOO"])


@st.composite
def path_cases(draw: st.DrawFn) -> PathCase:
    how = draw(PATH_HOWS)
    if how == "traversal":
        segment = "".join(draw(TRAVERSAL_PARTS)).encode()
    elif how == "quoted":
        segment = quote(draw(hostile_text), safe="").encode()
    elif how == "quoted_all":
        segment = "".join(f"%{b:02x}" for b in draw(hostile_text).encode("utf-8", "surrogatepass")).encode()
    elif how == "raw":
        # a space would end the request target and turn the rest into a version: another family's business
        segment = draw(bytes_of(1, 60)).replace(b"\r", b"").replace(b"\n", b"").replace(b" ", b"") or b"x"
    elif how == "mixed":
        segment = quote(draw(hostile_text), safe="/.%:@!$&'()*+,;=~-_").encode()
    else:
        segment = b"test"
    signed = draw(st.booleans())
    if how == "method":
        method = draw(METHODS)
        # llhttp refuses a method it does not know before routing
        return PathCase(b"/webhooks/" + segment, method, signed, frozenset({400} if method == b"FOO" else {405}))
    if 202 in source_status(segment, signed=signed):
        signed = False  # a signed delivery that resolves to the real source is family 2's business
    return PathCase(b"/webhooks/" + segment, b"POST", signed, source_status(segment, signed=signed))


async def test_fuzz_sources_and_paths(family: Family) -> None:
    ctl, bridge, port, tally = family.ctl, family.bridge, family.port, family.tally

    def check(case: PathCase) -> None:
        job_id = unique_id("path")
        body = spec_bytes(job_id)
        headers = signed_headers(ctl.webhook_secret, body, "msg_path") if case.signed else unsigned
        request = http_request(case.target, headers, body, method=case.method)
        (reply,) = bridge(lambda: exchange(port, [request]))
        tally.saw(reply, case.method.decode())
        context = (reply.status, reply.body[:300], case)
        assert reply.status in case.allowed, context
        if reply.status == 404 and reply.headers.get("content-type", "").startswith("application/json"):
            assert reply.json()["reason"] == "unknown_source", context

    @settings_for(MIN_CASES["paths"] // 10)
    @given(cases=st.lists(path_cases(), min_size=10, max_size=10))
    def fuzz(cases: list[PathCase]) -> None:
        for case in cases:
            check(case)

    await asyncio.to_thread(fuzz)
    assert tally.cases >= MIN_CASES["paths"], tally
    assert tally.statuses[404] >= MIN_CASES["paths"] // 3, tally
    await family.aftermath()


# -- after each family ----------------------------------------------------------------------------------------------

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}


def controller_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records with a traceback or at ERROR, except aiohttp's own refusal of a malformed HTTP message."""
    found = []
    for record in caplog.records:
        exc = record.exc_info[1] if record.exc_info else None
        if record.name == "aiohttp.server" and isinstance(exc, HttpProcessingError):
            continue
        if exc is not None or record.levelno >= logging.ERROR or "Traceback" in record.getMessage():
            found.append(f"{record.name} {record.levelname} {record.getMessage()} {exc!r}")
    return found


def worker_problems(stderr: str) -> list[str]:
    """The workers' JSON log lines with a traceback or at ERROR, with the same exception as above."""
    found = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                found.append(line)
            continue
        if not isinstance(record, dict):
            continue
        exc = str(record.get("exc", ""))
        if record.get("logger") == "aiohttp.server" and "aiohttp.http_exceptions." in exc:
            continue
        if exc or record.get("level") in ("error", "critical"):
            found.append(line[:500])
    return found


async def aftermath(
    ctl: RunningController,
    docker_client: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    tally: Tally,
    bridge: LoopBridge,
) -> None:
    # the controller still takes a normal signed job
    sanity = unique_id("sanity")
    body = spec_bytes(sanity)
    (reply,) = await exchange(
        port_of(ctl), [http_request(b"/webhooks/test", signed_headers(ctl.webhook_secret, body, "m"), body)]
    )
    assert reply.status == 202 and reply.json()["job_id"] == sanity, reply
    expected = {*tally.accepted, sanity}

    deadline = time.monotonic() + 120  # a busy Docker engine answers slowly; each job costs two API calls
    while True:
        jobs = await ctl.controller.store.list_jobs(limit=1_000_000)
        if all(j.state.value in FINAL for j in jobs) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert {j.id for j in jobs} == expected, "jobs in the store that no valid-signature 202 created, or lost ones"
    stuck = [(j.id, j.state.value) for j in jobs if j.state.value != "error"]
    assert not stuck, f"accepted jobs must end in error (pool image missing): {stuck[:10]}"
    assert all(j.container_id is None for j in jobs)

    status, listed = await ctl.api("GET", "/api/v1/jobs?limit=1000")
    assert status == 200
    listed_ids = {j["job_id"] for j in listed["jobs"]}
    assert listed_ids <= expected and len(listed_ids) == min(len(expected), 1000)
    assert managed_containers(docker_client, ctl.controller_id) == []
    problems = controller_tracebacks(caplog)
    assert not problems, problems[:5]
    if ctl.controller.webhook_listener is not None:  # the workers log to the stderr they inherited
        listener = ctl.controller.webhook_listener
        assert listener.alive() == 2 and listener.restarts == 0
        err = capfd.readouterr().err
        assert '"msg": "intake worker serving"' in err
        problems = worker_problems(err)
        assert not problems, problems[:5]
    took = time.monotonic() - tally.started
    print(
        f"\n{tally.cases} cases in {took:.1f} s ({bridge.waited_s:.1f} s waiting for the controller); "
        f"{len(tally.accepted)} jobs accepted; statuses {dict(tally.statuses)}; "
        f"kinds {dict(tally.kinds.most_common(12))}; slow {dict(tally.slow)}"
    )


# -- reproductions: the bugs this fuzzer found -------------------------------------------------------------------
# Fixed in dcd427b (regression tests) unless marked xfail(strict): those are open, and kept out of the strategies.


async def _post(ctl: RunningController, target: bytes, body: bytes, headers: list[tuple[bytes, bytes]]) -> Reply:
    (reply,) = await asyncio.wait_for(exchange(port_of(ctl), [http_request(target, headers, body)]), 10)
    return reply


@pytest.mark.parametrize("job_id", [".", ".."])
async def test_dot_job_ids_are_refused(controller_factory: Any, job_id: str) -> None:
    """Was: 202, then the log store refused the id, the job task crashed and the job stayed 'starting'."""
    ctl = await start(controller_factory)
    body = spec_bytes(job_id)
    reply = await _post(ctl, b"/webhooks/test", body, signed_headers(ctl.webhook_secret, body, "msg_dots"))
    assert reply.status == 422 and reply.json()["reason"] == "invalid_spec", reply
    assert await ctl.controller.store.list_jobs() == []


@pytest.mark.parametrize("where", ["commands", "env"])
async def test_lone_surrogates_are_refused(controller_factory: Any, where: str) -> None:
    """Was: 202 path up to the store, which could not serialise the spec: 500."""
    ctl = await start(controller_factory)
    spec = json.dumps(job_spec(unique_id("sur")))
    if where == "commands":
        body = spec.replace('["echo hello"]', '["echo \\ud800"]').encode()
    else:
        body = (spec[:-1] + ', "env": {"A": "\\udfff"}}').encode()
    reply = await _post(ctl, b"/webhooks/test", body, signed_headers(ctl.webhook_secret, body, "msg_sur"))
    assert reply.status == 422 and reply.json()["reason"] == "invalid_spec", reply


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
async def test_undecodable_compressed_bodies_are_a_4xx(controller_factory: Any, encoding: bytes) -> None:
    """Was: RequestPayloadError escaped read_capped: 500, for anyone, without a signature."""
    ctl = await start(controller_factory)
    head = http_request(b"/webhooks/test", [(b"Content-Encoding", encoding), (b"Content-Length", b"100")], length=False)
    (reply,) = await asyncio.wait_for(exchange(port_of(ctl), [head, 0.1, b"x" * 100]), 10)
    assert reply.status is not None and 400 <= reply.status < 500, reply


async def test_client_closing_mid_body_is_handled(controller_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Was: ConnectionResetError escaped read_capped and aiohttp logged it as an unhandled error."""
    ctl = await start(controller_factory)
    head = http_request(b"/webhooks/test", [*unsigned, (b"Content-Length", b"100")], length=False)
    await asyncio.wait_for(exchange(port_of(ctl), [head + b"{"], half_close=True), 10)
    await asyncio.sleep(0.2)
    assert not controller_tracebacks(caplog)


async def test_token_shaped_names_stay_in_the_audit_trail(
    controller_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: the audit guard refused the whole record (a traceback each time, the event missing from the trail)."""
    ctl = await start(controller_factory)
    reply = await _post(ctl, b"/webhooks/" + TOKEN_SHAPED[3].encode(), b"{}", unsigned)
    assert reply.status == 404
    job_id = TOKEN_SHAPED[0]
    body = spec_bytes(job_id)
    reply = await _post(ctl, b"/webhooks/test", body, signed_headers(ctl.webhook_secret, body, TOKEN_SHAPED[1]))
    assert reply.status == 202
    await ctl.wait_final(job_id, timeout=30)
    trail = ""
    for _ in range(50):  # records are written by the auditor's thread
        trail = (ctl.config.data_dir / "audit.jsonl").read_text()
        if trail.count('"webhook.accepted"') and trail.count('"webhook.rejected"') and '"error"' in trail:
            break
        await asyncio.sleep(0.1)
    assert '"webhook.accepted"' in trail and '"webhook.rejected"' in trail and '"error"' in trail, trail[-2000:]
    assert not any(token in trail for token in TOKEN_SHAPED)
    assert not controller_tracebacks(caplog)


async def test_refused_compressed_body_is_not_inflated_afterwards(
    controller_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The 415 comes first, but aiohttp's lingering close then reads the rest of the body through the decoder:
    an undecodable one is logged as 'Unhandled exception' with a traceback (anyone can flood the error log), and a
    decodable one is inflated after all, for up to lingering_time (10 s) -- the decompression the 415 avoids."""
    ctl = await start(controller_factory)
    head = http_request(b"/webhooks/test", [(b"Content-Encoding", b"gzip"), (b"Content-Length", b"100")], length=False)
    (reply,) = await asyncio.wait_for(exchange(port_of(ctl), [head + b"x" * 100]), 10)
    assert reply.status == 415
    await asyncio.sleep(0.3)
    assert not controller_tracebacks(caplog)


@pytest.mark.parametrize("declared", [100, CAP + 1])
async def test_refused_body_closes_the_connection(controller_factory: Any, declared: int) -> None:
    """resp.force_close() only turns keep-alive off: aiohttp still drains the unread body for lingering_time, so a
    slow sender holds its connection for body_timeout_s + 10 s, not body_timeout_s."""
    ctl = await start(controller_factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(ctl))
    writer.write(http_request(b"/webhooks/test", [(b"Content-Length", b"%d" % declared)], length=False) + b"{")
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line.split()[1] in (b"408", b"413")
        await asyncio.wait_for(reader.read(), 2)  # EOF: the connection is closed; today it stays open 10 s
    finally:
        writer.close()


@pytest.mark.parametrize("via", VIA)
async def test_requests_pipelined_behind_an_unknown_source_are_answered(controller_factory: Any, via: str) -> None:
    """Found by the workers' run of the raw-framing family: a 404 for an unknown source was answered before its
    body was read, and when the rest of that body arrived after the answer aiohttp closed the connection,
    dropping what the client had pipelined behind it. The body is now read (within its limits) first."""
    ctl = await start(controller_factory, via)
    body = spec_bytes(unique_id("pipe"))
    unknown = http_request(b"/webhooks/nope", [(b"Content-Type", b"application/json")], body, close=False)
    behind = http_request(b"/webhooks/test", [(b"Content-Type", b"application/json")], body, close=True)
    cut = len(unknown) - 10  # the end of the first body comes 0.2 s later, after a 404 would have been sent
    replies = await exchange(port_of(ctl), [unknown[:cut], 0.2, unknown[cut:] + behind], replies=2)
    assert [r.status for r in replies] == [404, 401], replies
