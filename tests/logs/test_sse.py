from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.logs.sse import SseEncoder, parse_last_event_id


def _decode(stream: bytes) -> tuple[str, list[int]]:
    text, ids = [], []
    for event in stream.decode().split("\n\n"):
        if not event or "event: log" not in event:
            continue
        lines = event.split("\n")
        ids.append(int(lines[0].removeprefix("id: ")))
        text.append("\n".join(line.removeprefix("data: ") for line in lines[2:]))
    return "".join(text), ids


def test_ids_are_byte_offsets_after_each_event() -> None:
    enc = SseEncoder(10)
    out = enc.encode(b"hello\nworld\n")
    assert out == b"id: 22\nevent: log\ndata: hello\ndata: world\ndata: \n\n"
    assert enc.offset == 22


def test_never_splits_a_character() -> None:
    enc = SseEncoder(0)
    euro = "€".encode()  # 3 bytes
    assert enc.encode(b"a" + euro[:1]) == b"id: 1\nevent: log\ndata: a\n\n"
    assert enc.encode(euro[1:2]) == b""
    out = enc.encode(euro[2:] + b"b")
    assert out == "id: 5\nevent: log\ndata: €b\n\n".encode()


def test_end_flushes_pending_and_reports_status() -> None:
    enc = SseEncoder(0)
    enc.encode(b"x\xe2\x82")
    out = enc.end("succeeded")
    assert out.endswith(b"event: end\ndata: succeeded\n\n")
    assert enc.offset == 3


@given(st.lists(st.binary(max_size=20), max_size=20), st.text(max_size=50))
def test_concatenated_events_reproduce_the_text(chunks: list[bytes], text: str) -> None:
    data = text.encode()
    # re-chunk the UTF-8 text at arbitrary byte positions
    cuts = sorted({min(len(c), len(data)) for c in chunks})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    enc = SseEncoder(0)
    stream = b"".join(enc.encode(p) for p in pieces) + enc.end("succeeded")
    decoded, ids = _decode(stream)
    assert decoded == text
    assert ids == sorted(ids)
    assert enc.offset == len(data)


def test_last_event_id_parsing() -> None:
    assert parse_last_event_id("42") == 42
    assert parse_last_event_id(" 7 ") == 7
    assert parse_last_event_id("-1") is None
    assert parse_last_event_id("abc") is None
    assert parse_last_event_id(None) is None
