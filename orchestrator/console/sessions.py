"""Browser sessions of the web console: after a login (through the identity provider, or with an API token typed
into the login form) the browser holds only a random session id in an HttpOnly, SameSite=Strict cookie; the
principal stays here. Every state-changing request of a session must also carry its CSRF token (sent by the
console's JavaScript in `X-CSRF-Token`), so another site cannot make the browser act. In memory, per controller
(a restart signs everyone out); bounded in number, expiring after `ttl_s` or `idle_s` without use."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.access.grants import Principal

COOKIE = "orch_session"
CSRF_HEADER = "X-CSRF-Token"


@dataclass
class Session:
    principal: Principal
    csrf: str
    created: float
    last_used: float
    expires: float  # the login's own end (e.g. the identity provider token's exp), at most created + ttl_s


class Sessions:
    def __init__(
        self,
        *,
        ttl_s: float = 8 * 3600,
        idle_s: float = 3600,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, principal: Principal, *, expires: float | None = None) -> tuple[str, Session]:
        now = self.clock()
        end = now + self.ttl_s if expires is None else min(expires, now + self.ttl_s)
        sid = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), now, now, end)
        self._sessions[sid] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)  # the oldest login goes first
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self.clock()
        if now >= session.expires or now - session.last_used >= self.idle_s:
            del self._sessions[sid]
            return None
        session.last_used = now
        return session

    def end(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(session.csrf.encode(), presented.encode())

    def __len__(self) -> int:
        return len(self._sessions)
