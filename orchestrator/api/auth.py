"""Who is calling the API: a static token (access/tokens.py) or, when `[api.oidc]` is set, a JWT of the identity
provider (access/oidc.py). Returns a principal or a refusal with its reason; the routes map refusals to HTTP."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.access.grants import Principal
from orchestrator.access.oidc import JwtRejected, OidcUnavailable, OidcVerifier, looks_like_jwt
from orchestrator.access.tokens import TokenUsage, bearer, match_token
from orchestrator.config import ApiConfig


@dataclass(frozen=True)
class AuthRefused:
    """`reason`: a short code (metrics, audit); `message`: what the caller is told; `status` 401, 403 for a console
    request without its CSRF token, or 503 when the identity provider cannot be reached."""

    reason: str
    message: str
    status: int = 401
    identity: str | None = None  # whose token it was, when that is known (an expired one)


class Authenticator:
    def __init__(
        self,
        access: ApiConfig,
        *,
        usage: TokenUsage | None = None,
        oidc: OidcVerifier | None = None,
        clock: Callable[[], float] = time.time,
        on_token_use: Callable[[str, list[int]], None] | None = None,
    ) -> None:
        self.access = access
        self.usage = usage
        self.on_token_use = on_token_use  # (token name, its past uses per UTC hour): the off-hours heuristic
        self.oidc = oidc if oidc is not None else (OidcVerifier(access.oidc) if access.oidc else None)
        self.clock = clock

    async def authenticate(self, header: str | None) -> Principal | AuthRefused:
        token = bearer(header)
        if token is None:
            return AuthRefused("missing_token" if not header else "invalid_token", "missing or invalid bearer token")
        matched = match_token(token, self.access.tokens, self.clock())
        if matched is not None:
            if matched.expired:
                assert matched.token.expires is not None
                when = matched.token.expires.isoformat()
                name = matched.token.name
                return AuthRefused("expired_token", f"token {name!r} expired at {when}", identity=f"token:{name}")
            if self.usage is not None:
                hours = self.usage.used(matched.token.name)
                if self.on_token_use is not None:
                    self.on_token_use(matched.token.name, hours)
            return matched.principal
        if self.oidc is not None and looks_like_jwt(token):
            try:
                principal = await self.oidc.verify(token)
            except JwtRejected as exc:
                return AuthRefused(exc.reason, str(exc))
            except OidcUnavailable as exc:
                return AuthRefused("provider_unavailable", f"the identity provider cannot be reached: {exc}", 503)
            return principal  # perhaps without any grant: then every route answers 403
        return AuthRefused("invalid_token", "missing or invalid bearer token")


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
