"""The one fake clock of the tests, for code that takes `clock: Callable[[], float]` (the `clock` fixture of
tests/conftest.py gives a fresh one)."""

from __future__ import annotations

import time


class FakeClock:
    """Stands still at `now` (default: the real time when made) until `advance` moves it; with `tick`, each reading
    also moves it on by that much first, for code that must see time pass between calls."""

    def __init__(self, start: float | None = None, *, tick: float = 0.0) -> None:
        self.now = time.time() if start is None else start
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
