"""The web console under /console: one static page (index.html, console.js, console.css shipped in the package,
no build step) that reads the JSON API with the browser's session cookie, and the sign-in around it.

Sign-in is the authorization code flow with PKCE (S256), `state` and `nonce` against `[api.oidc]`'s provider, or an
API token typed into the login form (authenticated exactly as the API would). Either way the browser ends up with a
random session id only (console/sessions.py): the ID and access tokens never leave the controller and a typed token
is neither echoed nor logged. The pending logins (state -> PKCE verifier, nonce) are kept here, bounded and
expiring, each bound to the browser that started it by a cookie, so a stranger's code cannot be slipped into
someone else's browser. Every console response carries a strict CSP (no inline script or style anywhere) and the
usual hardening headers; failed sign-ins are counted, limited and audited like the API's failed tokens."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import jwt
from aiohttp import web

from orchestrator.access.grants import Principal
from orchestrator.access.oidc import JwtRejected, OidcUnavailable, OidcVerifier, looks_like_jwt, principal_of
from orchestrator.access.tokens import match_token
from orchestrator.api.auth import AuthRefused
from orchestrator.api.routes import Api
from orchestrator.checkout.remote import is_loopback
from orchestrator.config import Config
from orchestrator.console.sessions import COOKIE, CSRF_HEADER, Session, Sessions
from orchestrator.evidence.attestation import AttestationError, key_id, read_job, verify_envelope
from orchestrator.evidence.keys import load_public
from orchestrator.evidence.refusals import address_key

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SSO_COOKIE = "orch_sso"  # binds a pending login to the browser that started it
PENDING_MAX = 1000  # logins started and not finished, at most (the oldest is forgotten first)
PENDING_TTL_S = 600.0  # a login not finished within this is refused
MAX_TOKEN_CHARS = 8192
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


@dataclass(frozen=True)
class _Pending:
    """A login sent to the provider: what its answer must match."""

    verifier: str  # the PKCE code verifier (the provider saw only its S256 challenge)
    nonce: str
    binding: str  # sha256 of the SSO cookie's value
    redirect_uri: str
    token_endpoint: str
    created: float


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _endpoint(document: dict[str, Any], name: str) -> str:
    """An endpoint of the discovery document: https, or http only to this machine (like the JWKS URL)."""
    url = document.get(name)
    if not isinstance(url, str) or not (url.startswith("https://") or (url.startswith("http://") and is_loopback(url))):
        raise OidcUnavailable(f"the discovery document's {name} {url!r} is not https (http only on loopback)")
    return url


def load_assets() -> dict[str, _Asset]:
    """The files of the package's static/ directory, read once: only these names are ever served, so no path a
    request names can reach anything else."""
    assets: dict[str, _Asset] = {}
    for entry in resources.files("orchestrator.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _CONTENT_TYPES:
            body = entry.read_bytes()
            assets[entry.name] = _Asset(body, _CONTENT_TYPES[suffix], f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    return assets


class Console:
    """The console's routes; `api` is the controller's API object (its authenticator, limiter, metrics, auditor,
    store and attestations are the console's too), `sessions` the same Sessions the API accepts cookies of."""

    def __init__(self, config: Config, api: Api, sessions: Sessions, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.api = api
        self.sessions = sessions
        self.clock = clock
        self.assets = load_assets()
        self.oidc = config.api.oidc
        self.client_id: str | None = None
        self.client_secret: str | None = None
        self.verifier: OidcVerifier | None = None
        self._form_origins: set[str] = set()  # where the login form may send the browser (the provider)
        self._endpoints_known = False
        self._discovery_tried = float("-inf")
        self._discovery_task: asyncio.Future[tuple[str, str]] | None = None
        if self.oidc is not None:
            self.client_id = config.console.client_id or self.oidc.audience
            shared = api.authenticator.oidc
            if shared is not None and self.client_id == self.oidc.audience:
                self.verifier = shared  # one JWKS cache for the API's bearer JWTs and the console's ID tokens
            else:
                self.verifier = OidcVerifier(self.oidc.model_copy(update={"audience": self.client_id}), clock=clock)
            self._form_origins.add(_origin(self.oidc.issuer))
            if config.console.client_secret_file is not None:
                self.client_secret = config.console.client_secret_file.read_text(encoding="utf-8").strip()
        self._ssl = ssl.create_default_context(
            cafile=str(self.oidc.ca_file) if self.oidc is not None and self.oidc.ca_file else None
        )
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._public_key = load_public(api.attestation_public_pem)

    def routes(self) -> list[web.RouteDef]:
        s = self._secured
        return [
            web.get("/console", s(self.page)),
            web.get("/console/", s(self.page)),
            web.get("/console/static/{name}", s(self.static)),
            web.get("/console/session", s(self.session)),
            web.get("/console/login/sso", s(self.login_sso)),
            web.get("/console/callback", s(self.callback)),
            web.post("/console/login/token", s(self.login_token)),
            web.post("/console/logout", s(self.logout)),
            web.get("/console/api/jobs/{job_id}/verdict", s(self.verdict)),
            web.get("/console/{tail:.*}", s(self.not_found)),  # with the headers too
        ]

    # -- headers, cookies, origins --------------------------------------------------------------------------------

    def csp(self) -> str:
        forms = " ".join(["'self'", *sorted(self._form_origins)])
        return (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            f"form-action {forms}; frame-ancestors 'none'; base-uri 'none'"
        )

    def _secured(self, handler: Handler) -> Handler:
        """Every console answer, error or not: the CSP and the hardening headers; not cached unless the handler
        says otherwise (static files)."""

        def harden(headers: MutableMapping[str, str]) -> None:
            headers["Content-Security-Policy"] = self.csp()
            headers["X-Content-Type-Options"] = "nosniff"
            headers["Referrer-Policy"] = "no-referrer"
            headers["X-Frame-Options"] = "DENY"
            headers["Cross-Origin-Opener-Policy"] = "same-origin"
            headers.setdefault("Cache-Control", "no-store")

        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                harden(exc.headers)
                raise
            harden(response.headers)
            return response

        return wrapped

    def _request_origin(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def _secure(self, request: web.Request) -> bool:
        public = self.config.server.public_url
        return public.startswith("https://") if public else request.scheme == "https"

    def _same_origin(self, request: web.Request) -> bool:
        """A POST that signs in must come from the console's own page (login CSRF): its Origin, which browsers
        send on every POST, is the controller's public origin or the one this request was addressed to."""
        origin = request.headers.get("Origin")
        if not origin or origin == "null":
            return False
        allowed = {self._request_origin(request)}
        if self.config.server.public_url:
            allowed.add(_origin(self.config.server.public_url))
        return origin in allowed

    def _redirect_uri(self, request: web.Request) -> str:
        if self.config.console.redirect_url:
            return self.config.console.redirect_url
        base = self.config.server.public_url or self._request_origin(request)
        return base.rstrip("/") + "/console/callback"

    def _signed_in(self, response: web.StreamResponse, request: web.Request, sid: str, session: Session) -> None:
        response.set_cookie(
            COOKIE, sid, path="/", httponly=True, samesite="Strict", secure=self._secure(request),
            max_age=max(int(session.expires - self.clock()), 1),
        )  # fmt: skip

    def _signed_out(self, response: web.StreamResponse, request: web.Request) -> None:
        response.set_cookie(
            COOKIE, "", path="/", httponly=True, samesite="Strict", secure=self._secure(request), max_age=0
        )

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    # -- failures, counted like the API's ---------------------------------------------------------------------------

    def _blocked(self, request: web.Request) -> float:
        return self.api.limiter.retry_after(address_key(request.remote))

    def _failed(self, request: web.Request, method: str, reason: str, identity: str | None = None) -> None:
        """A refused sign-in: counted by the limiter and the auth-failure metric, audited (within the address's
        allowance, else in the window's summary, as the API does) and seen by the failed-auth alert."""
        key = address_key(request.remote)
        self.api.limiter.failed(key)
        self.api.metrics.auth_failures.labels(reason).inc()
        if self.api.refusals.refused(request.remote, reason, self.clock()):
            self.api.auditor.console_login(None, method, request.remote, "denied", reason=reason)
        if self.api.watch is not None:
            self.api.watch.auth_failed(key, identity)
        log.info("console sign-in refused", extra={"method": method, "reason": reason, "remote": request.remote})

    def _login_error(self, code: str) -> web.Response:
        """Back to the login page with a short code the page turns into a sentence (nothing from the request is
        reflected)."""
        return _see_other(f"/console#/login?error={code}")

    # -- the page and its files -------------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        if self.verifier is not None and not self._endpoints_known and self.clock() - self._discovery_tried >= 60:
            self._discovery_tried = self.clock()
            # The provider's authorization endpoint may live on another origin: the login form may go there. A
            # slow or unreachable provider delays the page by 2 s at most; the SSO button reports it when pressed.
            task = self._discovery_task = asyncio.ensure_future(self._discover())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its failure is retrieved, not logged
            with contextlib.suppress(OidcUnavailable, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 2.0)
        asset = self.assets["index.html"]
        return web.Response(body=asset.body, headers={"Content-Type": asset.content_type})

    async def not_found(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "no such console page"}, status=404)

    async def static(self, request: web.Request) -> web.Response:
        asset = self.assets.get(request.match_info["name"])
        if asset is None or request.match_info["name"] == "index.html":
            return web.json_response({"error": "no such file"}, status=404)
        headers = {"Content-Type": asset.content_type, "ETag": asset.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, headers=headers)

    async def session(self, request: web.Request) -> web.Response:
        """Who is signed in, what they hold, and the CSRF token the page's scripts send with every change."""
        session = self._session(request)
        if session is None:
            return web.json_response({"error": "not signed in", "sso": self.oidc is not None}, status=401)
        p = session.principal
        grants = [
            {"role": g.role, "pools": list(g.pools) if g.pools is not None else None,
             "repositories": list(g.repositories) if g.repositories is not None else None}
            for g in p.grants
        ]  # fmt: skip
        holds = {role: p.holds(role) for role in ("operator", "approver", "auditor")}
        return web.json_response(
            {"name": p.name, "kind": p.kind, "grants": grants, "holds": holds, "csrf": session.csrf,
             "expires": session.expires, "sso": self.oidc is not None}
        )  # fmt: skip

    # -- single sign-on ------------------------------------------------------------------------------------------

    async def _discover(self) -> tuple[str, str]:
        assert self.verifier is not None
        document = await self.verifier.discovery()
        authorize, token = _endpoint(document, "authorization_endpoint"), _endpoint(document, "token_endpoint")
        self._form_origins.add(_origin(authorize))
        self._endpoints_known = True
        return authorize, token

    def _remember(self, state: str, pending: _Pending) -> None:
        now = self.clock()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if now - oldest.created < PENDING_TTL_S and len(self._pending) < PENDING_MAX:
                break
            self._pending.popitem(last=False)
        self._pending[state] = pending

    async def login_sso(self, request: web.Request) -> web.Response:
        """Sends the browser to the provider: code flow, PKCE S256, a fresh state and nonce; `login_hint` (a
        user name the person typed) is passed on."""
        if self.verifier is None or self.client_id is None:
            return web.json_response({"error": "single sign-on is not configured ([api.oidc])"}, status=404)
        try:
            authorize, token_endpoint = await self._discover()
        except OidcUnavailable as exc:
            log.warning("console sign-in: identity provider unavailable", extra={"error": str(exc)})
            return self._login_error("provider_unavailable")
        verifier, state, nonce, binding = (secrets.token_urlsafe(48) for _ in range(4))
        redirect_uri = self._redirect_uri(request)
        self._remember(state, _Pending(verifier, nonce, _sha256(binding), redirect_uri, token_endpoint, self.clock()))
        params = {
            "response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri,
            "scope": self.config.console.scopes, "state": state, "nonce": nonce,
            "code_challenge": _b64url(hashlib.sha256(verifier.encode()).digest()), "code_challenge_method": "S256",
        }  # fmt: skip
        hint = request.query.get("login_hint", "").strip()
        if hint and len(hint) <= 256 and hint.isprintable():
            params["login_hint"] = hint
        sep = "&" if "?" in authorize else "?"
        response = _see_other(f"{authorize}{sep}{urlencode(params)}")
        response.set_cookie(
            SSO_COOKIE, binding, path="/console/callback", httponly=True, samesite="Lax",
            secure=self._secure(request), max_age=int(PENDING_TTL_S),
        )  # fmt: skip  # Lax: it must come back on the provider's redirect, a top-level GET from another site
        return response

    async def callback(self, request: web.Request) -> web.Response:
        """The provider's answer: the state must be one this browser started (single use, not expired), the code
        is exchanged with the PKCE verifier, and the ID token is verified (issuer, audience = the client id,
        signature and alg, expiry) and must carry the login's nonce. Then a session, and back to the console."""
        if self.verifier is None or self.oidc is None:
            return web.json_response({"error": "single sign-on is not configured ([api.oidc])"}, status=404)
        if self._blocked(request):
            return self._login_error("rate_limited")
        q = request.query
        state = q.get("state", "")
        pending = self._pending.pop(state, None) if state else None
        binding = request.cookies.get(SSO_COOKIE, "")
        if (
            pending is None
            or self.clock() - pending.created >= PENDING_TTL_S
            or not hmac.compare_digest(_sha256(binding), pending.binding)
        ):
            self._failed(request, "sso", "state_mismatch")
            return self._login_error("state_mismatch")
        if q.get("error") or not q.get("code"):
            self._failed(request, "sso", "provider_refused")
            return self._login_error("provider_refused")
        try:
            id_token = await self._exchange(pending, q["code"])
        except OidcUnavailable as exc:
            log.warning("console sign-in: token exchange failed", extra={"error": str(exc)})
            return self._login_error("provider_unavailable")
        except JwtRejected as exc:
            self._failed(request, "sso", exc.reason)
            return self._login_error("code_refused")
        try:
            claims = await self.verifier.verify_claims(id_token)
        except JwtRejected as exc:
            self._failed(request, "sso", exc.reason)
            return self._login_error("token_refused")
        except OidcUnavailable:
            return self._login_error("provider_unavailable")
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), pending.nonce.encode()):
            self._failed(request, "sso", "nonce_mismatch")
            return self._login_error("token_refused")
        azp = claims.get("azp")
        if azp is not None and azp != self.client_id:
            self._failed(request, "sso", "wrong_audience")
            return self._login_error("token_refused")
        principal = principal_of(claims, self.oidc)
        sid, session = self.sessions.create(principal)
        self.api.auditor.console_login(principal, "sso", request.remote, "ok")
        log.info("console sign-in", extra={"method": "sso", "who": principal.name, "remote": request.remote})
        response = _see_other("/console")
        self._signed_in(response, request, sid, session)
        response.del_cookie(SSO_COOKIE, path="/console/callback")
        return response

    async def _exchange(self, pending: _Pending, code: str) -> str:
        """The code for tokens at the token endpoint; only the ID token is kept, and only to verify it. Raises
        JwtRejected when the provider refuses the code, OidcUnavailable when it cannot be asked."""
        assert self.client_id is not None
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
                "code_verifier": pending.verifier, "client_id": self.client_id}  # fmt: skip
        headers = {"Accept": "application/json"}
        if self.client_secret is not None:  # client_secret_basic, both parts form-encoded first (RFC 6749 2.3.1)
            headers["Authorization"] = aiohttp.encode_basic_auth(
                quote(self.client_id, safe=""), quote(self.client_secret, safe="")
            )
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(pending.token_endpoint, data=form, ssl=self._ssl, headers=headers) as resp,
            ):
                body = await resp.content.read(1024 * 1024)
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise OidcUnavailable(f"{pending.token_endpoint}: {type(exc).__name__}") from None
        if 400 <= status < 500:
            raise JwtRejected("code_refused", f"the token endpoint answered {status}")
        if status != 200:
            raise OidcUnavailable(f"{pending.token_endpoint}: HTTP {status}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise OidcUnavailable(f"{pending.token_endpoint}: not JSON") from None
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(id_token, str):
            raise JwtRejected("missing_id_token", "the token endpoint sent no ID token")
        return id_token

    # -- token sign-in, sign-out -------------------------------------------------------------------------------

    def _token_expiry(self, token: str) -> float | None:
        """When the typed-in credential itself ends (a static token's `expires`, a JWT's `exp`): the session ends
        then too. Only called once the token has been authenticated."""
        matched = match_token(token, self.config.api.tokens, self.clock())
        if matched is not None:
            return matched.token.expires.timestamp() if matched.token.expires is not None else None
        if looks_like_jwt(token):
            try:
                exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
            except jwt.InvalidTokenError:
                return None
            return float(exp) if isinstance(exp, int | float) else None
        return None

    async def login_token(self, request: web.Request) -> web.Response:
        """Form field `token`: authenticated as the API would; a session instead of the token from then on. The
        answer is JSON for the page's script (Accept: application/json), else a redirect."""
        wants_json = "application/json" in request.headers.get("Accept", "")

        def refused(status: int, code: str, message: str) -> web.Response:
            if wants_json:
                return web.json_response({"error": message, "code": code}, status=status)
            return self._login_error(code)

        if not self._same_origin(request):
            self.api.metrics.auth_failures.labels("cross_origin_login").inc()
            return refused(403, "cross_origin", "a sign-in must come from the console's own page")
        if wait := self._blocked(request):
            limited = refused(429, "rate_limited", "too many failed sign-ins from this address; try again later")
            limited.headers["Retry-After"] = str(int(wait) + 1)
            return limited
        try:
            form = await request.post()
        except ValueError:
            form = None
        raw = form.get("token") if form is not None else None
        token = raw.strip() if isinstance(raw, str) else ""
        if not token or len(token) > MAX_TOKEN_CHARS:
            self._failed(request, "token", "missing_token")
            return refused(401, "token_refused", "give an API token")
        result: Principal | AuthRefused = await self.api.authenticator.authenticate("Bearer " + token)
        if isinstance(result, AuthRefused):
            if result.status == 503:
                self.api.metrics.auth_failures.labels(result.reason).inc()
                return refused(503, "provider_unavailable", result.message)
            self._failed(request, "token", result.reason, result.identity)
            return refused(401, "token_refused", result.message)  # the message never quotes the token
        sid, session = self.sessions.create(result, expires=self._token_expiry(token))
        self.api.auditor.console_login(result, "token", request.remote, "ok")
        log.info("console sign-in", extra={"method": "token", "who": result.name, "remote": request.remote})
        response: web.Response = (
            web.json_response({"name": result.name, "kind": result.kind}) if wants_json else _see_other("/console")
        )
        self._signed_in(response, request, sid, session)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """Ends the session; needs its CSRF token like every other change."""
        sid = request.cookies.get(COOKIE)
        session = self.sessions.get(sid)
        if session is None:
            response = web.json_response({"error": "not signed in"}, status=401)
            self._signed_out(response, request)
            return response
        if not Sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
            self.api.metrics.auth_failures.labels("csrf_refused").inc()
            return web.json_response({"error": f"signing out needs the session's {CSRF_HEADER}"}, status=403)
        self.sessions.end(sid)
        self.api.auditor.api(session.principal, "console.logout", None, request.remote, "ok")
        response = web.json_response({"signed_out": True})
        self._signed_out(response, request)
        return response

    # -- the attestation verdict ---------------------------------------------------------------------------------

    async def verdict(self, request: web.Request) -> web.Response:
        """The job's signed attestation verified here, with the controller's public key: the verdict and what it
        attests (subjects, state, approval). The same scope rule as the API: a job one may not view is a 404."""
        session = self._session(request)
        if session is None:
            return web.json_response({"error": "the console session has ended; sign in again"}, status=401)
        job_id = request.match_info["job_id"]
        principal = session.principal
        job = await self.api.store.get(job_id)
        if job is None or not principal.may("viewer", job.pool, job.spec.repository):
            return web.json_response({"error": f"no job {job_id!r}"}, status=404)
        try:
            raw = await asyncio.to_thread(self.api.attestations.read, job_id)
        except ValueError:
            return web.json_response({"error": f"no job {job_id!r}"}, status=404)
        if raw is None:
            verdict = "pending" if not job.state.final else "missing"
            message = "signed when the job's run ends" if verdict == "pending" else "the job has no attestation"
            return web.json_response({"verdict": verdict, "message": message})
        try:
            envelope = json.loads(raw)
            if not isinstance(envelope, dict):
                raise AttestationError("the envelope is not a JSON object")
            statement = verify_envelope(envelope, self._public_key)
            attested = read_job(statement)
        except (AttestationError, ValueError) as exc:
            return web.json_response({"verdict": "invalid", "message": str(exc)})
        if (attested.job_id, attested.repository, attested.sha) != (job.id, job.spec.repository, job.spec.sha):
            return web.json_response({"verdict": "invalid", "message": "the attestation is about another job"})
        subjects = [
            {"name": s.get("name"), "digest": s.get("digest")}
            for s in statement.get("subject", [])
            if isinstance(s, dict)
        ]
        return web.json_response(
            {"verdict": "verified", "key_id": key_id(self._public_key), "subjects": subjects,
             "state": attested.state, "exit_code": attested.exit_code, "reason": attested.reason,
             "builder_id": attested.builder_id, "fetched_commit": attested.fetched_commit,
             "approval": attested.approval}
        )  # fmt: skip
