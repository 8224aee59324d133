"""An in-memory ForgeAPI (orchestrator/forges/protocol.py) for the lifecycle tests that need no HTTP: it registers,
lists and deletes runners, holds queued jobs, and records every call. The HTTP behaviour of the real forges is
tested against their loopback fakes (fake_github.py, fake_gitea.py)."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.forges.protocol import ForgeError, QueuedJob, RegisteredRunner, Registration, RunnerScope


@dataclass
class MemoryForge:
    runners_by_scope: dict[str, dict[int, RegisteredRunner]] = field(default_factory=dict)
    queued: dict[str, list[QueuedJob]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_register: ForgeError | None = None
    credentials: dict[int, str] = field(default_factory=dict)
    visible: set[str] = field(default_factory=set)  # repositories the credential reaches beyond those above
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    @staticmethod
    def key(scope: RunnerScope) -> str:
        return f"{scope.kind}:{scope.name}"

    async def register(
        self, scope: RunnerScope, *, name: str, labels: Sequence[str], runner_group_id: int | None
    ) -> Registration:
        self.calls.append(("register", name))
        if self.fail_register is not None:
            raise self.fail_register
        runners = self.runners_by_scope.setdefault(self.key(scope), {})
        if any(r.name == name for r in runners.values()):
            raise ForgeError(f"a runner named {name!r} already exists", status=422)
        runner_id = next(self._ids)
        runners[runner_id] = RegisteredRunner(runner_id, name, "offline", False, tuple(labels))
        credential = base64.b64encode(json.dumps({".runner": name, "id": runner_id}).encode()).decode()
        self.credentials[runner_id] = credential
        return Registration(runner_id, name, credential, "ACTIONS_RUNNER_INPUT_JITCONFIG")

    async def runners(self, scope: RunnerScope) -> list[RegisteredRunner]:
        self.calls.append(("runners", self.key(scope)))
        return list(self.runners_by_scope.get(self.key(scope), {}).values())

    async def delete_runner(self, scope: RunnerScope, runner_id: int) -> bool:
        self.calls.append(("delete", str(runner_id)))
        return self.runners_by_scope.get(self.key(scope), {}).pop(runner_id, None) is not None

    async def queued_jobs(self, repository: str, installation_id: int | None) -> list[QueuedJob]:
        self.calls.append(("queued", repository))
        return list(self.queued.get(repository, []))

    async def repositories(self) -> list[tuple[str, int | None]]:
        self.calls.append(("repositories", ""))
        names = {scope.partition(":")[2] for scope in self.runners_by_scope if scope.startswith("repo:")}
        return [(name, None) for name in sorted(names | set(self.queued) | set(self.visible))]

    async def resolve(self, scope: RunnerScope) -> RunnerScope:
        return scope

    def stats(self) -> dict[str, float]:
        return {"calls": len(self.calls), "retries": 0, "rate_limit_remaining": -1, "rate_limit_waits": 0}

    async def close(self) -> None:
        pass

    def registered(self, scope: str = "repo:acme/app") -> list[str]:
        return sorted(r.name for r in self.runners_by_scope.get(scope, {}).values())
