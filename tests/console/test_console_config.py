"""`[console]`: its defaults, the client secret file (resolved next to the config, chmod 600), the redirect URL's
scheme, and a confidential client sending its secret to the token endpoint (never to the browser)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from orchestrator.config import ConfigError, ConsoleConfig, hash_token, load_config

from conftest import RunningController
from oidc_provider import OidcProvider

MINIMAL = """
controller_id = "ctl-1"
data_dir = "data"

[pools.default]
image = "alpine:3"
"""


def test_the_defaults() -> None:
    console = ConsoleConfig()
    assert (console.enabled, console.client_id, console.client_secret_file, console.redirect_url) == (
        True,
        None,
        None,
        None,
    )
    assert (console.session_ttl_s, console.session_idle_s) == (8 * 3600, 3600)
    assert console.scopes == "openid email profile groups"


def test_the_redirect_url_is_https_except_on_loopback() -> None:
    assert ConsoleConfig(redirect_url="http://127.0.0.1:8080/console/callback").redirect_url
    assert ConsoleConfig(redirect_url="https://ci.example.com/console/callback").redirect_url
    with pytest.raises(ValidationError, match="must be https"):
        ConsoleConfig(redirect_url="http://ci.example.com/console/callback")
    with pytest.raises(ValidationError, match="scopes"):
        ConsoleConfig(scopes="email profile")  # an OIDC sign-in needs openid


def test_the_client_secret_file_is_resolved_and_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "console.secret"
    secret.write_text("s3cret-of-the-client\n")
    secret.chmod(0o600)
    path = tmp_path / "orchestrator.toml"
    path.write_text(MINIMAL + '\n[console]\nclient_secret_file = "console.secret"\nsession_idle_s = 600\n')
    config = load_config(path)
    assert config.console.client_secret_file == tmp_path.resolve() / "console.secret"
    assert config.console.session_idle_s == 600
    secret.chmod(0o644)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.problems == [
        f"console.client_secret_file: {tmp_path.resolve() / 'console.secret'}: readable by group/others; "
        "run chmod 600 on it"
    ]


class RecordingProvider(OidcProvider):
    """The loopback provider, noting how each client authenticated at the token endpoint."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.token_auth: list[str | None] = []

    async def _token(self, request: web.Request) -> web.Response:
        self.token_auth.append(request.headers.get("Authorization"))
        return await super()._token(request)


@pytest.fixture
async def idp() -> AsyncIterator[RecordingProvider]:
    provider = RecordingProvider(users={"alice": {"sub": "u-alice", "email": "a@example.com", "email_verified": True}})
    await provider.start()
    yield provider
    await provider.stop()


async def test_a_confidential_client_authenticates_at_the_token_endpoint(
    fake_controller_factory: Any, idp: RecordingProvider, tmp_path: Path
) -> None:
    secret = tmp_path / "client.secret"
    secret.write_text("client-secret-value\n")
    secret.chmod(0o600)
    oidc = {"issuer": idp.issuer, "audience": "api-audience", "grants": [{"email": "a@example.com", "role": "viewer"}]}
    settings = {
        "api": {"tokens": [{"name": "x", "role": "admin", "sha256": hash_token("x" * 20)}], "oidc": oidc},
        "console": {"client_id": "orch-console", "client_secret_file": str(secret), "session_ttl_s": 600},
    }
    ctl: RunningController = await fake_controller_factory(settings=settings)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(f"{ctl.url}/console/login/sso?login_hint=alice", allow_redirects=False) as started:
            authorize = started.headers["Location"]
            binding = started.cookies["orch_sso"].value
        assert "client_id=orch-console" in authorize
        async with http.get(authorize, allow_redirects=False) as at_provider:
            callback = at_provider.headers["Location"]
        async with http.get(callback, headers={"Cookie": f"orch_sso={binding}"}, allow_redirects=False) as done:
            assert done.headers["Location"] == "/console"
            cookie = done.cookies["orch_session"]
            body = await done.read()
    assert idp.token_auth == ["Basic " + base64.b64encode(b"orch-console:client-secret-value").decode()]
    assert 0 < int(cookie["max-age"]) <= 600  # console.session_ttl_s
    assert b"client-secret-value" not in body
