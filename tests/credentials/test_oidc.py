"""Signing key store and job token minting, against a real directory (tmp_path)."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from orchestrator.credentials.claims import JobIdentity
from orchestrator.credentials.oidc import (
    INDEX_NAME,
    Algorithm,
    JobTokenIssuer,
    KeyStoreError,
    SigningKeys,
    jwk_thumbprint,
)

from fake_clock import FakeClock  # `clock` (tests/conftest.py) drives key age only; token times are real

ISSUER = "https://ci.example.com/oidc"
AUDIENCE = "vault"
ROTATION = 7 * 86400
OVERLAP = 3600
IDENTITY = JobIdentity(job_id="job-1", repository="acme/widgets", ref="refs/heads/main", sha="abc123", pool="small")


@pytest.fixture(params=list(get_args(Algorithm)))
def algorithm(request: pytest.FixtureRequest) -> Algorithm:
    alg: Algorithm = request.param
    return alg


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "oidc"


def make_keys(key_dir: Path, algorithm: Algorithm, clock: FakeClock) -> SigningKeys:
    keys = SigningKeys(key_dir, algorithm=algorithm, rotation_period_s=ROTATION, overlap_s=OVERLAP, clock=clock)
    keys.load_or_create()
    return keys


@pytest.fixture
def keys(key_dir: Path, algorithm: Algorithm, clock: FakeClock) -> SigningKeys:
    return make_keys(key_dir, algorithm, clock)


def mint(keys: SigningKeys) -> str:
    return JobTokenIssuer(keys, issuer=ISSUER, lifetime_s=300).mint(IDENTITY, AUDIENCE)


def verify(token: str, jwks: dict[str, object]) -> dict[str, Any]:
    """What Vault does: pick the JWK by kid from the published set, then verify."""
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = jwt.PyJWKSet.from_dict(jwks)[kid]
    claims: dict[str, Any] = jwt.decode(token, jwk, algorithms=[jwk.algorithm_name], audience=AUDIENCE, issuer=ISSUER)
    return claims


def published(keys: SigningKeys) -> list[dict[str, Any]]:
    jwk_list = keys.jwks()["keys"]
    assert isinstance(jwk_list, list)
    return jwk_list


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def pem_files(key_dir: Path) -> list[Path]:
    return sorted(key_dir.glob("*.pem"))


# ------------------------------------------------------------------ first start


def test_first_start_creates_private_dir_and_key(keys: SigningKeys, key_dir: Path) -> None:
    assert mode(key_dir) == 0o700
    files = pem_files(key_dir)
    assert [f.name for f in files] == [f"{keys.active_kid}.pem"]
    assert mode(files[0]) == 0o600
    assert mode(key_dir / INDEX_NAME) == 0o600
    index = json.loads((key_dir / INDEX_NAME).read_text())
    assert index["keys"] == [
        {
            "kid": keys.active_kid,
            "alg": keys.algorithm,
            "created_at": pytest.approx(index["keys"][0]["created_at"]),
            "retired_at": None,
        }
    ]


def test_modes_do_not_depend_on_umask(key_dir: Path, algorithm: Algorithm, clock: FakeClock) -> None:
    old = os.umask(0)
    try:
        keys = make_keys(key_dir, algorithm, clock)
        keys.rotate()
    finally:
        os.umask(old)
    assert mode(key_dir) == 0o700
    assert {mode(p) for p in key_dir.iterdir()} == {0o600}


def test_key_type_matches_algorithm(keys: SigningKeys, key_dir: Path, algorithm: Algorithm) -> None:
    (jwk,) = published(keys)
    expected = {"RS256": {"kty": "RSA"}, "ES256": {"kty": "EC", "crv": "P-256"}}[algorithm]
    assert expected.items() <= jwk.items()
    assert jwk["alg"] == algorithm
    assert jwk["use"] == "sig"
    assert jwk["kid"] == keys.active_kid


def test_kid_is_rfc7638_thumbprint(keys: SigningKeys) -> None:
    (jwk,) = published(keys)
    assert jwk_thumbprint(jwk) == keys.active_kid


def test_thumbprint_matches_rfc7638_example() -> None:
    """RFC 7638 §3.1 worked example."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRX"
        "jBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaS"
        "qzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINH"
        "aQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_reload_reuses_same_kid(keys: SigningKeys, key_dir: Path, algorithm: Algorithm) -> None:
    token = mint(keys)
    reloaded = make_keys(key_dir, algorithm, FakeClock())
    assert reloaded.active_kid == keys.active_kid
    assert reloaded.jwks() == keys.jwks()
    assert verify(token, reloaded.jwks())["sub"] == "repo:acme/widgets:ref:refs/heads/main:pool:small"


