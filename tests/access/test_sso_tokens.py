"""OIDC bearer tokens (orchestrator/access/oidc.py) against a loopback identity provider (tests/oidc_provider.py,
on PyJWT): the good token, every way a token is refused, key rotation and the JWKS cache, and the mapping of
groups and email to grants."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from orchestrator.access.grants import Grant
from orchestrator.access.oidc import JwtRejected, OidcUnavailable, OidcVerifier, looks_like_jwt
from orchestrator.config import ApiOidcConfig

from oidc_provider import OidcProvider, new_key


@pytest.fixture
async def idp() -> AsyncIterator[OidcProvider]:
    provider = await OidcProvider().start()
    yield provider
    await provider.stop()


def config(idp: OidcProvider, **overrides: Any) -> ApiOidcConfig:
    settings: dict[str, Any] = {
        "issuer": idp.issuer,
        "audience": idp.audience,
        "grants": [
            {"group": "ci-ops", "role": "operator", "pools": ["gpu"]},
            {"group": "ci-auditors", "role": "auditor"},
            {"email": "carol@example.com", "role": "approver", "repositories": ["org/app*"]},
        ],
        **overrides,
    }
    return ApiOidcConfig.model_validate(settings)


async def refused(verifier: OidcVerifier, token: str) -> str:
    with pytest.raises(JwtRejected) as info:
        await verifier.verify(token)
    return info.value.reason


async def test_a_good_token_maps_groups_to_grants(idp: OidcProvider) -> None:
    verifier = OidcVerifier(config(idp))
    principal = await verifier.verify(idp.mint(groups=["ci-ops", "other"], preferred_username="alice-gh"))
    assert principal.name == "alice@example.com" and principal.kind == "oidc"
    assert principal.grants == (Grant("operator", ("gpu",), None),)
    assert principal.is_one_of(["ALICE-GH"]) and principal.is_one_of(["user-1"]) and not principal.is_one_of(["bob"])


async def test_email_grants_need_a_verified_email(idp: OidcProvider) -> None:
    verifier = OidcVerifier(config(idp))
    verified = await verifier.verify(idp.mint(email="Carol@example.com"))
    assert verified.grants == (Grant("approver", None, ("org/app*",)),)
    unverified = await verifier.verify(idp.mint(email="carol@example.com", email_verified=False))
    assert unverified.grants == ()


async def test_no_grant_is_a_principal_without_grants(idp: OidcProvider) -> None:
    principal = await OidcVerifier(config(idp)).verify(idp.mint(groups=["nothing-here"]))
    assert principal.grants == () and not principal.holds("viewer")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "http://127.0.0.1:1/other"}, "wrong_issuer"),
        ({"aud": "someone-else"}, "wrong_audience"),
        ({"exp": int(time.time()) - 120}, "expired_token"),
        ({"nbf": int(time.time()) + 600}, "not_yet_valid"),
        ({"iat": int(time.time()) + 600, "exp": int(time.time()) + 900}, "not_yet_valid"),
        ({"exp": int(time.time()) + 3 * 86400}, "lifetime_too_long"),
        ({"sub": None}, "missing_claim"),
        ({"exp": None}, "missing_claim"),
        ({"iat": None}, "missing_claim"),
    ],
)
async def test_bad_claims_are_refused(idp: OidcProvider, claims: dict[str, Any], reason: str) -> None:
    assert await refused(OidcVerifier(config(idp)), idp.mint(**claims)) == reason


async def test_clock_skew_within_the_leeway_is_accepted(idp: OidcProvider) -> None:
    verifier = OidcVerifier(config(idp, leeway_s=60))
    assert (await verifier.verify(idp.mint(exp=int(time.time()) - 30))).name == "alice@example.com"
    assert await refused(verifier, idp.mint(exp=int(time.time()) - 90)) == "expired_token"


async def test_alg_none_and_hmac_with_the_public_key_are_refused(idp: OidcProvider) -> None:
    verifier = OidcVerifier(config(idp))
    key = idp.keys[0]
    claims = {"iss": idp.issuer, "aud": idp.audience, "sub": "x", "iat": int(time.time()), "exp": int(time.time()) + 60}
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": key.kid})
    assert await refused(verifier, unsigned) == "algorithm_refused"
    # The classic confusion: HS256 "signed" with the provider's public key (PEM) as the shared secret.
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    segments = [
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
        for part in ({"alg": "HS256", "kid": key.kid, "typ": "JWT"}, claims)
    ]
    signature = hmac.new(pem, b".".join(segments), hashlib.sha256).digest()
    forged = b".".join([*segments, base64.urlsafe_b64encode(signature).rstrip(b"=")]).decode()
    assert await refused(verifier, forged) == "algorithm_refused"
    lenient = OidcVerifier(config(idp, algorithms=["RS256"]))
    assert await refused(lenient, forged) == "algorithm_refused"


async def test_an_allowed_alg_must_fit_the_key_it_names(idp: OidcProvider) -> None:
    ec_key = idp.rotate("ES256")
    verifier = OidcVerifier(config(idp, algorithms=["RS256", "ES256"]))
    assert (await verifier.verify(idp.mint(key=ec_key))).name == "alice@example.com"
    rsa_key = idp.keys[1]
    # A token claiming RS256 under the EC key's id: the JWK is bound to ES256.
    forged = jwt.encode({"sub": "x"}, rsa_key.private, algorithm="RS256", headers={"kid": ec_key.kid})
    assert await refused(verifier, forged) == "algorithm_refused"
    only_rsa = OidcVerifier(config(idp, algorithms=["RS256"]))
    assert await refused(only_rsa, idp.mint(key=ec_key)) == "algorithm_refused"


async def test_garbage_is_refused_without_a_fetch(idp: OidcProvider) -> None:
    verifier = OidcVerifier(config(idp))
    assert await refused(verifier, "eyJ.not.ajwt") == "malformed_token"
    assert idp.jwks_fetches == 0
    assert looks_like_jwt(idp.mint()) and not looks_like_jwt("a-static-token") and not looks_like_jwt("a.b.c")


async def test_keys_are_cached_and_a_rotation_is_picked_up(idp: OidcProvider) -> None:
    verifier = OidcVerifier(config(idp, jwks_min_refresh_s=0))
    for _ in range(3):
        await verifier.verify(idp.mint())
    assert idp.jwks_fetches == 1  # discovery once, the keys once
    new = idp.rotate(keep_old=False)
    assert (await verifier.verify(idp.mint(key=new))).name == "alice@example.com"
    assert idp.jwks_fetches == 2  # the unknown kid fetched the keys again
    assert await refused(verifier, idp.mint(key=new_key())) == "unknown_key"


async def test_made_up_key_ids_do_not_hammer_the_provider(idp: OidcProvider) -> None:
    verifier = OidcVerifier(config(idp, jwks_min_refresh_s=30))
    await verifier.verify(idp.mint())
    for _ in range(20):
        assert await refused(verifier, idp.mint(key=new_key())) == "unknown_key"
    assert idp.jwks_fetches == 1


async def test_the_cache_expires(idp: OidcProvider) -> None:
    now = [time.time()]
    verifier = OidcVerifier(config(idp, jwks_cache_s=60), clock=lambda: now[0])
    await verifier.verify(idp.mint())
    now[0] += 61
    await verifier.verify(idp.mint())
    assert idp.jwks_fetches == 2


async def test_an_unreachable_provider_is_unavailable_not_a_refusal(idp: OidcProvider) -> None:
    token = idp.mint()
    await idp.stop()
    with pytest.raises(OidcUnavailable):
        await OidcVerifier(config(idp)).verify(token)


async def test_a_discovery_document_for_another_issuer_is_not_trusted(idp: OidcProvider) -> None:
    verifier = OidcVerifier(
        config(idp), fetch=lambda url: b'{"issuer": "https://evil.example", "jwks_uri": "https://evil.example/k"}'
    )
    with pytest.raises(OidcUnavailable, match=r"evil\.example"):
        await verifier.verify(idp.mint())


def test_the_config_refuses_none_hmac_and_plain_http_off_loopback() -> None:
    base = {"issuer": "https://idp.example.com", "audience": "a"}
    for alg in ("none", "HS256"):
        with pytest.raises(ValidationError):
            ApiOidcConfig.model_validate({**base, "algorithms": [alg]})
    with pytest.raises(ValidationError, match="must be https"):
        ApiOidcConfig.model_validate({**base, "issuer": "http://idp.example.com"})
    with pytest.raises(ValidationError, match="exactly one of group or email"):
        ApiOidcConfig.model_validate({**base, "grants": [{"role": "viewer"}]})
    assert ApiOidcConfig.model_validate({**base, "issuer": "http://127.0.0.1:9"}).algorithms == ["RS256", "ES256"]
