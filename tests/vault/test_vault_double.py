"""Faithfulness tests for the Vault test double, driven the way production code drives Vault: with hvac
(synchronous, so through ``asyncio.to_thread`` -- the double serves on the test's event loop) and raw HTTP.
The double only serves the outage tests (tests/integration/test_vault_outage.py); setup-vault.sh and the
credentials flow are tested on a real OpenBao server (tests/vault/test_setup_script.py, test_vault_docker.py)."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import hvac
import hvac.exceptions
import pytest
import requests

from fake_clock import FakeClock
from vault_double import VaultDouble, parse_duration, parse_policy

if TYPE_CHECKING:  # fixture types only; conftest modules are not imported by name at runtime
    from conftest import JwksServer, SigningKeys

ROOT_TOKEN = "root-test-token"  # as in conftest
AUDIENCE = "vault"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / "config" / "vault" / "setup-vault.sh"

ClientFactory = Callable[..., hvac.Client]


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def login(client: hvac.Client, jwt_token: str, role: str = "ci-linux", mount: str = "jwt") -> dict[str, Any]:
    response: dict[str, Any] = await call(client.auth.jwt.jwt_login, role=role, jwt=jwt_token, path=mount)
    return response


async def read_kv(client: hvac.Client, path: str, mount: str = "secret", **kwargs: Any) -> dict[str, Any]:
    response: dict[str, Any] = await call(
        client.secrets.kv.v2.read_secret_version,
        path=path,
        mount_point=mount,
        raise_on_deleted_version=True,
        **kwargs,
    )
    return response


async def login_error(client: hvac.Client, jwt_token: str, role: str = "ci-linux") -> list[str]:
    with pytest.raises(hvac.exceptions.InvalidRequest) as excinfo:
        await login(client, jwt_token, role)
    return list(excinfo.value.errors or [])


# ---------------------------------------------------------------------------------------- login + KV


async def test_login_and_kv_read_have_vault_shapes(
    vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory
) -> None:
    client = hvac_client()
    response = await login(client, jwks_server.mint())

    assert {k: response[k] for k in ("lease_id", "renewable", "lease_duration", "data", "wrap_info", "warnings")} == {
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": None,
        "wrap_info": None,
        "warnings": None,
    }
    assert response["request_id"]
    auth = response["auth"]
    assert set(auth) >= {
        "client_token",
        "accessor",
        "policies",
        "token_policies",
        "metadata",
        "lease_duration",
        "renewable",
        "entity_id",
        "token_type",
        "orphan",
        "num_uses",
    }
    assert auth["client_token"].startswith("hvs.")
    assert auth["policies"] == ["ci-linux-read", "default"] == auth["token_policies"]
    assert auth["metadata"] == {"role": "ci-linux"}
    assert auth["lease_duration"] == 900
    assert auth["renewable"] is True
    assert auth["orphan"] is True
    assert auth["token_type"] == "service"
    assert auth["num_uses"] == 0
    assert client.token == auth["client_token"]  # hvac adopts the token

    secret = await read_kv(client, "ci/linux/db")
    assert secret["data"]["data"] == {"username": "ci", "password": "s3cr3t"}
    assert set(secret["data"]["metadata"]) == {
        "created_time",
        "custom_metadata",
        "deletion_time",
        "destroyed",
        "version",
    }
    assert secret["data"]["metadata"]["version"] == 1
    assert secret["data"]["metadata"]["deletion_time"] == ""
    assert secret["data"]["metadata"]["destroyed"] is False
    assert secret["lease_id"] == "" and secret["lease_duration"] == 0 and secret["renewable"] is False

    (info,) = vault.live_tokens()
    assert info.accessor == auth["accessor"] and info.role == "ci-linux" and info.path == "auth/jwt/login"
    assert vault.token_by_accessor(auth["accessor"]) is info
    assert vault.requests == [("POST", "/v1/auth/jwt/login"), ("GET", "/v1/secret/data/ci/linux/db")]
    assert jwks_server.hits == ["/.well-known/openid-configuration", "/.well-known/jwks.json"]


async def test_lookup_self_reports_the_token(vault: VaultDouble, jwks_server: JwksServer, clock: FakeClock) -> None:
    client = hvac.Client(url=vault.url)
    auth = (await login(client, jwks_server.mint()))["auth"]
    clock.advance(100)
    data = (await call(client.auth.token.lookup_self))["data"]
    assert data["id"] == auth["client_token"]
    assert data["accessor"] == auth["accessor"]
    assert data["policies"] == ["ci-linux-read", "default"]
    assert data["meta"] == {"role": "ci-linux"}
    assert data["path"] == "auth/jwt/login"
    assert data["orphan"] is True and data["renewable"] is True and data["type"] == "service"
    assert data["creation_ttl"] == 900
    assert data["ttl"] == 800
    assert data["num_uses"] == 0
    assert data["expire_time"].endswith("Z")


async def test_es256_key_and_jwks_url_config(
    vault: VaultDouble, jwks_server: JwksServer, signing_keys: SigningKeys, hvac_client: ClientFactory
) -> None:
    vault.configure_jwt("jwt-direct", jwks_url=jwks_server.jwks_url)  # no bound_issuer
    vault.add_role("jwt-direct", "ci-linux", bound_audiences=[AUDIENCE], token_policies=["ci-linux-read"])
    client = hvac_client()
    await login(client, jwks_server.mint(signing_keys.ec, iss="anything"), mount="jwt-direct")
    assert (await read_kv(client, "ci/linux/db"))["data"]["data"]["password"] == "s3cr3t"


async def test_kv_versions(vault: VaultDouble, hvac_client: ClientFactory) -> None:
    vault.put_kv("secret", "ci/linux/db", {"username": "ci", "password": "rotated"})
    root = hvac_client(ROOT_TOKEN)
    latest = await read_kv(root, "ci/linux/db")
    assert latest["data"]["data"]["password"] == "rotated" and latest["data"]["metadata"]["version"] == 2
    first = await read_kv(root, "ci/linux/db", version=1)
    assert first["data"]["data"]["password"] == "s3cr3t" and first["data"]["metadata"]["version"] == 1
    with pytest.raises(hvac.exceptions.InvalidPath):
        await read_kv(root, "ci/linux/db", version=3)


async def test_kv_soft_delete_answers_404_with_metadata(vault: VaultDouble, hvac_client: ClientFactory) -> None:
    root = hvac_client(ROOT_TOKEN)
    await call(root.secrets.kv.v2.delete_latest_version_of_secret, path="ci/linux/db", mount_point="secret")
    with pytest.raises(hvac.exceptions.InvalidPath):
        await read_kv(root, "ci/linux/db")
    deleted = await call(
        root.secrets.kv.v2.read_secret_version,
        path="ci/linux/db",
        mount_point="secret",
        raise_on_deleted_version=False,
    )
    assert deleted["data"]["data"] is None and deleted["data"]["metadata"]["deletion_time"] != ""


# ---------------------------------------------------------------------------------------- login failures


async def test_signature_by_unpublished_key_is_rejected(
    vault: VaultDouble, jwks_server: JwksServer, signing_keys: SigningKeys, hvac_client: ClientFactory
) -> None:
    errors = await login_error(hvac_client(), jwks_server.mint(signing_keys.rogue))
    assert len(errors) == 1
    assert errors[0].startswith("error validating token: error verifying token signature: ")
    assert vault.live_tokens() == []


async def test_unknown_or_missing_kid_is_rejected(
    vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory
) -> None:
    client = hvac_client()
    for token in (jwks_server.mint(kid="no-such-kid"), jwks_server.mint(omit_kid=True)):
        (error,) = await login_error(client, token)
        assert "error verifying token signature" in error
    vault.require_kid = False  # go-oidc's behaviour: no kid -> try every key
    await login(client, jwks_server.mint(omit_kid=True))


async def test_malformed_jwt_is_a_signature_error(vault: VaultDouble, hvac_client: ClientFactory) -> None:
    (error,) = await login_error(hvac_client(), "not-a-jwt")
    assert error.startswith("error validating token: error verifying token signature: oidc: malformed jwt")


async def test_expired_token(vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory) -> None:
    now = int(time.time())
    errors = await login_error(hvac_client(), jwks_server.mint(iat=now - 3600, nbf=now - 3600, exp=now - 600))
    assert errors == ["error validating token: invalid expiration time (exp) claim: token is expired"]


async def test_time_leeways_follow_vault(
    vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory
) -> None:
    client = hvac_client()
    now = int(time.time())
    recently_expired = jwks_server.mint(iat=now - 300, nbf=now - 300, exp=now - 30)
    await login(client, recently_expired)  # within the 60 s clock-skew leeway
    not_yet_valid = jwks_server.mint(nbf=now + 3600, iat=None)
    assert await login_error(client, not_yet_valid) == [
        "error validating token: invalid not before (nbf) claim: token not yet valid"
    ]
    vault.clock_skew_leeway = 0
    assert await login_error(client, recently_expired) == [
        "error validating token: invalid expiration time (exp) claim: token is expired"
    ]
    # no exp at all: cap synthesises exp = iat + expiration_leeway
    vault.expiration_leeway = 0
    no_exp = jwks_server.mint(iat=now - 5, nbf=None, exp=None)
    assert "token is expired" in (await login_error(client, no_exp))[0]


async def test_wrong_audience(vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory) -> None:
    errors = await login_error(hvac_client(), jwks_server.mint(aud=["kubernetes", "other"]))
    assert errors == [
        "error validating token: invalid audience (aud) claim: audience claim does not match any expected audience"
    ]


async def test_wrong_issuer(vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory) -> None:
    errors = await login_error(hvac_client(), jwks_server.mint(iss="https://evil.example"))
    assert errors == ["error validating token: invalid issuer (iss) claim"]


async def test_bound_claim_mismatch(vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory) -> None:
    client = hvac_client()
    # a gpu-pool job token presented for the linux role
    errors = await login_error(client, jwks_server.mint(pool="gpu"), role="ci-linux")
    assert errors == ['error validating claims: claim "pool" does not match any associated bound claim values']
    # a role bound to one repository (glob)
    vault.add_role(
        "jwt",
        "acme-only",
        bound_audiences=[AUDIENCE],
        bound_claims={"repository": "acme/*"},
        bound_claims_type="glob",
        token_policies=["ci-linux-read"],
    )
    await login(client, jwks_server.mint(repository="acme/app"), role="acme-only")
    errors = await login_error(client, jwks_server.mint(repository="other/app"), role="acme-only")
    assert errors[0].startswith("error validating claims: ")
    errors = await login_error(client, jwks_server.mint(repository=None), role="acme-only")
    assert errors == ['error validating claims: claim "repository" is missing']


async def test_role_and_token_are_required(
    vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory
) -> None:
    client = hvac_client()
    assert await login_error(client, jwks_server.mint(), role="") == ["missing role"]
    assert await login_error(client, jwks_server.mint(), role="nope") == ['role "nope" could not be found']
    assert await login_error(client, "", role="ci-linux") == ["missing token"]


async def test_missing_user_claim(vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory) -> None:
    assert await login_error(hvac_client(), jwks_server.mint(sub=None)) == ['claim "sub" not found in token']


async def test_bound_subject(vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory) -> None:
    vault.add_role("jwt", "one-job", bound_audiences=[AUDIENCE], bound_subject="job:1", token_policies=[])
    client = hvac_client()
    assert await login_error(client, jwks_server.mint(sub="job:2"), role="one-job") == [
        "error validating token: invalid subject (sub) claim"
    ]
    await login(client, jwks_server.mint(sub="job:1"), role="one-job")


# ---------------------------------------------------------------------------------------- policies


async def test_policy_denial_and_missing_path(
    vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory
) -> None:
    client = hvac_client()
    await login(client, jwks_server.mint())
    with pytest.raises(hvac.exceptions.Forbidden) as denied:
        await read_kv(client, "ci/gpu/license")
    assert denied.value.errors == ["permission denied"]
    with pytest.raises(hvac.exceptions.Forbidden):
        await read_kv(client, "ci/linux")  # the policy covers ci/linux/* only
    with pytest.raises(hvac.exceptions.InvalidPath) as missing:
        await read_kv(client, "ci/linux/does-not-exist")
    assert missing.value.errors == []
    # the root token bypasses policies
    assert (await read_kv(hvac_client(ROOT_TOKEN), "ci/gpu/license"))["data"]["data"] == {"key": "gpu-license"}


def test_acl_rules_and_priorities() -> None:
    double = VaultDouble()
    double.put_policy(
        "p",
        {
            "secret/data/*": ["read"],
            "secret/data/ci/+/private": ["deny"],
            "secret/data/ci/linux/private": ["read"],
            "secret/data/team-*": ["read", "update"],
        },
    )
    tok = double.create_token(policies=["p"])

    def allowed(path: str, cap: str = "read") -> bool:
        return double._acl_allows(tok, path, cap, sudo=False)

    assert allowed("secret/data/anything/at/all")
    assert not allowed("secret/data/ci/gpu/private")  # + wildcard rule beats the shorter glob
    assert allowed("secret/data/ci/linux/private")  # exact path beats the + rule
    assert allowed("secret/data/team-a/x", "update")
    assert not allowed("secret/data/x", "update")
    assert not allowed("secret/metadata/x")
    assert allowed("auth/token/lookup-self")  # built-in default policy
    assert not allowed("sys/leases/revoke", "update")


def test_parse_policy_and_durations() -> None:
    hcl = """
    # comment
    path "secret/data/ci/linux/*" {
      capabilities = ["read", "list"]
    }
    /* block comment */
    path "auth/token/revoke-accessor" { capabilities = ["update"] }
    path "legacy/*" { policy = "write" }
    """
    assert parse_policy(hcl) == {
        "secret/data/ci/linux/*": ["read", "list"],
        "auth/token/revoke-accessor": ["update"],
        "legacy/*": ["create", "read", "update", "delete", "list"],
    }
    assert parse_policy('{"path": {"a/*": {"capabilities": ["read"]}}}') == {"a/*": ["read"]}
    with pytest.raises(ValueError, match="invalid capability"):
        parse_policy('path "a" { capabilities = ["fly"] }')
    with pytest.raises(ValueError):
        parse_policy("this is not hcl")
    assert [parse_duration(v) for v in (600, "600", "15m", "2h", "1h30m", "1d", "")] == [
        600,
        600,
        900,
        7200,
        5400,
        86400,
        0,
    ]


# ---------------------------------------------------------------------------------------- token lifecycle


async def test_num_uses_exhaustion(vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory) -> None:
    vault.add_role(
        "jwt",
        "ci-linux",
        bound_audiences=[AUDIENCE],
        bound_claims={"pool": "linux"},
        token_policies=["ci-linux-read"],
        token_num_uses=3,
    )
    client = hvac_client()
    auth = (await login(client, jwks_server.mint()))["auth"]
    assert auth["num_uses"] == 3
    assert (await call(client.auth.token.lookup_self))["data"]["num_uses"] == 2  # counts itself
    await read_kv(client, "ci/linux/db")
    assert vault.live_tokens() != []
    await read_kv(client, "ci/linux/db")  # the third and last use still succeeds
    assert vault.live_tokens() == []
    with pytest.raises(hvac.exceptions.Forbidden):
        await read_kv(client, "ci/linux/db")
    info = vault.token_by_accessor(auth["accessor"])
    assert info is not None and info.revoked and info.uses == 3  # the rejected 4th request never authenticated


async def test_ttl_expiry_with_injected_clock(
    vault: VaultDouble, jwks_server: JwksServer, clock: FakeClock, hvac_client: ClientFactory
) -> None:
    vault.put_dynamic("database/creds/ci", {"username": "v-ci", "password": "pw"}, lease_duration=3600)
    vault.put_policy("db", {"database/creds/ci": ["read"]})
    vault.add_role("jwt", "short", bound_audiences=[AUDIENCE], token_policies=["ci-linux-read", "db"], token_ttl=60)
    client = hvac_client()
    auth = (await login(client, jwks_server.mint(), role="short"))["auth"]
    assert auth["lease_duration"] == 60
    await call(client.read, "database/creds/ci")
    clock.advance(59)
    await read_kv(client, "ci/linux/db")
    assert len(vault.live_leases()) == 1
    clock.advance(1)
    assert vault.live_tokens() == []
    assert vault.live_leases() == []  # leases die with their token
    with pytest.raises(hvac.exceptions.Forbidden):
        await read_kv(client, "ci/linux/db")


async def test_token_max_ttl_caps_ttl_and_renewal(
    vault: VaultDouble, jwks_server: JwksServer, clock: FakeClock, hvac_client: ClientFactory
) -> None:
    vault.add_role("jwt", "capped", bound_audiences=[AUDIENCE], token_policies=[], token_ttl=600, token_max_ttl=300)
    client = hvac_client()
    assert (await login(client, jwks_server.mint(), role="capped"))["auth"]["lease_duration"] == 300
    vault.add_role("jwt", "renewable", bound_audiences=[AUDIENCE], token_policies=[], token_ttl=100, token_max_ttl=150)
    await login(client, jwks_server.mint(), role="renewable")
    clock.advance(90)
    renewed = await call(client.auth.token.renew_self)
    assert renewed["auth"]["lease_duration"] == 60  # capped at creation + token_max_ttl
    assert renewed["warnings"]


async def test_revoke_self_kills_token_and_leases(
    vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory
) -> None:
    vault.put_dynamic("database/creds/ci", {"username": "v-ci", "password": "pw"}, lease_duration=300)
    vault.put_policy("db", {"database/creds/ci": ["read"]})
    vault.add_role("jwt", "db", bound_audiences=[AUDIENCE], token_policies=["db"])
    client = hvac_client()
    await login(client, jwks_server.mint(), role="db")
    first = await call(client.read, "database/creds/ci")
    second = await call(client.read, "database/creds/ci")
    assert first["lease_id"].startswith("database/creds/ci/") and first["lease_id"] != second["lease_id"]
    assert first["lease_duration"] == 300 and first["renewable"] is True
    assert first["data"] == {"username": "v-ci", "password": "pw"}
    assert sorted(vault.live_leases()) == sorted([first["lease_id"], second["lease_id"]])

    response = await call(client.auth.token.revoke_self)
    assert response.status_code == 204
    assert vault.live_tokens() == []
    assert vault.live_leases() == []
    with pytest.raises(hvac.exceptions.Forbidden):
        await call(client.auth.token.lookup_self)


async def test_revoke_accessor_with_narrow_revoker_token(
    vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory
) -> None:
    revoker_info = vault.create_token(policies=["orchestrator-revoker"], period=86400)
    revoker = hvac_client(revoker_info.id)
    job = hvac_client()
    job_auth = (await login(job, jwks_server.mint()))["auth"]

    # the revoker can do nothing but revoke-accessor (and default-policy self-maintenance)
    with pytest.raises(hvac.exceptions.Forbidden):
        await read_kv(revoker, "ci/linux/db")
    with pytest.raises(hvac.exceptions.Forbidden):
        await call(revoker.auth.token.lookup_accessor, job_auth["accessor"])
    await call(revoker.auth.token.lookup_self)
    # a job token cannot revoke other tokens
    with pytest.raises(hvac.exceptions.Forbidden):
        await call(job.auth.token.revoke_accessor, "whatever")

    response = await call(revoker.auth.token.revoke_accessor, job_auth["accessor"])
    assert response.status_code == 204
    assert vault.live_tokens() == [revoker_info]
    with pytest.raises(hvac.exceptions.Forbidden):
        await read_kv(job, "ci/linux/db")
    with pytest.raises(hvac.exceptions.InvalidRequest) as again:
        await call(revoker.auth.token.revoke_accessor, job_auth["accessor"])
    assert again.value.errors == ["invalid accessor"]


async def test_lease_revoke_and_lookup(vault: VaultDouble, hvac_client: ClientFactory) -> None:
    vault.put_dynamic("database/creds/ci", {"username": "u"}, lease_duration=300)
    root = hvac_client(ROOT_TOKEN)
    lease_id = (await call(root.read, "database/creds/ci"))["lease_id"]
    looked_up = await call(root.sys.read_lease, lease_id)
    assert looked_up["data"]["id"] == lease_id and looked_up["data"]["ttl"] == 300
    response = await call(root.sys.revoke_lease, lease_id)
    assert response.status_code == 204
    assert vault.live_leases() == []
    with pytest.raises(hvac.exceptions.InvalidRequest):
        await call(root.sys.read_lease, lease_id)


# ---------------------------------------------------------------------------------------- outages


async def test_sealed_vault_answers_503(
    vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory
) -> None:
    client = hvac_client()
    await login(client, jwks_server.mint())
    vault.down = True
    with pytest.raises(hvac.exceptions.VaultDown) as sealed:
        await read_kv(client, "ci/linux/db")
    assert sealed.value.errors == ["Vault is sealed"]
    assert isinstance(sealed.value, hvac.exceptions.VaultError)
    with pytest.raises(hvac.exceptions.VaultDown):
        await login(hvac_client(), jwks_server.mint())
    vault.down = False
    await read_kv(client, "ci/linux/db")


async def test_stop_start_keeps_port_and_state(
    vault: VaultDouble, jwks_server: JwksServer, hvac_client: ClientFactory
) -> None:
    client = hvac_client()
    await login(client, jwks_server.mint())
    url = vault.url
    await vault.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        await read_kv(client, "ci/linux/db")
    assert await vault.start() == url
    await read_kv(client, "ci/linux/db")


async def test_jwks_is_cached_refetched_on_unknown_kid_and_outage_is_reported(
    vault: VaultDouble, jwks_server: JwksServer, signing_keys: SigningKeys, hvac_client: ClientFactory
) -> None:
    client = hvac_client()
    await login(client, jwks_server.mint())
    await login(client, jwks_server.mint())
    assert len(vault.jwks_fetches) == 1
    await login(client, jwks_server.mint(signing_keys.ec))  # cached, kid known
    assert len(vault.jwks_fetches) == 1
    await login_error(client, jwks_server.mint(kid="rotated"))  # unknown kid -> refetch
    assert len(vault.jwks_fetches) == 2
    vault.jwks_cache_ttl = 0  # fetch on every login
    await login(client, jwks_server.mint())
    assert len(vault.jwks_fetches) == 3
    jwks_server.available = False
    (error,) = await login_error(client, jwks_server.mint(kid="rotated-again"))
    assert error.startswith("error validating token: error verifying token signature: fetching keys")


# ---------------------------------------------------------------------------------------- raw HTTP


async def test_errors_are_json_envelopes(vault: VaultDouble) -> None:
    root = {"X-Vault-Token": ROOT_TOKEN}
    async with aiohttp.ClientSession(base_url=vault.url) as http:
        cases: list[tuple[str, str, dict[str, str], Any, int, dict[str, Any]]] = [
            ("GET", "/v1/nothing/here", root, None, 404, {"errors": []}),
            ("GET", "/v1/secret/data/ci/linux/db", {}, None, 403, {"errors": ["permission denied"]}),
            (
                "GET",
                "/v1/secret/data/ci/linux/db",
                {"X-Vault-Token": "hvs.bogus"},
                None,
                403,
                {"errors": ["permission denied"]},
            ),
            ("POST", "/v1/auth/jwt/login", {}, b"{not json", 400, {}),
            ("POST", "/v1/auth/jwt/login", {}, b'{"role": "ci-linux"}', 400, {"errors": ["missing token"]}),
        ]
        for method, path, headers, body, status, expected in cases:
            async with http.request(method, path, headers=headers, data=body) as resp:
                assert resp.status == status, (method, path)
                assert resp.content_type == "application/json"
                payload = await resp.json()
                assert "errors" in payload
                if expected:
                    assert payload == expected
        async with http.get("/v1/auth/token/lookup-self", headers={"Authorization": f"Bearer {ROOT_TOKEN}"}) as resp:
            assert resp.status == 200
        async with http.get("/v1/sys/health") as resp:
            assert (await resp.json())["sealed"] is False


# ---------------------------------------------------------------------------------------- config over HTTP


async def test_configuration_through_hvac_admin_methods(jwks_server: JwksServer) -> None:
    async with VaultDouble(root_token=ROOT_TOKEN) as vault:
        root = hvac.Client(url=vault.url, token=ROOT_TOKEN)
        assert (await call(root.sys.enable_auth_method, "jwt", path="ci-jwt")).status_code == 204
        with pytest.raises(hvac.exceptions.InvalidRequest, match="path is already in use at ci-jwt/"):
            await call(root.sys.enable_auth_method, "jwt", path="ci-jwt")
        assert "ci-jwt/" in (await call(root.sys.list_auth_methods))["data"]

        with pytest.raises(hvac.exceptions.InvalidRequest, match="error checking oidc discovery URL"):
            await call(root.auth.jwt.configure, oidc_discovery_url="http://127.0.0.1:9", path="ci-jwt")
        with pytest.raises(hvac.exceptions.InvalidRequest, match="exactly one of"):
            await call(root.auth.jwt.configure, bound_issuer=jwks_server.issuer, path="ci-jwt")
        await call(
            root.auth.jwt.configure,
            oidc_discovery_url=jwks_server.issuer,
            bound_issuer=jwks_server.issuer,
            path="ci-jwt",
        )
        assert (await call(root.auth.jwt.read_config, path="ci-jwt"))["data"]["bound_issuer"] == jwks_server.issuer

        with pytest.raises(hvac.exceptions.InvalidRequest, match="at least one bound constraint"):
            await call(root.auth.jwt.create_role, "loose", user_claim="sub", allowed_redirect_uris=[], path="ci-jwt")
        await call(
            root.auth.jwt.create_role,
            "ci-linux",
            user_claim="sub",
            allowed_redirect_uris=[],
            role_type="jwt",
            bound_audiences=[AUDIENCE],
            bound_claims={"pool": "linux"},
            token_policies=["ci-linux-read"],
            token_ttl="15m",
            token_max_ttl="2h",
            token_type="service",
            path="ci-jwt",
        )
        role = (await call(root.auth.jwt.read_role, "ci-linux", path="ci-jwt"))["data"]
        assert role["token_ttl"] == 900 and role["token_max_ttl"] == 7200 and role["bound_claims"] == {"pool": "linux"}

        await call(
            root.sys.create_or_update_policy,
            "ci-linux-read",
            'path "secret/data/ci/linux/*" {\n  capabilities = ["read"]\n}\n',
        )
        await call(
            root.sys.create_or_update_acl_policy,
            "orchestrator-revoker",
            'path "auth/token/revoke-accessor" { capabilities = ["update"] }',
        )
        with pytest.raises(hvac.exceptions.InvalidRequest, match="failed to parse policy"):
            await call(root.sys.create_or_update_acl_policy, "broken", 'path "x" { capabilities = ["fly"] }')
        written = await call(
            root.secrets.kv.v2.create_or_update_secret,
            path="ci/linux/db",
            secret={"password": "from-http"},
            mount_point="secret",
        )
        assert written["data"]["version"] == 1

        job = hvac.Client(url=vault.url)
        auth = (await login(job, jwks_server.mint(), mount="ci-jwt"))["auth"]
        assert auth["lease_duration"] == 900
        assert (await read_kv(job, "ci/linux/db"))["data"]["data"] == {"password": "from-http"}
        # config endpoints are ACL-checked like everything else
        with pytest.raises(hvac.exceptions.Forbidden):
            await call(job.sys.create_or_update_acl_policy, "mine", 'path "*" { capabilities = ["sudo"] }')
        with pytest.raises(hvac.exceptions.Forbidden):
            await call(job.secrets.kv.v2.create_or_update_secret, path="ci/linux/db", secret={}, mount_point="secret")
