"""Static bearer tokens (orchestrator/access/tokens.py): the header's parsing and the constant-time match; and the
rank of the roles (orchestrator/access/grants.py). Pure, no I/O."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.access.grants import Grant, Principal
from orchestrator.access.tokens import bearer, match_token
from orchestrator.config import ApiToken, hash_token


def authenticate(header: str | None, tokens: list[ApiToken]) -> tuple[str, str] | None:
    token = bearer(header)
    matched = match_token(token, tokens, 0.0) if token is not None else None
    return None if matched is None else (matched.principal.name, matched.principal.role)


VIEWER_TOKEN = "viewer-token-abc"
OPERATOR_TOKEN = "operator-token-def"
ADMIN_TOKEN = "admin-token-ghi"

TOKENS = [
    ApiToken(name="dash", role="viewer", sha256=hash_token(VIEWER_TOKEN)),
    ApiToken(name="ops", role="operator", sha256=hash_token(OPERATOR_TOKEN)),
    ApiToken(name="root", role="admin", sha256=hash_token(ADMIN_TOKEN)),
]

ROLES = ["viewer", "operator", "admin"]


@pytest.mark.parametrize(
    ("token", "name", "role"),
    [(VIEWER_TOKEN, "dash", "viewer"), (OPERATOR_TOKEN, "ops", "operator"), (ADMIN_TOKEN, "root", "admin")],
)
def test_known_tokens(token: str, name: str, role: str) -> None:
    assert authenticate(f"Bearer {token}", TOKENS) == (name, role)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive(scheme: str) -> None:
    assert authenticate(f"{scheme} {OPERATOR_TOKEN}", TOKENS) == ("ops", "operator")


def test_token_is_case_sensitive() -> None:
    assert authenticate(f"Bearer {OPERATOR_TOKEN.upper()}", TOKENS) is None


@pytest.mark.parametrize("header", [f"Bearer  {ADMIN_TOKEN}", f"Bearer {ADMIN_TOKEN} ", f"Bearer {ADMIN_TOKEN}\t"])
def test_surrounding_whitespace_around_token_ignored(header: str) -> None:
    assert authenticate(header, TOKENS) == ("root", "admin")


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header(header: str | None) -> None:
    assert authenticate(header, TOKENS) is None


@pytest.mark.parametrize(
    "header",
    [
        f"Basic {ADMIN_TOKEN}",
        f"Token {ADMIN_TOKEN}",
        f"Bearer: {ADMIN_TOKEN}",
        f"Bearer{ADMIN_TOKEN}",
        f"Bearer\t{ADMIN_TOKEN}",
        f" Bearer {ADMIN_TOKEN}",
        f"XBearer {ADMIN_TOKEN}",
        ADMIN_TOKEN,
    ],
)
def test_wrong_scheme(header: str) -> None:
    assert authenticate(header, TOKENS) is None


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer    ", "bearer \t ", "Bearer \n"])
def test_empty_token(header: str) -> None:
    assert authenticate(header, TOKENS) is None


def test_empty_token_not_accepted_even_if_its_hash_is_configured() -> None:
    tokens = [ApiToken(name="blank", role="admin", sha256=hash_token(""))]
    assert authenticate("Bearer ", tokens) is None
    assert authenticate("Bearer", tokens) is None


@pytest.mark.parametrize("token", ["nope", VIEWER_TOKEN[:-1], VIEWER_TOKEN + "x", hash_token(VIEWER_TOKEN)])
def test_unknown_token(token: str) -> None:
    assert authenticate(f"Bearer {token}", TOKENS) is None


def test_no_tokens_configured() -> None:
    assert authenticate(f"Bearer {ADMIN_TOKEN}", []) is None


def test_first_matching_entry_wins_for_duplicate_hashes() -> None:
    h = hash_token("shared")
    tokens = [ApiToken(name="a", role="viewer", sha256=h), ApiToken(name="b", role="admin", sha256=h)]
    assert authenticate("Bearer shared", tokens) == ("a", "viewer")


def test_unicode_token() -> None:
    tokens = [ApiToken(name="u", role="operator", sha256=hash_token("tökén-😀"))]
    assert authenticate("Bearer tökén-😀", tokens) == ("u", "operator")


@pytest.mark.parametrize(("have", "need"), list(itertools.product(ROLES, repeat=2)))
def test_role_ordering(have: str, need: str) -> None:
    expected = ROLES.index(have) >= ROLES.index(need)
    assert Principal("p", (Grant(have),)).holds(need) is expected  # type: ignore[arg-type]


def test_approver_and_auditor_view_but_do_not_operate() -> None:
    for role in ("approver", "auditor"):
        p = Principal("p", (Grant(role),))  # type: ignore[arg-type]
        assert p.holds("viewer") and p.holds(role) and not p.holds("operator") and not p.holds("admin")  # type: ignore[arg-type]
    admin = Principal("p", (Grant("admin"),))
    assert all(admin.holds(r) for r in ("viewer", "operator", "admin", "approver", "auditor"))
    assert not Principal("p", (Grant("operator"),)).holds("approver")


def test_principal_is_immutable_value() -> None:
    p = Principal("ops", (Grant("operator"),))
    assert p == Principal("ops", (Grant("operator"),))
    assert hash(p) == hash(Principal("ops", (Grant("operator"),)))
    with pytest.raises(AttributeError):
        p.name = "admin"  # type: ignore[misc]
