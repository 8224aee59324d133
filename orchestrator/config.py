"""Controller configuration: a TOML file validated by pydantic models.

Secrets never live in the config itself: webhook secrets are read from files named here, API tokens are stored
as SHA-256 hashes. Loading reads the file(s) and nothing else.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import posixpath
import re
import tomllib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.checkout.remote import check_remote_template, is_loopback
from orchestrator.intake.signatures import GITEA_SHA256, HUB_SHA256, SCHEMES, decode_secret

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_MEMORY = re.compile(r"^(\d+)([kmg]?)$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class ConfigError(Exception):
    """A config problem a user can fix; `problems` lists one line per invalid field."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_memory(value: str | int) -> int:
    """'512m' → bytes; Docker-style units so pool files read like `docker run --memory`."""
    if isinstance(value, int):
        return value
    match = _MEMORY.match(value.strip())
    if not match:
        raise ValueError(f"memory must look like 512m, 2g or a byte count, got {value!r}")
    return int(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()]


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = Field(None, description="URL Vault and users reach the controller at")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    body_timeout_s: float = Field(10.0, gt=0, le=300, description="a slower webhook body gets 408")
    metrics_public: bool = Field(False, description="serve /metrics without a token (e.g. scrape on localhost)")
    delivery_ttl_s: int | None = Field(None, description="deprecated: never had an effect (see Config.notes)")
    webhook_host: str | None = Field(None, description="address of the webhook listener; default: host")
    webhook_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="a second listener serving only POST /webhooks/{source} and /healthz: the one to expose to "
        "forges while the API stays on `port` (which serves webhooks too)",
    )
    intake_workers: int = Field(
        0,
        ge=0,
        le=32,
        description="processes serving webhook_port: each reads and verifies deliveries and hands them to the "
        "controller, which stores, audits and answers them; 0: the controller process serves webhook_port itself",
    )

    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="a request line and its headers must arrive within this from the connection's open (or from "
        "the head's first byte on a kept-alive connection); then 408 and closed",
    )
    keepalive_timeout_s: float = Field(15.0, gt=0, le=3600, description="an idle kept-alive connection is closed after")
    max_connections: int = Field(
        1024,
        ge=16,
        le=1_000_000,
        description="open connections per listener (per intake worker on webhook_port); one more closes the oldest "
        "idle one; lowered at start-up to what the open-files limit allows after the jobs' share",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or networks of reverse proxies whose X-Forwarded-For is believed: requests they "
        "forward are audited, limited and summarised under the client's address; nobody else's header counts",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (like 10.0.0.0/8)") from None
        return [e.strip() for e in entries]

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in self.trusted_proxies)

    @model_validator(mode="after")
    def _webhook_listener(self) -> ServerConfig:
        if self.intake_workers and self.webhook_port is None:
            raise ValueError("intake_workers needs webhook_port: the workers serve that listener only")
        if self.webhook_port is not None and self.webhook_port == self.port != 0:  # a wildcard address overlaps
            raise ValueError(f"webhook_port must differ from port ({self.port})")
        return self


class EngineConfig(_Strict):
    """One Docker engine jobs may run on (`[engines.NAME]`). tcp:// needs TLS with a client certificate, the server's
    verified against `tls_ca_file` (the daemon's API is root on that host: plain tcp only as an audited unsafe
    opt-in); ssh:// goes through the ssh binary (keys and known_hosts of the controller's user)."""

    base_url: str = Field(
        pattern=r"^(unix|tcp|ssh)://", description="unix:///run/docker.sock, tcp://HOST:2376, ssh://USER@HOST"
    )
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    unsafe_plain_tcp: bool = Field(False, description="tcp:// without TLS: anyone on the network gets root there")
    probe_interval_s: float = Field(5.0, gt=0, le=300, description="how often the engine's health is checked")

    @model_validator(mode="after")
    def _transport(self) -> EngineConfig:
        tls = [self.tls_ca_file, self.tls_cert_file, self.tls_key_file]
        if self.base_url.startswith("tcp://"):
            if not any(tls) and not self.unsafe_plain_tcp:
                raise ValueError(
                    f"{self.base_url}: tcp needs tls_ca_file, tls_cert_file and tls_key_file (the server verified, a "
                    "client certificate presented), or unsafe_plain_tcp = true"
                )
            if any(tls) and not all(tls):
                raise ValueError("tls_ca_file, tls_cert_file and tls_key_file go together")
        elif any(tls):
            raise ValueError(f"{self.base_url}: TLS files are for tcp:// engines only")
        elif self.unsafe_plain_tcp:
            raise ValueError(f"{self.base_url}: unsafe_plain_tcp is for tcp:// engines only")
        return self


DEFAULT_ENGINE = "default"  # the engine's name when [engines] is not configured


class DockerConfig(_Strict):
    base_url: str | None = Field(None, description="Docker engine URL; default from DOCKER_HOST or the local socket")
    stop_grace_s: float = Field(10.0, ge=0, le=300)
    api_timeout_s: float = Field(60.0, gt=0)
    retry_budget_s: float = Field(30.0, ge=0, le=600, description="transient Docker errors are retried this long")
    init: bool = Field(True, description="run docker-init as PID 1 so SIGTERM reaches the job's shell")
    sweep_interval_s: float = Field(30.0, gt=0, description="how often leftover containers are looked for")


RoleName = Literal["viewer", "operator", "admin", "approver", "auditor"]
_POOL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_REPO_GLOB = r"^[A-Za-z0-9*?\[\]!._/-]{1,200}$"


class Scope(_Strict):
    """Where a grant applies: the jobs of these pools and repositories (fnmatch globs, case-sensitive, e.g.
    "org/app*"); a list left out means all. Controller-wide actions (drain an engine, the audit head, metrics)
    need a grant with neither."""

    pools: list[Annotated[str, Field(pattern=_POOL_NAME)]] | None = Field(None, min_length=1)
    repositories: list[Annotated[str, Field(pattern=_REPO_GLOB)]] | None = Field(None, min_length=1)


class ApiToken(Scope):
    name: str = Field(pattern=_NAME)
    role: RoleName
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the bearer token")
    expires: datetime | None = Field(None, description="refused from then on (TOML datetime with an offset)")

    @field_validator("expires")
    @classmethod
    def _aware(cls, expires: datetime | None) -> datetime | None:
        if expires is not None and expires.tzinfo is None:
            raise ValueError("give the expiry with a UTC offset, e.g. 2027-06-30T00:00:00Z")
        return expires


class OidcGrant(Scope):
    """Who gets `role`: members of `group` (the groups claim) or the person with `email` (verified), one of them."""

    group: str | None = Field(None, min_length=1, max_length=256)
    email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+$")
    role: RoleName

    @model_validator(mode="after")
    def _one_subject(self) -> OidcGrant:
        if (self.group is None) == (self.email is None):
            raise ValueError("an OIDC grant names exactly one of group or email")
        return self


# Asymmetric signatures only: `none` and HS* (a shared secret -- or a public key misused as one) never.
OidcAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


def _default_oidc_algorithms() -> list[OidcAlgorithm]:
    return ["RS256", "ES256"]


