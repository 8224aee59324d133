"""What the job runner needs from a credentials backend, so it does not depend on Vault directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from orchestrator.jobs.states import Job
from orchestrator.runtime.container_spec import SecretFile


class CredentialsError(Exception):
    """Fetching credentials failed; the message is safe to store and show (no token, JWT or secret value)."""


@dataclass(frozen=True)
class JobCredentials:
    secrets: list[SecretFile] = field(repr=False)
    accessor: str | None = None
    job_id: str | None = None
    # Opaque handle the backend needs to revoke what it issued; never stored or logged.
    handle: object = field(default=None, repr=False)


class CredentialsBackend(Protocol):
    async def acquire(self, job: Job) -> JobCredentials: ...

    async def release(self, credentials: JobCredentials) -> None:
        """Revoke what `acquire` issued. Must not raise: failures are logged and left to the token's TTL."""
        ...

    async def revoke_accessor(self, accessor: str) -> bool:
        """Crash recovery: revoke credentials known only by their accessor. False when this is not possible
        (no revoker configured) or failed; the credentials' TTL then bounds them."""
        ...
