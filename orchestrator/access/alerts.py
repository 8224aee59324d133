"""Unusual access, detected: pure counters over sliding windows, fed by the API and the job runner, returning the
alerts to raise (the caller counts, audits and forwards them). The heuristics, each with its thresholds in
`[alerts]`:

* failed_auth: at least `failed_auth_count` failed authentications within `failed_auth_window_s` from one address,
  or naming one identity (an expired token's name): guessing, or a leaked token being tried.
* log_reads: one identity reading the logs or artifacts of at least `log_reads_jobs` distinct jobs within
  `log_reads_window_s`: someone harvesting output (a log is masked, but still says a lot).
* secret_jobs: one sender (the job spec's `sender`, else its webhook source) starting at least `secret_jobs`
  distinct jobs that receive secrets within `secret_jobs_window_s`: secrets pulled out through many jobs.
* off_hours: a static token used in an hour of the day (UTC) that holds less than `off_hours_max_share` of its
  past uses, once it has `off_hours_min_uses` of them: automation runs on a schedule, so its token used at an
  unusual hour may be in other hands. (Each token's uses per hour are kept with its last use.)

An alert of one kind about one subject is raised at most once per its window (`cooldown`), so a burst is one
alert, not thousands."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.config import AlertsConfig

_MAX_SUBJECTS = 10_000  # per kind: the stalest subjects are forgotten first


@dataclass(frozen=True)
class Alert:
    kind: str  # failed_auth | log_reads | secret_jobs | off_hours
    subject: str  # the address, identity, sender or token concerned
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class _Windows:
    """Per subject, the recent events (time, key) within a window: bounded in subjects and in events each."""

    def __init__(self, window_s: float, cap: int) -> None:
        self.window_s = window_s
        self.cap = cap
        self._events: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()

    def add(self, subject: str, key: str, now: float) -> deque[tuple[float, str]]:
        events = self._events.setdefault(subject, deque(maxlen=self.cap))
        events.append((now, key))
        self._events.move_to_end(subject)
        while events and events[0][0] <= now - self.window_s:
            events.popleft()
        while len(self._events) > _MAX_SUBJECTS:
            self._events.popitem(last=False)
        return events


class AccessAlerts:
    def __init__(self, config: AlertsConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._failures = _Windows(config.failed_auth_window_s, config.failed_auth_count)
        self._reads = _Windows(config.log_reads_window_s, config.log_reads_jobs * 4)
        self._secrets = _Windows(config.secret_jobs_window_s, config.secret_jobs * 4)
        self._raised: dict[tuple[str, str], float] = {}

    def _once(self, kind: str, subject: str, cooldown: float, alert: Alert) -> list[Alert]:
        now = self.clock()
        last = self._raised.get((kind, subject))
        if last is not None and now - last < cooldown:
            return []
        self._raised[(kind, subject)] = now
        if len(self._raised) > 4 * _MAX_SUBJECTS:
            horizon = now - max(self.config.failed_auth_window_s, self.config.log_reads_window_s, 3600)
            self._raised = {k: t for k, t in self._raised.items() if t > horizon}
        return [alert]

    def auth_failed(self, address: str, identity: str | None = None) -> list[Alert]:
        cfg = self.config
        now, alerts = self.clock(), []
        for subject in (f"address:{address}", f"identity:{identity}" if identity else None):
            if subject is None:
                continue
            count = len(self._failures.add(subject, "", now))
            if count >= cfg.failed_auth_count:
                message = f"{count} failed authentications within {cfg.failed_auth_window_s:g} s from {subject}"
                details = {"failures": count, "window_s": cfg.failed_auth_window_s}
                alert = Alert("failed_auth", subject, message, details)
                alerts += self._once("failed_auth", subject, cfg.failed_auth_window_s, alert)
        return alerts

    def read(self, identity: str, job_id: str) -> list[Alert]:
        cfg = self.config
        jobs = {key for _, key in self._reads.add(identity, job_id, self.clock())}
        if len(jobs) < cfg.log_reads_jobs:
            return []
        message = f"{identity} read the logs or artifacts of {len(jobs)} jobs within {cfg.log_reads_window_s:g} s"
        alert = Alert("log_reads", identity, message, {"jobs": len(jobs), "window_s": cfg.log_reads_window_s})
        return self._once("log_reads", identity, cfg.log_reads_window_s, alert)

    def secrets_issued(self, sender: str, job_id: str) -> list[Alert]:
        cfg = self.config
        jobs = {key for _, key in self._secrets.add(sender, job_id, self.clock())}
        if len(jobs) < cfg.secret_jobs:
            return []
        message = f"{sender} started {len(jobs)} jobs that received secrets within {cfg.secret_jobs_window_s:g} s"
        alert = Alert("secret_jobs", sender, message, {"jobs": len(jobs), "window_s": cfg.secret_jobs_window_s})
        return self._once("secret_jobs", sender, cfg.secret_jobs_window_s, alert)

    def token_used(self, name: str, hours: Sequence[int]) -> list[Alert]:
        """`hours`: the token's past uses per UTC hour of day (before this one)."""
        cfg = self.config
        hour = datetime.fromtimestamp(self.clock(), UTC).hour
        total = sum(hours)
        if total < cfg.off_hours_min_uses or hours[hour] / total >= cfg.off_hours_max_share:
            return []
        message = (
            f"token {name!r} used at {hour:02d}:00-{hour:02d}:59 UTC, an hour holding {hours[hour]} of its "
            f"{total} past uses"
        )
        alert = Alert("off_hours", f"token:{name}", message, {"hour_utc": hour, "uses_that_hour": hours[hour],
                                                               "uses": total})  # fmt: skip
        return self._once("off_hours", f"token:{name}", 3600, alert)