class ApiOidcConfig(_Strict):
    """Single sign-on for the API: JWT bearer tokens of an OIDC identity provider (with its MFA), mapped to grants
    by their groups or email."""

    issuer: str = Field(pattern=r"^https?://", description="exactly the provider's `iss`")
    audience: str = Field(min_length=1, description="the `aud` tokens must carry (the client id)")
    jwks_url: str | None = Field(None, pattern=r"^https?://", description="default: the discovery document's")
    algorithms: list[OidcAlgorithm] = Field(default_factory=_default_oidc_algorithms, min_length=1)
    leeway_s: int = Field(60, ge=0, le=300, description="clock skew allowed on exp, nbf and iat")
    max_lifetime_s: int = Field(86400, ge=60, description="a token valid for longer than this (exp - iat) is refused")
    jwks_cache_s: int = Field(300, ge=10, le=86400, description="keys are fetched again after this")
    jwks_min_refresh_s: float = Field(30.0, ge=0, description="an unknown key id fetches the keys at most this often")
    ca_file: Path | None = Field(None, description="CA bundle for the provider (default: the system's)")
    name_claim: str = Field("email", min_length=1, description="who the person is in the audit trail")
    groups_claim: str = Field("groups", min_length=1)
    username_claims: list[str] = Field(
        default_factory=lambda: ["preferred_username"],
        description="claims naming the person's forge login: an approver is never the job's own sender",
    )
    grants: list[OidcGrant] = Field(default_factory=list)

    @model_validator(mode="after")
    def _http_only_on_loopback(self) -> ApiOidcConfig:
        for what, url in (("issuer", self.issuer), ("jwks_url", self.jwks_url)):
            if url and url.startswith("http://") and not is_loopback(url):
                raise ValueError(f"api.oidc.{what}: {url} must be https (http only on loopback)")
        return self


class ApprovalsConfig(_Strict):
    """Approval gates: a job of a pool with `requires_approval`, or one that reads a secret under `secret_paths`
    (fnmatch globs on the secret's path, e.g. "ci/*/prod/*"), waits for a person's approval before it gets a
    container or any secret."""

    timeout_s: int = Field(86400, ge=60, le=30 * 86400, description="a job not approved this long is rejected")
    secret_paths: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(default_factory=list)
    check_interval_s: float = Field(30.0, gt=0, le=3600, description="how often expired approvals are looked for")


class AlertsConfig(_Strict):
    """Heuristics for unusual access (access/alerts.py); each alert is a metric, an audit record and, with
    `webhook_url`, a signed delivery (Standard Webhooks, secret in `webhook_secret_file`)."""

    failed_auth_count: int = Field(20, ge=2)
    failed_auth_window_s: float = Field(300.0, gt=0)
    log_reads_jobs: int = Field(25, ge=2, description="distinct jobs whose logs or artifacts one identity reads")
    log_reads_window_s: float = Field(600.0, gt=0)
    secret_jobs: int = Field(25, ge=2, description="distinct jobs with secrets one sender starts")
    secret_jobs_window_s: float = Field(600.0, gt=0)
    off_hours_min_uses: int = Field(50, ge=1, description="a token's uses before its usual hours are known")
    off_hours_max_share: float = Field(0.01, ge=0, lt=1, description="an hour with less of its uses is unusual")
    webhook_url: str | None = Field(None, pattern=r"^https?://")
    webhook_secret_file: Path | None = None

    @model_validator(mode="after")
    def _webhook_needs_a_secret(self) -> AlertsConfig:
        if (self.webhook_url is None) != (self.webhook_secret_file is None):
            raise ValueError("alerts.webhook_url and alerts.webhook_secret_file go together (deliveries are signed)")
        return self


class ApiConfig(_Strict):
    tokens: list[ApiToken] = Field(default_factory=list)
    oidc: ApiOidcConfig | None = None
    unused_token_days: int = Field(30, ge=1, description="`orchestrator token list` reports tokens unused this long")

    @field_validator("tokens")
    @classmethod
    def _unique_names(cls, tokens: list[ApiToken]) -> list[ApiToken]:
        names = [t.name for t in tokens]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"token names must be unique, repeated: {', '.join(dupes)}")
        return tokens


class ConsoleConfig(_Strict):
    """The web console under /console (console/routes.py): sign-in through `[api.oidc]` (authorization code flow
    with PKCE) or with an API token; sessions in memory."""

    enabled: bool = True
    client_id: str | None = Field(None, min_length=1, description="its OIDC client id (default api.oidc.audience)")
    client_secret_file: Path | None = Field(None, description="a confidential client's secret (chmod 600)")
    redirect_url: str | None = Field(None, pattern=r"^https?://", description="default: public_url/console/callback")
    session_ttl_s: int = Field(8 * 3600, ge=60, le=7 * 86400, description="a session ends this long after sign-in")
    session_idle_s: int = Field(3600, ge=60, le=7 * 86400, description="... or after this long unused")
    scopes: str = Field("openid email profile groups", pattern=r"(^|\s)openid(\s|$)")

    @model_validator(mode="after")
    def _redirect_http_only_on_loopback(self) -> ConsoleConfig:
        if self.redirect_url and self.redirect_url.startswith("http://") and not is_loopback(self.redirect_url):
            raise ValueError(f"console.redirect_url: {self.redirect_url} must be https (http only on loopback)")
        return self


# What each forge signs its webhooks with (Gitea also sends GitHub's X-Hub-Signature-256).
FORGE_SCHEMES = {"github": frozenset({HUB_SHA256}), "gitea": frozenset({GITEA_SHA256, HUB_SHA256})}


class ForgeConfig(_Strict):
    """The forge whose `workflow_job` webhooks a source delivers, and how the controller reaches its API to register
    single-use runners. GitHub: a GitHub App (app_id + private_key_file) or a fine-grained token (token_file);
    Gitea/Forgejo: an access token (token_file). Files must be chmod 600."""

    kind: Literal["github", "gitea"]
    api_url: str | None = Field(
        None, pattern=r"^https?://", description="default https://api.github.com; GHES: https://HOST/api/v3"
    )
    app_id: int | None = Field(None, ge=1)
    private_key_file: Path | None = None
    token_file: Path | None = None
    installation_id: int | None = Field(None, ge=1, description="default: the one each webhook names")
    reconcile_interval_s: float = Field(60.0, ge=5, le=3600, description="how often runners are checked at the forge")
    request_timeout_s: float = Field(15.0, gt=0, le=120)
    retry_budget_s: float = Field(30.0, ge=0, le=600, description="transient failures (5xx, rate limits) waited for")

    @model_validator(mode="after")
    def _credentials(self) -> ForgeConfig:
        app = self.app_id is not None or self.private_key_file is not None
        if self.kind == "github":
            if app and (self.app_id is None or self.private_key_file is None):
                raise ValueError("a GitHub App needs both app_id and private_key_file")
            if app == (self.token_file is not None):
                raise ValueError("give a GitHub App (app_id + private_key_file) or a token_file, exactly one")
        else:
            if app or self.installation_id is not None:
                raise ValueError("gitea: app_id, private_key_file and installation_id are GitHub settings")
            if self.token_file is None:
                raise ValueError("gitea needs token_file (an access token allowed to manage runners)")
            if self.api_url is None:
                raise ValueError("gitea needs api_url (the instance's base URL, e.g. https://gitea.example)")
        return self

    @property
    def base_url(self) -> str:
        return (self.api_url or "https://api.github.com").rstrip("/")


