"""Optional per-line arrival timestamps. Pure; applied after redaction so a timestamp can never split a secret
and hide it from the redactor."""

from __future__ import annotations

import time


def format_timestamp(now: float) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode() + b".%03dZ " % int(now % 1 * 1000)


class LineTimestamper:
    def __init__(self) -> None:
        self._at_line_start = True

    def stamp(self, data: bytes, now: float) -> bytes:
        if not data:
            return data
        prefix = format_timestamp(now)
        lines = data.split(b"\n")
        out = bytearray()
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                break  # data ended with a newline: the next line starts in a later chunk
            if self._at_line_start:
                out += prefix
            out += line
            if not last:
                out += b"\n"
                self._at_line_start = True
            else:
                self._at_line_start = False
        if data.endswith(b"\n"):
            self._at_line_start = True
        return bytes(out)
