"""Server-Sent Events framing for log followers. Pure.

Each event's id is the byte offset in the stored log just after its data, so a client that reconnects with
`Last-Event-ID` resumes exactly where it stopped: no gap, no duplicate. Events end on a UTF-8 character boundary
so that the id never points into the middle of a character that was only half sent.
"""

from __future__ import annotations


def _complete_utf8_prefix(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a multi-byte UTF-8 sequence."""
    for back in range(1, min(3, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # lead byte of the last sequence
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if back < need else len(data)
    return len(data)  # only continuation bytes: invalid UTF-8, sent as is (decoded with replacement)


class SseEncoder:
    def __init__(self, offset: int) -> None:
        self.offset = offset
        self._pending = b""

    def encode(self, data: bytes) -> bytes:
        data = self._pending + data
        cut = _complete_utf8_prefix(data)
        self._pending = data[cut:]
        if cut == 0:
            return b""
        text = data[:cut].decode("utf-8", errors="replace")
        self.offset += cut
        lines = text.split("\n")
        body = "".join(f"data: {line}\n" for line in lines)
        return f"id: {self.offset}\nevent: log\n{body}\n".encode()

    def end(self, status: str) -> bytes:
        tail = b""
        if self._pending:
            pending, self._pending = self._pending, b""
            self.offset += len(pending)
            tail = f"id: {self.offset}\nevent: log\ndata: {pending.decode('utf-8', errors='replace')}\n\n".encode()
        return tail + f"event: end\ndata: {status}\n\n".encode()


def parse_last_event_id(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())
