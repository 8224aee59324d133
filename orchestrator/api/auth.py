"""Bearer-token authentication for the API. Tokens are configured as SHA-256 hashes; every configured hash is
compared in constant time so response timing does not reveal which prefix matched."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from orchestrator.config import ApiToken

Role = Literal["viewer", "operator", "admin"]
_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    def allows(self, needed: Role) -> bool:
        return _RANK[self.role] >= _RANK[needed]


def authenticate(header: str | None, tokens: Sequence[ApiToken]) -> Principal | None:
    """Returns who presented `Authorization: Bearer <token>`, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    found: Principal | None = None
    for candidate in tokens:
        if hmac.compare_digest(digest, candidate.sha256) and found is None:
            found = Principal(candidate.name, candidate.role)
    return found
