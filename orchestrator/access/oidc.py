"""Single sign-on for the API: JWT bearer tokens of an OIDC identity provider, verified with PyJWT against the
provider's JWKS, and mapped to grants by their groups or email.

* Keys: the JWKS (from `jwks_url`, or the `jwks_uri` of `<issuer>/.well-known/openid-configuration`, whose
  `issuer` must be exactly ours) is cached for `jwks_cache_s`. A token whose `kid` is not in the cache fetches it
  again -- the provider rotated its keys -- but at most every `jwks_min_refresh_s`, so tokens with made-up key
  ids cannot make the controller hammer the provider.
* Algorithms: the token's `alg` must be in the configured allow-list (asymmetric only: the config refuses `none`
  and HS*), and the key it names must be of that algorithm's type (PyJWT binds a JWK to one algorithm): an RSA
  public key is never used as an HMAC secret.
* Claims: `iss` and `aud` exact, `exp`, `iat` and `sub` required, `nbf` honoured, `leeway_s` of clock skew, and
  a lifetime (`exp - iat`) of at most `max_lifetime_s`.
The blocking fetches run in a thread; verification itself is CPU only."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from orchestrator.access.grants import Grant, Principal
from orchestrator.access.tokens import grant_of
from orchestrator.checkout.remote import is_loopback
from orchestrator.config import ApiOidcConfig

log = logging.getLogger(__name__)

_MAX_DOCUMENT_BYTES = 1024 * 1024


class JwtRejected(Exception):
    """The token is not acceptable; `reason` is a short code for metrics and the audit trail, the message says
    what was wrong (never the token)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class OidcUnavailable(Exception):
    """The provider's keys could not be fetched: not the caller's fault (503, not 401)."""


def looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and token.startswith("eyJ") and all(parts)


def grants_for(claims: Mapping[str, Any], config: ApiOidcConfig) -> tuple[Grant, ...]:
    """The configured grants whose group is in the token's groups claim, or whose email is the token's verified
    email."""
    groups = claims.get(config.groups_claim) or []
    if isinstance(groups, str):
        groups = [groups]
    member = {str(g) for g in groups} if isinstance(groups, list) else set()
    email = claims.get("email") if claims.get("email_verified") is True else None
    found = []
    for rule in config.grants:
        if (rule.group is not None and rule.group in member) or (
            rule.email is not None and isinstance(email, str) and rule.email.casefold() == email.casefold()
        ):
            found.append(grant_of(rule.role, rule))
    return tuple(found)


def principal_of(claims: Mapping[str, Any], config: ApiOidcConfig) -> Principal:
    name = claims.get(config.name_claim)
    name = str(name) if isinstance(name, str) and name else f"oidc:{claims['sub']}"
    aliases = {str(claims["sub"])}
    for key in ("email", *config.username_claims):
        value = claims.get(key)
        if isinstance(value, str) and value:
            aliases.add(value)
    return Principal(name, grants_for(claims, config), kind="oidc", aliases=frozenset(aliases))


