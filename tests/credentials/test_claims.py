"""Pure tests for job-token claims and the discovery document (no keys, no clock)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.credentials.claims import (
    JobIdentity,
    build_claims,
    discovery_document,
    repository_parts,
    subject,
)

ISSUER = "https://ci.example.com/oidc"
IDENTITY = JobIdentity(
    job_id="job-42",
    repository="acme/widgets",
    ref="refs/heads/main",
    sha="0123456789abcdef0123456789abcdef01234567",
    pool="linux-small",
)


def _claims(**overrides: object) -> dict[str, object]:
    kwargs: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": "vault",
        "now": 1_700_000_000,
        "lifetime_s": 300,
        "jti": "jti-1",
    }
    kwargs.update(overrides)
    return build_claims(IDENTITY, **kwargs)


def test_subject_format() -> None:
    assert subject(IDENTITY) == "repo:acme/widgets:ref:refs/heads/main:pool:linux-small"


def test_exact_claims() -> None:
    assert _claims() == {
        "iss": ISSUER,
        "aud": "vault",
        "sub": "repo:acme/widgets:ref:refs/heads/main:pool:linux-small",
        "repository": "acme/widgets",
        "repository_owner": "acme",
        "repository_name": "widgets",
        "ref": "refs/heads/main",
        "sha": "0123456789abcdef0123456789abcdef01234567",
        "job_id": "job-42",
        "pool": "linux-small",
        "iat": 1_700_000_000,
        "nbf": 1_700_000_000,
        "exp": 1_700_000_300,
        "jti": "jti-1",
    }


def test_controller_id_only_when_given() -> None:
    assert "controller_id" not in _claims()
    assert _claims(controller_id="ctl-a")["controller_id"] == "ctl-a"


def test_audience_list_is_copied() -> None:
    audience = ["vault", "other"]
    claims = _claims(audience=audience)
    assert claims["aud"] == ["vault", "other"]
    audience.append("injected")
    assert claims["aud"] == ["vault", "other"]


@pytest.mark.parametrize("audience", ["", [], ["vault", ""]])
def test_empty_audience_rejected(audience: object) -> None:
    with pytest.raises(ValueError, match="audience"):
        _claims(audience=audience)


@pytest.mark.parametrize("lifetime_s", [1, 60, 3600])
def test_lifetime_bounds_accepted(lifetime_s: int) -> None:
    assert _claims(lifetime_s=lifetime_s)["exp"] == 1_700_000_000 + lifetime_s


@pytest.mark.parametrize("lifetime_s", [0, -1, 3601, 86400, True])
def test_lifetime_bounds_rejected(lifetime_s: int) -> None:
    with pytest.raises(ValueError, match="lifetime_s"):
        _claims(lifetime_s=lifetime_s)


@pytest.mark.parametrize(
    "field",
    ["repository", "ref", "pool"],
)
def test_colon_in_subject_component_rejected(field: str) -> None:
    """A ':' would let one component forge another segment of the subject."""
    values = {
        "job_id": "j",
        "repository": "acme/widgets",
        "ref": "refs/heads/main",
        "sha": "abc",
        "pool": "p",
    }
    values[field] = "x:pool:prod"
    with pytest.raises(ValueError, match=field):
        subject(JobIdentity(**values))


@pytest.mark.parametrize("field", ["job_id", "repository", "ref", "sha", "pool"])
def test_empty_identity_fields_rejected(field: str) -> None:
    values = {
        "job_id": "j",
        "repository": "acme/widgets",
        "ref": "refs/heads/main",
        "sha": "abc",
        "pool": "p",
    }
    values[field] = ""
    with pytest.raises(ValueError, match=field):
        build_claims(JobIdentity(**values), issuer=ISSUER, audience="vault", now=0, lifetime_s=60, jti="j")


def test_empty_issuer_and_jti_rejected() -> None:
    with pytest.raises(ValueError, match="issuer"):
        _claims(issuer="")
    with pytest.raises(ValueError, match="jti"):
        _claims(jti="")


_component = st.text(alphabet=st.characters(exclude_characters=":", exclude_categories=["Cs"]), min_size=1)


@given(repository=_component, ref=_component, pool=_component, now=st.integers(0, 2**40))
def test_subject_round_trips_and_times_are_consistent(repository: str, ref: str, pool: str, now: int) -> None:
    identity = JobIdentity(job_id="j", repository=repository, ref=ref, sha="s", pool=pool)
    claims = build_claims(identity, issuer=ISSUER, audience="vault", now=now, lifetime_s=120, jti="j")
    sub = claims["sub"]
    assert isinstance(sub, str)
    assert sub.split(":") == ["repo", repository, "ref", ref, "pool", pool]
    assert claims["iat"] == claims["nbf"] == now
    assert claims["exp"] == now + 120


def test_discovery_document() -> None:
    doc = discovery_document(ISSUER)
    assert doc == {
        "issuer": ISSUER,
        "jwks_uri": "https://ci.example.com/oidc/.well-known/jwks.json",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "claims_supported": [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "nbf",
            "jti",
            "repository",
            "repository_owner",
            "repository_name",
            "ref",
            "sha",
            "job_id",
            "pool",
            "controller_id",
        ],
        "scopes_supported": ["openid"],
    }
    # We run no authorization flow, so we must not advertise an endpoint for one.
    assert "authorization_endpoint" not in doc


def test_discovery_issuer_is_verbatim_but_jwks_uri_normalised() -> None:
    """go-oidc compares ``issuer`` byte for byte with the configured discovery URL."""
    doc = discovery_document("https://ci.example.com/")
    assert doc["issuer"] == "https://ci.example.com/"
    assert doc["jwks_uri"] == "https://ci.example.com/.well-known/jwks.json"


def test_discovery_claims_cover_built_claims() -> None:
    supported = discovery_document(ISSUER)["claims_supported"]
    assert isinstance(supported, list)
    assert set(_claims(controller_id="c")) <= set(supported)


def test_discovery_rejects_empty_issuer() -> None:
    with pytest.raises(ValueError, match="issuer"):
        discovery_document("")


@pytest.mark.parametrize(
    ("repository", "parts"),
    [
        ("acme/widgets", {"repository_owner": "acme", "repository_name": "widgets"}),
        ("acme", {}),  # one segment: no per-repository secrets
        ("group/sub/app", {}),  # nested: a "/" in a value would fail the token's whole ACL in Vault
        ("acme/", {}),
        ("/widgets", {}),
        ("../widgets", {}),
        ("acme/..", {}),
    ],
)
def test_repository_parts_only_for_owner_slash_name(repository: str, parts: dict[str, str]) -> None:
    assert repository_parts(repository) == parts
    assert all("/" not in value for value in parts.values())
