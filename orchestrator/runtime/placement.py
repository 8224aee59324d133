"""Which Docker engine a pool's next container goes to. Pure; the rule is the operator's promise:

1. Only the engines the pool lists (`pools.NAME.engines`; every engine when it lists none) are candidates.
2. An engine that is unhealthy (its last probe failed) or draining (`orchestrator engines drain`) gets nothing new.
3. Of the rest, the one with the most free capacity for the pool -- its capacity for the pool minus the pool's
   containers there now -- wins; ties go to the first in config order. An engine at capacity gets nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Placed:
    engine: str


@dataclass(frozen=True)
class NoRoom:
    """Why no engine takes the container, naming each candidate and what stood in its way."""

    message: str


def place(
    pool: str,
    capacity: Mapping[str, int],
    used: Mapping[str, int],
    *,
    unhealthy: Collection[str] = (),
    draining: Collection[str] = (),
) -> Placed | NoRoom:
    free = {
        engine: cap - used.get(engine, 0)
        for engine, cap in capacity.items()
        if engine not in unhealthy and engine not in draining and cap - used.get(engine, 0) > 0
    }
    if free:
        return Placed(max(free, key=lambda engine: free[engine]))  # max keeps the first of equals: config order
    why = []
    for engine, cap in capacity.items():
        if engine in unhealthy:
            why.append(f"{engine}: unhealthy")
        elif engine in draining:
            why.append(f"{engine}: draining")
        else:
            why.append(f"{engine}: full ({used.get(engine, 0)} of {cap})")
    return NoRoom(f"no Docker engine takes a container of pool {pool!r} now ({'; '.join(why) or 'none listed'})")
