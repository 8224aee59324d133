"""What the controller needs from a forge (GitHub, Gitea) to serve its jobs with single-use runners, and the values
that cross that line. Pure: the adapters in forges/github and forges/gitea implement `ForgeAPI`; tests use a fake
of each forge's REST API on loopback."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from orchestrator.credentials.base import JobCredentials
from orchestrator.jobs.states import Job


@dataclass(frozen=True)
class RunnerScope:
    """Where a runner is registered: one repository (`owner/repo`) or an organization."""

    kind: Literal["repo", "org"]
    name: str
    installation_id: int | None = None  # GitHub App installation (from the webhook or the config)

    def __str__(self) -> str:
        return f"{'repository' if self.kind == 'repo' else 'organization'} {self.name}"


@dataclass(frozen=True)
class Registration:
    """A one-time runner registration. `credential` reaches the agent as /run/secrets/<file_name> (tmpfs, 0600),
    over the container's stdin like every secret: never in its env, command line or labels."""

    runner_id: int
    name: str
    credential: str = field(repr=False)
    file_name: str


@dataclass(frozen=True)
class RegisteredRunner:
    id: int
    name: str
    status: str
    busy: bool
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueuedJob:
    """A workflow job the forge has queued, found through its API (a webhook may have been lost)."""

    id: int
    run_id: int
    repository: str
    labels: tuple[str, ...]
    name: str = ""
    head_sha: str = ""
    head_branch: str = ""


class ForgeError(Exception):
    """A forge API call failed for good. The message names what to fix (app, installation, repository, runner
    group) and never holds a token, JWT or registration credential; `status` is the HTTP status (0: unreachable)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ForgeAPI(Protocol):
    async def register(
        self, scope: RunnerScope, *, name: str, labels: Sequence[str], runner_group_id: int | None
    ) -> Registration: ...

    async def runners(self, scope: RunnerScope) -> list[RegisteredRunner]:
        """Every registered runner of the scope (all pages)."""
        ...

    async def delete_runner(self, scope: RunnerScope, runner_id: int) -> bool:
        """Removes a registration; False if it was already gone."""
        ...

    async def queued_jobs(self, repository: str, installation_id: int | None) -> list[QueuedJob]:
        """Jobs waiting for a runner, also those inside runs already in progress (a matrix, a job that needs
        another): GitHub lists a run as queued only until its first job starts."""
        ...

    async def repositories(self) -> list[tuple[str, int | None]]:
        """Every repository the controller's credential reaches, with the GitHub App installation it is reached
        through (None elsewhere): where reconciliation looks for queued jobs of pools that allow repositories by
        glob or organization, whose webhook may never have arrived. Raises ForgeError."""
        ...

    async def resolve(self, scope: RunnerScope) -> RunnerScope:
        """The scope as the forge's calls need it (a GitHub App's installation for a scope only the config named);
        unchanged where nothing is missing. Raises ForgeError."""
        ...

    def stats(self) -> dict[str, float]:
        """Counters for the metrics: calls, retries, rate_limit_remaining (-1: the forge reports none),
        rate_limit_waits; an adapter may add its own."""
        ...

    async def close(self) -> None: ...


class RunnerRegistrar(Protocol):
    """What the job runner asks of the forge side for a runner job (forges/runners.py): a one-time registration
    right before the container is created -- so none waits in a queue going stale -- and its removal after."""

    async def register(self, job: Job) -> JobCredentials:
        """The registration as the one secret the container gets (`secrets[0]`). Raises ForgeError."""
        ...

    async def unregister(self, job: Job, registration: JobCredentials) -> None:
        """Removes the registration if the forge still has it. Must not raise: failures are logged, and
        reconciliation deletes what is left."""
        ...
