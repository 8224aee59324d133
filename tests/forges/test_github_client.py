"""The GitHub adapter (orchestrator/forges/github): the pure parts (app JWT claims, the token cache on a fake clock,
rate-limit arithmetic), its answers to what GitHub may say (a scripted loopback stub), and every method against the
loopback fake of GitHub's REST API (tests/forges/fake_github.py), rate limits included. No test sleeps for real:
the client's clock and sleep are a FakeClock and a sleep that advances it (the fake GitHub runs on the same clock)."""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from orchestrator.forges.github.auth import (
    AppCredentials,
    AppTokenProvider,
    InstallationToken,
    TokenFileAuth,
    parse_expires_at,
    read_secret_file,
)
from orchestrator.forges.github.client import (
    API_VERSION,
    JIT_CONFIG_FILE,
    SECONDARY_DEFAULT_WAIT_S,
    GitHubForge,
    has_next_page,
    limited,
    primary_wait,
    retry_after_s,
)
from orchestrator.forges.protocol import ForgeAPI, ForgeError, RunnerScope

from fake_clock import FakeClock
from fake_github import FakeGitHub, decode_jit_config

NOW = 1_800_000_000.0
REPO = RunnerScope("repo", "acme/app", 123)
NO_TIME_CHECKS = {"verify_exp": False, "verify_iat": False}  # the tests' clock stands at NOW, not at the real time


# -- helpers --------------------------------------------------------------------------------------------------------


class Sleeper:
    """The client's `sleep`: records each wait and moves the fake clock on by it, at once."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def fclock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def sleeper(fclock: FakeClock) -> Sleeper:
    return Sleeper(fclock)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Stub:
    """A loopback server answering every request with `handler`; `requests` keeps (method, path, query, headers,
    body) of each, `times` the fake clock's reading when it arrived."""

    def __init__(self, handler: Handler, clock: FakeClock) -> None:
        self.handler = handler
        self.clock = clock
        self.requests: list[tuple[str, str, dict[str, str], dict[str, str], Any]] = []
        self.times: list[float] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append((request.method, request.path, dict(request.query), dict(request.headers), body))
        self.times.append(self.clock())
        return await self.handler(request)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def paths(self) -> list[str]:
        return [f"{method} {path}" for method, path, *_ in self.requests]


@pytest.fixture
async def stubs(fclock: FakeClock) -> AsyncIterator[Callable[[Handler], Awaitable[Stub]]]:
    made: list[Stub] = []

    async def make(handler: Handler) -> Stub:
        stub = Stub(handler, fclock)
        await stub.start()
        made.append(stub)
        return stub

    yield make
    for stub in made:
        await stub.stop()


def jit_answer(runner_id: int = 77, name: str = "ctl-1") -> web.Response:
    return web.json_response(
        {
            "runner": {
                "id": runner_id,
                "name": name,
                "os": "unknown",
                "status": "offline",
                "busy": False,
                "labels": [],
            },
            "encoded_jit_config": "SklUQ09ORklHLVNFQ1JFVA==",
        },
        status=201,
        headers={"X-RateLimit-Remaining": "4999", "X-RateLimit-Reset": str(int(NOW) + 3600)},
    )


def github_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"message": message, "documentation_url": "https://docs.github.com/rest"}, status=status, headers=headers
    )


def token_forge(tmp_path: Path, url: str, clock: FakeClock, sleep: Sleeper, **kw: Any) -> GitHubForge:
    auth = TokenFileAuth(secret_file(tmp_path / "gh-token", "github_pat_SECRETSECRETSECRETSECRET\n"))
    return GitHubForge(auth, api_url=url, clock=clock, sleep=sleep, **kw)


def app_forge(
    tmp_path: Path, key: rsa.RSAPrivateKey, url: str, clock: FakeClock, sleep: Sleeper, app_id: int = 7, **kw: Any
) -> GitHubForge:
    credentials = AppCredentials.from_file(app_id, secret_file(tmp_path / "app.pem", pem(key)))
    return GitHubForge(AppTokenProvider(credentials, clock=clock), api_url=url, clock=clock, sleep=sleep, **kw)


# -- auth: pure -----------------------------------------------------------------------------------------------------


def test_app_jwt_claims_follow_githubs_rules(tmp_path: Path, app_key: rsa.RSAPrivateKey) -> None:
    credentials = AppCredentials.from_file(12345, secret_file(tmp_path / "app.pem", pem(app_key)))
    token = credentials.jwt(NOW + 0.7)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, app_key.public_key(), algorithms=["RS256"], options=NO_TIME_CHECKS)
    assert claims == {"iat": int(NOW) - 60, "exp": int(NOW) + 540, "iss": "12345"}
    assert claims["exp"] - claims["iat"] <= 600
    assert "PRIVATE" not in repr(credentials) and "RSAPrivateKey" not in repr(credentials)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o700 | 0o004])
def test_a_key_file_others_may_read_is_refused_naming_the_file(
    tmp_path: Path, app_key: rsa.RSAPrivateKey, mode: int
) -> None:
    path = secret_file(tmp_path / "app.pem", pem(app_key), mode)
    with pytest.raises(ForgeError) as caught:
        AppCredentials.from_file(7, path)
    assert str(path) in caught.value.message
    assert f"chmod 600 {path}" in caught.value.message
    assert "PRIVATE KEY" not in caught.value.message


def test_key_file_problems_are_named_without_the_content(tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match="does not exist"):
        AppCredentials.from_file(7, tmp_path / "missing.pem")
    garbage = secret_file(tmp_path / "garbage.pem", "not-a-key-but-secret-looking-text")
    with pytest.raises(ForgeError) as caught:
        AppCredentials.from_file(7, garbage)
    assert "not an unencrypted PEM private key" in caught.value.message
    assert "secret-looking" not in caught.value.message
    with pytest.raises(ForgeError, match="is empty"):
        AppCredentials.from_file(7, secret_file(tmp_path / "empty.pem", "\n"))
    with pytest.raises(ForgeError, match="not a regular file"):
        read_secret_file(tmp_path, "the key")


