"""A loopback OIDC identity provider for the tests, on PyJWT and cryptography (maintained libraries; no JWT code of
our own): discovery document, JWKS with key rotation, tokens minted with any claims, and the authorization code
flow with PKCE (S256) for the console's login. It counts JWKS fetches, so tests can check caching."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg.startswith(("RS", "PS")) else ECAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))  # type: ignore[attr-defined]
        jwk.update(kid=self.kid, use="sig", alg=self.alg)
        return jwk


def new_key(alg: str = "RS256") -> SigningKey:
    private: Any
    if alg.startswith(("RS", "PS")):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(f"k-{secrets.token_hex(4)}", alg, private)


@dataclass
class OidcProvider:
    """Start with `await OidcProvider().start()`; `issuer` is its URL. `users` maps a login to its claims for the
    authorization code flow (the test "logs in" by choosing the user: no password page)."""

    audience: str = "runner-orchestrator"
    keys: list[SigningKey] = field(default_factory=lambda: [new_key()])
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    jwks_fetches: int = 0
    issuer: str = ""
    _codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    async def start(self) -> OidcProvider:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.issuer = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def rotate(self, alg: str = "RS256", *, keep_old: bool = True) -> SigningKey:
        """A new signing key, first in the JWKS; the old ones stay published unless `keep_old` is False."""
        key = new_key(alg)
        self.keys = [key, *self.keys] if keep_old else [key]
        return key

    def mint(self, *, key: SigningKey | None = None, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """A token signed by `key` (default: the newest) with standard claims unless overridden (None drops one)."""
        key = key or self.keys[0]
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "sub": "user-1", "iat": now,
                                "exp": now + 300, "email": "alice@example.com", "email_verified": True}  # fmt: skip
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid, **(headers or {})})

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "jwks_uri": f"{self.issuer}/jwks",
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response({"keys": [k.public_jwk() for k in self.keys]})

    async def _authorize(self, request: web.Request) -> web.Response:
        """The user given as `login_hint` logs in at once; redirects back with a code bound to the PKCE challenge."""
        q = request.query
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return web.Response(status=400, text="code flow with S256 PKCE only")
        user = q.get("login_hint", "")
        if user not in self.users:
            return web.Response(status=403, text=f"no user {user!r}")
        code = secrets.token_urlsafe(16)
        self._codes[code] = {"user": user, "challenge": q["code_challenge"], "client_id": q.get("client_id"),
                             "redirect_uri": q.get("redirect_uri"), "nonce": q.get("nonce")}  # fmt: skip
        sep = "&" if "?" in q["redirect_uri"] else "?"
        raise web.HTTPFound(f"{q['redirect_uri']}{sep}{urlencode({'code': code, 'state': q.get('state', '')})}")

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = self._codes.pop(str(form.get("code", "")), None)
        if grant is None or form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "invalid_grant"}, status=400)
        verifier = str(form.get("code_verifier", ""))
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if digest != grant["challenge"] or form.get("redirect_uri") != grant["redirect_uri"]:
            return web.json_response({"error": "invalid_grant", "error_description": "PKCE or redirect"}, status=400)
        claims = {**self.users[grant["user"]], "nonce": grant["nonce"]}
        if grant["client_id"]:
            claims["aud"] = grant["client_id"]
        token = self.mint(**claims)
        return web.json_response({"access_token": token, "id_token": token, "token_type": "Bearer", "expires_in": 300})
