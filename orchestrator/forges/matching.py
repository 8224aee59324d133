"""Which pool serves a forge job. Pure, and the rule is the product's promise to the operator:

1. Only pools of the delivering source are candidates.
2. A repository no candidate allows (its `repositories` globs, or its owner in `organizations`; case-insensitive
   like the forges' names) never gets a runner, whatever its labels.
3. Every label of the job must be one of the pool's (case-insensitive); `self-hosted` is implied, so a job asking
   only for `self-hosted` fits any allowed pool.
4. Several pools fit: the most specific wins -- the one with the fewest labels the job did not ask for -- then the
   first in config order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

IMPLIED = "self-hosted"


@dataclass(frozen=True)
class RunnerPool:
    name: str
    source: str
    labels: frozenset[str]  # lowercased
    repositories: tuple[str, ...]  # lowercased globs
    organizations: tuple[str, ...]  # lowercased globs

    @classmethod
    def of(
        cls, name: str, source: str, labels: Iterable[str], repositories: Iterable[str], organizations: Iterable[str]
    ) -> RunnerPool:
        return cls(
            name=name,
            source=source,
            labels=frozenset(label.lower() for label in labels) | {IMPLIED},
            repositories=tuple(glob.lower() for glob in repositories),
            organizations=tuple(glob.lower() for glob in organizations),
        )

    def allows(self, repository: str) -> bool:
        repo = repository.lower()
        owner = repo.partition("/")[0]
        return any(fnmatchcase(repo, glob) for glob in self.repositories) or any(
            fnmatchcase(owner, glob) for glob in self.organizations
        )


@dataclass(frozen=True)
class Matched:
    pool: str


@dataclass(frozen=True)
class Unmatched:
    """Why no pool serves the job: `reason` is a metric label, `message` says it for the log and the audit."""

    reason: str  # "repository_not_allowed" | "no_pool_for_labels"
    message: str


def choose_pool(
    pools: Sequence[RunnerPool], *, source: str, repository: str, labels: Sequence[str]
) -> Matched | Unmatched:
    wanted = frozenset(label.lower() for label in labels) | {IMPLIED}
    allowed = [pool for pool in pools if pool.source == source and pool.allows(repository)]
    if not allowed:
        return Unmatched("repository_not_allowed", f"no pool of source {source!r} allows repository {repository!r}")
    fitting = [pool for pool in allowed if wanted <= pool.labels]
    if not fitting:
        return Unmatched(
            "no_pool_for_labels",
            f"no pool of source {source!r} allowing {repository!r} has all the labels {sorted(wanted)} "
            f"(pools: {', '.join(f'{p.name} {sorted(p.labels)}' for p in allowed)})",
        )
    best = min(fitting, key=lambda pool: len(pool.labels - wanted))  # min keeps the first of equals: config order
    return Matched(best.name)
