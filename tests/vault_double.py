"""An in-process HashiCorp Vault HTTP API test double (aiohttp).

Its only role now: the failures a real server cannot be made to show on demand. The credentials suite runs
against a real OpenBao server (tests/openbao.py); this double serves the tests where Vault must misbehave --
sealed or gone in the middle of a job, 5xx and slow answers, malformed JSON (``down`` and the ``fault`` hook;
tests/integration/test_vault_outage.py) -- and its own fidelity tests (tests/vault/). Do not add tests here
that a real server can run.

It serves the small part of Vault's HTTP API that the runner orchestrator uses, answering with Vault's
envelope, status codes and error strings (see ``/work/shared/vault-api-facts.md`` and the JWT auth plugin /
``hashicorp/cap`` sources):

* ``POST /v1/auth/<mount>/login`` (JWT auth method): JWKS fetched over HTTP from ``jwks_url`` or from the
  ``jwks_uri`` of ``<oidc_discovery_url>/.well-known/openid-configuration`` (keys cached, re-fetched when
  no cached key verifies -- like go-oidc's ``RemoteKeySet``), signature checked with PyJWT, then ``iss``,
  ``sub``, ``aud``, time claims (cap's algorithm and leeways), user claim and bound claims.
* Tokens (``X-Vault-Token`` or ``Authorization: Bearer``) with TTL, ``num_uses``, revocation, leases and
  ACL policies (exact paths, trailing ``*`` prefix globs, ``+`` segment wildcards, ``deny``, ``sudo``,
  Vault's priority rules for overlapping paths and the built-in ``default`` policy).
* KV version 2 (read/write/soft-delete), dynamic secrets with leases, ``sys/leases/*``,
  ``auth/token/*`` (lookup-self, renew-self, revoke-self, revoke-accessor, lookup-accessor, create).
* Configuration endpoints (``sys/auth``, ``sys/mounts``, ``sys/policies/acl``, ``sys/policy``,
  ``auth/<mount>/config``, ``auth/<mount>/role/<name>``) so real setup scripts can run against it.

Tests drive it either over HTTP (hvac, curl) or through the synchronous admin helpers
(``configure_jwt``, ``add_role``, ``put_policy``, ``put_kv``, ``put_dynamic``, ``create_token``) and
inspect it with ``live_tokens``, ``token_by_accessor``, ``live_leases`` and ``requests``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import string
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.serialization import load_pem_public_key

__all__ = ["Lease", "TokenInfo", "VaultDouble", "parse_duration", "parse_policy"]

JSON = dict[str, Any]

SYSTEM_DEFAULT_TTL = 768 * 3600  # Vault's default_lease_ttl / max_lease_ttl (32 days)
SYSTEM_MAX_TTL = 768 * 3600
CAPABILITIES = frozenset({"create", "read", "update", "patch", "delete", "list", "sudo", "deny"})
ASYMMETRIC_ALGS = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
    "EdDSA",
)
PERMISSION_DENIED = "permission denied"
SEALED = "Vault is sealed"

# The rules of Vault's built-in "default" policy that matter here (a subset of the real one).
DEFAULT_POLICY_RULES: dict[str, list[str]] = {
    "auth/token/lookup-self": ["read"],
    "auth/token/renew-self": ["update"],
    "auth/token/revoke-self": ["update"],
    "sys/capabilities-self": ["update"],
    "sys/renew": ["update"],
    "sys/leases/renew": ["update"],
    "sys/leases/lookup": ["update"],
    "cubbyhole/*": ["create", "read", "update", "delete", "list"],
    "sys/wrapping/wrap": ["update"],
    "sys/wrapping/lookup": ["update"],
    "sys/wrapping/unwrap": ["update"],
    "sys/tools/hash": ["update"],
    "sys/tools/hash/*": ["update"],
    "sys/internal/ui/resultant-acl": ["read"],
    "sys/control-group/request": ["update"],
    "sys/mfa/challenge": ["update"],
}

_ALNUM = string.ascii_letters + string.digits


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _rand(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """Parse a Vault duration (``600``, ``"600"``, ``"15m"``, ``"1h30m"``, ``"2d"``) into whole seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}")
    text = value.strip()
    if text == "":
        return 0
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    negative = text.startswith("-")
    body = text[1:] if negative else text
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(body) or pos == 0:
        raise ValueError(f'time: invalid duration "{value}"')
    return -int(total) if negative else int(total)


def _str_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    raise ValueError(f"expected a list of strings, got {value!r}")


def _glob(pattern: str, value: str) -> bool:
    """``github.com/ryanuber/go-glob``: ``*`` matches any run of characters, nothing else is special."""
    if pattern == "*":
        return True
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern == value
    if not value.startswith(parts[0]) or not value.endswith(parts[-1]):
        return False
    pos = len(parts[0])
    end = len(value) - len(parts[-1])
    for part in parts[1:-1]:
        idx = value.find(part, pos, end)
        if idx < 0:
            return False
        pos = idx + len(part)
    return pos <= end


_HCL_BLOCK = re.compile(r'path\s+"((?:[^"\\]|\\.)*)"\s*\{([^{}]*)\}', re.S)
_HCL_CAPS = re.compile(r"capabilities\s*=\s*\[([^\]]*)\]", re.S)
_HCL_LEGACY = re.compile(r'policy\s*=\s*"([^"]*)"')
_LEGACY_POLICY = {
    "deny": ["deny"],
    "read": ["read", "list"],
    "write": ["create", "read", "update", "delete", "list"],
    "sudo": ["create", "read", "update", "delete", "list", "sudo"],
}


def parse_policy(text: str) -> dict[str, list[str]]:
    """Parse an ACL policy document: the simple HCL ``path "..." { capabilities = [...] }`` form or the
    JSON form ``{"path": {"<glob>": {"capabilities": [...]}}}``. Raises ``ValueError`` when malformed."""
    rules: dict[str, list[str]] = {}

    def add(path: str, caps: Iterable[str]) -> None:
        path = path.lstrip("/")
        merged = rules.setdefault(path, [])
        for cap in caps:
            cap = cap.strip().lower()
            if cap not in CAPABILITIES:
                raise ValueError(f'path "{path}": invalid capability "{cap}"')
            if cap not in merged:
                merged.append(cap)

    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(str(exc)) from exc
        paths = doc.get("path") if isinstance(doc, dict) else None
        if not isinstance(paths, dict):
            raise ValueError("policy has no path stanzas")
        for path, spec in paths.items():
            if not isinstance(spec, dict):
                raise ValueError(f'path "{path}": invalid stanza')
            if "capabilities" in spec:
                add(path, _str_list(spec["capabilities"]))
            elif "policy" in spec:
                add(path, _LEGACY_POLICY.get(str(spec["policy"]), ["<" + str(spec["policy"]) + ">"]))
        return rules

    body = _strip_hcl_comments(text)
    rest = body
    for block in _HCL_BLOCK.finditer(body):
        path, inner = block.group(1), block.group(2)
        caps_match = _HCL_CAPS.search(inner)
        if caps_match is not None:
            add(path, re.findall(r'"([^"]*)"', caps_match.group(1)))
        else:
            legacy = _HCL_LEGACY.search(inner)
            if legacy is None:
                raise ValueError(f'path "{path}": no capabilities')
            add(path, _LEGACY_POLICY.get(legacy.group(1), ["<" + legacy.group(1) + ">"]))
        rest = rest.replace(block.group(0), "", 1)
    if rest.strip():
        raise ValueError(f"At {rest.strip().splitlines()[0][:40]!r}: unexpected content")
    return rules


def _strip_hcl_comments(text: str) -> str:
    """Remove ``#``, ``//`` and ``/* */`` comments that are outside string literals."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif ch == "#" or text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _policy_hcl(paths: dict[str, list[str]]) -> str:
    blocks = []
    for path, caps in paths.items():
        quoted = ", ".join(json.dumps(cap) for cap in caps)
        blocks.append(f'path "{path}" {{\n  capabilities = [{quoted}]\n}}\n')
    return "\n".join(blocks)


def _acl_match(pattern: str, path: str) -> bool:
    is_prefix = pattern.endswith("*")
    pat = pattern[:-1] if is_prefix else pattern
    psegs = pat.split("/")
    if "+" not in psegs:
        return path.startswith(pat) if is_prefix else path == pat
    segs = path.split("/")
    if is_prefix:
        if len(segs) < len(psegs):
            return False
        for i, pseg in enumerate(psegs):
            if i == len(psegs) - 1:
                return pseg == "+" or "/".join(segs[i:]).startswith(pseg)
            if pseg != "+" and pseg != segs[i]:
                return False
        return True
    if len(segs) != len(psegs):
        return False
    return all(pseg in ("+", seg) for pseg, seg in zip(psegs, segs, strict=True))


def _acl_priority(pattern: str) -> tuple[float, bool, int, int, str]:
    """Sort key implementing Vault's policy priority rules (higher key = higher priority)."""
    positions = [i for i, ch in enumerate(pattern) if ch in "*+"]
    first_wildcard = float(positions[0]) if positions else float("inf")
    plus_segments = pattern.split("/").count("+")
    return (first_wildcard, not pattern.endswith("*"), -plus_segments, len(pattern), pattern)


