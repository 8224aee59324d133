"""The start-up check of the pools' runtimes (orchestrator/runtime/runtimes.py), against a stand-in engine."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from orchestrator.config import Config
from orchestrator.runtime.docker_engine import EngineError
from orchestrator.runtime.runtimes import RuntimeUnavailableError, check_pool_runtimes

STOCK = {"io.containerd.runc.v2": [], "runc": []}
RUNSC = {**STOCK, "runsc": ["--platform=ptrace", "--network=none"]}


class Engine:
    def __init__(self, offered: dict[str, list[str]] | Exception) -> None:
        self.offered = offered
        self.calls: list[bool] = []

    async def runtimes(self, *, retry: bool = True) -> dict[str, list[str]]:
        self.calls.append(retry)
        if isinstance(self.offered, Exception):
            raise self.offered
        return self.offered


def config(**pools: dict[str, Any]) -> Config:
    return Config.model_validate(
        {
            "controller_id": "c",
            "data_dir": "/nonexistent",
            "pools": {n: {"image": "img", **p} for n, p in pools.items()},
        }
    )


async def test_pools_on_the_default_runtime_never_ask_the_engine() -> None:
    engine = Engine(EngineError("unreachable", transient=True))
    await check_pool_runtimes(config(default={}), engine)
    assert engine.calls == []


async def test_offered_runtime_passes_without_retrying_at_start() -> None:
    engine = Engine(RUNSC)
    await check_pool_runtimes(config(default={}, sandboxed={"runtime": "runsc"}), engine)
    assert engine.calls == [False]


async def test_missing_runtime_is_one_line_naming_pool_runtime_and_what_the_engine_has() -> None:
    with pytest.raises(RuntimeUnavailableError) as caught:
        await check_pool_runtimes(config(default={}, sandboxed={"runtime": "runsc"}), Engine(STOCK))
    assert str(caught.value) == (
        "pools.sandboxed.runtime: the Docker engine offers no runtime 'runsc' (it has: io.containerd.runc.v2, runc);"
        ' add it to dockerd\'s daemon.json "runtimes"'
    )
    assert isinstance(caught.value, OSError)  # `orchestrator serve` prints OSErrors in one line, exit 1
    assert "\n" not in str(caught.value)


async def test_every_failing_pool_is_named_in_the_same_line() -> None:
    cfg = config(a={"runtime": "runsc"}, b={"runtime": "kata"}, c={"runtime": "runc"})
    with pytest.raises(RuntimeUnavailableError) as caught:
        await check_pool_runtimes(cfg, Engine(STOCK))
    message = str(caught.value)
    assert "pools.a.runtime:" in message and "'runsc'" in message
    assert "pools.b.runtime:" in message and "'kata'" in message
    assert "pools.c" not in message and "\n" not in message


async def test_a_network_the_runtime_never_connects_is_refused() -> None:
    cfg = config(sandboxed={"runtime": "runsc", "network": "ci-egress"})
    with pytest.raises(RuntimeUnavailableError, match=r"^pools\.sandboxed\.network: .*--network=none.*'ci-egress'"):
        await check_pool_runtimes(cfg, Engine(RUNSC))
    # with a runsc that sets up its own sandbox network, the pool's Docker network is fine
    await check_pool_runtimes(cfg, Engine({**STOCK, "runsc": ["--platform=systrap"]}))


async def test_unreachable_engine_is_a_warning_not_a_refusal(caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine(EngineError("Docker engine unreachable: ConnectionError", transient=True))
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        await check_pool_runtimes(config(sandboxed={"runtime": "runsc"}), engine)
    (record,) = [r for r in caplog.records if r.name == "orchestrator.runtime.runtimes"]
    assert record.runtimes == ["runsc"]  # type: ignore[attr-defined]
    assert "unreachable" in record.error  # type: ignore[attr-defined]


async def test_engine_runtimes_reads_docker_info_with_each_runtimes_args() -> None:
    from types import SimpleNamespace

    from orchestrator.runtime.docker_engine import DockerEngine

    info = {
        "Runtimes": {
            "runc": {"path": "runc"},
            "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=none"]},
        }
    }
    engine = DockerEngine("unix:///nonexistent.sock")
    engine._client = SimpleNamespace(api=SimpleNamespace(info=lambda: info), close=lambda: None)  # type: ignore[assignment]
    try:
        assert await engine.runtimes() == {"runc": [], "runsc": ["--platform=ptrace", "--network=none"]}
    finally:
        await engine.close()