class CheckoutConfig(_Strict):
    """How the controller fetches a job's commit before the job starts (orchestrator/checkout/): a remote URL
    template and at most one credential, read from a file (chmod 600) that never enters a job's container nor a
    git command line. http(s): token_file, sent as basic auth (token_username:token) in git's environment; ssh:
    deploy_key_file with known_hosts_file (StrictHostKeyChecking=yes); git:// and file:// take none.
    TODO: a Vault path as a third kind of credential."""

    remote: str = Field(
        description="URL template with {repository}: https://HOST/{repository}.git, ssh://git@HOST/{repository}.git, "
        "git://HOST/{repository}, file:///srv/git/{repository}.git"
    )
    token_file: Path | None = Field(None, description="http(s): file holding an access token (chmod 600)")
    token_username: str = Field(
        "x-access-token",
        pattern=r"^[A-Za-z0-9._@+-]{1,64}$",
        description="user name sent with the token (GitHub: x-access-token, GitLab: oauth2, Gitea: any)",
    )
    deploy_key_file: Path | None = Field(None, description="ssh: the private deploy key (chmod 600)")
    known_hosts_file: Path | None = Field(None, description="ssh: the server's host keys (required with ssh)")
    max_bytes: int = Field(1024**3, ge=1, description="cap on the delivered tree: file contents + symlink targets")
    submodules: bool = Field(False, description="fetch submodules for jobs that do not say (a job may opt in)")
    timeout_s: float = Field(300.0, gt=0, le=3600, description="the whole checkout: mirror lock, fetch, tree")
    mirror_dir: Path | None = Field(None, description="bare mirror cache; default <data_dir>/checkout")

    @field_validator("remote")
    @classmethod
    def _template(cls, remote: str) -> str:
        check_remote_template(remote)
        return remote

    @model_validator(mode="after")
    def _credential_fits_the_remote(self) -> CheckoutConfig:
        scheme = check_remote_template(self.remote)
        if self.token_file is not None and self.deploy_key_file is not None:
            raise ValueError("give token_file (http/https) or deploy_key_file (ssh), not both")
        if self.token_file is not None:
            if scheme not in ("https", "http"):
                raise ValueError(f"token_file is sent over http(s) only; the remote is {scheme}://")
            if scheme == "http" and not is_loopback(self.remote):
                raise ValueError("token_file over plain http:// would send the token in clear text; use https://")
        if (self.deploy_key_file is not None or self.known_hosts_file is not None) and scheme != "ssh":
            raise ValueError(f"deploy_key_file and known_hosts_file are for ssh:// remotes; the remote is {scheme}://")
        if scheme == "ssh" and (self.deploy_key_file is None or self.known_hosts_file is None):
            raise ValueError("an ssh remote needs deploy_key_file and known_hosts_file (host keys are checked)")
        return self

    @property
    def scheme(self) -> str:
        return check_remote_template(self.remote)

    def mirror_path(self, data_dir: Path) -> Path:
        return self.mirror_dir or data_dir / "checkout"


class SourceCallbacksConfig(_Strict):
    """Status callbacks of a source's jobs (orchestrator/callbacks/): a signed POST (Standard Webhooks) on every
    state change, to `url` or, for a job naming its own `callback_url`, there if it lies within
    `allowed_url_prefixes`. The secret (`whsec_<base64>`) is read from `secret_file` (chmod 600)."""

    url: str | None = Field(None, description="every job's state changes go here (unless the job names its own)")
    secret_file: Path = Field(description="whsec_<base64> signing secret, chmod 600")
    allowed_url_prefixes: list[str] = Field(
        default_factory=list, description="URL prefixes a job's own callback_url may start with (scheme, host, path)"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        from orchestrator.callbacks.routing import url_problem

        if url is not None and (problem := url_problem(url)) is not None:
            raise ValueError(f"callback url {problem}")
        return url

    @field_validator("allowed_url_prefixes")
    @classmethod
    def _prefixes(cls, prefixes: list[str]) -> list[str]:
        from orchestrator.callbacks.routing import url_problem

        for prefix in prefixes:
            if (problem := url_problem(prefix, prefix=True)) is not None:
                raise ValueError(f"allowed URL prefix {prefix!r} {problem}")
        return prefixes


class CommitStatusConfig(_Strict):
    """Commit statuses for a source's jobs, on their `repository` and `sha`: GitHub and Gitea
    (`POST /repos/{owner}/{repo}/statuses/{sha}`) or GitLab (`POST /projects/:id/statuses/:sha`), with a token
    read from `token_file` (chmod 600). Delivered from the same outbox as callbacks."""

    kind: Literal["github", "gitea", "gitlab"]
    api_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="github: API root (default https://api.github.com; GHES https://HOST/api/v3); gitea, gitlab: "
        "the instance's base URL",
    )
    token_file: Path
    context: str = Field("runner-orchestrator", min_length=1, max_length=255, description="the status's name")

    @model_validator(mode="after")
    def _api_url(self) -> CommitStatusConfig:
        if self.kind != "github" and self.api_url is None:
            raise ValueError(f"{self.kind} needs api_url (the instance's base URL)")
        return self

    @property
    def base_url(self) -> str:
        return (self.api_url or "https://api.github.com").rstrip("/")


class CallbacksConfig(_Strict):
    """How the outbox is delivered (all sources): retried with exponential back-off for `retry_for_s` from a
    delivery's first attempt, then given up (logged, audited, counted)."""

    retry_for_s: float = Field(3600.0, gt=0, le=7 * 86400, description="a delivery is given up after this long")
    backoff_initial_s: float = Field(1.0, gt=0, le=3600, description="first wait between attempts, then doubled")
    backoff_max_s: float = Field(300.0, gt=0, le=86400, description="longest wait between attempts")
    jitter_s: float = Field(1.0, ge=0, le=3600, description="up to this much random delay added to each wait")
    request_timeout_s: float = Field(10.0, gt=0, le=300)
    poll_interval_s: float = Field(2.0, gt=0, le=3600, description="how often the outbox is looked at anyway")
    max_in_flight: int = Field(32, ge=1, le=1024, description="requests sent at once")