def _json_pointer(claims: JSON, pointer: str) -> object:
    node: object = claims
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _get_claim(claims: JSON, name: str) -> object:
    if name.startswith("/"):
        return _json_pointer(claims, name)
    return claims.get(name)


def _normalize_claim(value: object) -> list[object] | None:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, str | bool):
        return [value]
    if isinstance(value, int | float):
        return [str(int(value)) if float(value).is_integer() else repr(value)]
    return None


# --------------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------------


@dataclass
class TokenInfo:
    """A token as the double stores it (``num_uses`` is the number of uses left; 0 = unlimited)."""

    id: str
    accessor: str
    policies: list[str]
    path: str
    display_name: str
    creation_time: float
    creation_ttl: int
    expire_time: float | None
    max_ttl: int = 0
    explicit_max_ttl: int = 0
    period: int = 0
    num_uses: int = 0
    initial_num_uses: int = 0
    metadata: dict[str, str] | None = None
    renewable: bool = True
    orphan: bool = True
    entity_id: str = ""
    token_type: str = "service"
    role: str | None = None
    mount: str | None = None
    parent: str | None = None
    revoked: bool = False
    exhausted: bool = False
    uses: int = 0
    last_renewal_time: float | None = None
    leases: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)

    @property
    def is_root(self) -> bool:
        return "root" in self.policies

    def expired(self, now: float) -> bool:
        return self.expire_time is not None and now >= self.expire_time

    def is_live(self, now: float) -> bool:
        return not self.revoked and not self.exhausted and not self.expired(now)

    def ttl(self, now: float) -> int:
        if self.expire_time is None:
            return 0
        return max(0, int(self.expire_time - now))


@dataclass
class Lease:
    lease_id: str
    path: str
    token: str
    issue_time: float
    expire_time: float
    renewable: bool
    data: dict[str, Any]
    revoked: bool = False


@dataclass
class JwtConfig:
    jwks_url: str = ""
    oidc_discovery_url: str = ""
    jwt_validation_pubkeys: list[str] = field(default_factory=list)
    bound_issuer: str = ""
    jwt_supported_algs: list[str] = field(default_factory=list)
    default_role: str = ""
    extra: JSON = field(default_factory=dict)


@dataclass
class JwtRole:
    name: str
    role_type: str = "jwt"
    bound_audiences: list[str] = field(default_factory=list)
    bound_subject: str = ""
    bound_claims: dict[str, Any] = field(default_factory=dict)
    bound_claims_type: str = "string"
    user_claim: str = "sub"
    claim_mappings: dict[str, str] = field(default_factory=dict)
    token_policies: list[str] = field(default_factory=list)
    token_ttl: int = 0
    token_max_ttl: int = 0
    token_explicit_max_ttl: int = 0
    token_num_uses: int = 0
    token_period: int = 0
    token_type: str = "default"
    token_no_default_policy: bool = False
    token_bound_cidrs: list[str] = field(default_factory=list)
    # None = use the double's attribute of the same name (Vault: 0 = default, -1 = no leeway)
    clock_skew_leeway: int | None = None
    expiration_leeway: int | None = None
    not_before_leeway: int | None = None


@dataclass
class AuthMount:
    type: str
    accessor: str
    uuid: str
    config: JwtConfig | None = None
    roles: dict[str, JwtRole] = field(default_factory=dict)
    jwks_cache: dict[str, list[JSON]] = field(default_factory=dict)
    jwks_fetched_at: dict[str, float] = field(default_factory=dict)
    discovered_jwks_uri: str | None = None


@dataclass
class KvVersion:
    data: dict[str, Any]
    created_time: float
    deletion_time: float | None = None
    destroyed: bool = False


@dataclass
class SecretsMount:
    type: str
    accessor: str
    uuid: str
    secrets: dict[str, list[KvVersion]] = field(default_factory=dict)


@dataclass
class DynamicSecret:
    data: dict[str, str]
    lease_duration: int


class VaultHTTPError(Exception):
    def __init__(self, status: int, errors: list[str] | None = None, body: JSON | None = None) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = [] if errors is None else errors
        self.body = body


class _SignatureError(Exception):
    pass


class _ValidationError(Exception):
    pass


class _ValidatorConfigError(Exception):
    pass


@dataclass
class _Ctx:
    request: web.Request
    rel: str
    method: str
    body: JSON
    token: TokenInfo
    groups: tuple[str, ...] = ()


Handler = Callable[[_Ctx], Awaitable[web.StreamResponse]]


@dataclass
class _Route:
    handler: Handler
    capability: str
    sudo: bool = False
    groups: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------
# the double
# --------------------------------------------------------------------------------------------------


