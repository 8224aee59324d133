"""Static API tokens (for automation): configured as SHA-256 hashes, each with a role, a scope and an optional
expiry. Every configured hash is compared in constant time, so response timing does not reveal which matched.
When each token was last used is kept in `<data_dir>/token-usage.json` (written at most once a minute), so
`orchestrator token list` can report tokens nobody uses any more."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.access.grants import Grant, Principal
from orchestrator.config import ApiToken, Scope
from orchestrator.platform.files import write_atomic

log = logging.getLogger(__name__)

USAGE_FILE = "token-usage.json"


def grant_of(role: str, scope: Scope) -> Grant:
    return Grant(
        role,  # type: ignore[arg-type]  # validated by the config's RoleName
        tuple(scope.pools) if scope.pools is not None else None,
        tuple(scope.repositories) if scope.repositories is not None else None,
    )


@dataclass(frozen=True)
class TokenMatch:
    """A presented token that matched a configured one: `principal`, or `expired` (the token's expiry passed)."""

    token: ApiToken
    principal: Principal
    expired: bool


def bearer(header: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive, whitespace around ignored)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def match_token(token: str, tokens: Sequence[ApiToken], now: float) -> TokenMatch | None:
    """The configured token `token` is (the first entry with its hash), or None."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    found: ApiToken | None = None
    for candidate in tokens:
        if hmac.compare_digest(digest, candidate.sha256) and found is None:
            found = candidate
    if found is None:
        return None
    principal = Principal(found.name, (grant_of(found.role, found),), kind="token")
    expired = found.expires is not None and now >= found.expires.timestamp()
    return TokenMatch(found, principal, expired)


class TokenUsage:
    """Last use of each static token, persisted without slowing requests: `used` notes it in memory, and writes
    the file when the last write is older than `flush_s` (and on `flush`)."""

    def __init__(self, data_dir: Path, *, flush_s: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.path = data_dir / USAGE_FILE
        self.flush_s = flush_s
        self.clock = clock
        self._last: dict[str, float] = read_usage(self.path)
        self._hours: dict[str, list[int]] = read_usage_hours(self.path)
        self._written = clock()
        self._dirty = False

    def used(self, name: str) -> list[int]:
        """Notes a use; returns the token's uses per UTC hour of day *before* this one (for off-hours alerts)."""
        now = self.clock()
        hours = self._hours.setdefault(name, [0] * 24)
        before = list(hours)
        hours[datetime.fromtimestamp(now, UTC).hour] += 1
        self._last[name] = now
        self._dirty = True
        if now - self._written >= self.flush_s:
            self.flush()
        return before

    def last_used(self, name: str) -> float | None:
        return self._last.get(name)

    def flush(self) -> None:
        if not self._dirty:
            return
        body = json.dumps({"version": 1, "last_used": self._last, "hours_utc": self._hours}, sort_keys=True).encode()
        try:
            write_atomic(self.path, body, mode=0o600)
        except OSError as exc:
            log.warning("could not record token use", extra={"path": str(self.path), "error": str(exc)})
            return
        self._written, self._dirty = self.clock(), False


def read_usage(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("token usage file unreadable; starting afresh", extra={"path": str(path), "error": str(exc)})
        return {}
    last = data.get("last_used") if isinstance(data, dict) else None
    if not isinstance(last, dict):
        return {}
    return {str(k): float(v) for k, v in last.items() if isinstance(v, int | float)}


def read_usage_hours(path: Path) -> dict[str, list[int]]:
    """Each token's uses per UTC hour of day, as `TokenUsage` keeps them (missing or malformed: none)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    hours = data.get("hours_utc") if isinstance(data, dict) else None
    if not isinstance(hours, dict):
        return {}
    return {
        str(k): [int(n) for n in v]
        for k, v in hours.items()
        if isinstance(v, list) and len(v) == 24 and all(isinstance(n, int) and n >= 0 for n in v)
    }


@dataclass(frozen=True)
class TokenReport:
    name: str
    role: str
    scope: str
    expires: str
    last_used: str
    status: str  # "ok", "expired", "expires soon", "unused", "never used"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report(tokens: Sequence[ApiToken], usage: dict[str, float], *, now: float, unused_days: int) -> list[TokenReport]:
    """Every configured token with its scope, expiry and last use; `status` flags what an operator should act on:
    expired, expiring within a week, unused for `unused_days`, never used."""
    rows = []
    for t in tokens:
        grant = grant_of(t.role, t)
        last = usage.get(t.name)
        expires = t.expires.timestamp() if t.expires is not None else None
        if expires is not None and now >= expires:
            status = "expired"
        elif last is None:
            status = "never used"
        elif now - last >= unused_days * 86400:
            status = f"unused for {int((now - last) // 86400)} days"
        elif expires is not None and expires - now < 7 * 86400:
            status = "expires soon"
        else:
            status = "ok"
        scope = grant.describe().partition(" ")[2].strip("()")
        rows.append(TokenReport(t.name, t.role, scope, _iso(expires) if expires else "never",
                                _iso(last) if last else "never", status))  # fmt: skip
    return rows