class SourceConfig(_Strict):
    scheme: str
    secret_files: list[Path] = Field(min_length=1, description="one or more files; several allow key rotation")
    forge: ForgeConfig | None = Field(None, description="deliveries are this forge's events, not job specs")
    callbacks: SourceCallbacksConfig | None = Field(None, description="status callbacks of this source's jobs")
    commit_status: CommitStatusConfig | None = Field(None, description="forge commit statuses of its jobs")
    checkout: CheckoutConfig | None = Field(None, description="where the controller fetches its jobs' commits")

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, scheme: str) -> str:
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; expected one of {', '.join(sorted(SCHEMES))}")
        return scheme

    @model_validator(mode="after")
    def _forge_scheme(self) -> SourceConfig:
        if self.forge is not None and self.scheme not in FORGE_SCHEMES[self.forge.kind]:
            expected = " or ".join(sorted(FORGE_SCHEMES[self.forge.kind]))
            raise ValueError(f"a {self.forge.kind} source signs with {expected}, not {self.scheme!r}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _single_file(cls, data: object) -> object:
        if isinstance(data, dict) and "secret_file" in data:
            data = dict(data)
            if "secret_files" in data:
                raise ValueError("give secret_file or secret_files, not both")
            data["secret_files"] = [data.pop("secret_file")]
        return data


# Every Linux capability (capabilities(7), Linux 6.x), without the CAP_ prefix. Naming one Docker does not know
# would only fail when a job starts; a name outside this list is refused when the config is loaded.
LINUX_CAPABILITIES = frozenset(
    {
        "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE", "CHOWN",
        "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE",
        "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST",
        "NET_RAW", "PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_ADMIN", "SYS_BOOT", "SYS_CHROOT",
        "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME",
        "SYS_TTY_CONFIG", "SYSLOG", "WAKE_ALARM",
    }
)  # fmt: skip

# Where container runtimes keep their control sockets: dockerd (/run/docker.sock, /run/docker/), containerd,
# podman, cri-o, buildkitd, k3s, and the rootless variants in /run/user/UID -- all under /run, which /var/run
# points to. A job given one of these sockets can start a privileged container: it owns the host.
RUNTIME_SOCKET_DIRS = ("/run", "/var/run")
RUNTIME_SOCKET_NAMES = ("docker.sock", "containerd.sock", "podman.sock", "crio.sock", "buildkitd.sock")


def normalize_capability(cap: str) -> str:
    """' cap_net_admin' -> 'NET_ADMIN': Docker accepts any case, with or without the prefix."""
    return cap.strip().upper().removeprefix("CAP_")


def normalize_host_path(path: str) -> str:
    """Lexically: '//run', '/run/.', '/run/', '/run/../run' and '/./run' are all '/run'. (POSIX lets a path start
    with exactly two slashes mean something else; Linux does not, and `normpath` would keep them.)"""
    return posixpath.normpath("/" + path.lstrip("/"))


def _nested(a: str, b: str) -> bool:
    """Whether one of two normalized absolute paths is the other or lies inside it."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def runtime_socket_exposure(source: str, socket_dirs: tuple[str, ...] = ()) -> str | None:
    """What a bind mount of host path `source` would expose, or None. Refused: a source that contains a runtime
    socket directory (`/`, `/var`), is one, or lies inside one, and any path naming a runtime socket.
    `socket_dirs` adds the directory of the socket this controller's engine listens on."""
    path = normalize_host_path(source)
    for directory in (*RUNTIME_SOCKET_DIRS, *socket_dirs):
        if _nested(path, normalize_host_path(directory)):
            return f"{path} and {directory} (where container runtime sockets live) contain one another"
    if any(name in path for name in RUNTIME_SOCKET_NAMES):
        return f"{path} names a container runtime socket"
    return None


def engine_socket_dirs(base_url: str | None) -> tuple[str, ...]:
    """The directory of the engine's own socket when it is a unix socket outside the usual places."""
    if base_url and base_url.startswith(("unix://", "unix:")):
        path = base_url.removeprefix("unix://").removeprefix("unix:")
        return (posixpath.dirname(normalize_host_path(path)),)
    return ()


class UnsafeOptIns(_Strict):
    """Each field weakens the isolation between a job and the host. None is ever on by default; every one that
    is set is printed as a warning by `config check` and written to the audit trail when the controller starts."""

    privileged: bool = False
    host_network: bool = False
    host_pid: bool = False
    host_ipc: bool = False
    add_capabilities: list[str] = Field(default_factory=list)
    host_mounts: list[str] = Field(default_factory=list, description="'/host/path:/container/path[:ro|rw]'")

    @field_validator("add_capabilities")
    @classmethod
    def _caps(cls, caps: list[str]) -> list[str]:
        """Normalized before it is checked: 'CAP_ALL', 'all' and ' ALL' all mean Docker's ALL."""
        found: list[str] = []
        for cap in caps:
            name = normalize_capability(cap)
            if name == "ALL":
                raise ValueError(f"{cap!r} means every capability; ALL is never allowed, name single capabilities")
            if name not in LINUX_CAPABILITIES:
                raise ValueError(f"{cap!r} is not a Linux capability name (such as NET_ADMIN or SYS_PTRACE)")
            if name not in found:
                found.append(name)
        return found

    @field_validator("host_mounts")
    @classmethod
    def _mounts(cls, mounts: list[str]) -> list[str]:
        """Sources are normalized before they are checked, and kept normalized (what Docker is given is what was
        checked). Symlinks are resolved by `load_config`, which may look at the host."""
        normalized = []
        for mount in mounts:
            parts = mount.split(":")
            if len(parts) not in (2, 3) or not parts[0].startswith("/") or not parts[1].startswith("/"):
                raise ValueError(f"host mount {mount!r} must look like /host/path:/container/path[:ro]")
            if len(parts) == 3 and parts[2] not in ("ro", "rw"):
                raise ValueError(f"host mount {mount!r}: the mode must be ro or rw")
            exposure = runtime_socket_exposure(parts[0])
            if exposure is not None:
                raise ValueError(
                    f"host mount {mount!r} would expose a container runtime socket ({exposure}); never allowed"
                )
            normalized.append(":".join([normalize_host_path(parts[0]), *parts[1:]]))
        return normalized

    def warnings(self, pool: str) -> list[str]:
        found = []
        if self.privileged:
            found.append(f"pool {pool!r} runs PRIVILEGED containers (unsafe.privileged): a job owns the host")
        if self.host_network:
            found.append(f"pool {pool!r} shares the HOST NETWORK namespace (unsafe.host_network)")
        if self.host_pid:
            found.append(f"pool {pool!r} shares the HOST PID namespace (unsafe.host_pid)")
        if self.host_ipc:
            found.append(f"pool {pool!r} shares the HOST IPC namespace (unsafe.host_ipc)")
        if self.add_capabilities:
            found.append(
                f"pool {pool!r} ADDS CAPABILITIES {', '.join(self.add_capabilities)} (unsafe.add_capabilities)"
            )
        for mount in self.host_mounts:
            found.append(f"pool {pool!r} MOUNTS A HOST PATH {mount} (unsafe.host_mounts)")
        return found


# Under gVisor the pids limit covers the sandbox's own threads too (see tests/integration/test_runsc.py).
RUNSC_MIN_PIDS = 1024


class RunnerPoolConfig(_Strict):
    """What a pool of single-use forge runners serves (forges/matching.py has the rule): a job is served when every
    one of its labels is one of `labels` (case-insensitive; `self-hosted` implied) and its repository matches
    `repositories` or its owner `organizations` (globs, case-insensitive). Nothing else ever gets a runner."""

    source: str = Field(pattern=_NAME, description="the [sources.NAME] with a [forge] whose jobs this pool serves")
    labels: list[str] = Field(min_length=1, description="the runner's labels, besides self-hosted")
    repositories: list[str] = Field(default_factory=list, description="owner/repo globs, e.g. acme/*")
    organizations: list[str] = Field(default_factory=list, description="owner globs: any repository of theirs")
    scope: Literal["repo", "org"] = Field("repo", description="register runners on the repository or its org")
    runner_group_id: int | None = Field(None, ge=1, description="GitHub runner group (org scope); default 1")
    bootstrap_timeout_s: int = Field(600, ge=30, description="a runner that took no job by then is removed")
    completed_grace_s: float = Field(30.0, ge=0, le=600, description="after 'completed', the agent's time to exit")
    min_idle: int = Field(0, ge=0, description="registered runners kept waiting for jobs (warm), within max_concurrent")
    command: str = Field(
        "/usr/local/bin/runner-entrypoint",
        pattern=r"^/[A-Za-z0-9._/-]+$",
        description="the image's agent start script: reads the registration from /run/secrets and runs one job",
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str]) -> list[str]:
        for label in labels:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}", label):
                raise ValueError(f"label {label!r}: letters, digits, '.', '_', ':', '-', at most 100 characters")
        return labels

    @model_validator(mode="after")
    def _something_allowed(self) -> RunnerPoolConfig:
        if not self.repositories and not self.organizations:
            raise ValueError("give repositories or organizations: a runner pool that allows none serves nothing")
        return self

    @model_validator(mode="after")
    def _warm_runners_need_one_place(self) -> RunnerPoolConfig:
        if self.min_idle and self.warm_scope() is None:
            where = "one repository (no wildcard)" if self.scope == "repo" else "one organization (no wildcard)"
            raise ValueError(f"min_idle needs a place to register waiting runners: {where}, for scope {self.scope!r}")
        return self

    def warm_scope(self) -> str | None:
        """Where warm runners are registered: the pool's one repository (repo scope) or organization (org scope)."""
        names = self.repositories if self.scope == "repo" else self.organizations
        if len(names) == 1 and not any(c in names[0] for c in "*?["):
            return names[0]
        return None


