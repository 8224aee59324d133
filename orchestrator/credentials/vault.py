"""Vault through an OIDC exchange: per job, a JWT minted by the controller is exchanged at Vault's JWT auth method
for a short-lived token, that token reads exactly the secrets the job asked for, and it is revoked when the job
ends. The controller holds no standing Vault token (an optional revoker token may only revoke by accessor).

hvac is synchronous; every call runs in a worker thread. Transient failures (connection errors, 5xx, 429) are
retried on a bounded budget; 4xx answers are final. Error messages carry Vault's message, the role and the
path, never the JWT or a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests.exceptions
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from orchestrator.config import Config, VaultConfig
from orchestrator.credentials.base import CredentialsError, JobCredentials, SecretFile
from orchestrator.credentials.claims import JobIdentity
from orchestrator.credentials.oidc import JobTokenIssuer
from orchestrator.evidence.audit import accessor_digest
from orchestrator.evidence.auditor import Auditor
from orchestrator.jobs.spec import SecretRequest
from orchestrator.jobs.states import Job

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT = (
    hvac.exceptions.InternalServerError,
    hvac.exceptions.VaultDown,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)


@dataclass(frozen=True)
class _Session:
    """What release needs: the job's own token (never logged, never stored) and its accessor."""

    token: str = field(repr=False)
    accessor: str


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT)


def _scrub(message: str, *sensitive: str) -> str:
    for value in sensitive:
        if value:
            message = message.replace(value, "[REDACTED]")
    return message