class VaultDouble:
    """See the module docstring. All times come from ``clock`` (default ``time.time``)."""

    def __init__(self, *, root_token: str = "root-test-token", clock: Callable[[], float] | None = None) -> None:
        self.root_token = root_token
        self.clock: Callable[[], float] = clock or time.time
        self.url = ""
        self.down = False
        # Called with every request before it is served: a response it returns is the answer (a 502, garbage
        # with status 200, a stall); None lets the request through.
        self.fault: Callable[[web.Request], Awaitable[web.StreamResponse | None]] | None = None
        self.requests: list[tuple[str, str]] = []
        # JWT time leeways in seconds (0 = none). Semantics follow hashicorp/cap, which Vault uses:
        # ``exp``/``nbf``/``iat`` are checked with ``clock_skew_leeway`` (Vault default 60 s);
        # ``expiration_leeway`` / ``not_before_leeway`` (Vault default 150 s) only synthesise a missing
        # ``exp`` (latest of iat/nbf + leeway) or a missing ``nbf`` (exp - leeway, when iat is missing too).
        self.clock_skew_leeway = 60
        self.expiration_leeway = 150
        self.not_before_leeway = 150
        # go-oidc's RemoteKeySet tries every key when the JWT has no "kid"; the brief for this double
        # requires a kid, so that is the default. Set to False for the go-oidc behaviour.
        self.require_kid = True
        # JWKS keys are cached per URL and re-fetched when no cached key verifies the JWT (go-oidc's
        # RemoteKeySet). ``jwks_cache_ttl`` (seconds, on ``clock``) additionally expires the cache;
        # 0 = fetch on every login. ``jwks_fetches`` lists every fetched JWKS URL.
        self.jwks_cache_ttl: float | None = None
        self.jwks_fetches: list[str] = []
        self.http_timeout = 5.0

        self._tokens: dict[str, TokenInfo] = {}
        self._accessors: dict[str, str] = {}
        self._leases: dict[str, Lease] = {}
        self._policies: dict[str, dict[str, list[str]]] = {}
        self._policy_text: dict[str, str] = {}
        self._auth_mounts: dict[str, AuthMount] = {}
        self._secret_mounts: dict[str, SecretsMount] = {}
        self._dynamic: dict[str, DynamicSecret] = {}

        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port: int | None = None

        self._set_policy_rules("default", DEFAULT_POLICY_RULES)
        now = self.clock()
        self._store_token(
            TokenInfo(
                id=root_token,
                accessor=_rand(24),
                policies=["root"],
                path="auth/token/root",
                display_name="root",
                creation_time=now,
                creation_ttl=0,
                expire_time=None,
                renewable=False,
            )
        )
        # like `vault server -dev`: KV v2 mounted at secret/
        self._secret_mounts["secret"] = SecretsMount("kv", f"kv_{_rand(8)}", str(uuid.uuid4()))

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> str:
        """Start serving on 127.0.0.1 (a random free port first, the same port after a ``stop()``)."""
        if self._runner is not None:
            return self.url
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._port or 0, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self._port = int(address[1])
        self.url = f"http://127.0.0.1:{self._port}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.http_timeout))
        return self.url

    async def stop(self) -> None:
        """Stop serving (connections are refused until ``start()`` is called again)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> VaultDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------- admin helpers (no HTTP)

    def configure_jwt(
        self,
        mount: str = "jwt",
        *,
        jwks_url: str | None = None,
        oidc_discovery_url: str | None = None,
        bound_issuer: str | None = None,
        jwt_validation_pubkeys: list[str] | None = None,
        jwt_supported_algs: list[str] | None = None,
        default_role: str | None = None,
    ) -> None:
        """Enable (if needed) and configure a JWT auth mount, like ``auth/<mount>/config`` (no fetch)."""
        sources = [s for s in (jwks_url, oidc_discovery_url, jwt_validation_pubkeys) if s]
        if len(sources) != 1:
            raise ValueError("exactly one of jwks_url, oidc_discovery_url, jwt_validation_pubkeys")
        am = self._ensure_auth_mount(mount)
        am.config = JwtConfig(
            jwks_url=jwks_url or "",
            oidc_discovery_url=oidc_discovery_url or "",
            jwt_validation_pubkeys=list(jwt_validation_pubkeys or []),
            bound_issuer=bound_issuer or "",
            jwt_supported_algs=list(jwt_supported_algs or []),
            default_role=default_role or "",
        )
        am.jwks_cache.clear()
        am.jwks_fetched_at.clear()
        am.discovered_jwks_uri = None

    def add_role(
        self,
        mount: str,
        name: str,
        *,
        bound_audiences: list[str],
        bound_claims: dict[str, str | list[str]] | None = None,
        bound_claims_type: str = "string",
        bound_subject: str | None = None,
        user_claim: str = "sub",
        token_policies: list[str],
        token_ttl: int = 600,
        token_max_ttl: int = 0,
        token_num_uses: int = 0,
    ) -> None:
        """Create or replace a ``role_type=jwt`` role on a JWT auth mount."""
        if bound_claims_type not in ("string", "glob"):
            raise ValueError(f"invalid 'bound_claims_type': {bound_claims_type}")
        am = self._ensure_auth_mount(mount)
        am.roles[name.lower()] = JwtRole(
            name=name.lower(),
            bound_audiences=list(bound_audiences),
            bound_subject=bound_subject or "",
            bound_claims=dict(bound_claims or {}),
            bound_claims_type=bound_claims_type,
            user_claim=user_claim,
            token_policies=list(token_policies),
            token_ttl=token_ttl,
            token_max_ttl=token_max_ttl,
            token_num_uses=token_num_uses,
        )

    def put_policy(self, name: str, paths: dict[str, list[str]]) -> None:
        """Create or replace an ACL policy from ``{glob: [capabilities]}``."""
        text = _policy_hcl(paths)
        self._policy_text[name.lower()] = text
        self._set_policy_rules(name.lower(), parse_policy(text))

    def put_kv(self, mount: str, path: str, data: dict[str, str]) -> None:
        """Write a new version of a KV v2 secret (mounting a KV v2 engine at ``mount`` if needed)."""
        kv = self._secret_mounts.get(mount)
        if kv is None:
            kv = SecretsMount("kv", f"kv_{_rand(8)}", str(uuid.uuid4()))
            self._secret_mounts[mount] = kv
        elif kv.type != "kv":
            raise ValueError(f"{mount}/ is not a KV v2 mount")
        kv.secrets.setdefault(path.strip("/"), []).append(KvVersion(dict(data), self.clock()))

    def put_dynamic(self, path: str, data: dict[str, str], lease_duration: int = 300) -> None:
        """Register a dynamic-secret path: every read returns ``data`` under a new lease."""
        path = path.strip("/")
        self._dynamic[path] = DynamicSecret(dict(data), lease_duration)
        mount = path.split("/", 1)[0]
        if mount not in self._secret_mounts:
            self._secret_mounts[mount] = SecretsMount("dynamic", f"dyn_{_rand(8)}", str(uuid.uuid4()))

    def create_token(
        self,
        *,
        policies: list[str],
        ttl: int = 3600,
        num_uses: int = 0,
        period: int = 0,
        display_name: str = "token",
        meta: dict[str, str] | None = None,
        no_default_policy: bool = False,
    ) -> TokenInfo:
        """Create an orphan service token as root would (``auth/token/create-orphan``)."""
        return self._create_token(
            parent=None,
            orphan=True,
            policies=policies,
            ttl=ttl,
            num_uses=num_uses,
            period=period,
            explicit_max_ttl=0,
            display_name=display_name,
            meta=meta,
            renewable=True,
            no_default_policy=no_default_policy,
            path="auth/token/create-orphan",
        )

    def revoke_token(self, token_id: str) -> None:
        tok = self._tokens.get(token_id)
        if tok is not None:
            self._revoke_tree(tok)

    # ---------------------------------------------------------------- inspection

    def live_tokens(self) -> list[TokenInfo]:
        """Tokens that still work: not revoked, not expired, uses left (the root token is excluded)."""
        now = self.clock()
        return [t for t in self._tokens.values() if not t.is_root and t.is_live(now)]

    def token_by_accessor(self, accessor: str) -> TokenInfo | None:
        """The token with this accessor, including revoked/expired ones (check ``is_live``)."""
        token_id = self._accessors.get(accessor)
        return None if token_id is None else self._tokens.get(token_id)

    def live_leases(self) -> list[str]:
        """IDs of leases that are neither revoked, expired, nor owned by a dead token."""
        now = self.clock()
        return [lease.lease_id for lease in self._leases.values() if self._lease_live(lease, now)]

    def lease(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    # ---------------------------------------------------------------- internals: state

    def _ensure_auth_mount(self, mount: str) -> AuthMount:
        mount = mount.strip("/")
        am = self._auth_mounts.get(mount)
        if am is None:
            am = AuthMount("jwt", f"auth_jwt_{_rand(8)}", str(uuid.uuid4()))
            self._auth_mounts[mount] = am
        return am

    def _set_policy_rules(self, name: str, rules: dict[str, list[str]]) -> None:
        self._policies[name] = {path: list(caps) for path, caps in rules.items()}
        if name not in self._policy_text:
            self._policy_text[name] = _policy_hcl(rules)

    def _store_token(self, tok: TokenInfo) -> TokenInfo:
        self._tokens[tok.id] = tok
        self._accessors[tok.accessor] = tok.id
        return tok

    def _lease_live(self, lease: Lease, now: float) -> bool:
        if lease.revoked or now >= lease.expire_time:
            return False
        owner = self._tokens.get(lease.token)
        return owner is not None and owner.is_live(now)

    def _revoke_tree(self, tok: TokenInfo) -> None:
        for child_id in tok.children:
            child = self._tokens.get(child_id)
            if child is not None and not child.revoked:
                self._revoke_tree(child)
        tok.revoked = True
        for lease_id in tok.leases:
            lease = self._leases.get(lease_id)
            if lease is not None:
                lease.revoked = True

    def _create_token(
        self,
        *,
        parent: TokenInfo | None,
        orphan: bool,
        policies: list[str],
        ttl: int,
        num_uses: int,
        period: int,
        explicit_max_ttl: int,
        display_name: str,
        meta: dict[str, str] | None,
        renewable: bool,
        no_default_policy: bool,
        path: str,
    ) -> TokenInfo:
        now = self.clock()
        pols = sorted({p.lower() for p in policies} | (set() if no_default_policy else {"default"}))
        max_ttl = SYSTEM_MAX_TTL
        if explicit_max_ttl:
            max_ttl = min(max_ttl, explicit_max_ttl)
        if period:
            ttl = period if not explicit_max_ttl else min(period, explicit_max_ttl)
        else:
            ttl = min(ttl or SYSTEM_DEFAULT_TTL, max_ttl)
        tok = TokenInfo(
            id="hvs." + _rand(24),
            accessor=_rand(24),
            policies=pols,
            path=path,
            display_name="token" if display_name in ("", "token") else f"token-{display_name}",
            creation_time=now,
            creation_ttl=ttl,
            expire_time=now + ttl,
            max_ttl=max_ttl,
            explicit_max_ttl=explicit_max_ttl,
            period=period,
            num_uses=num_uses,
            initial_num_uses=num_uses,
            metadata=dict(meta) if meta else None,
            renewable=renewable,
            orphan=orphan,
            parent=None if orphan or parent is None else parent.id,
        )
        if tok.parent is not None and parent is not None:
            parent.children.append(tok.id)
        return self._store_token(tok)

    def _acl_allows(self, tok: TokenInfo, path: str, capability: str, sudo: bool) -> bool:
        if tok.is_root:
            return True
        merged: dict[str, set[str]] = {}
        for name in tok.policies:
            for pattern, rule_caps in self._policies.get(name, {}).items():
                merged.setdefault(pattern, set()).update(rule_caps)
        candidates = [pattern for pattern in merged if _acl_match(pattern, path)]
        if not candidates:
            return False
        caps = merged[max(candidates, key=_acl_priority)]
        if "deny" in caps or capability not in caps:
            return False
        return not sudo or "sudo" in caps

    # ---------------------------------------------------------------- HTTP plumbing

    @staticmethod
    def _json(status: int, body: JSON) -> web.Response:
        # exactly "application/json" like Vault (hvac only parses error bodies with that exact header)
        return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")

    @staticmethod
    def _envelope(
        data: object = None, *, auth: JSON | None = None, warnings: list[str] | None = None, **extra: object
    ) -> JSON:
        body: JSON = {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": data,
            "wrap_info": None,
            "warnings": warnings,
            "auth": auth,
        }
        body.update(extra)
        return body

    def _ok(self, data: object = None, **extra: Any) -> web.Response:
        return self._json(200, self._envelope(data, **extra))

    @staticmethod
    def _no_content() -> web.Response:
        return web.Response(status=204)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        try:
            if self.down:
                raise VaultHTTPError(503, [SEALED])
            if self.fault is not None and (answer := await self.fault(request)) is not None:
                return answer
            return await self._dispatch(request)
        except VaultHTTPError as exc:
            body = exc.body if exc.body is not None else {"errors": exc.errors}
            return self._json(exc.status, body)
        except Exception as exc:
            return self._json(500, {"errors": [f"internal error in vault double: {exc!r}"]})

    async def _read_body(self, request: web.Request) -> JSON:
        if request.method not in ("POST", "PUT", "PATCH"):
            return {}
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            parsed = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VaultHTTPError(400, [f"failed to parse JSON input: {exc}"]) from exc
        if not isinstance(parsed, dict):
            raise VaultHTTPError(400, ["failed to parse JSON input: body must be a JSON object"])
        return parsed

    @staticmethod
    def _operation(method: str, request: web.Request) -> str:
        if method == "GET":
            return "list" if request.query.get("list", "").lower() in ("true", "1") else "read"
        if method == "LIST":
            return "list"
        if method in ("POST", "PUT"):
            return "update"
        if method == "DELETE":
            return "delete"
        if method == "PATCH":
            return "patch"
        raise VaultHTTPError(405, [])

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/v1/"):
            raise VaultHTTPError(404, [])
        rel = path[len("/v1/") :].strip("/")
        method = request.method.upper()
        op = self._operation(method, request)
        body = await self._read_body(request)

        # unauthenticated endpoints
        if rel in ("sys/health", "sys/seal-status") and op == "read":
            return self._health(rel)
        login_mount = self._login_mount(rel)
        if login_mount is not None:
            if op != "update":
                raise VaultHTTPError(405, [])
            return await self._login(request, login_mount, body)

        tok = self._authenticate(request)
        tok.uses += 1
        if tok.num_uses > 0:
            tok.num_uses -= 1
            if tok.num_uses == 0:
                tok.exhausted = True  # this request still runs; the token is revoked afterwards
        try:
            route = self._route(rel, method, op)
            capability = route.capability if route is not None else op
            sudo = route.sudo if route is not None else False
            if not self._acl_allows(tok, rel, capability, sudo):
                raise VaultHTTPError(403, [PERMISSION_DENIED])
            if route is None:
                raise VaultHTTPError(404, [])
            ctx = _Ctx(request=request, rel=rel, method=method, body=body, token=tok, groups=route.groups)
            return await route.handler(ctx)
        finally:
            if tok.exhausted and not tok.revoked:
                self._revoke_tree(tok)

    def _authenticate(self, request: web.Request) -> TokenInfo:
        token_id = request.headers.get("X-Vault-Token", "")
        if not token_id:
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                token_id = auth[len("bearer ") :].strip()
        tok = self._tokens.get(token_id) if token_id else None
        now = self.clock()
        if tok is None or not tok.is_live(now):
            if tok is not None and tok.expired(now) and not tok.revoked:
                self._revoke_tree(tok)  # the expiration manager revokes expired tokens and their leases
            raise VaultHTTPError(403, [PERMISSION_DENIED])
        return tok

    def _login_mount(self, rel: str) -> str | None:
        if not rel.startswith("auth/") or not rel.endswith("/login"):
            return None
        mount = rel[len("auth/") : -len("/login")]
        return mount if mount in self._auth_mounts else None

    def _auth_mount_for(self, rel: str) -> tuple[str, str] | None:
        """``auth/<mount>/<rest>`` -> (mount, rest) for the longest matching JWT mount."""
        best: tuple[str, str] | None = None
        for mount in self._auth_mounts:
            prefix = f"auth/{mount}/"
            if rel.startswith(prefix) and (best is None or len(mount) > len(best[0])):
                best = (mount, rel[len(prefix) :])
            elif rel == f"auth/{mount}" and (best is None or len(mount) > len(best[0])):
                best = (mount, "")
        return best

    def _secret_mount_for(self, rel: str) -> tuple[str, str] | None:
        best: tuple[str, str] | None = None
        for mount in self._secret_mounts:
            prefix = f"{mount}/"
            if rel.startswith(prefix) and (best is None or len(mount) > len(best[0])):
                best = (mount, rel[len(prefix) :])
        return best

    def _route(self, rel: str, method: str, op: str) -> _Route | None:
        def r(handler: Handler, cap: str | None = None, *, sudo: bool = False, groups: Iterable[str] = ()) -> _Route:
            return _Route(handler, cap or op, sudo, tuple(groups))

        def unsupported(_: _Ctx) -> Awaitable[web.StreamResponse]:
            raise VaultHTTPError(405, ["unsupported operation"])

        writes = op in ("update",)
        # ---- sys/
        if rel == "sys/auth":
            return r(self._sys_auth_list, sudo=True) if op == "read" else r(unsupported)
        if rel.startswith("sys/auth/"):
            mount = rel[len("sys/auth/") :]
            if writes:
                return r(self._sys_auth_enable, sudo=True, groups=[mount])
            if op == "delete":
                return r(self._sys_auth_disable, sudo=True, groups=[mount])
            if op == "read":
                return r(self._sys_auth_read, sudo=True, groups=[mount])
            return r(unsupported)
        if rel == "sys/mounts":
            return r(self._sys_mounts_list) if op == "read" else r(unsupported)
        if rel.startswith("sys/mounts/"):
            mount = rel[len("sys/mounts/") :]
            if writes:
                return r(self._sys_mounts_enable, groups=[mount])
            if op == "delete":
                return r(self._sys_mounts_disable, groups=[mount])
            if op == "read":
                return r(self._sys_mounts_read, groups=[mount])
            return r(unsupported)
        if rel in ("sys/policies/acl", "sys/policy"):
            if op in ("list", "read"):
                return r(self._sys_policy_list, "list" if rel == "sys/policies/acl" else "read")
            return r(unsupported)
        for prefix in ("sys/policies/acl/", "sys/policy/"):
            if rel.startswith(prefix):
                name = rel[len(prefix) :]
                if writes:
                    return r(self._sys_policy_write, groups=[name])
                if op == "read":
                    return r(self._sys_policy_read, groups=[name])
                if op == "delete":
                    return r(self._sys_policy_delete, groups=[name])
                return r(unsupported)
        if rel == "sys/leases/revoke" or rel.startswith("sys/leases/revoke/"):
            lease_in_path = rel[len("sys/leases/revoke/") :] if rel != "sys/leases/revoke" else ""
            return r(self._sys_lease_revoke, groups=[lease_in_path]) if writes else r(unsupported)
        if rel == "sys/leases/lookup":
            return r(self._sys_lease_lookup) if writes else r(unsupported)
        # ---- auth/token/
        if rel.startswith("auth/token/"):
            sub = rel[len("auth/token/") :]
            if sub == "lookup-self" and op in ("read", "update"):
                return r(self._token_lookup_self, op)
            if sub == "renew-self" and writes:
                return r(self._token_renew_self)
            if sub == "revoke-self" and writes:
                return r(self._token_revoke_self)
            if sub == "revoke-accessor" and writes:
                return r(self._token_revoke_accessor)
            if sub == "lookup-accessor" and writes:
                return r(self._token_lookup_accessor)
            if sub in ("create", "create-orphan") and writes:
                return r(self._token_create, sudo=sub == "create-orphan", groups=[sub])
            if sub in (
                "lookup-self",
                "renew-self",
                "revoke-self",
                "revoke-accessor",
                "lookup-accessor",
                "create",
                "create-orphan",
            ):
                return r(unsupported)
            return None
        # ---- auth/<jwt mount>/
        auth_match = self._auth_mount_for(rel)
        if auth_match is not None:
            mount, sub = auth_match
            am = self._auth_mounts[mount]
            if sub == "config":
                if writes:
                    return r(self._jwt_config_write, groups=[mount])
                if op == "read":
                    return r(self._jwt_config_read, groups=[mount])
                return r(unsupported)
            if sub == "role" and op == "list":
                return r(self._jwt_role_list, groups=[mount])
            if sub.startswith("role/") and "/" not in sub[len("role/") :]:
                name = sub[len("role/") :].lower()
                if writes:
                    return r(self._jwt_role_write, "update" if name in am.roles else "create", groups=[mount, name])
                if op == "read":
                    return r(self._jwt_role_read, groups=[mount, name])
                if op == "delete":
                    return r(self._jwt_role_delete, groups=[mount, name])
                return r(unsupported)
            return None
        # ---- dynamic secrets
        if rel in self._dynamic:
            return r(self._dynamic_read, groups=[rel]) if op == "read" else r(unsupported)
        # ---- KV v2
        secret_match = self._secret_mount_for(rel)
        if secret_match is not None:
            mount, sub = secret_match
            if self._secret_mounts[mount].type == "kv" and sub.startswith("data/") and len(sub) > len("data/"):
                key = sub[len("data/") :]
                if writes:
                    exists = bool(self._secret_mounts[mount].secrets.get(key))
                    return r(self._kv_write, "update" if exists else "create", groups=[mount, key])
                if op == "read":
                    return r(self._kv_read, groups=[mount, key])
                if op == "delete":
                    return r(self._kv_delete, groups=[mount, key])
                return r(unsupported)
        return None

    # ---------------------------------------------------------------- sys/ handlers

    def _health(self, rel: str) -> web.Response:
        now = int(self.clock())
        if rel == "sys/seal-status":
            return self._json(
                200,
                {
                    "type": "shamir",
                    "initialized": True,
                    "sealed": False,
                    "t": 1,
                    "n": 1,
                    "progress": 0,
                    "nonce": "",
                    "version": "1.17.0-double",
                    "migration": False,
                    "recovery_seal": False,
                    "storage_type": "inmem",
                },
            )
        return self._json(
            200,
            {
                "initialized": True,
                "sealed": False,
                "standby": False,
                "performance_standby": False,
                "replication_performance_mode": "disabled",
                "replication_dr_mode": "disabled",
                "server_time_utc": now,
                "version": "1.17.0-double",
                "cluster_name": "vault-double",
                "cluster_id": "00000000-0000-0000-0000-000000000000",
            },
        )

    def _mount_info(self, type_: str, accessor: str, uuid_: str, options: JSON | None) -> JSON:
        return {
            "accessor": accessor,
            "config": {"default_lease_ttl": 0, "force_no_cache": False, "max_lease_ttl": 0},
            "description": "",
            "external_entropy_access": False,
            "local": False,
            "options": options,
            "plugin_version": "",
            "running_plugin_version": "",
            "running_sha256": "",
            "seal_wrap": False,
            "type": type_,
            "uuid": uuid_,
        }

    async def _sys_auth_list(self, ctx: _Ctx) -> web.StreamResponse:
        data: JSON = {"token/": self._mount_info("token", "auth_token_double", "token-uuid", None)}
        for mount, am in sorted(self._auth_mounts.items()):
            data[f"{mount}/"] = self._mount_info(am.type, am.accessor, am.uuid, None)
        return self._json(200, {**data, **self._envelope(data)})

    async def _sys_auth_read(self, ctx: _Ctx) -> web.StreamResponse:
        mount = ctx.groups[0]
        am = self._auth_mounts.get(mount)
        if am is None:
            raise VaultHTTPError(400, [f"No auth engine at {mount}/"])
        return self._ok(self._mount_info(am.type, am.accessor, am.uuid, None))

    async def _sys_auth_enable(self, ctx: _Ctx) -> web.StreamResponse:
        mount = ctx.groups[0]
        type_ = str(ctx.body.get("type") or "")
        if not type_:
            raise VaultHTTPError(400, ["backend type must be specified as a string"])
        if mount in self._auth_mounts or mount == "token":
            raise VaultHTTPError(400, [f"path is already in use at {mount}/"])
        if type_ not in ("jwt", "oidc"):
            raise VaultHTTPError(400, [f"plugin not found in the catalog: {type_} (the vault double has jwt only)"])
        am = self._ensure_auth_mount(mount)
        am.type = type_
        return self._no_content()

    async def _sys_auth_disable(self, ctx: _Ctx) -> web.StreamResponse:
        am = self._auth_mounts.pop(ctx.groups[0], None)
        if am is not None:
            for tok in self._tokens.values():
                if tok.mount == ctx.groups[0]:
                    self._revoke_tree(tok)
        return self._no_content()

    async def _sys_mounts_list(self, ctx: _Ctx) -> web.StreamResponse:
        data: JSON = {}
        for mount, sm in sorted(self._secret_mounts.items()):
            options = {"version": "2"} if sm.type == "kv" else None
            data[f"{mount}/"] = self._mount_info(sm.type, sm.accessor, sm.uuid, options)
        return self._json(200, {**data, **self._envelope(data)})

    async def _sys_mounts_read(self, ctx: _Ctx) -> web.StreamResponse:
        sm = self._secret_mounts.get(ctx.groups[0])
        if sm is None:
            raise VaultHTTPError(400, [f"No secret engine mount at {ctx.groups[0]}/"])
        options = {"version": "2"} if sm.type == "kv" else None
        return self._ok(self._mount_info(sm.type, sm.accessor, sm.uuid, options))

    async def _sys_mounts_enable(self, ctx: _Ctx) -> web.StreamResponse:
        mount = ctx.groups[0]
        type_ = str(ctx.body.get("type") or "")
        options = ctx.body.get("options") or {}
        if not type_:
            raise VaultHTTPError(400, ["backend type must be specified as a string"])
        if mount in self._secret_mounts or mount.split("/")[0] in ("sys", "auth", "cubbyhole", "identity"):
            raise VaultHTTPError(400, [f"path is already in use at {mount}/"])
        version = str(options.get("version", "1")) if isinstance(options, dict) else "1"
        if not (type_ == "kv-v2" or (type_ == "kv" and version == "2")):
            raise VaultHTTPError(400, [f"the vault double only supports KV version 2 mounts, not {type_!r} v{version}"])
        self._secret_mounts[mount] = SecretsMount("kv", f"kv_{_rand(8)}", str(uuid.uuid4()))
        return self._no_content()

    async def _sys_mounts_disable(self, ctx: _Ctx) -> web.StreamResponse:
        self._secret_mounts.pop(ctx.groups[0], None)
        return self._no_content()

    async def _sys_policy_list(self, ctx: _Ctx) -> web.StreamResponse:
        names = sorted([*self._policies, "root"])
        if ctx.rel == "sys/policy":
            return self._json(
                200, {"policies": names, "keys": names, **self._envelope({"keys": names, "policies": names})}
            )
        return self._ok({"keys": names})

    async def _sys_policy_read(self, ctx: _Ctx) -> web.StreamResponse:
        name = ctx.groups[0].lower()
        if name == "root":
            text = ""
        elif name in self._policy_text:
            text = self._policy_text[name]
        else:
            raise VaultHTTPError(404, [])
        if ctx.rel.startswith("sys/policy/"):
            return self._json(200, {"name": name, "rules": text, **self._envelope({"name": name, "rules": text})})
        return self._ok({"name": name, "policy": text})

    async def _sys_policy_write(self, ctx: _Ctx) -> web.StreamResponse:
        name = ctx.groups[0].lower()
        text = ctx.body.get("policy", ctx.body.get("rules"))
        if name == "root":
            raise VaultHTTPError(400, ['cannot update "root" policy'])
        if not isinstance(text, str) or not text.strip():
            raise VaultHTTPError(400, ["'policy' parameter not supplied or empty"])
        try:
            rules = parse_policy(text)
        except ValueError as exc:
            raise VaultHTTPError(400, [f"failed to parse policy: {exc}"]) from exc
        self._policy_text[name] = text
        self._set_policy_rules(name, rules)
        return self._no_content()

    async def _sys_policy_delete(self, ctx: _Ctx) -> web.StreamResponse:
        name = ctx.groups[0].lower()
        if name in ("root", "default"):
            raise VaultHTTPError(400, [f'cannot delete "{name}" policy'])
        self._policies.pop(name, None)
        self._policy_text.pop(name, None)
        return self._no_content()

    async def _sys_lease_revoke(self, ctx: _Ctx) -> web.StreamResponse:
        lease_id = ctx.groups[0] or str(ctx.body.get("lease_id") or "")
        if not lease_id:
            raise VaultHTTPError(400, ["lease_id must be specified"])
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.revoked = True
        return self._no_content()

    async def _sys_lease_lookup(self, ctx: _Ctx) -> web.StreamResponse:
        lease_id = str(ctx.body.get("lease_id") or "")
        if not lease_id:
            raise VaultHTTPError(400, ["missing lease id"])
        lease = self._leases.get(lease_id)
        now = self.clock()
        if lease is None or not self._lease_live(lease, now):
            raise VaultHTTPError(400, ["invalid lease"])
        return self._ok(
            {
                "id": lease.lease_id,
                "issue_time": _rfc3339(lease.issue_time),
                "expire_time": _rfc3339(lease.expire_time),
                "last_renewal": None,
                "renewable": lease.renewable,
                "ttl": max(0, int(lease.expire_time - now)),
            }
        )

    # ---------------------------------------------------------------- auth/token handlers

    def _token_data(self, tok: TokenInfo, *, hide_id: bool = False) -> JSON:
        now = self.clock()
        data: JSON = {
            "accessor": tok.accessor,
            "creation_time": int(tok.creation_time),
            "creation_ttl": tok.creation_ttl,
            "display_name": tok.display_name,
            "entity_id": tok.entity_id,
            "expire_time": None if tok.expire_time is None else _rfc3339(tok.expire_time),
            "explicit_max_ttl": tok.explicit_max_ttl,
            "id": "" if hide_id else tok.id,
            "issue_time": _rfc3339(tok.creation_time),
            "meta": tok.metadata,
            "num_uses": tok.num_uses,
            "orphan": tok.orphan,
            "path": tok.path,
            "policies": list(tok.policies),
            "renewable": tok.renewable,
            "ttl": tok.ttl(now),
            "type": tok.token_type,
        }
        if tok.period:
            data["period"] = tok.period
        if tok.last_renewal_time is not None:
            data["last_renewal"] = _rfc3339(tok.last_renewal_time)
            data["last_renewal_time"] = int(tok.last_renewal_time)
        return data

    def _auth_block(self, tok: TokenInfo, lease_duration: int | None = None) -> JSON:
        if lease_duration is None:
            lease_duration = tok.creation_ttl if tok.expire_time is not None else 0
        return {
            "client_token": tok.id,
            "accessor": tok.accessor,
            "policies": list(tok.policies),
            "token_policies": list(tok.policies),
            "metadata": tok.metadata,
            "lease_duration": lease_duration,
            "renewable": tok.renewable,
            "entity_id": tok.entity_id,
            "token_type": tok.token_type,
            "orphan": tok.orphan,
            "mfa_requirement": None,
            "num_uses": tok.num_uses,
        }

    async def _token_lookup_self(self, ctx: _Ctx) -> web.StreamResponse:
        return self._ok(self._token_data(ctx.token))

    async def _token_lookup_accessor(self, ctx: _Ctx) -> web.StreamResponse:
        target = self._by_accessor_or_400(ctx.body)
        return self._ok(self._token_data(target, hide_id=True))

    def _by_accessor_or_400(self, body: JSON) -> TokenInfo:
        accessor = str(body.get("accessor") or "")
        if not accessor:
            raise VaultHTTPError(400, ["missing accessor"])
        target = self.token_by_accessor(accessor)
        if target is None or not target.is_live(self.clock()):
            raise VaultHTTPError(400, ["invalid accessor"])
        return target

    async def _token_revoke_self(self, ctx: _Ctx) -> web.StreamResponse:
        self._revoke_tree(ctx.token)
        return self._no_content()

    async def _token_revoke_accessor(self, ctx: _Ctx) -> web.StreamResponse:
        target = self._by_accessor_or_400(ctx.body)
        self._revoke_tree(target)
        return self._no_content()

    async def _token_renew_self(self, ctx: _Ctx) -> web.StreamResponse:
        tok = ctx.token
        if tok.is_root or tok.expire_time is None:
            raise VaultHTTPError(400, ["lease is not renewable"])
        if not tok.renewable:
            raise VaultHTTPError(400, ["lease is not renewable"])
        try:
            increment = parse_duration(ctx.body.get("increment", 0))
        except ValueError as exc:
            raise VaultHTTPError(400, [str(exc)]) from exc
        now = self.clock()
        warnings: list[str] | None = None
        if tok.period:
            ttl = tok.period
        else:
            role_ttl = 0
            if tok.mount is not None and tok.role is not None:
                am = self._auth_mounts.get(tok.mount)
                role = am.roles.get(tok.role) if am is not None else None
                if role is None:
                    raise VaultHTTPError(400, [f"role {tok.role} does not exist during renewal"])
                role_ttl = role.token_ttl
            ttl = increment or role_ttl or tok.creation_ttl
            hard_limit = tok.creation_time + tok.max_ttl
            if now + ttl > hard_limit:
                capped = max(0, int(hard_limit - now))
                warnings = [
                    f'TTL of "{ttl}s" exceeded the effective max_ttl of "{capped}s"; TTL value is capped accordingly'
                ]
                ttl = capped
        tok.expire_time = now + ttl
        tok.last_renewal_time = now
        return self._json(200, self._envelope(None, auth=self._auth_block(tok, ttl), warnings=warnings))

    async def _token_create(self, ctx: _Ctx) -> web.StreamResponse:
        parent = ctx.token
        body = ctx.body
        try:
            policies = _str_list(body.get("policies"))
            ttl = parse_duration(body.get("ttl", 0))
            period = parse_duration(body.get("period", 0))
            explicit_max_ttl = parse_duration(body.get("explicit_max_ttl", 0))
            num_uses = int(body.get("num_uses", 0))
        except (TypeError, ValueError) as exc:
            raise VaultHTTPError(400, [str(exc)]) from exc
        if not policies:
            policies = list(parent.policies)  # a child token inherits its parent's policies
        if not parent.is_root:
            allowed = set(parent.policies) | {"default"}
            if not set(policies) <= allowed:
                raise VaultHTTPError(400, ["child policies must be subset of parent"])
        meta = body.get("meta")
        orphan = ctx.groups[0] == "create-orphan" or bool(body.get("no_parent"))
        if "root" in policies:
            now = self.clock()
            tok = self._store_token(
                TokenInfo(
                    id="hvs." + _rand(24),
                    accessor=_rand(24),
                    policies=["root"],
                    path=f"auth/token/{ctx.groups[0]}",
                    display_name="token",
                    creation_time=now,
                    creation_ttl=ttl,
                    expire_time=now + ttl if ttl else None,
                    renewable=False,
                    orphan=orphan,
                )
            )
        else:
            tok = self._create_token(
                parent=parent,
                orphan=orphan,
                policies=policies,
                ttl=ttl,
                num_uses=num_uses,
                period=period,
                explicit_max_ttl=explicit_max_ttl,
                display_name=str(body.get("display_name") or ""),
                meta={str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else None,
                renewable=body.get("renewable", True) is not False,
                no_default_policy=bool(body.get("no_default_policy")),
                path=f"auth/token/{ctx.groups[0]}",
            )
        return self._json(200, self._envelope(None, auth=self._auth_block(tok)))

    # ---------------------------------------------------------------- JWT auth: config and roles

    async def _jwt_config_read(self, ctx: _Ctx) -> web.StreamResponse:
        cfg = self._auth_mounts[ctx.groups[0]].config
        if cfg is None:
            return self._ok(None)
        return self._ok(
            {
                "bound_issuer": cfg.bound_issuer,
                "default_role": cfg.default_role,
                "jwks_url": cfg.jwks_url,
                "jwks_ca_pem": "",
                "jwt_supported_algs": cfg.jwt_supported_algs,
                "jwt_validation_pubkeys": cfg.jwt_validation_pubkeys,
                "oidc_discovery_url": cfg.oidc_discovery_url,
                "oidc_discovery_ca_pem": "",
                "oidc_client_id": cfg.extra.get("oidc_client_id", ""),
                "namespace_in_state": True,
                "provider_config": {},
            }
        )

    async def _jwt_config_write(self, ctx: _Ctx) -> web.StreamResponse:
        am = self._auth_mounts[ctx.groups[0]]
        body = ctx.body
        discovery = str(body.get("oidc_discovery_url") or "")
        jwks_url = str(body.get("jwks_url") or "")
        try:
            pubkeys = _str_list(body.get("jwt_validation_pubkeys"))
            algs = _str_list(body.get("jwt_supported_algs"))
        except ValueError as exc:
            raise VaultHTTPError(400, [str(exc)]) from exc
        if sum(1 for source in (discovery, jwks_url, pubkeys) if source) != 1:
            raise VaultHTTPError(
                400, ["exactly one of 'jwt_validation_pubkeys', 'jwks_url' or 'oidc_discovery_url' must be set"]
            )
        for alg in algs:
            if alg not in ASYMMETRIC_ALGS:
                raise VaultHTTPError(400, [f"invalid jwt_supported_algs: unsupported signing algorithm: {alg}"])
        for pem in pubkeys:
            try:
                load_pem_public_key(pem.encode())
            except ValueError as exc:
                raise VaultHTTPError(400, [f"error parsing public key: {exc}"]) from exc
        if discovery:
            try:
                await self._discover(discovery)
            except _ValidatorConfigError as exc:
                raise VaultHTTPError(400, [f"error checking oidc discovery URL: {exc}"]) from exc
        if jwks_url:
            try:
                await self._fetch_jwks(jwks_url)
            except _SignatureError as exc:
                raise VaultHTTPError(400, [f"error checking jwks URL: {exc}"]) from exc
        known = {"oidc_discovery_url", "jwks_url", "jwt_validation_pubkeys", "jwt_supported_algs"}
        am.config = JwtConfig(
            jwks_url=jwks_url,
            oidc_discovery_url=discovery,
            jwt_validation_pubkeys=pubkeys,
            bound_issuer=str(body.get("bound_issuer") or ""),
            jwt_supported_algs=algs,
            default_role=str(body.get("default_role") or "").lower(),
            extra={k: v for k, v in body.items() if k not in known},
        )
        am.jwks_cache.clear()
        am.jwks_fetched_at.clear()
        am.discovered_jwks_uri = None
        return self._no_content()

    async def _jwt_role_list(self, ctx: _Ctx) -> web.StreamResponse:
        roles = sorted(self._auth_mounts[ctx.groups[0]].roles)
        if not roles:
            raise VaultHTTPError(404, [])
        return self._ok({"keys": roles})

    async def _jwt_role_read(self, ctx: _Ctx) -> web.StreamResponse:
        role = self._auth_mounts[ctx.groups[0]].roles.get(ctx.groups[1])
        if role is None:
            raise VaultHTTPError(404, [])
        return self._ok(
            {
                "role_type": role.role_type,
                "bound_audiences": role.bound_audiences,
                "bound_subject": role.bound_subject,
                "bound_claims": role.bound_claims or None,
                "bound_claims_type": role.bound_claims_type,
                "user_claim": role.user_claim,
                "claim_mappings": role.claim_mappings or None,
                "token_policies": role.token_policies,
                "policies": role.token_policies,
                "token_ttl": role.token_ttl,
                "ttl": role.token_ttl,
                "token_max_ttl": role.token_max_ttl,
                "max_ttl": role.token_max_ttl,
                "token_explicit_max_ttl": role.token_explicit_max_ttl,
                "token_num_uses": role.token_num_uses,
                "num_uses": role.token_num_uses,
                "token_period": role.token_period,
                "period": role.token_period,
                "token_type": role.token_type,
                "token_no_default_policy": role.token_no_default_policy,
                "token_bound_cidrs": role.token_bound_cidrs,
                "clock_skew_leeway": role.clock_skew_leeway if role.clock_skew_leeway is not None else 0,
                "expiration_leeway": role.expiration_leeway if role.expiration_leeway is not None else 0,
                "not_before_leeway": role.not_before_leeway if role.not_before_leeway is not None else 0,
            }
        )

    async def _jwt_role_delete(self, ctx: _Ctx) -> web.StreamResponse:
        self._auth_mounts[ctx.groups[0]].roles.pop(ctx.groups[1], None)
        return self._no_content()

    async def _jwt_role_write(self, ctx: _Ctx) -> web.StreamResponse:
        mount, name = ctx.groups
        am = self._auth_mounts[mount]
        body = ctx.body
        existing = am.roles.get(name)
        role = JwtRole(name=name) if existing is None else JwtRole(**existing.__dict__)

        def leeway(field_name: str) -> int | None:
            seconds = parse_duration(body[field_name])
            return None if seconds == 0 else max(seconds, 0)

        try:
            if "role_type" in body:
                role.role_type = str(body["role_type"])
            if "user_claim" in body:
                role.user_claim = str(body["user_claim"] or "")
            elif existing is None:
                role.user_claim = ""
            if "bound_audiences" in body:
                role.bound_audiences = _str_list(body["bound_audiences"])
            if "bound_subject" in body:
                role.bound_subject = str(body["bound_subject"] or "")
            if "bound_claims" in body:
                claims = body["bound_claims"] or {}
                if not isinstance(claims, dict):
                    raise ValueError("bound_claims must be a map")
                role.bound_claims = dict(claims)
            if "bound_claims_type" in body:
                role.bound_claims_type = str(body["bound_claims_type"] or "string")
            if "claim_mappings" in body:
                mappings = body["claim_mappings"] or {}
                if not isinstance(mappings, dict):
                    raise ValueError("claim_mappings must be a map")
                role.claim_mappings = {str(k): str(v) for k, v in mappings.items()}
            for key in ("token_policies", "policies"):
                if key in body:
                    role.token_policies = _str_list(body[key])
                    break
            for key in ("token_bound_cidrs", "bound_cidrs"):
                if key in body:
                    role.token_bound_cidrs = _str_list(body[key])
                    for cidr in role.token_bound_cidrs:
                        ipaddress.ip_network(cidr, strict=False)
                    break
            for attr, aliases in (
                ("token_ttl", ("token_ttl", "ttl")),
                ("token_max_ttl", ("token_max_ttl", "max_ttl")),
                ("token_explicit_max_ttl", ("token_explicit_max_ttl",)),
                ("token_period", ("token_period", "period")),
            ):
                for key in aliases:
                    if key in body:
                        setattr(role, attr, parse_duration(body[key]))
                        break
            for key in ("token_num_uses", "num_uses"):
                if key in body:
                    role.token_num_uses = int(body[key])
                    break
            if "token_type" in body:
                role.token_type = str(body["token_type"] or "default")
            if "token_no_default_policy" in body:
                role.token_no_default_policy = bool(body["token_no_default_policy"])
            if "clock_skew_leeway" in body:
                role.clock_skew_leeway = leeway("clock_skew_leeway")
            if "expiration_leeway" in body:
                role.expiration_leeway = leeway("expiration_leeway")
            if "not_before_leeway" in body:
                role.not_before_leeway = leeway("not_before_leeway")
        except (TypeError, ValueError) as exc:
            raise VaultHTTPError(400, [f"error converting input: {exc}"]) from exc

        if role.role_type not in ("jwt", "oidc"):
            raise VaultHTTPError(400, [f"invalid 'role_type': {role.role_type}"])
        if not role.user_claim:
            raise VaultHTTPError(400, ["a user claim must be defined on the role"])
        if role.bound_claims_type not in ("string", "glob"):
            raise VaultHTTPError(400, [f"invalid 'bound_claims_type': {role.bound_claims_type}"])
        for claim, value in role.bound_claims.items():
            values = value if isinstance(value, list) else [value]
            if role.bound_claims_type == "glob" and not all(isinstance(v, str) for v in values):
                raise VaultHTTPError(400, [f"claim is not a string or list: {claim}"])
        if role.token_type not in ("default", "service", "default-service"):
            raise VaultHTTPError(400, [f"the vault double only issues service tokens, not {role.token_type!r}"])
        if role.token_num_uses < 0:
            raise VaultHTTPError(400, ["'token_num_uses' cannot be negative"])
        if role.token_max_ttl and role.token_ttl > role.token_max_ttl:
            raise VaultHTTPError(400, ["'token_ttl' cannot be greater than 'token_max_ttl'"])
        if role.role_type == "jwt" and not (
            role.bound_audiences or role.bound_subject or role.bound_claims or role.token_bound_cidrs
        ):
            raise VaultHTTPError(400, ["must have at least one bound constraint when creating/updating a role"])
        am.roles[name] = role
        return self._no_content()

    # ---------------------------------------------------------------- JWT auth: login

    async def _login(self, request: web.Request, mount: str, body: JSON) -> web.StreamResponse:
        am = self._auth_mounts[mount]
        cfg = am.config
        if cfg is None:
            raise VaultHTTPError(400, ["could not load configuration"])
        role_name = str(body.get("role") or "").lower() or cfg.default_role
        if not role_name:
            raise VaultHTTPError(400, ["missing role"])
        role = am.roles.get(role_name)
        if role is None:
            raise VaultHTTPError(400, [f'role "{role_name}" could not be found'])
        if role.role_type == "oidc":
            raise VaultHTTPError(400, ["role with oidc role_type is not allowed"])
        token = body.get("jwt")
        if not isinstance(token, str) or not token:
            raise VaultHTTPError(400, ["missing token"])
        if role.token_bound_cidrs:
            remote = request.remote or ""
            try:
                addr = ipaddress.ip_address(remote)
            except ValueError as exc:
                raise VaultHTTPError(403, [PERMISSION_DENIED]) from exc
            if not any(addr in ipaddress.ip_network(c, strict=False) for c in role.token_bound_cidrs):
                raise VaultHTTPError(403, [PERMISSION_DENIED])

        try:
            claims = await self._validate_jwt(am, cfg, role, token)
        except _ValidatorConfigError as exc:
            raise VaultHTTPError(400, [f"error configuring token validator: {exc}"]) from exc
        except _SignatureError as exc:
            raise VaultHTTPError(400, [f"error validating token: error verifying token signature: {exc}"]) from exc
        except _ValidationError as exc:
            raise VaultHTTPError(400, [f"error validating token: {exc}"]) from exc

        aud = claims.get("aud")
        if isinstance(aud, list) and aud and not role.bound_audiences:
            raise VaultHTTPError(400, ["audience claim found in JWT but no audiences bound to the role"])

        if role.user_claim not in claims:
            raise VaultHTTPError(400, [f'claim "{role.user_claim}" not found in token'])
        user = claims[role.user_claim]
        if not isinstance(user, str):
            raise VaultHTTPError(400, [f'claim "{role.user_claim}" could not be converted to string'])
        metadata: dict[str, str] = {"role": role_name}
        for source, target in role.claim_mappings.items():
            value = _get_claim(claims, source)
            if value is None:
                continue
            if not isinstance(value, str):
                raise VaultHTTPError(400, [f"error converting claim '{source}' to string"])
            metadata[target] = value

        try:
            self._check_bound_claims(role, claims)
        except _ValidationError as exc:
            raise VaultHTTPError(400, [f"error validating claims: {exc}"]) from exc

        tok = self._issue_login_token(mount, role, user, metadata)
        return self._json(200, self._envelope(None, auth=self._auth_block(tok)))

    def _issue_login_token(self, mount: str, role: JwtRole, user: str, metadata: dict[str, str]) -> TokenInfo:
        now = self.clock()
        policies = {p.lower() for p in role.token_policies}
        if not role.token_no_default_policy:
            policies.add("default")
        max_ttl = min(role.token_max_ttl or SYSTEM_MAX_TTL, SYSTEM_MAX_TTL)
        if role.token_explicit_max_ttl:
            max_ttl = min(max_ttl, role.token_explicit_max_ttl)
        if role.token_period:
            ttl = role.token_period
            if role.token_explicit_max_ttl:
                ttl = min(ttl, role.token_explicit_max_ttl)
        else:
            ttl = min(role.token_ttl or SYSTEM_DEFAULT_TTL, max_ttl)
        display = f"{mount.replace('/', '-')}-{user}".rstrip("-")
        tok = TokenInfo(
            id="hvs." + _rand(24),
            accessor=_rand(24),
            policies=sorted(policies),
            path=f"auth/{mount}/login",
            display_name=display,
            creation_time=now,
            creation_ttl=ttl,
            expire_time=now + ttl,
            max_ttl=max_ttl,
            explicit_max_ttl=role.token_explicit_max_ttl,
            period=role.token_period,
            num_uses=role.token_num_uses,
            initial_num_uses=role.token_num_uses,
            metadata=metadata,
            renewable=True,
            orphan=True,
            entity_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{mount}/{user}")),
            role=role.name,
            mount=mount,
        )
        return self._store_token(tok)

    def _check_bound_claims(self, role: JwtRole, claims: JSON) -> None:
        use_globs = role.bound_claims_type == "glob"
        for claim, expected in role.bound_claims.items():
            actual = _get_claim(claims, claim)
            if actual is None:
                raise _ValidationError(f'claim "{claim}" is missing')
            actual_values = _normalize_claim(actual)
            if actual_values is None:
                raise _ValidationError(f"received claim is not a string, bool, int or list: {actual}")
            expected_values = _normalize_claim(expected)
            if expected_values is None:
                raise _ValidationError(f"bound claim is not a string, bool, int or list: {expected}")
            found = False
            for exp in expected_values:
                for act in actual_values:
                    if use_globs:
                        if not isinstance(exp, str):
                            raise _ValidationError(f"received claim is not a glob string: {exp}")
                        if isinstance(act, str) and _glob(exp, act):
                            found = True
                    elif type(exp) is type(act) and exp == act:
                        found = True
            if not found:
                raise _ValidationError(f'claim "{claim}" does not match any associated bound claim values')

    def _leeways(self, role: JwtRole) -> tuple[int, int, int]:
        def pick(role_value: int | None, default: int) -> int:
            return default if role_value is None else role_value

        return (
            pick(role.clock_skew_leeway, self.clock_skew_leeway),
            pick(role.expiration_leeway, self.expiration_leeway),
            pick(role.not_before_leeway, self.not_before_leeway),
        )

    async def _validate_jwt(self, am: AuthMount, cfg: JwtConfig, role: JwtRole, token: str) -> JSON:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _SignatureError(f"oidc: malformed jwt: {exc}") from exc
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGS:
            raise _SignatureError(f'oidc: malformed jwt: unexpected signature algorithm "{alg}"')
        kid = header.get("kid")

        payload: bytes | None
        if cfg.jwt_validation_pubkeys:
            payload = self._verify_with_pems(token, alg, cfg.jwt_validation_pubkeys)
        else:
            if cfg.oidc_discovery_url:
                if am.discovered_jwks_uri is None:
                    am.discovered_jwks_uri = await self._discover(cfg.oidc_discovery_url)
                jwks_url = am.discovered_jwks_uri
            else:
                jwks_url = cfg.jwks_url
            if not isinstance(kid, str) and self.require_kid:
                raise _SignatureError("failed to verify id token signature (the token has no kid header)")
            fetched_at = am.jwks_fetched_at.get(jwks_url)
            ttl = self.jwks_cache_ttl
            if fetched_at is not None and ttl is not None and self.clock() - fetched_at >= ttl:
                am.jwks_cache.pop(jwks_url, None)
            payload = self._verify_with_jwks(token, alg, kid, am.jwks_cache.get(jwks_url, []))
            if payload is None:
                keys = await self._fetch_jwks(jwks_url)
                am.jwks_cache[jwks_url] = keys
                am.jwks_fetched_at[jwks_url] = self.clock()
                payload = self._verify_with_jwks(token, alg, kid, keys)
            if payload is None:
                raise _SignatureError("failed to verify id token signature")
        try:
            claims = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _SignatureError(f"oidc: failed to unmarshal claims: {exc}") from exc
        if not isinstance(claims, dict):
            raise _SignatureError("oidc: failed to unmarshal claims: not a JSON object")

        supported = cfg.jwt_supported_algs or list(ASYMMETRIC_ALGS)
        if alg not in supported:
            raise _ValidationError("invalid algorithm (alg) header parameter: token signed with unexpected algorithm")
        if cfg.bound_issuer and cfg.bound_issuer != claims.get("iss"):
            raise _ValidationError("invalid issuer (iss) claim")
        if role.bound_subject and role.bound_subject != claims.get("sub"):
            raise _ValidationError("invalid subject (sub) claim")
        if role.bound_audiences:
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(expected in audiences for expected in role.bound_audiences):
                raise _ValidationError(
                    "invalid audience (aud) claim: audience claim does not match any expected audience"
                )
        self._check_times(role, claims)
        return claims

    def _check_times(self, role: JwtRole, claims: JSON) -> None:
        def numeric(name: str) -> int:
            value = claims.get(name)
            if value is None:
                return 0
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _ValidationError(f"json: cannot unmarshal {type(value).__name__} into NumericDate ({name})")
            return int(value)

        iat, exp, nbf = numeric("iat"), numeric("exp"), numeric("nbf")
        if iat == 0 and exp == 0 and nbf == 0:
            raise _ValidationError("no issued at (iat), not before (nbf), or expiration time (exp) claims in token")
        skew, exp_leeway, nbf_leeway = self._leeways(role)
        if exp == 0:
            exp = max(iat, nbf) + exp_leeway
        if nbf == 0:
            nbf = iat if iat != 0 else exp - nbf_leeway
        now = self.clock()
        if now + skew < nbf:
            raise _ValidationError("invalid not before (nbf) claim: token not yet valid")
        if now - skew > exp:
            raise _ValidationError("invalid expiration time (exp) claim: token is expired")
        if iat and now + skew < iat:
            raise _ValidationError("invalid issued at (iat) claim: token issued in the future")

    @staticmethod
    def _verify_with_jwks(token: str, alg: str, kid: object, keys: list[JSON]) -> bytes | None:
        for key in keys:
            if kid is not None and key.get("kid") != kid:
                continue
            try:
                public = jwt.PyJWK(key, algorithm=alg)
                payload: bytes = jwt.PyJWS().decode(token, key=public.key, algorithms=[alg])
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue
            return payload
        return None

    @staticmethod
    def _verify_with_pems(token: str, alg: str, pems: list[str]) -> bytes:
        for pem in pems:
            try:
                public = load_pem_public_key(pem.encode())
                payload: bytes = jwt.PyJWS().decode(token, key=public, algorithms=[alg])  # type: ignore[arg-type]
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
            return payload
        raise _SignatureError("no known key successfully validated the token signature")

    async def _http_get_json(self, url: str) -> tuple[int, str, object]:
        session = self._session
        if session is None:
            raise RuntimeError("the vault double is not started")
        async with session.get(url, headers={"Accept": "application/json"}) as resp:
            text = await resp.text()
            try:
                parsed: object = json.loads(text)
            except json.JSONDecodeError:
                parsed = None
            return resp.status, text, parsed

    async def _discover(self, issuer: str) -> str:
        """cap's NewOIDCDiscoveryKeySet: fetch the discovery document, check ``issuer``, return ``jwks_uri``."""
        well_known = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            status, text, doc = await self._http_get_json(well_known)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _ValidatorConfigError(f'Get "{well_known}": {exc}') from exc
        if status != 200:
            raise _ValidatorConfigError(f"{status}: {text}")
        if not isinstance(doc, dict):
            raise _ValidatorConfigError("failed to decode OIDC discovery document")
        if doc.get("issuer") != issuer:
            raise _ValidatorConfigError(
                f"issuer did not match the returned issuer, expected {issuer!r} got {doc.get('issuer')!r}"
            )
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise _ValidatorConfigError("failed to decode OIDC discovery document: no jwks_uri")
        return jwks_uri

    async def _fetch_jwks(self, url: str) -> list[JSON]:
        self.jwks_fetches.append(url)
        try:
            status, text, doc = await self._http_get_json(url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _SignatureError(f"fetching keys oidc: get keys failed: {exc}") from exc
        if status != 200:
            raise _SignatureError(f"fetching keys oidc: get keys failed: {status} {text}")
        keys = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(keys, list):
            raise _SignatureError("fetching keys oidc: failed to decode keys")
        return [key for key in keys if isinstance(key, dict)]

    # ---------------------------------------------------------------- secrets

    def _kv_metadata(self, version: int, ver: KvVersion) -> JSON:
        return {
            "created_time": _rfc3339(ver.created_time),
            "custom_metadata": None,
            "deletion_time": "" if ver.deletion_time is None else _rfc3339(ver.deletion_time),
            "destroyed": ver.destroyed,
            "version": version,
        }

    async def _kv_read(self, ctx: _Ctx) -> web.StreamResponse:
        mount, key = ctx.groups
        versions = self._secret_mounts[mount].secrets.get(key)
        raw_version = ctx.request.query.get("version", "0") or "0"
        try:
            wanted = int(raw_version)
        except ValueError as exc:
            raise VaultHTTPError(
                400,
                [f"error converting input {raw_version} for field \"version\": cannot parse '{raw_version}' as int"],
            ) from exc
        if not versions:
            raise VaultHTTPError(404, [])
        number = wanted or len(versions)
        if number < 1 or number > len(versions):
            raise VaultHTTPError(404, [])
        ver = versions[number - 1]
        metadata = self._kv_metadata(number, ver)
        if ver.deletion_time is not None or ver.destroyed:
            # Vault answers 404 with the normal envelope (no "errors") so clients can see the deletion
            raise VaultHTTPError(404, body=self._envelope({"data": None, "metadata": metadata}, mount_type="kv"))
        return self._ok({"data": dict(ver.data), "metadata": metadata}, mount_type="kv")

    async def _kv_write(self, ctx: _Ctx) -> web.StreamResponse:
        mount, key = ctx.groups
        data = ctx.body.get("data")
        if not isinstance(data, dict):
            raise VaultHTTPError(400, ["no data provided"])
        options = ctx.body.get("options") or {}
        versions = self._secret_mounts[mount].secrets.setdefault(key, [])
        if isinstance(options, dict) and "cas" in options and int(options["cas"]) != len(versions):
            raise VaultHTTPError(400, ["check-and-set parameter did not match the current version"])
        versions.append(KvVersion(dict(data), self.clock()))
        return self._ok(self._kv_metadata(len(versions), versions[-1]), mount_type="kv")

    async def _kv_delete(self, ctx: _Ctx) -> web.StreamResponse:
        mount, key = ctx.groups
        versions = self._secret_mounts[mount].secrets.get(key)
        if versions and versions[-1].deletion_time is None:
            versions[-1].deletion_time = self.clock()
        return self._no_content()

    async def _dynamic_read(self, ctx: _Ctx) -> web.StreamResponse:
        path = ctx.groups[0]
        secret = self._dynamic[path]
        now = self.clock()
        lease = Lease(
            lease_id=f"{path}/{_rand(24)}",
            path=path,
            token=ctx.token.id,
            issue_time=now,
            expire_time=now + secret.lease_duration,
            renewable=True,
            data=dict(secret.data),
        )
        self._leases[lease.lease_id] = lease
        ctx.token.leases.append(lease.lease_id)
        body = self._envelope(dict(secret.data))
        body.update(lease_id=lease.lease_id, renewable=True, lease_duration=secret.lease_duration)
        return self._json(200, body)