class PoolConfig(_Strict):
    image: str = Field(min_length=1)
    user: str = Field("10001:10001", description="uid:gid the job runs as; never root")
    memory: int = Field(512 * 1024**2, description="bytes, or a string like 512m")
    cpus: float = Field(1.0, gt=0, le=256)
    pids: int = Field(256, ge=16, le=65536)
    network: str = Field("none", description="'none' or the name of a Docker network the pool may use")
    runtime: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="OCI runtime of the pool's containers, as named in dockerd's daemon.json (e.g. 'runsc' for "
        "gVisor); default: the engine's default runtime (runc). Checked against the engine at start-up",
    )
    max_concurrent: int = Field(2, ge=1, le=1000)
    max_queue: int = Field(1000, ge=0, description="queued jobs beyond this are refused with 429")
    default_timeout_s: int = Field(600, ge=1)
    max_timeout_s: int = Field(3600, ge=1)
    workspace_size: str = Field("1g", pattern=r"^\d+[kmg]?$")
    tmp_size: str = Field("256m", pattern=r"^\d+[kmg]?$")
    labels: dict[str, str] = Field(default_factory=dict)
    retry_on_restart: bool = False
    vault_role: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$", description="default: ci-<pool>")
    audience: str = Field("vault", min_length=1, description="aud claim of this pool's job tokens")
    secrets: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")], PoolSecret] = Field(
        default_factory=dict
    )
    unsafe: UnsafeOptIns = Field(default_factory=UnsafeOptIns)
    runner: RunnerPoolConfig | None = Field(None, description="serve a forge's jobs with single-use runners")
    engines: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="[engines] this pool may use, each with its capacity; default: all"
    )
    requires_approval: bool = Field(
        False, description="every job waits in awaiting_approval until a person with an approver grant approves it"
    )
    engine_loss_retries: int = Field(
        0, ge=0, le=5,
        description="times a job whose engine stopped answering mid-job is queued again to run on another engine "
        "(its attempt + 1); 0: it ends in error naming the engine. Forge runner jobs are never retried this way",
    )  # fmt: skip
    warm: int = Field(0, ge=0, le=256, description="pre-started containers kept ready for this pool's next jobs")
    warm_max_age_s: float = Field(900.0, ge=10, description="a warm container older than this is replaced")
    artifacts_max_bytes: int = Field(1024**3, description="most artifact bytes one job keeps; bytes or 512m")
    cache_max_bytes: int = Field(1024**3, description="largest cache entry a job saves; bytes or 512m")

    @field_validator("artifacts_max_bytes", "cache_max_bytes", mode="before")
    @classmethod
    def _sizes(cls, value: object) -> int:
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ValueError("must be a string like 512m or a byte count")
        parsed = parse_memory(value)
        if parsed < 1:
            raise ValueError("must be at least 1 byte")
        return parsed

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> int:
        if not isinstance(value, (str, int)):
            raise ValueError("memory must be a string like 512m or a byte count")
        parsed = parse_memory(value)
        if parsed < 6 * 1024**2:
            raise ValueError("memory must be at least 6m (Docker's minimum)")
        return parsed

    @field_validator("user")
    @classmethod
    def _not_root(cls, user: str) -> str:
        if not re.fullmatch(r"\d+(:\d+)?", user):
            raise ValueError("user must be numeric uid or uid:gid so the image cannot map it to root")
        uid, _, gid = user.partition(":")
        if int(uid) == 0 or (gid and int(gid) == 0):
            raise ValueError("jobs never run as root (uid/gid 0)")
        return user

    @field_validator("network")
    @classmethod
    def _network(cls, network: str) -> str:
        if network in {"host"} or network.startswith("container:"):
            raise ValueError(f"network {network!r} would share a host or container namespace; not allowed")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", network):
            raise ValueError(f"network {network!r} is not a valid Docker network name")
        return network

    @model_validator(mode="after")
    def _timeouts(self) -> PoolConfig:
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("default_timeout_s must not exceed max_timeout_s")
        return self


class OidcConfig(_Strict):
    """The controller as an OIDC issuer; Vault verifies job tokens against its JWKS."""

    algorithm: Literal["ES256", "RS256"] = "ES256"
    rotation_period_s: int = Field(7 * 86400, ge=3600)
    overlap_s: int = Field(3600, ge=600, description="how long a retired key stays in the JWKS")
    token_lifetime_s: int = Field(300, ge=30, le=3600, description="JWT lifetime; only for the exchange")


class VaultConfig(_Strict):
    address: str = Field(pattern=r"^https?://")
    auth_mount: str = Field("jwt", pattern=r"^[A-Za-z0-9._/-]+$")
    kv_mount: str = Field("secret", pattern=r"^[A-Za-z0-9._/-]+$")
    namespace: str | None = None
    ca_cert: Path | None = None
    request_timeout_s: float = Field(10.0, gt=0, le=120)
    retry_budget_s: float = Field(20.0, ge=0, le=600, description="transient failures retried this long")
    ttl_grace_s: int = Field(60, ge=0, le=3600, description="a job token may outlive the job timeout by this")
    revoker_token_file: Path | None = Field(
        None, description="token allowed only on auth/token/revoke-accessor, for crash recovery"
    )


class CredentialsConfig(_Strict):
    backend: Literal["vault"] = "vault"
    vault: VaultConfig
    oidc: OidcConfig = Field(default_factory=OidcConfig)


class LogsConfig(_Strict):
    max_bytes: int = Field(100 * 1024**2, ge=4096, description="per job; the rest is cut with a visible notice")
    timestamps: bool = Field(False, description="prefix every stored line with its UTC arrival time")
    idle_flush_s: float | None = Field(None, description="deprecated: no effect any more (see Config.notes)")
    min_secret_length: int = Field(6, ge=3, le=64, description="shorter secrets are refused: masking them ruins logs")
    mask: str = Field("[MASKED]", min_length=1, max_length=64)


class PoolSecret(_Strict):
    """A value every job of the pool receives (e.g. a registry token); masked in logs like Vault secrets."""

    file: Path
    deliver: Literal["file", "env"] = "file"


class AuditConfig(_Strict):
    syslog: bool = Field(False, description="also send every audit record to syslog/journald (second copy)")


