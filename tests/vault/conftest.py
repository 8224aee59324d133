"""Fixtures for tests that talk to the Vault test double.

* ``signing_keys`` (session): an RSA and an EC P-256 key published in the JWKS, plus a "rogue" RSA key
  that claims the RSA key's ``kid`` but is *not* published.
* ``jwks_server``: an aiohttp app on 127.0.0.1 serving ``/.well-known/openid-configuration`` and
  ``/.well-known/jwks.json`` (the issuer is the server's base URL); ``mint()`` signs JWTs.
* ``clock`` (from tests/conftest.py): the fake clock the double uses for token TTLs, leases and JWT time checks.
* ``vault``: a started :class:`VaultDouble` with a ``jwt`` mount configured via OIDC discovery against
  ``jwks_server``, roles ``ci-linux`` / ``ci-gpu`` bound to the ``pool`` claim, read policies per pool,
  an ``orchestrator-revoker`` policy and a few KV v2 secrets.
* ``hvac_client``: a factory for synchronous hvac clients pointed at the double (call them through
  ``asyncio.to_thread`` -- the double runs on the test's event loop).
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import hvac
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fake_clock import FakeClock
from vault_double import VaultDouble

ROOT_TOKEN = "root-test-token"
AUDIENCE = "vault"
POOLS = ("linux", "gpu")


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk


@dataclass
class SigningKeys:
    rsa: SigningKey
    ec: SigningKey
    rogue: SigningKey  # same kid as ``rsa`` but never published


@pytest.fixture(scope="session")
def signing_keys() -> SigningKeys:
    return SigningKeys(
        rsa=SigningKey("rsa-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ec=SigningKey("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1())),
        rogue=SigningKey("rsa-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    )


@dataclass
class JwksServer:
    keys: list[SigningKey]
    url: str = ""
    available: bool = True
    hits: list[str] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _discovery(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        if not self.available:
            return web.json_response({"error": "unavailable"}, status=503)
        return web.json_response(
            {
                "issuer": self.issuer,
                "jwks_uri": self.jwks_url,
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
                "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "pool", "repository", "job_id"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        if not self.available:
            return web.json_response({"error": "unavailable"}, status=503)
        return web.json_response({"keys": [key.public_jwk() for key in self.keys]})

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "job:4711",
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "pool": "linux",
            "repository": "acme/app",
            "job_id": "4711",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        key: SigningKey | None = None,
        *,
        kid: str | None = None,
        omit_kid: bool = False,
        **claims: Any,
    ) -> str:
        """Sign a JWT (claims default to a valid linux-pool job token; pass ``name=None`` to drop one)."""
        signer = key or self.keys[0]
        headers = {} if omit_kid else {"kid": kid or signer.kid}
        return jwt.encode(self.claims(**claims), signer.private, algorithm=signer.alg, headers=headers)


@pytest.fixture
async def jwks_server(signing_keys: SigningKeys) -> AsyncIterator[JwksServer]:
    server = JwksServer(keys=[signing_keys.rsa, signing_keys.ec])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def configure_orchestrator_layout(vault: VaultDouble, issuer: str) -> None:
    """The layout setup-vault.sh creates, done through the admin helpers."""
    vault.configure_jwt("jwt", oidc_discovery_url=issuer, bound_issuer=issuer)
    for pool in POOLS:
        vault.put_policy(f"ci-{pool}-read", {f"secret/data/ci/{pool}/*": ["read"]})
        vault.add_role(
            "jwt",
            f"ci-{pool}",
            bound_audiences=[AUDIENCE],
            bound_claims={"pool": pool},
            token_policies=[f"ci-{pool}-read"],
            token_ttl=900,
            token_max_ttl=7200,
        )
    vault.put_policy("orchestrator-revoker", {"auth/token/revoke-accessor": ["update"]})
    vault.put_kv("secret", "ci/linux/db", {"username": "ci", "password": "s3cr3t"})
    vault.put_kv("secret", "ci/gpu/license", {"key": "gpu-license"})


@pytest.fixture
async def vault(jwks_server: JwksServer, clock: FakeClock) -> AsyncIterator[VaultDouble]:
    double = VaultDouble(root_token=ROOT_TOKEN, clock=clock)
    await double.start()
    configure_orchestrator_layout(double, jwks_server.issuer)
    try:
        yield double
    finally:
        await double.stop()


@pytest.fixture
def hvac_client(vault: VaultDouble) -> Callable[..., hvac.Client]:
    def make(token: str | None = None) -> hvac.Client:
        return hvac.Client(url=vault.url, token=token, timeout=10)

    return make
