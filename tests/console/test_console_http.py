"""The web console over HTTP, without a browser: single sign-on end to end through the redirects (the loopback
identity provider's /authorize picks the user by login_hint), what a wrong state, a replayed code, a wrong nonce or
audience do, token sign-in (and login CSRF), the session cookie's flags, CSRF on every change, sign-out, the
headers on every console answer, the static files (no path escapes), the attestation verdict and its scope, and
that no token ever appears in what the console sends."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.cookies import Morsel
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from yarl import URL

from orchestrator.config import hash_token
from orchestrator.console.routes import load_assets
from orchestrator.evidence.attestation import key_id
from orchestrator.evidence.keys import load_public

from conftest import RunningController, job_spec
from console_rig import USERS, start_console, token_of
from fakes import runs
from oidc_provider import OidcProvider
from ports import free_port

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error", "rejected"}
CSP_START = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
CSP_END = "; frame-ancestors 'none'; base-uri 'none'"


@dataclass
class Resp:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    set_cookies: dict[str, Morsel[str]]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Browser:
    """An HTTP client keeping cookies by hand (name -> (value, path)), so each test sees exactly what the console
    set and with which flags; every answer of the controller is kept in `seen` for the no-token check."""

    http: aiohttp.ClientSession
    base: str
    cookies: dict[str, tuple[str, str]] = field(default_factory=dict)
    seen: list[tuple[str, Resp]] = field(default_factory=list)

    async def request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, data: Any = None, json_body: Any = None
    ) -> Resp:
        headers = dict(headers or {})
        ours = url.startswith(self.base)
        if ours:
            path = urlsplit(url).path
            jar = [f"{k}={v}" for k, (v, p) in self.cookies.items() if path.startswith(p)]
            if jar:
                headers["Cookie"] = "; ".join(jar)
        async with self.http.request(
            method, URL(url, encoded=True), headers=headers, data=data, json=json_body, allow_redirects=False
        ) as r:
            resp = Resp(r.status, r.headers, await r.read(), dict(r.cookies))
        if ours:
            for name, morsel in resp.set_cookies.items():
                if morsel.value == "" or morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = (morsel.value, morsel["path"] or "/")
            self.seen.append((url, resp))
        return resp

    async def get(self, path_or_url: str, **kw: Any) -> Resp:
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        return await self.request("GET", url, **kw)

    async def post(self, path: str, **kw: Any) -> Resp:
        return await self.request("POST", self.base + path, **kw)

    async def token_login(self, token: str, *, origin: str | None = "same") -> Resp:
        headers = {"Accept": "application/json"}
        if origin is not None:
            headers["Origin"] = self.base if origin == "same" else origin
        return await self.post("/console/login/token", data={"token": token}, headers=headers)

    async def csrf(self) -> str:
        session = await self.get("/console/session")
        assert session.status == 200, session.body
        return str(session.json()["csrf"])


@pytest.fixture
async def idp() -> AsyncIterator[OidcProvider]:
    provider = await OidcProvider(users=dict(USERS)).start()
    yield provider
    await provider.stop()


@pytest.fixture
async def ctl(fake_controller_factory: Any, idp: OidcProvider) -> RunningController:
    return await start_console(fake_controller_factory, idp)


@pytest.fixture
async def browser(ctl: RunningController) -> AsyncIterator[Browser]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield Browser(http, ctl.url)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    q = {**query(url), **changes}
    return urlunsplit(parts._replace(query=urlencode(q)))


async def sso_login(b: Browser, user: str = "alice", *, tamper: Callable[[str], str] | None = None) -> Resp:
    """The whole sign-in, one redirect at a time: console -> provider (which signs `user` in at once) -> callback."""
    started = await b.get(f"/console/login/sso?login_hint={user}")
    assert started.status == 303, started.body
    authorize = started.headers["Location"]
    at_provider = await b.get(tamper(authorize) if tamper else authorize)
    assert at_provider.status == 302, at_provider.body
    return await b.get(at_provider.headers["Location"])


async def metric(ctl: RunningController, reason: str) -> float:
    status, body = await ctl.api("GET", "/metrics", token=token_of("boss"))
    assert status == 200
    found = re.search(rf'orchestrator_api_auth_failures_total{{reason="{reason}"}} ([0-9.]+)', body.decode())
    return float(found.group(1)) if found else 0.0


async def audit(ctl: RunningController, action: str) -> list[dict[str, Any]]:
    status, body = await ctl.api("GET", f"/api/v1/audit?action={action}", token=token_of("boss"))
    assert status == 200, body
    return [hit["record"] for hit in body["records"]]


async def wait_status(ctl: RunningController, job_id: str, statuses: set[str]) -> dict[str, Any]:
    for _ in range(400):
        status, body = await ctl.api("GET", f"/api/v1/jobs/{job_id}", token=token_of("boss"))
        if status == 200 and body["status"] in statuses:
            return dict(body)
        await asyncio.sleep(0.025)
    raise AssertionError(f"job {job_id} never reached {statuses}")


def session_cookie(resp: Resp) -> Morsel[str]:
    assert "orch_session" in resp.set_cookies, resp.headers.getall("Set-Cookie", [])
    return resp.set_cookies["orch_session"]


# -- single sign-on -------------------------------------------------------------------------------------------


async def test_sso_sign_in_end_to_end(ctl: RunningController, browser: Browser, idp: OidcProvider) -> None:
    started = await browser.get("/console/login/sso?login_hint=alice")
    assert started.status == 303
    authorize = started.headers["Location"]
    assert authorize.startswith(f"{idp.issuer}/authorize?")
    q = query(authorize)
    assert q["response_type"] == "code" and q["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["code_challenge"])  # sha256, base64url without padding
    assert q["client_id"] == idp.audience and q["redirect_uri"] == f"{ctl.url}/console/callback"
    assert q["scope"].split() == ["openid", "email", "profile", "groups"] and q["login_hint"] == "alice"
    assert len(q["state"]) >= 32 and len(q["nonce"]) >= 32 and q["state"] != q["nonce"]
    binding = started.set_cookies["orch_sso"]
    assert binding["httponly"] and binding["path"] == "/console/callback" and binding["samesite"] == "Lax"

    at_provider = await browser.get(authorize)
    callback = at_provider.headers["Location"]
    assert callback.startswith(f"{ctl.url}/console/callback?")
    done = await browser.get(callback)
    assert (done.status, done.headers["Location"]) == (303, "/console")
    cookie = session_cookie(done)
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert not cookie["secure"]  # http on loopback; Secure whenever server.public_url is https
    assert 0 < int(cookie["max-age"]) <= 8 * 3600
    assert "orch_sso" not in browser.cookies  # the binding is spent

    me = await browser.get("/console/session")
    body = me.json()
    assert (me.status, body["name"], body["kind"]) == (200, "alice@example.com", "oidc")
    assert {g["role"] for g in body["grants"]} == {"approver", "operator", "auditor"}
    assert body["holds"] == {"operator": True, "approver": True, "auditor": True} and len(body["csrf"]) >= 32
    whoami = await browser.get("/api/v1/whoami")  # the API takes the cookie
    assert (whoami.status, whoami.json()["name"]) == (200, "alice@example.com")

    logins = await audit(ctl, "console.login")
    assert [(r["actor"].get("name"), r["actor"].get("kind"), r["outcome"], r["details"]) for r in logins] == [
        ("alice@example.com", "oidc", "ok", {"method": "sso"})
    ]


async def test_a_wrong_or_foreign_state_is_refused(ctl: RunningController, browser: Browser) -> None:
    refused = await sso_login(browser, tamper=lambda url: with_query(url, state="made-up-state"))
    assert (refused.status, refused.headers["Location"]) == (303, "/console#/login?error=state_mismatch")
    assert "orch_session" not in refused.set_cookies

    # A callback from someone else's sign-in: right state and code, but not this browser's binding cookie.
    other = Browser(browser.http, browser.base)
    started = await other.get("/console/login/sso?login_hint=bob")
    at_provider = await other.get(started.headers["Location"])
    stolen = await browser.get(at_provider.headers["Location"])
    assert stolen.headers["Location"] == "/console#/login?error=state_mismatch"
    assert "orch_session" not in stolen.set_cookies
    assert await metric(ctl, "state_mismatch") == 2
    assert (await browser.get("/console/session")).status == 401


async def test_a_replayed_code_is_refused(ctl: RunningController, browser: Browser) -> None:
    started = await browser.get("/console/login/sso?login_hint=alice")
    at_provider = await browser.get(started.headers["Location"])
    callback = at_provider.headers["Location"]
    first = await browser.get(callback)
    assert first.headers["Location"] == "/console" and "orch_session" in first.set_cookies

    again = await browser.get(callback)  # same state: it was used up
    assert again.headers["Location"] == "/console#/login?error=state_mismatch"
    fresh = await browser.get("/console/login/sso?login_hint=alice")  # a new state, the old code
    replay = with_query(callback, state=query(fresh.headers["Location"])["state"])
    refused = await browser.get(replay)
    assert refused.headers["Location"] == "/console#/login?error=code_refused"
    assert "orch_session" not in again.set_cookies and "orch_session" not in refused.set_cookies
    assert await metric(ctl, "code_refused") == 1


async def test_an_id_token_with_another_nonce_or_audience_is_refused(ctl: RunningController, browser: Browser) -> None:
    wrong_nonce = await sso_login(browser, tamper=lambda url: with_query(url, nonce="not-the-one-we-sent"))
    assert wrong_nonce.headers["Location"] == "/console#/login?error=token_refused"
    wrong_client = await sso_login(browser, tamper=lambda url: with_query(url, client_id="another-app"))
    assert wrong_client.headers["Location"] == "/console#/login?error=token_refused"
    assert "orch_session" not in wrong_nonce.set_cookies and "orch_session" not in wrong_client.set_cookies
    assert await metric(ctl, "nonce_mismatch") == 1 and await metric(ctl, "wrong_audience") == 1
    refusals = await audit(ctl, "console.login")
    assert [(r["outcome"], r["details"]["reason"]) for r in refusals] == [
        ("denied", "nonce_mismatch"),
        ("denied", "wrong_audience"),
    ]


async def test_without_single_sign_on_the_console_offers_tokens_only(fake_controller_factory: Any) -> None:
    ctl: RunningController = await fake_controller_factory()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        b = Browser(http, ctl.url)
        assert (await b.get("/console/session")).json() == {"error": "not signed in", "sso": False}
        assert (await b.get("/console/login/sso")).status == 404
        page = await b.get("/console")
        assert f"form-action 'self'{CSP_END}" in page.headers["Content-Security-Policy"]
        signed_in = await b.token_login(ctl.viewer_token)
        assert (signed_in.status, signed_in.json()["name"]) == (200, "dash")


async def test_an_unreachable_provider_leaves_the_page_and_token_sign_in_working(fake_controller_factory: Any) -> None:
    oidc = {"issuer": f"http://127.0.0.1:{free_port()}", "audience": "orch"}  # nobody listens there
    tokens = [{"name": "dash", "role": "viewer", "sha256": hash_token(token_of("dash"))}]
    ctl: RunningController = await fake_controller_factory(settings={"api": {"tokens": tokens, "oidc": oidc}})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        b = Browser(http, ctl.url)
        began = time.monotonic()
        assert (await b.get("/console")).status == 200
        assert time.monotonic() - began < 3  # at most 2 s spent asking the provider
        started = await b.get("/console/login/sso")
        assert (started.status, started.headers["Location"]) == (303, "/console#/login?error=provider_unavailable")
        assert (await b.token_login(token_of("dash"))).status == 200


async def test_console_disabled_serves_nothing(fake_controller_factory: Any) -> None:
    ctl: RunningController = await fake_controller_factory(settings={"console": {"enabled": False}})
    for path in ("/console", "/console/session", "/console/static/console.js"):
        async with ctl.session.get(ctl.url + path) as resp:
            assert resp.status == 404, path


# -- token sign-in ----------------------------------------------------------------------------------------------


async def test_token_sign_in_gives_a_session_and_refuses_bad_tokens(ctl: RunningController, browser: Browser) -> None:
    refused = await browser.token_login("not-a-token")
    assert (refused.status, refused.json()["error"]) == (401, "missing or invalid bearer token")
    assert "orch_session" not in refused.set_cookies

    signed_in = await browser.token_login(token_of("dash"))
    assert (signed_in.status, signed_in.json()) == (200, {"name": "dash", "kind": "token"})
    cookie = session_cookie(signed_in)
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    me = (await browser.get("/console/session")).json()
    assert (me["name"], me["grants"]) == ("dash", [{"role": "viewer", "pools": None, "repositories": None}])
    jobs = await browser.get("/api/v1/jobs")
    assert jobs.status == 200 and jobs.json() == {"jobs": []}

    records = await audit(ctl, "console.login")
    assert [(r["actor"].get("token_name"), r["outcome"], r["details"]) for r in records] == [
        (None, "denied", {"method": "token", "reason": "invalid_token"}),
        ("dash", "ok", {"method": "token"}),
    ]


async def test_a_form_post_without_script_is_answered_with_redirects(ctl: RunningController, browser: Browser) -> None:
    headers = {"Origin": ctl.url}
    bad = await browser.post("/console/login/token", data={"token": "nope"}, headers=headers)
    assert (bad.status, bad.headers["Location"]) == (303, "/console#/login?error=token_refused")
    good = await browser.post("/console/login/token", data={"token": token_of("ops")}, headers=headers)
    assert (good.status, good.headers["Location"]) == (303, "/console")
    assert "orch_session" in good.set_cookies


async def test_sign_in_from_another_origin_is_refused(ctl: RunningController, browser: Browser) -> None:
    """Login CSRF: another site must not sign the browser in as the attacker."""
    for origin in ("https://evil.example", "null", None):
        refused = await browser.token_login(token_of("ops"), origin=origin)
        assert refused.status == 403, origin
        assert "orch_session" not in refused.set_cookies
    assert await metric(ctl, "cross_origin_login") == 3


async def test_a_session_ends_with_the_token_it_came_from(fake_controller_factory: Any) -> None:
    expires = int(time.time()) + 600
    tokens = [{"name": "temp", "role": "viewer", "sha256": hash_token("temp-token-0123456789"), "expires": expires}]
    ctl: RunningController = await fake_controller_factory(settings={"api": {"tokens": tokens}})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        b = Browser(http, ctl.url)
        signed_in = await b.token_login("temp-token-0123456789")
        assert int(session_cookie(signed_in)["max-age"]) <= 600
        assert (await b.get("/console/session")).json()["expires"] == expires


async def test_failed_sign_ins_are_limited_per_address(ctl: RunningController, browser: Browser) -> None:
    for _ in range(10):
        assert (await browser.token_login("guess")).status == 401
    limited = await browser.token_login(token_of("ops"))
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert "orch_session" not in limited.set_cookies


# -- CSRF, sign-out ------------------------------------------------------------------------------------------------


async def test_a_change_needs_the_csrf_header_besides_the_cookie(ctl: RunningController, browser: Browser) -> None:
    ctl.controller.engine.program = lambda spec: runs(b"working\n", exit_code=None)  # type: ignore[attr-defined]
    spec = job_spec()
    assert (await ctl.post_webhook(spec))[0] == 202
    await wait_status(ctl, spec["id"], {"running"})
    await browser.token_login(token_of("ops"))
    path = f"/api/v1/jobs/{spec['id']}/cancel"

    assert (await browser.post(path)).status == 403
    assert (await browser.post(path, headers={"X-CSRF-Token": "forged"})).status == 403
    assert (await wait_status(ctl, spec["id"], {"running"}))["status"] == "running"
    cancelled = await browser.post(path, headers={"X-CSRF-Token": await browser.csrf()})
    assert cancelled.status == 200, cancelled.body
    assert (await wait_status(ctl, spec["id"], FINAL))["status"] == "cancelled"
    assert await metric(ctl, "csrf_refused") == 2


async def test_an_approver_decides_through_the_console_session(ctl: RunningController, browser: Browser) -> None:
    spec = job_spec(pool="gated", repository="org/app", sender="carol")
    assert (await ctl.post_webhook(spec))[0] == 202
    await wait_status(ctl, spec["id"], {"awaiting_approval"})
    await sso_login(browser, "alice")
    path = f"/api/v1/jobs/{spec['id']}/approve"
    assert (await browser.post(path, json_body={"comment": "ok"})).status == 403  # no CSRF header
    approved = await browser.post(
        path, json_body={"comment": "ship it"}, headers={"X-CSRF-Token": await browser.csrf()}
    )
    assert approved.status == 200, approved.body
    decision = approved.json()["approval"]
    assert (decision["decision"], decision["by"], decision["comment"]) == ("approved", "alice@example.com", "ship it")


async def test_sign_out_ends_the_session(ctl: RunningController, browser: Browser) -> None:
    await sso_login(browser, "bob")
    sid = browser.cookies["orch_session"]
    assert (await browser.post("/console/logout")).status == 403  # without the CSRF header
    assert (await browser.get("/console/session")).status == 200
    out = await browser.post("/console/logout", headers={"X-CSRF-Token": await browser.csrf()})
    assert out.status == 200 and out.set_cookies["orch_session"]["max-age"] == "0"
    browser.cookies["orch_session"] = sid  # a copy of the cookie kept from before is dead too
    assert (await browser.get("/console/session")).status == 401
    assert (await browser.get("/api/v1/jobs")).status == 401
    records = await audit(ctl, "console.logout")
    assert [(r["actor"]["name"], r["outcome"]) for r in records] == [("bob@example.com", "ok")]


# -- headers, static files, no secrets -------------------------------------------------------------------------


async def test_every_console_answer_carries_the_security_headers(
    ctl: RunningController, browser: Browser, idp: OidcProvider
) -> None:
    await browser.get("/console")
    await browser.get("/console/")
    await browser.get("/console/static/console.js")
    await browser.get("/console/static/console.css")
    await browser.get("/console/static/nothing.js")
    await browser.get("/console/no/such/page")
    await browser.get("/console/session")
    await browser.get("/console/callback?state=x&code=y")
    await browser.token_login("wrong")
    await browser.post("/console/logout")
    await browser.get("/console/api/jobs/some-job/verdict")
    await sso_login(browser)
    await browser.get("/console/session")
    await browser.get("/console/api/jobs/some-job/verdict")
    statuses = sorted({resp.status for _, resp in browser.seen})
    assert statuses == [200, 303, 401, 404]
    for url, resp in browser.seen:
        h = resp.headers
        assert h["Content-Security-Policy"] == f"{CSP_START}form-action 'self' {idp.issuer}{CSP_END}", url
        assert (h["X-Content-Type-Options"], h["Referrer-Policy"], h["X-Frame-Options"]) == (
            "nosniff",
            "no-referrer",
            "DENY",
        ), url
        static = "/console/static/console." in url
        assert h["Cache-Control"] == ("no-cache" if static else "no-store"), url


async def test_static_files_have_their_types_and_revalidate(browser: Browser) -> None:
    types = {
        "/console": "text/html; charset=utf-8",
        "/console/static/console.js": "text/javascript; charset=utf-8",
        "/console/static/console.css": "text/css; charset=utf-8",
    }
    for path, content_type in types.items():
        resp = await browser.get(path)
        assert (resp.status, resp.headers["Content-Type"]) == (200, content_type), path
    js = await browser.get("/console/static/console.js")
    again = await browser.get("/console/static/console.js", headers={"If-None-Match": js.headers["ETag"]})
    assert (again.status, again.body) == (304, b"")


async def test_no_path_leaves_the_static_directory(browser: Browser) -> None:
    attempts = [
        "/console/static/..%2Froutes.py", "/console/static/%2e%2e%2froutes.py", "/console/static/..%2F..%2Fconfig.py",
        "/console/static/../routes.py", "/console/static/routes.py", "/console/static/sessions.py",
        "/console/static/__init__.py", "/console/static/%2Fetc%2Fpasswd", "/console/static/..%5Croutes.py",
        "/console/static/index.html", "/console/static/",
    ]  # fmt: skip
    for path in attempts:
        resp = await browser.get(path)
        assert resp.status == 404, path
        assert b"import" not in resp.body and b"root:" not in resp.body, path


def test_the_page_has_no_inline_script_or_style() -> None:
    """What the CSP forbids is not there to forbid: every script and style is a file of the package."""
    assets = load_assets()
    assert set(assets) == {"index.html", "console.js", "console.css"}
    html = assets["index.html"].body.decode()
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/console/static/console.js" defer>']
    assert "<style" not in html and " style=" not in html and "javascript:" not in html
    assert re.search(r"\son[a-z]+=", html) is None  # no inline event handlers
    js = assets["console.js"].body.decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, sink


async def test_no_token_ever_reaches_the_browser(
    ctl: RunningController, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    typed = token_of("ops")
    await browser.token_login(typed)
    await browser.get("/console/session")
    await browser.token_login(typed + "-wrong")
    await sso_login(browser, "alice")
    await browser.get("/console/session")
    await browser.get("/console")
    assert len(browser.seen) == 7  # token, session, wrong token, SSO start, callback, session, page
    for url, resp in browser.seen:
        everything = resp.body + repr(list(resp.headers.items())).encode()
        assert typed.encode() not in everything, url
        assert b"eyJ" not in everything, url  # no JWT: neither the ID token nor the access token
    assert typed not in caplog.text
    await asyncio.to_thread(ctl.controller.auditor.flush)
    trail = (ctl.config.data_dir / "audit.jsonl").read_text()
    assert typed not in trail and "eyJ" not in trail


# -- the attestation verdict ---------------------------------------------------------------------------------------


async def test_the_verdict_is_verified_server_side_within_the_viewers_scope(
    ctl: RunningController, browser: Browser
) -> None:
    mine = job_spec(repository="org/app")
    theirs = job_spec(repository="evil/x")
    for spec in (mine, theirs):
        assert (await ctl.post_webhook(spec))[0] == 202
        await wait_status(ctl, spec["id"], FINAL)
    await browser.token_login(token_of("app-viewer"))
    verdict = await browser.get(f"/console/api/jobs/{mine['id']}/verdict")
    body = verdict.json()
    assert (verdict.status, body["verdict"], body["state"], body["exit_code"]) == (200, "verified", "succeeded", 0)
    assert {"name": f"git+org/app@{mine['ref']}", "digest": {"gitCommit": mine["sha"]}} in body["subjects"]
    assert body["key_id"] == key_id(load_public(ctl.controller.api.attestation_public_pem))

    hidden = await browser.get(f"/console/api/jobs/{theirs['id']}/verdict")
    missing = await browser.get("/console/api/jobs/no-such-job/verdict")
    assert (hidden.status, hidden.body) == (404, json.dumps({"error": f"no job {theirs['id']!r}"}).encode())
    assert missing.status == 404

    envelope_file = ctl.controller.api.attestations.path(mine["id"])
    envelope = json.loads(envelope_file.read_text())
    envelope["payload"] = envelope["payload"][:-8] + "AAAAAAA="
    envelope_file.write_text(json.dumps(envelope))
    tampered = (await browser.get(f"/console/api/jobs/{mine['id']}/verdict")).json()
    assert tampered["verdict"] == "invalid"


async def test_a_running_job_is_not_signed_yet(ctl: RunningController, browser: Browser) -> None:
    ctl.controller.engine.program = lambda spec: runs(b"working\n", exit_code=None)  # type: ignore[attr-defined]
    spec = job_spec()
    assert (await ctl.post_webhook(spec))[0] == 202
    await wait_status(ctl, spec["id"], {"running"})
    await browser.token_login(token_of("dash"))
    pending = (await browser.get(f"/console/api/jobs/{spec['id']}/verdict")).json()
    assert pending == {"verdict": "pending", "message": "signed when the job's run ends"}
    await browser.token_login(token_of("ops"))
    await browser.post(f"/api/v1/jobs/{spec['id']}/cancel", headers={"X-CSRF-Token": await browser.csrf()})
    await wait_status(ctl, spec["id"], FINAL)