class StorageConfig(_Strict):
    """Where jobs are stored: one SQLite file in data_dir (default), or PostgreSQL shared by several controllers.

    The PostgreSQL connection string may hold a password, so it never appears here: `dsn_file` names a file
    (chmod 600, absolute path) holding one libpq connection string, e.g. `host=db user=ci dbname=ci password=…`.
    """

    backend: Literal["sqlite", "postgres"] = "sqlite"
    dsn_file: Path | None = Field(None, description="postgres: absolute path of the file holding the DSN (chmod 600)")
    pool_size: int = Field(4, ge=1, le=100, description="postgres: most connections this controller opens")
    connect_timeout_s: float = Field(10.0, gt=0, le=300, description="postgres: connect / wait-for-connection limit")

    @model_validator(mode="after")
    def _dsn_file_named(self) -> StorageConfig:
        """Only what the values say; the file itself is read by `load_config` (validators do no I/O)."""
        if self.backend != "postgres":
            if self.dsn_file is not None:
                raise ValueError('dsn_file is only used with backend = "postgres"')
            return self
        if self.dsn_file is None:
            raise ValueError('backend = "postgres" needs dsn_file, a chmod 600 file holding the connection string')
        if not self.dsn_file.is_absolute():
            raise ValueError(f"dsn_file {self.dsn_file}: must be an absolute path")
        return self


class ClusterConfig(_Strict):
    """Controllers sharing a PostgreSQL store (scheduling/cluster.py): how long a lease lives without a heartbeat
    before another controller takes over its jobs."""

    heartbeat_s: float = Field(2.0, gt=0, le=60, description="how often the lease is renewed")
    lease_ttl_s: float = Field(15.0, gt=0, le=600, description="a lease not renewed this long is taken over")
    share_queued: bool = Field(True, description="a controller with free slots runs other controllers' queued jobs")

    @model_validator(mode="after")
    def _ttl_covers_heartbeats(self) -> ClusterConfig:
        if self.lease_ttl_s < 3 * self.heartbeat_s:
            raise ValueError(
                f"lease_ttl_s = {self.lease_ttl_s} must be at least 3 heartbeats ({3 * self.heartbeat_s} s): a late "
                "heartbeat would otherwise hand a live controller's jobs to another"
            )
        return self


class ArtifactsConfig(_Strict):
    """Where jobs' artifacts are kept (data_dir/artifacts) and for how long."""

    retention_days: float = Field(30.0, gt=0, description="artifacts of older jobs are removed")