def _vault_message(exc: BaseException) -> str:
    if isinstance(exc, hvac.exceptions.VaultError):
        text = str(exc.args[0]) if exc.args else ""
        return text or type(exc).__name__
    return type(exc).__name__


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class VaultCredentials:
    """The CredentialsBackend of a Vault or OpenBao server (credentials/base.py). `auditor` records every
    credential issued, denied and revoked."""

    def __init__(self, config: Config, issuer: JobTokenIssuer, auditor: Auditor) -> None:
        if config.credentials is None:
            raise ValueError("VaultCredentials needs [credentials] in the config")
        self.config = config
        self.vault: VaultConfig = config.credentials.vault
        self.issuer = issuer
        self.retries = 0
        self.errors = 0
        self.auditor = auditor

    def stats(self) -> dict[str, int]:
        return {"errors": self.errors, "retries": self.retries}

    async def maintain(self) -> None:
        """Keeps the revoker token (if one is configured) alive: it is periodic, renewed hourly."""
        if self.can_revoke_by_accessor:
            await self.renew_revoker()

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _client(self, token: str | None = None) -> hvac.Client:
        verify: bool | str = str(self.vault.ca_cert) if self.vault.ca_cert else True
        return hvac.Client(
            url=self.vault.address,
            token=token,
            namespace=self.vault.namespace,
            verify=verify,
            timeout=int(self.vault.request_timeout_s),
        )

    async def _call(self, fn: Callable[[], T]) -> T:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_delay(self.vault.retry_budget_s),
            wait=wait_exponential(multiplier=0.2, max=3),
            reraise=True,
            before_sleep=lambda _: self._count_retry(),
        ):
            with attempt:
                return await asyncio.to_thread(fn)
        raise AssertionError("unreachable")  # pragma: no cover

    def _count_retry(self) -> None:
        self.retries += 1

    def _unreachable(self, exc: BaseException) -> CredentialsError:
        return CredentialsError(
            f"Vault at {self.vault.address} unavailable after retrying for {self.vault.retry_budget_s:g} s: "
            f"{_vault_message(exc)}"
        )

    def _json(self, resp: object, where: str) -> dict[str, Any]:
        """hvac hands back the raw HTTP response when a 2xx body is not JSON: a proxy's page, a cut answer."""
        if isinstance(resp, dict):
            return resp
        status = getattr(resp, "status_code", "?")
        self.errors += 1
        raise CredentialsError(
            f"Vault at {self.vault.address} answered {where!r} with malformed JSON (HTTP {status}); is "
            "[credentials.vault] address the Vault API, not a proxy or web page?"
        )

    # -- the exchange --------------------------------------------------------------------------------------------

    async def acquire(self, job: Job) -> JobCredentials:
        role = self.config.vault_role(job.pool)
        pool = self.config.pools[job.pool]
        identity = JobIdentity(
            job_id=job.id, repository=job.spec.repository, ref=job.spec.ref, sha=job.spec.sha, pool=job.pool
        )
        jwt = self.issuer.mint(identity, pool.audience)
        try:
            auth = await self._login(role, jwt)
        except CredentialsError as exc:
            self.auditor.credentials_denied(job.id, role=role, reason=str(exc))
            raise
        token, accessor = auth["client_token"], auth["accessor"]
        session = _Session(token=token, accessor=accessor)
        try:
            await self._bound_ttl(session, auth, job)
            secrets = await self._read_all(session, role, job)
        except BaseException as exc:
            if isinstance(exc, CredentialsError):
                self.auditor.credentials_denied(job.id, role=role, reason=str(exc))
            await self.release(JobCredentials(secrets=[], accessor=accessor, job_id=job.id, handle=session))
            raise
        log.info(
            "vault credentials issued",
            extra={
                "job_id": job.id,
                "role": role,
                "policies": ",".join(auth.get("policies") or []),
                "ttl_s": auth.get("lease_duration"),
                "paths": ",".join(r.path for r in job.spec.secrets),
            },
        )
        self.auditor.credentials_issued(
            job.id,
            role=role,
            policies=list(auth.get("policies") or []),
            ttl_s=int(auth.get("lease_duration") or 0),
            accessor=accessor,
            paths=[r.path for r in job.spec.secrets],
        )
        return JobCredentials(secrets=secrets, accessor=accessor, job_id=job.id, handle=session)

    async def _login(self, role: str, jwt: str) -> dict[str, Any]:
        mount = self.vault.auth_mount
        try:
            resp = await self._call(
                lambda: self._client().auth.jwt.jwt_login(role=role, jwt=jwt, path=mount, use_token=False)
            )
        except hvac.exceptions.VaultError as exc:
            self.errors += 1
            if _is_transient(exc):
                raise self._unreachable(exc) from None
            message = _scrub(_vault_message(exc), jwt)
            raise CredentialsError(f"Vault refused the login as role {role!r} at auth/{mount}: {message}") from None
        except requests.exceptions.RequestException as exc:
            self.errors += 1
            raise self._unreachable(exc) from None
        auth = self._json(resp, f"auth/{mount}/login").get("auth")
        if not isinstance(auth, dict) or not auth.get("client_token") or not auth.get("accessor"):
            raise CredentialsError(f"Vault login as role {role!r} returned no token")
        return dict(auth)

    async def _bound_ttl(self, session: _Session, auth: dict[str, Any], job: Job) -> None:
        """The job token lives exactly the job's timeout plus grace: never longer, even if the controller dies and
        never revokes it; and not shorter where the role's max TTL allows, or the leases it holds (a database
        user) would be revoked with it in the middle of a long job."""
        limit = job.timeout_s + self.vault.ttl_grace_s
        ttl = int(auth.get("lease_duration") or 0)
        role = self.config.vault_role(job.pool)
        if ttl == limit:
            return
        try:
            resp = await self._call(lambda: self._client(session.token).auth.token.renew_self(increment=limit))
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            if 0 < ttl < limit:  # short already: only not extended
                self._expires_early(job, role, ttl, limit, type(exc).__name__)
                return
            raise CredentialsError(
                f"could not shorten the Vault token TTL to {limit} s: {_scrub(_vault_message(exc), session.token)}"
            ) from None
        new_ttl = int((resp.get("auth") or {}).get("lease_duration") or 0)
        if not 0 < new_ttl <= limit:
            raise CredentialsError(
                f"Vault role {role!r} issues tokens with a TTL of {ttl or 'unlimited'} s that cannot be shortened to "
                f"the job's timeout plus grace ({limit} s); set token_ttl/token_max_ttl on the role"
            )
        if new_ttl < limit:
            self._expires_early(job, role, new_ttl, limit, "token_max_ttl")

    def _expires_early(self, job: Job, role: str, ttl: int, limit: int, why: str) -> None:
        log.warning(
            "the job's Vault token expires before the job's timeout; raise token_max_ttl on the role",
            extra={"job_id": job.id, "role": role, "ttl_s": ttl, "timeout_plus_grace_s": limit, "cause": why},
        )

    async def _read_all(self, session: _Session, role: str, job: Job) -> list[SecretFile]:
        """One read per path, then the requested keys from that one answer: a dynamic engine (database/creds/…)
        creates a new user per read, so username and password must come from the same read."""
        answers: dict[str, dict[str, Any]] = {}
        secrets = []
        for request in job.spec.secrets:
            where = self._where(request)
            if where not in answers:
                answers[where] = await self._read(session, role, request, where, job)
            data = answers[where]
            if request.key not in data:
                raise CredentialsError(
                    f"secret {where!r} has no key {request.key!r} (keys: {', '.join(sorted(map(str, data))) or 'none'})"
                )
            secrets.append(SecretFile(name=request.name, value=_as_text(data[request.key]), deliver=request.deliver))
        return secrets

    def _where(self, request: SecretRequest) -> str:
        if request.engine == "kv2":
            return f"{request.mount or self.vault.kv_mount}/data/{request.path}"
        return f"{request.mount}/{request.path}" if request.mount else request.path

    async def _read(self, session: _Session, role: str, request: SecretRequest, where: str, job: Job) -> dict[str, Any]:
        if request.engine == "kv2":
            mount = request.mount or self.vault.kv_mount

            def read() -> Any:
                return self._client(session.token).secrets.kv.v2.read_secret_version(
                    path=request.path, mount_point=mount, raise_on_deleted_version=True
                )
        else:

            def read() -> Any:
                return self._client(session.token).read(where)

        try:
            resp = await self._call(read)
        except hvac.exceptions.Forbidden:
            self.errors += 1
            raise CredentialsError(
                f"Vault denied reading {where!r}: permission denied for role {role!r} (check its policies)"
            ) from None
        except hvac.exceptions.InvalidPath:
            self.errors += 1
            raise CredentialsError(f"Vault has no secret at {where!r}") from None
        except hvac.exceptions.VaultError as exc:
            self.errors += 1
            if _is_transient(exc):
                raise self._unreachable(exc) from None
            raise CredentialsError(
                f"Vault refused reading {where!r}: {_scrub(_vault_message(exc), session.token)}"
            ) from None
        except requests.exceptions.RequestException as exc:
            self.errors += 1
            raise self._unreachable(exc) from None
        resp = self._json(resp, where)
        if resp.get("lease_id"):
            await self._bound_lease(session, resp, where, job)
        data = resp.get("data") or {}
        if request.engine == "kv2":
            data = data.get("data") or {}
        return dict(data) if isinstance(data, dict) else {}

    async def _bound_lease(self, session: _Session, resp: dict[str, Any], where: str, job: Job) -> None:
        """A dynamic secret's lease belongs to the job's token, so it dies with it (revoke-self revokes the token's
        leases, and so does its expiry). Its own TTL is set to the token's (the job's timeout plus grace) as well:
        shortened, so that what Vault reports about the lease is true even before that; extended, so that a database
        user does not expire in the middle of a job longer than the engine's default TTL."""
        limit = job.timeout_s + self.vault.ttl_grace_s
        ttl = int(resp.get("lease_duration") or 0)
        if ttl == limit or not resp.get("renewable"):
            return
        lease_id = str(resp["lease_id"])
        try:
            client = self._client(session.token)
            await self._call(lambda: client.sys.renew_lease(lease_id=lease_id, increment=limit))  # type: ignore[no-untyped-call]
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            log.warning(
                "could not set a lease's TTL to the job's; the job token's TTL bounds it",
                extra={"job_id": job.id, "path": where, "ttl_s": ttl, "error": type(exc).__name__},
            )

    # -- the end -------------------------------------------------------------------------------------------------

    async def release(self, credentials: JobCredentials) -> None:
        session = credentials.handle
        if not isinstance(session, _Session):
            return
        try:
            await self._call(lambda: self._client(session.token).auth.token.revoke_self())
            outcome = "ok"
        except hvac.exceptions.Forbidden:
            outcome = "already_invalid"  # expired or used up (num_uses): already useless
        except Exception as exc:
            self.errors += 1
            outcome = "error"
            log.error(
                "could not revoke vault token; its TTL bounds it",
                extra={"accessor_sha256": accessor_digest(session.accessor), "error": type(exc).__name__},
            )
        self.auditor.credentials_revoked(
            credentials.job_id, accessor=session.accessor, outcome=outcome, how="revoke-self"
        )

    @property
    def can_revoke_by_accessor(self) -> bool:
        return self.vault.revoker_token_file is not None

    async def _revoker_token(self) -> str | None:
        if self.vault.revoker_token_file is None:
            return None
        text = await asyncio.to_thread(self.vault.revoker_token_file.read_text, encoding="utf-8")
        return text.strip()

    async def renew_revoker(self) -> bool:
        """The revoker token is periodic (see config/vault/setup-vault.sh): renewing it keeps it alive without
        ever giving it a long TTL. Returns False when there is none or renewal failed (logged, never raised)."""
        revoker = await self._revoker_token()
        if revoker is None:
            return False
        try:
            await self._call(lambda: self._client(revoker).auth.token.renew_self())
            return True
        except Exception as exc:
            self.errors += 1
            log.error("could not renew the vault revoker token", extra={"error": type(exc).__name__})
            return False

    async def revoke_accessor(self, accessor: str) -> bool:
        """Crash recovery: revoke a token we no longer hold. Needs the narrowly-scoped revoker token."""
        revoker = await self._revoker_token()
        if revoker is None:
            return False
        try:
            await self._call(lambda: self._client(revoker).auth.token.revoke_accessor(accessor))
            return True
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath):
            return True  # unknown accessor: the token is already gone
        except Exception as exc:
            self.errors += 1
            log.error(
                "revoke by accessor failed",
                extra={"accessor_sha256": accessor_digest(accessor), "error": type(exc).__name__},
            )
            return False


def build_vault_credentials(config: Config, auditor: Auditor) -> tuple[VaultCredentials, Any]:
    """Key store + issuer + backend from config. Returns (backend, signing keys) — the app serves the JWKS."""
    from orchestrator.credentials.oidc import SigningKeys

    if config.credentials is None or config.server.public_url is None:
        raise ValueError("credentials need [credentials] and server.public_url")
    oidc = config.credentials.oidc
    keys = SigningKeys(
        config.data_dir / "oidc",
        algorithm=oidc.algorithm,
        rotation_period_s=oidc.rotation_period_s,
        overlap_s=oidc.overlap_s,
        clock=time.time,
    )
    keys.load_or_create()
    issuer = JobTokenIssuer(
        keys, issuer=config.server.public_url, lifetime_s=oidc.token_lifetime_s, controller_id=config.controller_id
    )
    return VaultCredentials(config, issuer, auditor), keys