def test_use_before_load_is_an_error(key_dir: Path) -> None:
    keys = SigningKeys(key_dir)
    with pytest.raises(KeyStoreError, match="load_or_create"):
        keys.sign({"sub": "x"})
    with pytest.raises(KeyStoreError, match="load_or_create"):
        keys.jwks()


# ------------------------------------------------------------------ signing


def test_token_verifies_against_jwks(keys: SigningKeys, algorithm: Algorithm) -> None:
    token = mint(keys)
    header = jwt.get_unverified_header(token)
    assert header["kid"] == keys.active_kid
    assert header["alg"] == algorithm
    claims = verify(token, keys.jwks())
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["repository"] == "acme/widgets"
    assert claims["exp"] - claims["iat"] == 300


def test_tampered_token_fails(keys: SigningKeys) -> None:
    header, payload, signature = mint(keys).split(".")
    other_payload = mint(keys).split(".")[1]
    assert other_payload != payload  # distinct jti
    with pytest.raises(jwt.InvalidSignatureError):
        verify(f"{header}.{other_payload}.{signature}", keys.jwks())


def test_wrong_audience_fails(keys: SigningKeys) -> None:
    token = JobTokenIssuer(keys, issuer=ISSUER, lifetime_s=300).mint(IDENTITY, "someone-else")
    with pytest.raises(jwt.InvalidAudienceError):
        verify(token, keys.jwks())


def test_issuer_mint_uses_clock_and_random_jti(keys: SigningKeys) -> None:
    now = int(time.time())
    issuer = JobTokenIssuer(keys, issuer=ISSUER, lifetime_s=120, controller_id="ctl-1", clock=lambda: float(now))
    a = verify(issuer.mint(IDENTITY, [AUDIENCE, "other"]), keys.jwks())
    b = verify(issuer.mint(IDENTITY, AUDIENCE), keys.jwks())
    assert a["iat"] == a["nbf"] == now
    assert a["exp"] == now + 120
    assert a["controller_id"] == "ctl-1"
    assert a["aud"] == [AUDIENCE, "other"]
    assert isinstance(a["jti"], str) and len(a["jti"]) >= 16
    assert a["jti"] != b["jti"]
    explicit = verify(issuer.mint(IDENTITY, AUDIENCE, now=now - 10), keys.jwks())
    assert explicit["iat"] == now - 10


def test_issuer_lifetime_must_fit_in_overlap(key_dir: Path) -> None:
    """A token minted just before rotation must stay verifiable until it expires."""
    keys = SigningKeys(key_dir, overlap_s=60)
    with pytest.raises(ValueError, match="overlap"):
        JobTokenIssuer(keys, issuer=ISSUER, lifetime_s=61)
    JobTokenIssuer(keys, issuer=ISSUER, lifetime_s=60)
    for bad in (0, 3601):
        with pytest.raises(ValueError, match="lifetime_s"):
            JobTokenIssuer(SigningKeys(key_dir, overlap_s=7200), issuer=ISSUER, lifetime_s=bad)


# ------------------------------------------------------------------ rotation


def test_rotation_overlap_and_expiry(keys: SigningKeys, key_dir: Path, clock: FakeClock, algorithm: Algorithm) -> None:
    old_kid = keys.active_kid
    old_token = mint(keys)

    clock.advance(ROTATION - 1)
    assert keys.rotate_if_due() is False
    assert keys.active_kid == old_kid

    clock.advance(1)
    assert keys.rotate_if_due() is True
    new_kid = keys.active_kid
    assert new_kid != old_kid
    new_token = mint(keys)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid

    # During the overlap both keys are published; the active one first.
    jwks = keys.jwks()
    assert [k["kid"] for k in published(keys)] == [new_kid, old_kid]
    assert verify(old_token, jwks)["jti"]
    assert verify(new_token, jwks)["jti"]
    assert {p.name for p in pem_files(key_dir)} == {f"{old_kid}.pem", f"{new_kid}.pem"}

    # A restart inside the overlap keeps publishing the retired key.
    reloaded = make_keys(key_dir, algorithm, clock)
    assert reloaded.active_kid == new_kid
    assert verify(old_token, reloaded.jwks())["jti"]

    clock.advance(OVERLAP)
    # Even before pruning runs, the retired key is no longer published.
    assert [k["kid"] for k in published(keys)] == [new_kid]
    assert keys.rotate_if_due() is False  # prunes, does not rotate
    assert [p.name for p in pem_files(key_dir)] == [f"{new_kid}.pem"]

    jwks = keys.jwks()
    assert old_kid not in {k["kid"] for k in published(keys)}
    with pytest.raises(KeyError):
        verify(old_token, jwks)
    # Nor does any remaining key accept it under a forged kid.
    for jwk in jwt.PyJWKSet.from_dict(jwks):
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(old_token, jwk, algorithms=[algorithm], audience=AUDIENCE)
    assert verify(new_token, jwks)["jti"]

    index = json.loads((key_dir / INDEX_NAME).read_text())
    assert [e["kid"] for e in index["keys"]] == [new_kid]


