"""How long a delivery is retried and how far apart. Pure: tenacity strategies and the schedule they give.

Exponential back-off from `initial_s`, doubling up to `max_s`, plus up to `jitter_s` of random delay (so that
receivers coming back are not hit by every waiting job at once). A delivery is given up once the next attempt
would start after `retry_for_s` from its first attempt -- a time stored with the delivery, so a controller restart
neither resets nor extends the budget. At least one attempt is always made, also after a long outage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryCallState, wait_exponential, wait_random
from tenacity.stop import stop_base
from tenacity.wait import wait_base


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_for_s: float = 3600.0
    initial_s: float = 1.0
    max_s: float = 300.0
    jitter_s: float = 1.0

    def wait(self) -> wait_base:
        exponential = wait_exponential(multiplier=self.initial_s, min=self.initial_s, max=self.max_s)
        return exponential + wait_random(0, self.jitter_s) if self.jitter_s > 0 else exponential

    def deadline(self, first_attempt_at: float) -> float:
        return first_attempt_at + self.retry_for_s

    def schedule(self, attempts: int) -> list[float]:
        """The waits before attempts 2..attempts+1 without jitter (for tests and docs)."""
        plain = RetryPolicy(self.retry_for_s, self.initial_s, self.max_s, 0.0).wait()
        return [plain(_state(n)) for n in range(1, attempts + 1)]


class stop_at_deadline(stop_base):  # named like tenacity's own strategies
    """Stop when the next attempt would start at or after `deadline` (wall-clock seconds, from `clock`)."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() + retry_state.upcoming_sleep >= self.deadline


def _state(attempt_number: int) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt_number
    return state
