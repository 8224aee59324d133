"""Start-up check that the Docker engine offers every OCI runtime a pool asks for (`pools.NAME.runtime`).

A pool whose runtime is missing would end every job in `error` at container create; refusing to start says so
once, before any job is accepted.
"""

from __future__ import annotations

import logging

from orchestrator.config import Config
from orchestrator.runtime.protocol import ContainerRuntime, EngineError

log = logging.getLogger(__name__)


class RuntimeUnavailableError(OSError):
    """A pool names a runtime the engine cannot run its jobs with: the controller does not start. An OSError, so
    `orchestrator serve` reports it in one line, like a port it cannot bind (see WorkerStartError)."""


async def check_pool_runtimes(config: Config, engine: ContainerRuntime) -> None:
    """Raises RuntimeUnavailableError naming each pool whose runtime the engine does not offer. When the engine
    cannot be asked, the controller starts anyway (as it does without Docker) and says so: such a pool's jobs
    then end in `error` with Docker's own reason."""
    wanted = {name: pool.runtime for name, pool in config.pools.items() if pool.runtime is not None}
    if not wanted:
        return
    try:
        offered = await engine.runtimes(retry=False)
    except EngineError as exc:
        log.warning(
            "could not check the pools' runtimes against the Docker engine",
            extra={"error": str(exc), "runtimes": sorted(set(wanted.values()))},
        )
        return
    problems = []
    for name, runtime in wanted.items():
        if runtime not in offered:
            problems.append(
                f"pools.{name}.runtime: the Docker engine offers no runtime {runtime!r} "
                f'(it has: {", ".join(sorted(offered)) or "none"}); add it to dockerd\'s daemon.json "runtimes"'
            )
            continue
        network = config.pools[name].network
        if network != "none" and "--network=none" in offered[runtime]:
            problems.append(
                f"pools.{name}.network: the Docker engine runs runtime {runtime!r} with --network=none, so the "
                f"pool's network {network!r} would never reach its jobs"
            )
    if problems:
        raise RuntimeUnavailableError("; ".join(problems))