async def test_token_file_is_stripped_checked_and_reread_after_a_refusal(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "token", "  github_pat_first  \n")
    auth = TokenFileAuth(path)

    async def never(installation_id: int, app_jwt: str) -> InstallationToken:
        raise AssertionError("a token file needs no exchange")

    assert await auth.token(None, never) == "github_pat_first"
    secret_file(path, "github_pat_second")
    assert await auth.token(None, never) == "github_pat_first"  # cached
    auth.invalidate(None, "github_pat_other")  # not the cached one: kept
    assert await auth.token(None, never) == "github_pat_first"
    auth.invalidate(None, "github_pat_first")
    assert await auth.token(None, never) == "github_pat_second"
    assert auth.reads == 2
    assert auth.describe(None) == f"the token in {path}"
    path.chmod(0o644)
    auth.invalidate(None, "github_pat_second")
    with pytest.raises(ForgeError, match="chmod 600"):
        await auth.token(None, never)
    with pytest.raises(ForgeError, match="more than one word"):
        await TokenFileAuth(secret_file(tmp_path / "two", "github_pat_a github_pat_b")).token(None, never)


class Exchanges:
    """A stand-in for the client's token exchange: a new token per call, living `lifetime_s` on the fake clock."""

    def __init__(self, clock: FakeClock, lifetime_s: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime_s = lifetime_s
        self.calls: list[tuple[int, str]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, installation_id: int, app_jwt: str) -> InstallationToken:
        self.calls.append((installation_id, app_jwt))
        token = f"ghs_token{len(self.calls)}"
        if self.gate is not None:
            await self.gate.wait()
        return InstallationToken(token, self.clock() + self.lifetime_s)


async def test_installation_tokens_are_cached_until_five_minutes_before_expiry(
    tmp_path: Path, app_key: rsa.RSAPrivateKey, fclock: FakeClock
) -> None:
    credentials = AppCredentials.from_file(7, secret_file(tmp_path / "app.pem", pem(app_key)))
    provider = AppTokenProvider(credentials, clock=fclock)
    exchange = Exchanges(fclock)
    assert await provider.token(42, exchange) == "ghs_token1"
    assert await provider.token(42, exchange) == "ghs_token1"
    issued_jwt = exchange.calls[0][1]
    assert jwt.decode(issued_jwt, app_key.public_key(), algorithms=["RS256"], options=NO_TIME_CHECKS)["iss"] == "7"
    fclock.advance(3600 - 300 - 1)
    assert await provider.token(42, exchange) == "ghs_token1"
    fclock.advance(1)  # 5 minutes before expires_at: replaced
    assert await provider.token(42, exchange) == "ghs_token2"
    assert await provider.token(43, exchange) == "ghs_token3"  # each installation its own
    assert [c[0] for c in exchange.calls] == [42, 42, 43]
    assert provider.fetches == 3
    assert provider.cached_until(42) == fclock() + 3600 - 300


async def test_one_fetch_at_a_time_per_installation(
    tmp_path: Path, app_key: rsa.RSAPrivateKey, fclock: FakeClock
) -> None:
    credentials = AppCredentials.from_file(7, secret_file(tmp_path / "app.pem", pem(app_key)))
    provider = AppTokenProvider(credentials, clock=fclock)
    exchange = Exchanges(fclock)
    exchange.gate = asyncio.Event()
    waiting = [asyncio.create_task(provider.token(42, exchange)) for _ in range(10)]
    other = asyncio.create_task(provider.token(43, exchange))
    for _ in range(5):
        await asyncio.sleep(0)
    assert sorted(c[0] for c in exchange.calls) == [42, 43]  # one fetch each, the other callers wait for it
    exchange.gate.set()
    tokens = await asyncio.gather(*waiting)
    assert set(tokens) == {tokens[0]} and await other != tokens[0]
    assert len(exchange.calls) == 2


async def test_a_refused_token_is_dropped_once_and_an_installation_is_required(
    tmp_path: Path, app_key: rsa.RSAPrivateKey, fclock: FakeClock
) -> None:
    credentials = AppCredentials.from_file(7, secret_file(tmp_path / "app.pem", pem(app_key)))
    provider = AppTokenProvider(credentials, clock=fclock)
    exchange = Exchanges(fclock)
    first = await provider.token(42, exchange)
    provider.invalidate(42, "ghs_some_older_token")  # a concurrent caller's stale token: ours is kept
    assert await provider.token(42, exchange) == first
    provider.invalidate(42, first)
    assert await provider.token(42, exchange) != first
    with pytest.raises(ForgeError, match=r"GitHub App 7 needs an installation id.*installation_id"):
        await provider.token(None, exchange)
    assert "ghs_" not in repr(InstallationToken("ghs_x", 1.0))


def test_expires_at_is_githubs_utc_timestamp() -> None:
    assert parse_expires_at("1970-01-01T00:01:00Z") == 60.0
    assert parse_expires_at("1970-01-01T01:01:00+01:00") == 60.0
    with pytest.raises(ValueError):
        parse_expires_at("1970-01-01T00:01:00")
    with pytest.raises(ValueError):
        parse_expires_at(None)


# -- rate limits: pure ----------------------------------------------------------------------------------------------


def test_primary_wait() -> None:
    assert primary_wait(None, None, NOW) == 0  # unknown budget: go
    assert primary_wait(5, NOW + 100, NOW) == 0
    assert primary_wait(5, NOW + 100, NOW, in_flight=4) == 0
    assert primary_wait(5, NOW + 100, NOW, in_flight=5) == pytest.approx(101)  # all spoken for
    assert primary_wait(0, NOW + 100, NOW) == pytest.approx(101)  # until the reset, and a second for the clocks
    assert primary_wait(0, NOW - 1, NOW) == 0  # the window has reset
    assert primary_wait(0, None, NOW) == SECONDARY_DEFAULT_WAIT_S


def test_what_counts_as_a_rate_limit_refusal() -> None:
    reset = str(int(NOW) + 30)
    assert limited(200, {"x-ratelimit-remaining": "0"}, "", NOW) is None
    assert limited(403, {"x-ratelimit-remaining": "4000"}, "Resource not accessible by integration", NOW) is None
    assert limited(404, {"retry-after": "5"}, "Not Found", NOW) is None
    assert limited(403, {"retry-after": "7"}, "You have exceeded a secondary rate limit", NOW) == ("secondary", 7.0)
    assert limited(429, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}, "", NOW) == ("primary", 31.0)
    assert limited(403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}, "API rate limit exceeded", NOW) == (
        "primary",
        31.0,
    )
    assert limited(403, {}, "You have exceeded a secondary rate limit.", NOW) == ("secondary", 60.0)
    assert limited(429, {}, "", NOW) == ("secondary", 60.0)


