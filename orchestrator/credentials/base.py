"""What the job runner needs from a credentials backend, so it does not depend on Vault directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from orchestrator.jobs.states import Job


@dataclass(frozen=True)
class SecretFile:
    """A value delivered to the job; kept out of reprs so it cannot end up in a log line by accident."""

    name: str
    value: str = field(repr=False)
    deliver: str = "file"


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

    def stats(self) -> dict[str, int]:
        """Counters for the metrics: calls that failed for good (`errors`) and retries."""
        ...

    async def maintain(self) -> None:
        """Runs once an hour (e.g. renewing a token the backend holds). Must not raise: failures are logged."""
        ...