def test_forced_rotate(keys: SigningKeys, key_dir: Path) -> None:
    old_kid = keys.active_kid
    keys.rotate()
    assert keys.active_kid != old_kid
    assert {k["kid"] for k in published(keys)} == {old_kid, keys.active_kid}
    index = json.loads((key_dir / INDEX_NAME).read_text())
    retired = {e["kid"]: e["retired_at"] for e in index["keys"]}
    assert retired[old_kid] is not None
    assert retired[keys.active_kid] is None


def test_zero_overlap_drops_old_key_at_rotation(key_dir: Path, algorithm: Algorithm, clock: FakeClock) -> None:
    keys = SigningKeys(key_dir, algorithm=algorithm, overlap_s=0, clock=clock)
    keys.load_or_create()
    old_kid = keys.active_kid
    keys.rotate()
    assert [k["kid"] for k in published(keys)] == [keys.active_kid]
    assert not (key_dir / f"{old_kid}.pem").exists()


def test_rotation_due_while_down_happens_on_load(
    keys: SigningKeys, key_dir: Path, clock: FakeClock, algorithm: Algorithm
) -> None:
    old_kid = keys.active_kid
    clock.advance(ROTATION + 10)
    reloaded = make_keys(key_dir, algorithm, clock)
    assert reloaded.active_kid != old_kid


def test_algorithm_change_rotates_and_keeps_old_key_published(
    keys: SigningKeys, key_dir: Path, clock: FakeClock, algorithm: Algorithm
) -> None:
    old_token = mint(keys)
    other: Algorithm = "ES256" if algorithm == "RS256" else "RS256"
    switched = make_keys(key_dir, other, clock)
    assert jwt.get_unverified_header(mint(switched))["alg"] == other
    assert [k["alg"] for k in published(switched)] == [other, algorithm]
    assert verify(old_token, switched.jwks())["jti"]


def test_rotation_timestamps_from_injected_clock(keys: SigningKeys, key_dir: Path, clock: FakeClock) -> None:
    clock.advance(123)
    keys.rotate()
    index = json.loads((key_dir / INDEX_NAME).read_text())
    assert index["keys"][-1]["created_at"] == clock.now
    assert index["keys"][0]["retired_at"] == clock.now


# ------------------------------------------------------------------ file safety


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o620])
def test_group_or_world_accessible_key_is_refused(
    keys: SigningKeys, key_dir: Path, algorithm: Algorithm, clock: FakeClock, bad_mode: int
) -> None:
    key_file = key_dir / f"{keys.active_kid}.pem"
    key_file.chmod(bad_mode)
    with pytest.raises(PermissionError, match=r"chmod 600") as excinfo:
        make_keys(key_dir, algorithm, clock)
    assert str(key_file) in str(excinfo.value)
    assert mode(key_file) == bad_mode  # refused, not silently "fixed"


def test_loose_directory_is_refused(keys: SigningKeys, key_dir: Path, algorithm: Algorithm) -> None:
    key_dir.chmod(0o755)
    with pytest.raises(PermissionError, match=r"chmod 700"):
        make_keys(key_dir, algorithm, FakeClock())


def test_symlinked_key_is_refused(keys: SigningKeys, key_dir: Path, algorithm: Algorithm) -> None:
    key_file = key_dir / f"{keys.active_kid}.pem"
    elsewhere = key_dir.parent / "elsewhere.pem"
    key_file.rename(elsewhere)
    key_file.symlink_to(elsewhere)
    with pytest.raises(KeyStoreError, match="symlink"):
        make_keys(key_dir, algorithm, FakeClock())