def test_retry_after_and_link_headers() -> None:
    assert retry_after_s("7", NOW) == 7.0
    assert retry_after_s("-3", NOW) == 0.0
    assert retry_after_s(email.utils.formatdate(NOW + 42, usegmt=True), NOW) == pytest.approx(42)
    assert retry_after_s("soon", NOW) is None
    assert retry_after_s(None, NOW) is None
    assert has_next_page('<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last"')
    assert not has_next_page(
        '<https://api.github.com/x?page=1>; rel="prev", <https://api.github.com/x?page=1>; rel="first"'
    )


# -- the client against a scripted stub -----------------------------------------------------------------------------


async def test_register_sends_githubs_jit_request(
    tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return jit_answer()

    stub = await stubs(handler)
    forge = token_forge(tmp_path, stub.url, fclock, sleeper)
    api: ForgeAPI = forge  # the protocol the controller uses
    try:
        registration = await api.register(REPO, name="ctl-1", labels=["self-hosted", "linux"], runner_group_id=None)
    finally:
        await forge.close()
    method, path, _, headers, body = stub.requests[0]
    assert (method, path) == ("POST", "/repos/acme/app/actions/runners/generate-jitconfig")
    assert body == {"name": "ctl-1", "runner_group_id": 1, "labels": ["self-hosted", "linux"], "work_folder": "_work"}
    assert headers["Accept"] == "application/vnd.github+json"
    assert headers["X-GitHub-Api-Version"] == API_VERSION == "2022-11-28"
    assert headers["User-Agent"] == "runner-orchestrator"
    assert headers["Authorization"] == "Bearer github_pat_SECRETSECRETSECRETSECRET"
    assert (registration.runner_id, registration.name, registration.file_name) == (77, "ctl-1", JIT_CONFIG_FILE)
    assert registration.credential == "SklUQ09ORklHLVNFQ1JFVA=="
    assert "SklU" not in repr(registration)
    assert forge.stats() == {
        "calls": 1.0,
        "retries": 0.0,
        "rate_limit_remaining": 4999.0,
        "rate_limit_waits": 0.0,
        "rate_limit_wait_s": 0.0,
    }


async def test_org_scope_and_runner_group(tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.method == "DELETE":
            return web.Response(status=204)
        return jit_answer()

    stub = await stubs(handler)
    forge = token_forge(tmp_path, stub.url + "/api/v3/", fclock, sleeper)  # GHES-style base URL
    org = RunnerScope("org", "acme")
    await forge.register(org, name="ctl-2", labels=["gpu"], runner_group_id=5)
    assert await forge.delete_runner(org, 77) is True
    await forge.close()
    assert stub.paths() == [
        "POST /api/v3/orgs/acme/actions/runners/generate-jitconfig",
        "DELETE /api/v3/orgs/acme/actions/runners/77",
    ]
    assert stub.requests[0][4]["runner_group_id"] == 5
    for bad in (RunnerScope("repo", "acme"), RunnerScope("repo", "acme/../x"), RunnerScope("org", "a/b")):
        with pytest.raises(ForgeError, match="is not a GitHub"):
            await forge.runners(bad)


def app_stub_handler(
    answers: dict[str, Callable[[web.Request], web.Response]], tokens: list[str]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Access tokens on /app/installations/N/access_tokens (a new one each time, named in `tokens`); other paths
    answered by `answers[path]`."""

    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/access_tokens"):
            tokens.append(f"ghs_installationtoken{len(tokens) + 1:02d}")
            return web.json_response({"token": tokens[-1], "expires_at": "2099-01-01T00:00:00Z"}, status=201)
        return answers[request.path](request)

    return handler


JIT_PATH = "/repos/acme/app/actions/runners/generate-jitconfig"


@pytest.mark.parametrize(
    ("status", "message", "headers", "expected"),
    [
        (
            404,
            "Not Found",
            {},
            [
                "GitHub has no repository acme/app visible to installation 123 (is the app installed there?)",
                "GitHub App 7",
                "runner group 1",
            ],
        ),
        (
            403,
            "Resource not accessible by integration",
            {"X-Accepted-GitHub-Permissions": "administration=write"},
            [
                "GitHub App 7 (installation 123) lacks the Administration: write permission on repository acme/app",
                "Resource not accessible by integration",
                "administration=write",
            ],
        ),
        (
            403,
            "Repository access blocked",
            {},
            [
                "GitHub refused GitHub App 7 (installation 123) to register runner ctl-1 in runner group 1 on "
                "repository acme/app (403 Repository access blocked)"
            ],
        ),
        (
            422,
            "Invalid input: labels must have between 1 and 100 items.",
            {},
            ["GitHub refused to register runner ctl-1 in runner group 1 on repository acme/app", "labels must have"],
        ),
    ],
)
async def test_refusals_say_what_to_fix(
    tmp_path: Path,
    app_key: rsa.RSAPrivateKey,
    stubs: Any,
    fclock: FakeClock,
    sleeper: Sleeper,
    status: int,
    message: str,
    headers: dict[str, str],
    expected: list[str],
) -> None:
    tokens: list[str] = []
    stub = await stubs(app_stub_handler({JIT_PATH: lambda r: github_error(status, message, **headers)}, tokens))
    forge = app_forge(tmp_path, app_key, stub.url, fclock, sleeper)
    with pytest.raises(ForgeError) as caught:
        await forge.register(REPO, name="ctl-1", labels=[], runner_group_id=None)
    await forge.close()
    assert caught.value.status == status
    for part in expected:
        assert part in caught.value.message
    assert tokens and all(token not in caught.value.message for token in tokens)
    assert "eyJ" not in caught.value.message


async def test_org_refusals_name_the_runner_group(
    tmp_path: Path, app_key: rsa.RSAPrivateKey, stubs: Any, fclock: FakeClock, sleeper: Sleeper
) -> None:
    tokens: list[str] = []
    path = "/orgs/acme/actions/runners/generate-jitconfig"
    stub = await stubs(app_stub_handler({path: lambda r: github_error(404, "Not Found")}, tokens))
    forge = app_forge(tmp_path, app_key, stub.url, fclock, sleeper)
    with pytest.raises(ForgeError) as caught:
        await forge.register(RunnerScope("org", "acme", 9), name="ctl-1", labels=["x"], runner_group_id=4)
    await forge.close()
    assert "GitHub has no organization acme visible to installation 9" in caught.value.message
    assert "no runner group 4" in caught.value.message


async def test_a_refused_installation_token_is_replaced_once(
    tmp_path: Path, app_key: rsa.RSAPrivateKey, stubs: Any, fclock: FakeClock, sleeper: Sleeper
) -> None:
    tokens: list[str] = []
    refusals = iter([True, False, True, True])

    def answer(request: web.Request) -> web.Response:
        return github_error(401, "Bad credentials") if next(refusals) else jit_answer()

    stub = await stubs(app_stub_handler({JIT_PATH: answer}, tokens))
    forge = app_forge(tmp_path, app_key, stub.url, fclock, sleeper)
    await forge.register(REPO, name="ctl-1", labels=["x"], runner_group_id=None)
    assert len(tokens) == 2
    auths = [headers["Authorization"] for _, path, _, headers, _ in stub.requests if path == JIT_PATH]
    assert auths == [f"Bearer {tokens[0]}", f"Bearer {tokens[1]}"]
    with pytest.raises(ForgeError) as caught:  # refused with the fresh token too: final
        await forge.register(REPO, name="ctl-1", labels=["x"], runner_group_id=None)
    await forge.close()
    assert caught.value.status == 401
    assert "GitHub rejected the credentials of GitHub App 7 (installation 123)" in caught.value.message
    assert len(tokens) == 3 and forge.stats()["retries"] == 2


async def test_token_exchange_refusals(
    tmp_path: Path, app_key: rsa.RSAPrivateKey, stubs: Any, fclock: FakeClock, sleeper: Sleeper
) -> None:
    answers = iter(
        [
            github_error(401, "A JSON web token could not be decoded"),
            github_error(404, "Not Found"),
        ]
    )

    async def handler(request: web.Request) -> web.Response:
        return next(answers)

    stub = await stubs(handler)
    forge = app_forge(tmp_path, app_key, stub.url, fclock, sleeper)
    with pytest.raises(ForgeError) as caught:
        await forge.runners(REPO)
    assert "GitHub refused the JWT of GitHub App 7" in caught.value.message
    assert "private_key_file" in caught.value.message and "eyJ" not in caught.value.message
    with pytest.raises(ForgeError, match="GitHub App 7 has no installation 123"):
        await forge.runners(REPO)
    await forge.close()
    assert stub.paths() == ["POST /app/installations/123/access_tokens"] * 2


async def test_secrets_never_reach_a_message(tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper) -> None:
    async def handler(request: web.Request) -> web.Response:  # a proxy that echoes what it got
        echoed = request.headers["Authorization"] + " eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiI3In0.c2lnbmF0dXJl ghs_" + "a" * 36
        return github_error(422, f"Validation Failed: {echoed}")

    stub = await stubs(handler)
    forge = token_forge(tmp_path, stub.url, fclock, sleeper)
    with pytest.raises(ForgeError) as caught:
        await forge.register(REPO, name="ctl-1", labels=["x"], runner_group_id=None)
    await forge.close()
    assert (
        "SECRET" not in caught.value.message
        and "eyJ" not in caught.value.message
        and "ghs_" not in caught.value.message
    )
    assert "[REDACTED]" in caught.value.message


async def test_5xx_is_retried_within_the_budget(
    tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper
) -> None:
    answers = iter([web.Response(status=502), web.Response(status=503, text="<html>"), jit_answer()])

    async def handler(request: web.Request) -> web.Response:
        return next(answers)

    stub = await stubs(handler)
    forge = token_forge(tmp_path, stub.url, fclock, sleeper, retry_budget_s=10)
    registration = await forge.register(REPO, name="ctl-1", labels=["x"], runner_group_id=None)
    assert registration.runner_id == 77
    assert len(stub.requests) == 3 and forge.stats()["retries"] == 2 and len(sleeper.waits) == 2

    async def down(request: web.Request) -> web.Response:
        return web.Response(status=502)

    stub.handler = down
    with pytest.raises(ForgeError) as caught:
        await forge.runners(REPO)
    await forge.close()
    assert caught.value.status == 502
    assert f"GitHub API at {stub.url} unavailable after retrying for 10 s" in caught.value.message
    assert sum(sleeper.waits[2:]) <= 10  # bounded: the budget is the sum of the back-offs
    assert 3 < len(stub.requests) - 3 < 20


async def test_unreachable_github(tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=204)

    stub = await stubs(handler)
    url = stub.url
    await stub.stop()  # nothing listens there any more
    forge = token_forge(tmp_path, url, fclock, sleeper, retry_budget_s=2)
    with pytest.raises(ForgeError) as caught:
        await forge.delete_runner(REPO, 5)
    await forge.close()
    assert caught.value.status == 0 and "unavailable after retrying for 2 s" in caught.value.message
    assert "ClientConnectorError" in caught.value.message


async def test_primary_limit_waits_for_the_reset_and_sends_nothing_over(
    tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper
) -> None:
    """A budget of 3 per 100 s window: 7 calls take three windows, and no request arrives while the budget is 0."""
    state = {"reset": NOW + 100, "left": 3, "over": 0}

    async def handler(request: web.Request) -> web.Response:
        if fclock() >= state["reset"]:
            state["reset"], state["left"] = state["reset"] + 100, 3
        limits = {"X-RateLimit-Reset": str(int(state["reset"]))}
        if state["left"] <= 0:
            state["over"] += 1
            return github_error(403, "API rate limit exceeded", **limits, **{"X-RateLimit-Remaining": "0"})
        state["left"] -= 1
        body = {"total_count": 0, "runners": []}
        return web.json_response(body, headers={**limits, "X-RateLimit-Remaining": str(state["left"])})

    stub = await stubs(handler)
    forge = token_forge(tmp_path, stub.url, fclock, sleeper)
    for _ in range(7):
        assert await forge.runners(REPO) == []
    await forge.close()
    assert state["over"] == 0
    assert len(stub.requests) == 7
    assert stub.times == [NOW, NOW, NOW, NOW + 101, NOW + 101, NOW + 101, NOW + 201]
    assert sleeper.waits == [pytest.approx(101), pytest.approx(100)]
    assert forge.stats()["rate_limit_waits"] == 2 and forge.stats()["rate_limit_remaining"] == 2


async def test_primary_limit_spent_elsewhere(tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper) -> None:
    """The first answer says the budget is gone (another user of the token spent it): wait for the reset, then
    send again; no second request before the reset."""
    reset = NOW + 50

    async def handler(request: web.Request) -> web.Response:
        if fclock() < reset:
            return github_error(
                429, "API rate limit exceeded", **{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(reset))}
            )
        return web.Response(status=204, headers={"X-RateLimit-Remaining": "4999"})

    stub = await stubs(handler)
    forge = token_forge(tmp_path, stub.url, fclock, sleeper)
    assert await forge.delete_runner(REPO, 5) is True
    await forge.close()
    assert stub.times == [NOW, NOW + 51]
    assert sleeper.waits == [pytest.approx(51)]


async def test_concurrent_calls_stay_within_the_budget(
    tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper
) -> None:
    state = {"left": 4, "over": 0}
    reset = NOW + 30

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.01)
        if fclock() >= reset:
            state["left"] = max(state["left"], 100)
        if state["left"] <= 0:
            state["over"] += 1
            return github_error(403, "API rate limit exceeded", **{"X-RateLimit-Remaining": "0"})
        state["left"] -= 1
        return web.Response(
            status=204, headers={"X-RateLimit-Remaining": str(state["left"]), "X-RateLimit-Reset": str(int(reset))}
        )

    stub = await stubs(handler)
    forge = token_forge(tmp_path, stub.url, fclock, sleeper)
    results = await asyncio.gather(*(forge.delete_runner(REPO, n) for n in range(10)))
    await forge.close()
    assert results == [True] * 10
    assert state["over"] == 0 and len(stub.requests) == 10
    assert sleeper.waits == [pytest.approx(31)]


async def test_secondary_limit_waits_retry_after(
    tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper
) -> None:
    answers = iter(
        [
            github_error(403, "You have exceeded a secondary rate limit.", **{"Retry-After": "7"}),
            github_error(403, "You have exceeded a secondary rate limit."),  # no Retry-After: a minute
            jit_answer(),
        ]
    )

    async def handler(request: web.Request) -> web.Response:
        return next(answers)

    stub = await stubs(handler)
    forge = token_forge(tmp_path, stub.url, fclock, sleeper)
    await forge.register(REPO, name="ctl-1", labels=["x"], runner_group_id=None)
    assert sleeper.waits == [7.0, 60.0]
    assert stub.times == [NOW, NOW + 7, NOW + 67]
    assert forge.stats()["rate_limit_waits"] == 2 and forge.stats()["rate_limit_wait_s"] == 67

    async def always(request: web.Request) -> web.Response:
        return github_error(429, "You have exceeded a secondary rate limit.", **{"Retry-After": "1"})

    stub.handler = always
    with pytest.raises(ForgeError, match=r"secondary rate limit for the token in .* still refuses") as caught:
        await forge.register(REPO, name="ctl-2", labels=["x"], runner_group_id=None)
    assert caught.value.status == 429
    assert len(stub.requests) == 3 + 4  # the first try and rate_limit_retries (3) more
    forge.rate_limit_max_wait_s = 30

    async def long_wait(request: web.Request) -> web.Response:
        return github_error(403, "You have exceeded a secondary rate limit.", **{"Retry-After": "3600"})

    stub.handler = long_wait
    with pytest.raises(ForgeError, match="next wait 3600 s, limit 30 s"):
        await forge.register(REPO, name="ctl-3", labels=["x"], runner_group_id=None)
    await forge.close()


async def test_runners_all_pages(tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper) -> None:
    def runner(n: int) -> dict[str, Any]:
        return {"id": n, "name": f"r{n}", "status": "online", "busy": n % 2 == 0, "labels": [{"id": 1, "name": "x"}]}

    async def by_link(request: web.Request) -> web.Response:
        page = int(request.query["page"])
        assert request.query["per_page"] == "100"
        chunk = [runner(n) for n in range((page - 1) * 100, min(page * 100, 250))]
        link = '<http://elsewhere.example/next>; rel="next"' if page < 3 else '<http://x/?page=1>; rel="first"'
        return web.json_response({"total_count": 250, "runners": chunk}, headers={"Link": link})

    stub = await stubs(by_link)
    forge = token_forge(tmp_path, stub.url, fclock, sleeper)
    runners = await forge.runners(REPO)
    assert [r.id for r in runners] == list(range(250))
    assert runners[2].busy and not runners[1].busy and runners[0].labels == ("x",) and runners[0].status == "online"
    assert [q["page"] for _, _, q, _, _ in stub.requests] == ["1", "2", "3"]
    assert len(stub.requests) == 3  # pages are fetched from api_url by number, never from the Link's host

    async def by_count(request: web.Request) -> web.Response:  # no Link header: total_count and short pages tell
        page = int(request.query["page"])
        chunk = [runner(n) for n in range((page - 1) * 100, min(page * 100, 200))]
        return web.json_response({"total_count": 200, "runners": chunk})

    stub.handler = by_count
    assert len(await forge.runners(REPO)) == 200
    assert len(stub.requests) == 3 + 2
    await forge.close()


async def test_delete_runner_and_leftover_registrations(
    tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper
) -> None:
    registered = {"ctl-1": 55}

    async def handler(request: web.Request) -> web.Response:
        if request.method == "DELETE":
            runner_id = int(request.path.rsplit("/", 1)[1])
            if runner_id not in registered.values():
                return github_error(404, "Not Found")
            registered.pop(next(k for k, v in registered.items() if v == runner_id))
            return web.Response(status=204)
        if request.method == "GET":
            name = request.query.get("name")
            found = [{"id": v, "name": k, "status": "offline", "busy": False} for k, v in registered.items()]
            found = [r for r in found if name is None or r["name"] == name]
            return web.json_response({"total_count": len(found), "runners": found})
        name = (await request.json())["name"]
        if name in registered:
            return github_error(409, f"Already exists - A runner with the name {name} already exists.")
        registered[name] = 78
        return jit_answer(78, name)

    stub = await stubs(handler)
    forge = token_forge(tmp_path, stub.url, fclock, sleeper)
    # A registration of the same name is ours (names are unique per request) from an answer that was lost: replaced.
    registration = await forge.register(REPO, name="ctl-1", labels=["x"], runner_group_id=None)
    assert registration.runner_id == 78
    assert stub.paths() == [
        f"POST {JIT_PATH}",
        "GET /repos/acme/app/actions/runners",
        "DELETE /repos/acme/app/actions/runners/55",
        f"POST {JIT_PATH}",
    ]
    assert await forge.delete_runner(REPO, 78) is True
    assert await forge.delete_runner(REPO, 78) is False
    await forge.close()


async def test_queued_jobs_come_from_queued_and_in_progress_runs(
    tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper
) -> None:
    runs = {"queued": [{"id": 1}], "in_progress": [{"id": 2}, {"id": 1}]}
    jobs = {
        "1": [
            {
                "id": 11,
                "run_id": 1,
                "status": "queued",
                "labels": ["self-hosted", "linux"],
                "name": "build",
                "head_sha": "abc",
                "head_branch": "main",
            }
        ],
        "2": [
            {"id": 21, "run_id": 2, "status": "completed", "labels": ["x"]},
            {"id": 22, "run_id": 2, "status": "queued", "labels": ["gpu"]},
        ],
    }

    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/actions/runs"):
            found = runs[request.query["status"]]
            return web.json_response({"total_count": len(found), "workflow_runs": found})
        run_id = request.path.split("/")[-2]
        if run_id == "3":
            return github_error(404, "Not Found")
        return web.json_response({"total_count": len(jobs[run_id]), "jobs": jobs[run_id]})

    stub = await stubs(handler)
    forge = token_forge(tmp_path, stub.url, fclock, sleeper)
    queued = await forge.queued_jobs("acme/app", 123)
    assert [(j.id, j.run_id, j.repository, j.labels) for j in queued] == [
        (11, 1, "acme/app", ("self-hosted", "linux")),
        (22, 2, "acme/app", ("gpu",)),
    ]
    assert (queued[0].name, queued[0].head_sha, queued[0].head_branch) == ("build", "abc", "main")
    assert [q.get("status") for _, _, q, _, _ in stub.requests[:2]] == ["queued", "in_progress"]
    runs["queued"] = [{"id": 3}]  # listed, then deleted before its jobs are read: skipped
    runs["in_progress"] = []
    assert await forge.queued_jobs("acme/app", 123) == []
    await forge.close()


async def test_malformed_answers(tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.method == "POST":
            return web.json_response({"runner": {"id": 5}}, status=201)  # no encoded_jit_config
        return web.Response(status=200, text="<html>a login page</html>", content_type="text/html")

    stub = await stubs(handler)
    forge = token_forge(tmp_path, stub.url, fclock, sleeper)
    with pytest.raises(ForgeError, match="no runner id or encoded_jit_config"):
        await forge.register(REPO, name="ctl-1", labels=["x"], runner_group_id=None)
    with pytest.raises(ForgeError, match=r"no JSON object; is api_url .* GitHub's REST API"):
        await forge.runners(REPO)
    await forge.close()
    with pytest.raises(ForgeError, match="is not an http"):
        GitHubForge(TokenFileAuth(tmp_path / "t"), api_url="api.github.com")


# -- the client against the fake GitHub -----------------------------------------------------------------------------


@pytest.fixture
async def github(fclock: FakeClock) -> AsyncIterator[FakeGitHub]:
    fake = await FakeGitHub.start(clock=fclock)
    fake.add_repository("octo-org/app", installation_id=42)
    fake.add_org("acme", installation_id=50, runner_groups={1: "Default", 3: "gpu"})
    fake.add_repository("acme/web", installation_id=50)
    fake.add_repository("other/private", installation_id=99)
    try:
        yield fake
    finally:
        await fake.stop()


def fake_app_forge(tmp_path: Path, fake: FakeGitHub, clock: FakeClock, sleep: Sleeper, **kw: Any) -> GitHubForge:
    key = secret_file(tmp_path / "fake-app.pem", fake.private_key_pem)
    provider = AppTokenProvider(AppCredentials.from_file(fake.app_id, key), clock=clock)
    return GitHubForge(provider, api_url=fake.url, clock=clock, sleep=sleep, **kw)


def fake_pat_forge(tmp_path: Path, fake: FakeGitHub, clock: FakeClock, sleep: Sleeper, **kw: Any) -> GitHubForge:
    auth = TokenFileAuth(secret_file(tmp_path / "pat", fake.pat + "\n"))
    return GitHubForge(auth, api_url=fake.url, clock=clock, sleep=sleep, **kw)


def access_token_calls(fake: FakeGitHub) -> int:
    return sum(1 for r in fake.request_log if r.path.endswith("/access_tokens"))


async def test_every_method_against_the_fake(
    tmp_path: Path, github: FakeGitHub, fclock: FakeClock, sleeper: Sleeper
) -> None:
    forge = fake_app_forge(tmp_path, github, fclock, sleeper)
    repo = RunnerScope("repo", "octo-org/app", 42)
    registration = await forge.register(repo, name="ctl-a-1", labels=["self-hosted", "linux"], runner_group_id=None)
    files = decode_jit_config(registration.credential)
    assert files[".runner"]["agentId"] == registration.runner_id and files[".runner"]["agentName"] == "ctl-a-1"
    assert files[".runner"]["workFolder"] == "_work" and registration.file_name == "ACTIONS_RUNNER_INPUT_JITCONFIG"
    listed = await forge.runners(repo)
    assert [(r.id, r.name, r.status, r.busy, r.labels) for r in listed] == [
        (registration.runner_id, "ctl-a-1", "offline", False, ("self-hosted", "linux"))
    ]

    org = RunnerScope("org", "acme", 50)
    org_runner = await forge.register(org, name="ctl-a-2", labels=["gpu"], runner_group_id=3)
    assert github.runner(org_runner.runner_id).runner_group_id == 3
    assert [r.name for r in await forge.runners(org)] == ["ctl-a-2"]

    lost = github.queue_job("octo-org/app", ["self-hosted", "linux", "big"], send_webhook=False, name="test")
    queued = await forge.queued_jobs("octo-org/app", 42)
    assert [(j.id, j.labels, j.name) for j in queued] == [(lost, ("self-hosted", "linux", "big"), "test")]
    assert queued[0].run_id == github.jobs[lost].run_id and queued[0].head_sha == github.jobs[lost].head_sha

    assert await forge.delete_runner(repo, registration.runner_id) is True
    assert await forge.delete_runner(repo, registration.runner_id) is False
    assert await forge.runners(repo) == []
    await forge.close()
    assert {r.api_version for r in github.request_log} == {"2022-11-28"}
    assert {r.accept for r in github.request_log} == {"application/vnd.github+json"}
    assert {r.caller for r in github.request_log} == {"app", "installation:42", "installation:50"}
    assert forge.stats()["rate_limit_remaining"] >= 0 and github.over_limit_requests == []


async def test_repositories_of_every_installation_or_of_the_token(
    tmp_path: Path, github: FakeGitHub, fclock: FakeClock, sleeper: Sleeper
) -> None:
    for n in range(120):  # more than a page of `GET /installation/repositories`
        github.add_repository(f"acme/svc-{n:03d}", installation_id=50)
    forge = fake_app_forge(tmp_path, github, fclock, sleeper)
    found = await forge.repositories()
    await forge.close()
    assert len(found) == 1 + 121 + 1
    assert ("octo-org/app", 42) in found and ("acme/web", 50) in found and ("acme/svc-119", 50) in found
    assert ("other/private", 99) in found
    paths = [(r.caller, r.path) for r in github.request_log]
    assert ("app", "/app/installations") in paths
    assert paths.count(("installation:50", "/installation/repositories")) == 2  # two pages

    pinned = fake_app_forge(tmp_path, github, fclock, sleeper, installation_id=42)
    assert await pinned.repositories() == [("octo-org/app", 42)]  # the configured installation only
    await pinned.close()

    pat = fake_pat_forge(tmp_path, github, fclock, sleeper)
    names = await pat.repositories()
    await pat.close()
    assert len(names) == 123 and all(installation is None for _, installation in names)


async def test_repositories_refused_names_the_permission(
    tmp_path: Path, stubs: Any, fclock: FakeClock, sleeper: Sleeper
) -> None:
    async def refused(request: web.Request) -> web.Response:
        return github_error(403, "Resource not accessible by integration")

    stub = await stubs(refused)
    forge = GitHubForge(TokenFileAuth(secret_file(tmp_path / "pat", "github_pat_" + "x" * 30)), api_url=stub.url,
                        clock=fclock, sleep=sleeper)  # fmt: skip
    with pytest.raises(ForgeError) as caught:
        await forge.repositories()
    await forge.close()
    assert caught.value.status == 403 and "lacks the Metadata: read permission" in caught.value.message
    assert "to list the repositories it can reach" in caught.value.message
    assert stub.paths() == ["GET /user/repos"]


async def test_many_registrations_one_token(
    tmp_path: Path, github: FakeGitHub, fclock: FakeClock, sleeper: Sleeper
) -> None:
    forge = fake_app_forge(tmp_path, github, fclock, sleeper)
    repo = RunnerScope("repo", "octo-org/app", 42)
    await asyncio.gather(
        *(forge.register(repo, name=f"ctl-b-{n}", labels=["x"], runner_group_id=None) for n in range(8))
    )
    for n in range(8, 12):
        await forge.register(repo, name=f"ctl-b-{n}", labels=["x"], runner_group_id=None)
    await forge.close()
    assert access_token_calls(github) == 1
    assert len(github.registered_runners("octo-org/app")) == 12
    assert forge.stats()["calls"] == 13


async def test_an_expired_token_is_refreshed(tmp_path: Path, fclock: FakeClock, sleeper: Sleeper) -> None:
    fake = await FakeGitHub.start(clock=fclock, token_lifetime_s=1200)
    fake.add_repository("octo-org/app", installation_id=42)
    forge = fake_app_forge(tmp_path, fake, fclock, sleeper)
    repo = RunnerScope("repo", "octo-org/app", 42)
    try:
        await forge.runners(repo)
        fclock.advance(1200 - 300 - 1)
        await forge.runners(repo)
        assert access_token_calls(fake) == 1
        fclock.advance(1)  # 5 minutes before expires_at: a new token, before GitHub refuses the old one
        await forge.runners(repo)
        assert access_token_calls(fake) == 2
        fake.expire_tokens()  # revoked early: a 401, then one fresh token and the call goes through
        await forge.runners(repo)
        assert access_token_calls(fake) == 3
        assert [r.status for r in fake.request_log if r.path.endswith("/actions/runners")] == [200, 200, 200, 401, 200]
    finally:
        await forge.close()
        await fake.stop()


async def test_refusals_from_the_fake(tmp_path: Path, github: FakeGitHub, fclock: FakeClock, sleeper: Sleeper) -> None:
    forge = fake_app_forge(tmp_path, github, fclock, sleeper)
    with pytest.raises(ForgeError) as caught:
        await forge.register(RunnerScope("repo", "octo-org/missing", 42), name="n", labels=["x"], runner_group_id=None)
    assert caught.value.status == 404
    assert "GitHub has no repository octo-org/missing visible to installation 42 (is the app installed there?)" in (
        caught.value.message
    )
    with pytest.raises(ForgeError) as caught:  # installed on another installation than the one we name
        await forge.register(RunnerScope("repo", "other/private", 42), name="n", labels=["x"], runner_group_id=None)
    assert caught.value.status == 403
    assert f"GitHub App {github.app_id} (installation 42) lacks the Administration: write permission" in (
        caught.value.message
    )
    with pytest.raises(ForgeError) as caught:
        await forge.register(RunnerScope("repo", "octo-org/app", 42), name="n", labels=[], runner_group_id=None)
    assert caught.value.status == 422 and "labels must have between 1 and 100 items" in caught.value.message
    with pytest.raises(ForgeError) as caught:
        await forge.register(RunnerScope("org", "acme", 50), name="n", labels=["x"], runner_group_id=8)
    assert caught.value.status == 404 and "no runner group 8" in caught.value.message
    with pytest.raises(ForgeError, match=f"GitHub App {github.app_id} has no installation 77"):
        await forge.runners(RunnerScope("repo", "octo-org/app", 77))
    await forge.close()

    wrong = TokenFileAuth(secret_file(tmp_path / "wrong", "github_pat_not_the_right_one"))
    forge = GitHubForge(wrong, api_url=github.url, clock=fclock, sleep=sleeper)
    with pytest.raises(ForgeError) as caught:
        await forge.runners(RunnerScope("repo", "octo-org/app"))
    await forge.close()
    assert caught.value.status == 401
    assert f"GitHub rejected the credentials of the token in {tmp_path / 'wrong'}" in caught.value.message
    assert "github_pat_not_the_right_one" not in caught.value.message
    assert wrong.reads == 2  # re-read once after the refusal, in case the file was rotated


@pytest.mark.parametrize("status", [403, 429])
async def test_primary_limit_against_the_fake(tmp_path: Path, fclock: FakeClock, sleeper: Sleeper, status: int) -> None:
    fake = await FakeGitHub.start(clock=fclock, rate_limit=3, rate_window_s=60, rate_limit_status=status)
    fake.add_repository("octo-org/app")
    forge = fake_pat_forge(tmp_path, fake, fclock, sleeper)
    repo = RunnerScope("repo", "octo-org/app")
    try:
        for n in range(5):
            await forge.register(repo, name=f"ctl-c-{n}", labels=["x"], runner_group_id=None)
        results = await asyncio.gather(*(forge.runners(repo) for _ in range(6)))
    finally:
        await forge.close()
        await fake.stop()
    assert fake.over_limit_requests == []  # the client waited for every reset instead of asking
    assert all(len(r) == 5 for r in results)
    assert len(fake.request_log) == 11 and {r.status for r in fake.request_log} <= {200, 201}
    assert forge.stats()["rate_limit_waits"] == 3 and all(50 < w <= 62 for w in sleeper.waits)


async def test_secondary_limit_against_the_fake(
    tmp_path: Path, github: FakeGitHub, fclock: FakeClock, sleeper: Sleeper
) -> None:
    forge = fake_pat_forge(tmp_path, github, fclock, sleeper)
    repo = RunnerScope("repo", "octo-org/app")
    github.secondary_limit(2, retry_after_s=5)
    registration = await forge.register(repo, name="ctl-d-1", labels=["x"], runner_group_id=None)
    assert sleeper.waits == [5.0, 5.0]
    assert len(github.secondary_limited_requests) == 2 and github.runner(registration.runner_id).name == "ctl-d-1"

    github.secondary_limit(1, retry_after_s=9, with_retry_after=False)  # remaining 0 and a reset instead
    await forge.runners(repo)
    await forge.close()
    assert sleeper.waits[2] == pytest.approx(10, abs=1)
    assert github.over_limit_requests == [] and forge.stats()["rate_limit_waits"] == 3
    assert forge.stats()["retries"] == 3


def test_from_config(tmp_path: Path, app_key: rsa.RSAPrivateKey) -> None:
    from orchestrator.config import ForgeConfig

    key = secret_file(tmp_path / "app.pem", pem(app_key))
    app = GitHubForge.from_config(
        ForgeConfig(kind="github", app_id=9, private_key_file=key, installation_id=5, retry_budget_s=4)
    )
    assert isinstance(app.auth, AppTokenProvider) and app.auth.app_id == 9
    assert (app.api_url, app.installation_id, app.retry_budget_s) == ("https://api.github.com", 5, 4)
    token = secret_file(tmp_path / "token", "github_pat_x")
    ghes = GitHubForge.from_config(
        ForgeConfig(kind="github", token_file=token, api_url="https://ghe.example/api/v3/", request_timeout_s=3)
    )
    assert isinstance(ghes.auth, TokenFileAuth) and ghes.auth.path == token
    assert (ghes.api_url, ghes.request_timeout_s) == ("https://ghe.example/api/v3", 3)
