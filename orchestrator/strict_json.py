"""JSON objects that name a key once. Parsers disagree on a repeated key (first wins, last wins, error), so two of
them could read different things out of one signed document: a webhook body or an attestation. Pure."""

from __future__ import annotations

from typing import Any


class DuplicateKeyError(ValueError):
    """Raised from inside the decoder, so it reaches the caller as itself, not as a JSON syntax error."""

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