def test_swapped_key_file_is_refused(keys: SigningKeys, key_dir: Path, algorithm: Algorithm) -> None:
    """The kid is the key's thumbprint, so replacing the file is detected."""
    first = keys.active_kid
    keys.rotate()
    second = keys.active_kid
    (key_dir / f"{second}.pem").write_bytes((key_dir / f"{first}.pem").read_bytes())
    with pytest.raises(KeyStoreError, match="thumbprint"):
        make_keys(key_dir, algorithm, FakeClock())


def test_corrupt_index_is_refused(keys: SigningKeys, key_dir: Path, algorithm: Algorithm) -> None:
    (key_dir / INDEX_NAME).write_text("{not json")
    with pytest.raises(KeyStoreError, match="JSON"):
        make_keys(key_dir, algorithm, FakeClock())


def test_path_traversal_kid_in_index_is_refused(keys: SigningKeys, key_dir: Path, algorithm: Algorithm) -> None:
    index_path = key_dir / INDEX_NAME
    index = json.loads(index_path.read_text())
    index["keys"][0]["kid"] = "../../etc/passwd"
    index_path.write_text(json.dumps(index))
    with pytest.raises(KeyStoreError, match="invalid kid"):
        make_keys(key_dir, algorithm, FakeClock())


def test_missing_index_with_keys_present_is_refused(keys: SigningKeys, key_dir: Path, algorithm: Algorithm) -> None:
    (key_dir / INDEX_NAME).unlink()
    with pytest.raises(KeyStoreError, match=r"no keys\.json"):
        make_keys(key_dir, algorithm, FakeClock())


def test_private_key_material_never_in_jwks(keys: SigningKeys, key_dir: Path) -> None:
    keys.rotate()  # cover a retired key too
    published_json = json.dumps(keys.jwks())
    for jwk in published(keys):
        assert set(jwk) <= {"kty", "crv", "x", "y", "n", "e", "kid", "alg", "use"}
    for path in pem_files(key_dir):
        pem = path.read_bytes()
        body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
        assert body.decode() not in published_json
        private = serialization.load_pem_private_key(pem, password=None)
        if isinstance(private, rsa.RSAPrivateKey):
            private_jwk = RSAAlgorithm.to_jwk(private, as_dict=True)
        else:
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            private_jwk = ECAlgorithm.to_jwk(private, as_dict=True)
        secrets = [v for k, v in private_jwk.items() if k in {"d", "p", "q", "dp", "dq", "qi"}]
        assert secrets
        for value in secrets:
            assert value not in published_json
    assert "PRIVATE" not in published_json
    assert "PRIVATE" not in repr(keys.__dict__)


# ------------------------------------------------------------------ atomic writes


def test_no_temp_files_left_behind(keys: SigningKeys, key_dir: Path, clock: FakeClock) -> None:
    for _ in range(3):
        clock.advance(ROTATION)
        assert keys.rotate_if_due()
    names = {p.name for p in key_dir.iterdir()}
    assert not {n for n in names if n.startswith(".") or n.endswith(".tmp")}
    assert names == {INDEX_NAME} | {f"{k['kid']}.pem" for k in published(keys)}


def test_failed_write_leaves_no_temp_file_and_keeps_state(
    keys: SigningKeys, key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.read_bytes() for p in key_dir.iterdir()}
    kid = keys.active_kid

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        keys.rotate()
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in key_dir.iterdir()} == before
    assert keys.active_kid == kid
    verify(mint(keys), keys.jwks())


def test_crash_leftovers_are_cleaned_on_load(keys: SigningKeys, key_dir: Path, algorithm: Algorithm) -> None:
    """A crash can leave a temp file or a key written but never committed to the index."""
    stale_tmp = key_dir / ".keys.json.deadbeef.tmp"
    stale_tmp.write_text("partial")
    orphan = key_dir / "Orphan_orphan_orphan_orphan_orphan_orphan01.pem"
    orphan.write_text("never committed")
    orphan.chmod(0o600)
    reloaded = make_keys(key_dir, algorithm, FakeClock())
    assert reloaded.active_kid == keys.active_kid
    assert not stale_tmp.exists()
    assert not orphan.exists()


@pytest.fixture(autouse=True)
def _restore_permissions(tmp_path: Path) -> Iterator[None]:
    """Let pytest clean tmp_path even after tests that chmod things."""
    yield
    for path in tmp_path.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o700)
