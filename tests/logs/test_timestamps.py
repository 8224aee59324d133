from __future__ import annotations

import re

from orchestrator.logs.timestamps import LineTimestamper, format_timestamp

NOW = 1_790_000_000.25
TS = format_timestamp(NOW)


def test_format() -> None:
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.250Z ", TS)


def test_each_line_gets_one_prefix_across_chunks() -> None:
    st = LineTimestamper()
    out = st.stamp(b"one\ntw", NOW) + st.stamp(b"o\nthree\n", NOW) + st.stamp(b"four", NOW)
    assert out == TS + b"one\n" + TS + b"two\n" + TS + b"three\n" + TS + b"four"


def test_empty_lines_are_stamped_and_empty_chunks_pass() -> None:
    st = LineTimestamper()
    assert st.stamp(b"", NOW) == b""
    assert st.stamp(b"\n\n", NOW) == TS + b"\n" + TS + b"\n"