class CachesConfig(_Strict):
    """Job caches (data_dir/caches): scoped to repository and ref, least recently used evicted."""

    max_total_bytes: int = Field(10 * 1024**3, description="all caches together; bytes or 10g")
    fallback_refs: list[str] = Field(
        default_factory=lambda: ["refs/heads/main", "main", "refs/heads/master", "master"],
        description="refs (the default branch) whose cache a ref without its own reads",
    )

    @field_validator("max_total_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> int:
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ValueError("must be a string like 10g or a byte count")
        return parse_memory(value)


class Config(_Strict):
    controller_id: str = Field(pattern=_NAME)
    data_dir: Path
    server: ServerConfig = Field(default_factory=ServerConfig)
    docker: DockerConfig = Field(default_factory=DockerConfig)
    engines: dict[Annotated[str, Field(pattern=_NAME)], EngineConfig] = Field(
        default_factory=dict, description="several Docker engines; default: one, docker.base_url"
    )
    storage: StorageConfig = Field(default_factory=StorageConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    sources: dict[Annotated[str, Field(pattern=_NAME)], SourceConfig] = Field(default_factory=dict)
    pools: dict[Annotated[str, Field(pattern=_NAME)], PoolConfig] = Field(min_length=1)
    credentials: CredentialsConfig | None = None
    logs: LogsConfig = Field(default_factory=LogsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    caches: CachesConfig = Field(default_factory=CachesConfig)
    max_total_concurrent: int = Field(16, ge=1)
    max_warm: int = Field(32, ge=0, description="warm containers across pools; the pools' `warm` must fit")
    warm_refill_concurrency: int = Field(2, ge=1, le=32, description="warm containers made at once")
    max_queued_total: int = Field(10_000, ge=1, description="accepted-but-waiting jobs across pools; then 429")

    @model_validator(mode="after")
    def _pools_name_engines(self) -> Config:
        for name, pool in self.pools.items():
            if pool.engines and not self.engines:
                raise ValueError(f"pools.{name}.engines: no [engines] are configured (one engine: docker.base_url)")
            unknown = sorted(set(pool.engines) - set(self.engines))
            if unknown:
                raise ValueError(f"pools.{name}.engines: no engine named {', '.join(map(repr, unknown))} in [engines]")
            capacity = sum(pool.engines.values()) if pool.engines else None
            if capacity is not None and pool.max_concurrent + pool.warm > capacity:
                raise ValueError(
                    f"pools.{name}: max_concurrent + warm = {pool.max_concurrent + pool.warm} is more than its "
                    f"engines' capacity ({capacity}): lower them or raise the engines' capacity"
                )
        return self

    def pool_engines(self, pool: str) -> dict[str, int]:
        """The engines a pool may use, each with its capacity for the pool (config order); with no [engines], the
        one engine "default"."""
        cfg = self.pools[pool]
        if not self.engines:
            return {DEFAULT_ENGINE: cfg.max_concurrent + cfg.warm}
        return dict(cfg.engines) if cfg.engines else dict.fromkeys(self.engines, cfg.max_concurrent + cfg.warm)

    @model_validator(mode="after")
    def _warm_fits(self) -> Config:
        wanted = {name: pool.warm for name, pool in self.pools.items() if pool.warm}
        if sum(wanted.values()) > self.max_warm:
            listed = ", ".join(f"pools.{name}.warm = {n}" for name, n in wanted.items())
            raise ValueError(f"max_warm = {self.max_warm} is less than the pools' warm containers ({listed})")
        for name, pool in self.pools.items():
            if pool.warm and pool.runner is not None:
                raise ValueError(
                    f"pools.{name}.warm: a forge runner pool keeps registered runners warm with runner.min_idle"
                )
        return self

    @model_validator(mode="after")
    def _runner_pools_name_forge_sources(self) -> Config:
        for name, pool in self.pools.items():
            if pool.runner is None:
                continue
            source = self.sources.get(pool.runner.source)
            if source is None:
                raise ValueError(f"pools.{name}.runner.source: no source named {pool.runner.source!r}")
            if source.forge is None:
                raise ValueError(
                    f"pools.{name}.runner.source: sources.{pool.runner.source} has no [forge] section, so its "
                    "deliveries are job specs, not forge jobs"
                )
            if pool.runner.min_idle > pool.max_concurrent:
                raise ValueError(
                    f"pools.{name}.runner.min_idle ({pool.runner.min_idle}) exceeds the pool's max_concurrent "
                    f"({pool.max_concurrent}): waiting runners hold slots"
                )
        return self

    def runner_pools(self, source: str) -> list[str]:
        """The pools serving a forge source's jobs, in config order."""
        return [name for name, pool in self.pools.items() if pool.runner and pool.runner.source == source]

    @model_validator(mode="after")
    def _issuer_needs_public_url(self) -> Config:
        if self.credentials is not None and not self.server.public_url:
            raise ValueError("server.public_url is required with [credentials]: it is the OIDC issuer Vault trusts")
        return self

    @model_validator(mode="after")
    def _mounts_keep_off_the_engine_socket(self) -> Config:
        """The engine's own socket may live outside /run (`docker.base_url = "unix:///srv/docker/docker.sock"`)."""
        dirs = engine_socket_dirs(self.docker.base_url)
        problems = [
            f"pools.{name}.unsafe.host_mounts: {mount!r} would expose the Docker engine's socket ({exposure})"
            for name, pool in self.pools.items()
            for mount in pool.unsafe.host_mounts
            if (exposure := runtime_socket_exposure(mount.split(":")[0], dirs)) is not None
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def warnings(self) -> list[str]:
        """Every way this config weakens job isolation, for `config check` and the audit trail."""
        found = []
        for name, engine in self.engines.items():
            if engine.unsafe_plain_tcp:
                found.append(
                    f"engine {name!r} is reached over plain tcp ({engine.base_url}): anyone who can reach that port "
                    "controls the engine, and the job scripts and secrets sent to it are readable on the network"
                )
        for name, pool in self.pools.items():
            if pool.network == "bridge":
                found.append(
                    f'pool {name!r} puts jobs on Docker\'s default bridge network (network = "bridge"): they can '
                    "reach the internet, the host's published ports and every other container on that bridge; "
                    "give the pool a dedicated network with egress rules instead"
                )
            elif pool.network != "none":
                found.append(f"pool {name!r} gives jobs network access (network = {pool.network!r})")
            found += pool.unsafe.warnings(name)
        return found

    def notes(self) -> list[str]:
        """What may not do what its writer expects: options still accepted so existing configs load that do
        nothing any more, and settings that fit badly together. Said once, by `config check` and at start."""
        notes = []
        for name, pool in self.pools.items():
            if pool.runtime == "runsc" and pool.pids < RUNSC_MIN_PIDS:
                notes.append(
                    f"pools.{name}.pids = {pool.pids} with runtime 'runsc': gVisor's own threads count against it "
                    f"(about 60, and about 8 more per job process), so a job gets about {(pool.pids - 60) // 8} "
                    f"processes; raise pids to {RUNSC_MIN_PIDS} or more (2048 gives about 250)"
                )
        if "delivery_ttl_s" in self.server.model_fields_set:
            notes.append(
                "server.delivery_ttl_s has no effect and never had one: a redelivery is answered as a duplicate by "
                "its job id for as long as the job is stored, and standard-webhooks timestamps allow 5 minutes; "
                "remove the line"
            )
        if "idle_flush_s" in self.logs.model_fields_set:
            notes.append(
                "logs.idle_flush_s has no effect any more: bytes the redactor holds back are the possible beginning "
                "of a secret, so they are never shown raw on a pause, only once later output settles them; "
                "remove the line"
            )
        return notes

    def vault_role(self, pool: str) -> str:
        return self.pools[pool].vault_role or f"ci-{pool}"

    def digest(self) -> str:
        """Stable digest of the effective config, for audit and `config check` output."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def _format_error(err: dict[str, object]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))  # type: ignore[attr-defined]
    msg = str(err.get("msg", "invalid"))
    return f"{loc or '(top level)'}: {msg}"


def load_config(path: Path) -> Config:
    """Read and validate the file; relative paths inside are resolved against the file's directory."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    base = path.resolve().parent
    _resolve_paths(raw, base)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), [_format_error(dict(e)) for e in exc.errors()]) from None
    problems = [p for name, src in config.sources.items() for p in _check_secret_files(name, src)]
    problems += [
        p
        for pool_name, pool in config.pools.items()
        for name, secret in pool.secrets.items()
        for p in _check_pool_secret(f"pools.{pool_name}.secrets.{name}", secret.file, config.logs.min_secret_length)
    ]
    problems += _check_mount_symlinks(config, os.environ.get("DOCKER_HOST"))
    problems += _check_dsn_file(config.storage)
    problems += [p for name, src in config.sources.items() if src.forge for p in _check_forge_files(name, src.forge)]
    problems += [p for name, src in config.sources.items() for p in _check_callback_files(name, src)]
    problems += [
        p for name, src in config.sources.items() if src.checkout for p in _check_checkout_files(name, src.checkout)
    ]
    problems += [p for name, engine in config.engines.items() for p in _check_engine_files(name, engine)]
    if config.alerts.webhook_secret_file is not None:
        file = config.alerts.webhook_secret_file
        problems += check_private_file(f"alerts.webhook_secret_file: {file}", file,
                                       lambda text: decode_secret("standard-webhooks", text.strip()))  # fmt: skip
    if config.console.client_secret_file is not None:
        file = config.console.client_secret_file
        problems += check_private_file(f"console.client_secret_file: {file}", file, _not_empty)
    if problems:
        raise ConfigError(str(path), problems)
    return config


def _check_engine_files(name: str, engine: EngineConfig) -> list[str]:
    """An engine's TLS files: readable PEM; the client key chmod 600 (it is root on that engine)."""
    problems = []
    for key, file, private in (
        ("tls_ca_file", engine.tls_ca_file, False),
        ("tls_cert_file", engine.tls_cert_file, False),
        ("tls_key_file", engine.tls_key_file, True),
    ):
        if file is not None:
            hint = "not a PEM private key" if private else "not a PEM certificate"
            marker = "PRIVATE KEY-----" if private else "BEGIN CERTIFICATE-----"

            def parse(text: str, marker: str = marker, hint: str = hint) -> None:
                if marker not in text:
                    raise ValueError(hint)

            problems += check_private_file(f"engines.{name}.{key}: {file}", file, parse, private=private)
    return problems


def _check_dsn_file(storage: StorageConfig) -> list[str]:
    """The PostgreSQL DSN file: readable, one parseable line, chmod 600; errors never quote its content."""
    if storage.backend != "postgres" or storage.dsn_file is None:
        return []
    file = storage.dsn_file
    try:
        from orchestrator.store.postgres import PostgresStoreError, read_dsn
    except ModuleNotFoundError as exc:
        if exc.name not in ("psycopg", "psycopg_pool"):
            raise
        return ["storage.backend = \"postgres\" needs psycopg: install runner-orchestrator's 'postgres' extra"]
    problems = []
    try:
        read_dsn(file)
    except PostgresStoreError as exc:
        problems.append(f"storage.dsn_file: {exc}")
    try:
        mode = file.stat().st_mode
    except OSError:
        mode = 0  # already reported by read_dsn
    if mode & 0o077:
        problems.append(f"storage.dsn_file: {file}: readable by group/others; run chmod 600 on it")
    return problems


def _check_mount_symlinks(config: Config, docker_host: str | None) -> list[str]:
    """Host mount sources with their symlinks resolved on this host (`/var/run` -> `/run`, a link to `/run`), and
    the engine's socket directory as DOCKER_HOST names it when the config does not. A link created after this
    check is not seen: host mounts are an admin's opt-in, and this guards against mistakes, not against root."""
    dirs = engine_socket_dirs(config.docker.base_url or docker_host)
    problems = []
    for name, pool in config.pools.items():
        for mount in pool.unsafe.host_mounts:
            source = mount.split(":")[0]
            real = os.path.realpath(source)
            exposure = runtime_socket_exposure(real, dirs)
            if exposure is not None:
                problems.append(
                    f"pools.{name}.unsafe.host_mounts: {mount!r} resolves to {real}, which would expose a container "
                    f"runtime socket ({exposure}); never allowed"
                )
    return problems


def _resolve_paths(raw: dict[str, object], base: Path) -> None:
    data_dir = raw.get("data_dir")
    if isinstance(data_dir, str):
        raw["data_dir"] = str(base / data_dir)
    creds = raw.get("credentials")
    vault = creds.get("vault") if isinstance(creds, dict) else None
    if isinstance(vault, dict):
        for key in ("ca_cert", "revoker_token_file"):
            if isinstance(vault.get(key), str):
                vault[key] = str(base / vault[key])
    alerts = raw.get("alerts")
    if isinstance(alerts, dict) and isinstance(alerts.get("webhook_secret_file"), str):
        alerts["webhook_secret_file"] = str(base / alerts["webhook_secret_file"])
    api = raw.get("api")
    oidc = api.get("oidc") if isinstance(api, dict) else None
    if isinstance(oidc, dict) and isinstance(oidc.get("ca_file"), str):
        oidc["ca_file"] = str(base / oidc["ca_file"])
    console = raw.get("console")
    if isinstance(console, dict) and isinstance(console.get("client_secret_file"), str):
        console["client_secret_file"] = str(base / console["client_secret_file"])
    engines = raw.get("engines")
    if isinstance(engines, dict):
        for engine in engines.values():
            for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
                if isinstance(engine, dict) and isinstance(engine.get(key), str):
                    engine[key] = str(base / engine[key])
    pools = raw.get("pools")
    if isinstance(pools, dict):
        for pool in pools.values():
            secrets = pool.get("secrets") if isinstance(pool, dict) else None
            if isinstance(secrets, dict):
                for entry in secrets.values():
                    if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                        entry["file"] = str(base / entry["file"])
    sources = raw.get("sources")
    if isinstance(sources, dict):
        for src in sources.values():
            if not isinstance(src, dict):
                continue
            for key in ("secret_file", "secret_files"):
                val = src.get(key)
                if isinstance(val, str):
                    src[key] = str(base / val)
                elif isinstance(val, list):
                    src[key] = [str(base / v) if isinstance(v, str) else v for v in val]
            forge = src.get("forge")
            if isinstance(forge, dict):
                for key in ("private_key_file", "token_file"):
                    if isinstance(forge.get(key), str):
                        forge[key] = str(base / forge[key])
            for section, key in (("callbacks", "secret_file"), ("commit_status", "token_file")):
                table = src.get(section)
                if isinstance(table, dict) and isinstance(table.get(key), str):
                    table[key] = str(base / table[key])
            checkout = src.get("checkout")
            if isinstance(checkout, dict):
                for key in ("token_file", "deploy_key_file", "known_hosts_file", "mirror_dir"):
                    if isinstance(checkout.get(key), str):
                        checkout[key] = str(base / checkout[key])


def check_private_file(where: str, file: Path, parse: Callable[[str], object], *, private: bool = True) -> list[str]:
    """The one check of a file the controller reads a secret from: readable UTF-8, accepted by `parse` (which raises
    ValueError saying what is wrong, never quoting the content), and -- when `private` -- chmod 600."""
    try:
        parse(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{where}: file not found"]
    except PermissionError:
        return [f"{where}: not readable by this user"]
    except UnicodeDecodeError:
        return [f"{where}: not UTF-8 text"]
    except OSError as exc:
        return [f"{where}: cannot read: {exc.strerror or type(exc).__name__}"]
    except ValueError as exc:
        problems = [f"{where}: {exc}"]
    else:
        problems = []
    if private and file.stat().st_mode & 0o077:
        problems.append(f"{where}: readable by group/others; run chmod 600 on it")
    return problems


def _not_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("empty")
    return text


def _pem_key(hint: str) -> Callable[[str], object]:
    def parse(text: str) -> None:
        if "PRIVATE KEY-----" not in _not_empty(text):
            raise ValueError(hint)

    return parse


def _check_forge_files(name: str, forge: ForgeConfig) -> list[str]:
    """The forge's key or token file: readable, not empty, chmod 600; errors never quote the content."""
    problems = []
    if forge.private_key_file is not None:
        where = f"sources.{name}.forge.private_key_file: {forge.private_key_file}"
        hint = "not a PEM private key (download it from the GitHub App's settings)"
        problems += check_private_file(where, forge.private_key_file, _pem_key(hint))
    if forge.token_file is not None:
        problems += check_private_file(f"sources.{name}.forge.token_file: {forge.token_file}", forge.token_file,
                                       _not_empty)  # fmt: skip
    return problems


def _check_checkout_files(name: str, checkout: CheckoutConfig) -> list[str]:
    """The checkout's token or deploy key (readable, not empty, chmod 600) and known_hosts file (readable, not
    empty); errors never quote the content."""
    where = f"sources.{name}.checkout"
    problems = []
    if checkout.token_file is not None:
        problems += check_private_file(f"{where}.token_file: {checkout.token_file}", checkout.token_file,
                                       read_status_token_text)  # fmt: skip
    if checkout.deploy_key_file is not None:
        hint = "not a private key (ssh-keygen -t ed25519 -f FILE makes one)"
        problems += check_private_file(f"{where}.deploy_key_file: {checkout.deploy_key_file}",
                                       checkout.deploy_key_file, _pem_key(hint))  # fmt: skip
    if checkout.known_hosts_file is not None:
        problems += check_private_file(f"{where}.known_hosts_file: {checkout.known_hosts_file}",
                                       checkout.known_hosts_file, _not_empty, private=False)  # fmt: skip
    return problems


def _check_callback_files(name: str, src: SourceConfig) -> list[str]:
    """The callback secret (a whsec_ secret) and the commit-status token: readable, valid, chmod 600; errors never
    quote the content."""
    problems = []
    if src.callbacks is not None:
        file = src.callbacks.secret_file
        problems += check_private_file(f"sources.{name}.callbacks.secret_file: {file}", file,
                                       lambda text: decode_secret("standard-webhooks", text.strip()))  # fmt: skip
    if src.commit_status is not None:
        file = src.commit_status.token_file
        problems += check_private_file(f"sources.{name}.commit_status.token_file: {file}", file,
                                       read_status_token_text)  # fmt: skip
    return problems


def read_callback_secret(file: Path) -> str:
    """The whsec_<base64> text of a callback secret file, checked to decode (ValueError never quotes it)."""
    text = file.read_text(encoding="utf-8").strip()
    decode_secret("standard-webhooks", text)
    return text if text.startswith("whsec_") else f"whsec_{text}"


def read_status_token(file: Path) -> str:
    return read_status_token_text(file.read_text(encoding="utf-8"))


def read_status_token_text(text: str) -> str:
    """A token file's token: one line, no spaces (ValueError never quotes it)."""
    text = text.strip()
    if not text:
        raise ValueError("empty")
    if any(c.isspace() or ord(c) < 0x20 for c in text):
        raise ValueError("the token must be one line without spaces")
    return text


def _check_secret_files(name: str, src: SourceConfig) -> list[str]:
    problems = []
    for file in src.secret_files:
        problems += check_private_file(f"sources.{name}.secret_files: {file}", file,
                                       lambda text: decode_secret(src.scheme, text))  # fmt: skip
    return problems


def _check_pool_secret(where: str, file: Path, min_length: int) -> list[str]:
    def parse(text: str) -> None:
        if len(text.removesuffix("\n").removesuffix("\r")) < min_length:
            raise ValueError(f"the value is shorter than {min_length} characters and cannot be masked safely")

    return check_private_file(f"{where}: {file}", file, parse)


def read_pool_secret(file: Path) -> str:
    """A trailing newline in a secret file is an editor artefact, not part of the value."""
    return file.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")


def read_source_secrets(src: SourceConfig) -> list[bytes]:
    return [decode_secret(src.scheme, f.read_text(encoding="utf-8")) for f in src.secret_files]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
