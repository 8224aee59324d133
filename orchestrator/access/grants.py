"""Who may do what, where: a principal holds grants, each a role with a scope (pools, repository globs). Pure: the
HTTP edge asks `may` / `sees` and maps a refusal to 403 or 404.

Roles. `viewer` < `operator` < `admin` rank (an operator may view, an admin may operate). `approver` approves or
rejects jobs waiting for approval; `auditor` searches the audit trail. Both also view within their scope (one
cannot approve or audit what one cannot see); `admin` holds every role. A grant with neither pools nor
repositories is controller-wide: only such a grant allows what concerns no single job (draining an engine, the
audit head, metrics, audit records about no job)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

Role = Literal["viewer", "operator", "admin", "approver", "auditor"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin", "approver", "auditor")

# Which held roles satisfy a needed one.
_SATISFIED_BY: dict[str, frozenset[str]] = {
    "viewer": frozenset(ROLES),
    "operator": frozenset({"operator", "admin"}),
    "admin": frozenset({"admin"}),
    "approver": frozenset({"approver", "admin"}),
    "auditor": frozenset({"auditor", "admin"}),
}


@dataclass(frozen=True)
class Grant:
    role: Role
    pools: tuple[str, ...] | None = None  # None: every pool
    repositories: tuple[str, ...] | None = None  # fnmatch globs; None: every repository

    @property
    def controller_wide(self) -> bool:
        return self.pools is None and self.repositories is None

    def covers(self, pool: str, repository: str) -> bool:
        if self.pools is not None and pool not in self.pools:
            return False
        return self.repositories is None or any(fnmatchcase(repository, glob) for glob in self.repositories)

    def describe(self) -> str:
        where = []
        if self.pools is not None:
            where.append("pools " + ", ".join(self.pools))
        if self.repositories is not None:
            where.append("repositories " + ", ".join(self.repositories))
        return f"{self.role} ({'; '.join(where) or 'everywhere'})"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `kind`: "token" (a static API token) or "oidc" (a person from the identity
    provider). `aliases`: the names it is known by elsewhere (email, forge login), for the self-approval check."""

    name: str
    grants: tuple[Grant, ...]
    kind: Literal["token", "oidc"] = "token"
    aliases: frozenset[str] = field(default_factory=frozenset)

    @property
    def role(self) -> str:
        """The grants in one word for the audit trail and messages: the highest-ranking role, or a list."""
        roles = sorted({g.role for g in self.grants}, key=ROLES.index)
        return "+".join(roles) or "none"

    def holds(self, role: Role) -> bool:
        """Whether some grant of `role` exists, anywhere (a route's first gate; the job's scope is checked next)."""
        return any(g.role in _SATISFIED_BY[role] for g in self.grants)

    def may(self, role: Role, pool: str, repository: str) -> bool:
        """`role` on the jobs of `pool` from `repository`."""
        return any(g.role in _SATISFIED_BY[role] and g.covers(pool, repository) for g in self.grants)

    def anywhere(self, role: Role) -> bool:
        """`role` controller-wide (a grant without pools or repositories)."""
        return any(g.role in _SATISFIED_BY[role] and g.controller_wide for g in self.grants)

    def pools_for(self, role: Role, configured: Iterable[str]) -> list[str] | None:
        """The pools whose jobs `role` may concern (None: every pool, including ones no longer configured)."""
        pools: set[str] = set()
        for g in self.grants:
            if g.role not in _SATISFIED_BY[role]:
                continue
            if g.pools is None:
                return None
            pools.update(g.pools)
        return [p for p in configured if p in pools] + sorted(pools - set(configured))

    def is_one_of(self, names: Iterable[str | None]) -> bool:
        """Whether any of `names` (case-insensitive) is this principal: its name or an alias."""
        mine = {self.name.casefold(), *(a.casefold() for a in self.aliases)}
        return any(n is not None and n.casefold() in mine for n in names)


def describe_grants(grants: Iterable[Grant]) -> str:
    return "; ".join(g.describe() for g in grants) or "no grant"
