"""Bearer-token authentication for the API. Tokens are configured as SHA-256 hashes; every configured hash is
compared in constant time so response timing does not reveal which prefix matched."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
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


class FailureLimiter:
    """Per-address limit on failed authentications (a sliding window), so tokens cannot be guessed at speed.
    Memory is bounded: at most `max_tracked` addresses, the stalest dropped first."""

    def __init__(
        self,
        max_failures: int = 10,
        window_s: float = 60.0,
        *,
        max_tracked: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_tracked = max_tracked
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, remote: str) -> deque[float]:
        times = self._failures.get(remote)
        if times is None:
            return deque()
        horizon = self.clock() - self.window_s
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[remote]
        return times

    def retry_after(self, remote: str) -> float:
        """Seconds until `remote` may try again; 0 when it is not blocked."""
        times = self._recent(remote)
        if len(times) < self.max_failures:
            return 0.0
        return max(times[-self.max_failures] + self.window_s - self.clock(), 0.0) or 0.001

    def failed(self, remote: str) -> None:
        times = self._failures.setdefault(remote, deque(maxlen=self.max_failures))
        times.append(self.clock())
        self._failures.move_to_end(remote)
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)
