"""Claims and OIDC discovery metadata for per-job identity tokens.

Pure functions only: no I/O and no clock reads (``now`` is passed in), so the exact
shape of what Vault sees can be tested without keys, files or time.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Upper bound for a token's lifetime. The token is only used for one exchange with
#: Vault right after the job starts; anything longer just widens the replay window.
MAX_LIFETIME_S = 3600

#: Must match ``SigningKeys`` in ``oidc.py`` (the algorithms it can produce).
SIGNING_ALGORITHMS = ("RS256", "ES256")

CLAIMS_SUPPORTED = (
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
)

JWKS_PATH = "/.well-known/jwks.json"


@dataclass(frozen=True)
class JobIdentity:
    """What a job token asserts about the job; Vault roles bind on these claims."""

    job_id: str
    repository: str
    ref: str
    sha: str
    pool: str


def subject(identity: JobIdentity) -> str:
    """``repo:{repository}:ref:{ref}:pool:{pool}``.

    ``:`` is the separator, so a component containing one is rejected: otherwise a
    repository or ref could forge another segment and satisfy a Vault
    ``bound_subject``/glob written for a different repo, ref or pool. (Git refs and
    repository paths cannot legally contain ``:`` anyway.)
    """
    parts = {"repository": identity.repository, "ref": identity.ref, "pool": identity.pool}
    for name, value in parts.items():
        if not value:
            raise ValueError(f"{name} must not be empty")
        if ":" in value:
            raise ValueError(f"{name} must not contain ':' (it is the subject separator): {value!r}")
    return f"repo:{identity.repository}:ref:{identity.ref}:pool:{identity.pool}"


def build_claims(
    identity: JobIdentity,
    *,
    issuer: str,
    audience: str | list[str],
    now: int,
    lifetime_s: int,
    jti: str,
    controller_id: str | None = None,
) -> dict[str, object]:
    """Claims for one job token.

    ``nbf`` equals ``iat``: Vault's JWT auth already tolerates small clock skew
    (``clock_skew_leeway``, 60 s by default), so back-dating is not needed.
    """
    if isinstance(lifetime_s, bool) or not 1 <= lifetime_s <= MAX_LIFETIME_S:
        raise ValueError(
            f"lifetime_s must be between 1 and {MAX_LIFETIME_S} seconds (the token only lives "
            f"for the Vault exchange), got {lifetime_s!r}"
        )
    if not issuer:
        raise ValueError("issuer must not be empty")
    if not jti:
        raise ValueError("jti must not be empty")
    aud: str | list[str]
    if isinstance(audience, str):
        if not audience:
            raise ValueError("audience must not be empty")
        aud = audience
    else:
        if not audience or not all(audience):
            raise ValueError("audience list must be non-empty and contain no empty strings")
        aud = list(audience)  # copy: the caller's list must not alias the claims
    for name in ("job_id", "sha"):
        if not getattr(identity, name):
            raise ValueError(f"{name} must not be empty")

    claims: dict[str, object] = {
        "iss": issuer,
        "aud": aud,
        "sub": subject(identity),
        "repository": identity.repository,
        "ref": identity.ref,
        "sha": identity.sha,
        "job_id": identity.job_id,
        "pool": identity.pool,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_s,
        "jti": jti,
    }
    claims.update(repository_parts(identity.repository))
    if controller_id is not None:
        claims["controller_id"] = controller_id
    return claims


def repository_parts(repository: str) -> dict[str, str]:
    """``repository_owner`` and ``repository_name`` (GitHub's claim names) for an ``owner/name`` repository.

    Vault refuses to substitute a value containing ``/`` into a templated policy path (and then fails the whole
    ACL of the token), so a per-repository policy must template the two segments separately:
    ``ci/<pool>/{{...repository_owner}}/{{...repository_name}}/+``. Other shapes (one segment, nested groups) get
    neither claim: the templated path then matches nothing and such a job reads only the pool-wide secrets.
    """
    owner, sep, name = repository.partition("/")
    if not sep or "/" in name or not owner or not name or {owner, name} & {".", ".."}:
        return {}
    return {"repository_owner": owner, "repository_name": name}


def jwks_uri(issuer: str) -> str:
    """Where the JWKS is served; shared by the discovery document and the HTTP route."""
    return issuer.rstrip("/") + JWKS_PATH


def discovery_document(issuer: str) -> dict[str, object]:
    """OpenID Provider Metadata served at ``{issuer}/.well-known/openid-configuration``.

    Vault's JWT auth (``oidc_discovery_url``) parses this with go-oidc, which reads only
    ``issuer`` (must equal the configured URL byte for byte, trailing slash included),
    ``jwks_uri`` and ``id_token_signing_alg_values_supported`` (the verifier's allowed
    algorithms; if absent go-oidc falls back to RS256 only and ES256 tokens would be
    rejected). ``authorization_endpoint`` is REQUIRED by OIDC Discovery for full
    providers, but we run no authorization flow; advertising a URL that 404s would be
    a lie to clients, and go-oidc does not need it, so it is deliberately omitted.
    ``response_types_supported``/``subject_types_supported`` are the other REQUIRED
    fields and are accurate, so they are kept for generic validators.
    """
    if not issuer:
        raise ValueError("issuer must not be empty")
    return {
        "issuer": issuer,
        "jwks_uri": jwks_uri(issuer),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        "claims_supported": list(CLAIMS_SUPPORTED),
        "scopes_supported": ["openid"],
    }
