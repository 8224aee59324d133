"""The one byte encoding of JSON that is signed and hashed (audit records, attestations), and JSON parsing that
refuses what would let two parsers read different things out of one signed document. Pure."""

from __future__ import annotations

import json
import re
from typing import Any

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

# A hex SHA-256 as this package writes them (lower case); match with `fullmatch`.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8; NaN/Infinity are refused (not JSON): the same value, the same bytes."""
    return _CANONICAL.encode(value).encode()


class DuplicateKeyError(ValueError):
    """Raised from inside the decoder, so it reaches the caller as itself, not as a JSON syntax error.
    Parsers disagree on a repeated key (first wins, last wins, error)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for the json module: the object, or DuplicateKeyError naming the first repeated key."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> Any:
    """Parses UTF-8 JSON refusing duplicate keys and NaN/Infinity; ValueError otherwise."""
    return json.loads(data.decode("utf-8"), object_pairs_hook=unique_keys, parse_constant=_no_constant)