class OidcVerifier:
    def __init__(
        self,
        config: ApiOidcConfig,
        *,
        clock: Callable[[], float] = time.time,
        fetch: Callable[[str], bytes] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self._fetch = fetch or self._http_get
        self._ssl = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None
        self._refreshed_at = float("-inf")
        self._jwks_url = config.jwks_url
        self._discovered: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    def _http_get(self, url: str) -> bytes:
        # Only https, or http to this machine (checked for the configured URLs and the discovered jwks_uri).
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=10, context=self._ssl) as resp:  # noqa: S310
            body: bytes = resp.read(_MAX_DOCUMENT_BYTES + 1)
        if len(body) > _MAX_DOCUMENT_BYTES:
            raise OidcUnavailable(f"{url}: answer larger than {_MAX_DOCUMENT_BYTES} bytes")
        return body

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            data = json.loads(self._fetch(url))
        except OidcUnavailable:
            raise
        except (OSError, ValueError) as exc:
            raise OidcUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None
        if not isinstance(data, dict):
            raise OidcUnavailable(f"{url}: not a JSON object")
        return data

    def _discovery_document(self) -> dict[str, Any]:
        """`<issuer>/.well-known/openid-configuration` (blocking), whose `issuer` must be exactly ours."""
        issuer = self.config.issuer.rstrip("/")
        document = self._get_json(f"{issuer}/.well-known/openid-configuration")
        if document.get("issuer") != self.config.issuer:
            raise OidcUnavailable(
                f"the discovery document names issuer {document.get('issuer')!r}, not {self.config.issuer!r}"
            )
        return document

    async def discovery(self) -> dict[str, Any]:
        """The provider's discovery document (the console's login needs its authorization and token endpoints),
        fetched again after `jwks_cache_s`; raises OidcUnavailable."""
        now = self.clock()
        if self._discovered is None or now - self._discovered[0] >= self.config.jwks_cache_s:
            self._discovered = (now, await asyncio.to_thread(self._discovery_document))
        return self._discovered[1]

    def _load_keys(self) -> None:
        """Fetches the JWKS (blocking: run in a thread), discovering its URL first if not configured."""
        if self._jwks_url is None:
            document = self._discovery_document()
            uri = document.get("jwks_uri")
            if not isinstance(uri, str) or not (
                uri.startswith("https://") or (uri.startswith("http://") and is_loopback(uri))
            ):
                raise OidcUnavailable(f"the discovery document's jwks_uri {uri!r} is not https (http only on loopback)")
            self._jwks_url = uri
        data = self._get_json(self._jwks_url)
        keys = data.get("keys")
        if not isinstance(keys, list):
            raise OidcUnavailable(f"{self._jwks_url}: no 'keys' list")
        self._keys = {str(k["kid"]): k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}
        self._fetched_at = self._refreshed_at = self.clock()
        log.info("OIDC provider keys fetched", extra={"keys": sorted(self._keys), "url": self._jwks_url})

    async def _key(self, kid: str) -> dict[str, Any] | None:
        async with self._lock:
            now = self.clock()
            stale = self._fetched_at is None or now - self._fetched_at >= self.config.jwks_cache_s
            unknown = kid not in self._keys and now - self._refreshed_at >= self.config.jwks_min_refresh_s
            if stale or unknown:
                try:
                    await asyncio.to_thread(self._load_keys)
                except OidcUnavailable:
                    if self._fetched_at is None:
                        raise
                    log.warning("OIDC provider keys could not be refreshed; using the cached ones")
                    self._refreshed_at = now
            return self._keys.get(kid)

    async def verify(self, token: str) -> Principal:
        """The principal the token names; raises JwtRejected (401) or OidcUnavailable (503)."""
        return principal_of(await self.verify_claims(token), self.config)

    async def verify_claims(self, token: str) -> dict[str, Any]:
        """The verified claims of the token (the console checks an ID token's `nonce` in them); raises like
        `verify`."""
        cfg = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise JwtRejected("malformed_token", "the bearer token is not a well-formed JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in cfg.algorithms:
            raise JwtRejected(
                "algorithm_refused", f"JWT alg {alg!r} is not allowed (allowed: {', '.join(cfg.algorithms)})"
            )
        if not isinstance(kid, str):
            raise JwtRejected("unknown_key", "the JWT names no key id (kid)")
        jwk = await self._key(kid)
        if jwk is None:
            raise JwtRejected("unknown_key", f"the identity provider has no key {kid!r}")
        try:
            key = jwt.PyJWK(jwk, algorithm=None if jwk.get("alg") else alg)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(cfg.algorithms),
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud", "sub"], "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise JwtRejected("expired_token", "the JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise JwtRejected("wrong_audience", f"the JWT is not for audience {cfg.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise JwtRejected("wrong_issuer", f"the JWT is not from issuer {cfg.issuer!r}") from None
        except jwt.ImmatureSignatureError:
            raise JwtRejected("not_yet_valid", "the JWT is not valid yet (nbf or iat in the future)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise JwtRejected("missing_claim", f"the JWT lacks the {exc.claim!r} claim") from None
        except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError, jwt.PyJWKError) as exc:
            raise JwtRejected("algorithm_refused", f"the JWT's alg does not fit key {kid!r}: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise JwtRejected("invalid_token", f"the JWT is invalid: {type(exc).__name__}") from None
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, int | float) or not isinstance(exp, int | float) or exp - iat > cfg.max_lifetime_s:
            raise JwtRejected("lifetime_too_long", f"the JWT is valid for longer than {cfg.max_lifetime_s} s")
        return claims
