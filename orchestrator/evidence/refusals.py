"""Which refusals (rejected webhooks, failed API authentications) get an audit record and a log line of their own,
and which are only counted into a periodic summary. Pure: the caller passes the time.

Why: anyone can send a refused request, and one record per refusal let a single client write about 0.5 MB/s of
audit trail and log, filling the disk and drowning the records that matter. Every refusal is still counted in
the metrics. Within a window (a minute by default) each address gets its first few refusals recorded one by one
-- what an operator needs to see a misconfigured sender -- and the controller as a whole at most a fixed number;
everything past that is counted per address and written as one summary record per window: how many, from where
(the busiest addresses), when (first and last), why (reasons). IPv6 addresses are grouped by /64, the block one
host is usually given, so rotating addresses within it does not buy a fresh allowance.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

UNKNOWN = "unknown"


def address_key(remote: str | None) -> str:
    """The unit an allowance is given to: an IPv4 address, an IPv6 /64, or the text itself when it is no address."""
    if not remote:
        return UNKNOWN
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Tally:
    refusals: int = 0  # in this window, recorded or not
    suppressed: int = 0
    first: float = 0.0
    last: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Summary:
    """The refusals of one window that were not recorded one by one."""

    kind: str
    window_s: float
    suppressed: int
    addresses: int  # distinct address keys among them (those past `max_tracked` are counted in `untracked`)
    untracked: int
    first: float
    last: float
    reasons: dict[str, int]
    top: list[dict[str, Any]]  # the busiest address keys: {"remote", "count", "reasons"}

    def details(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "suppressed": self.suppressed,
            "addresses": self.addresses,
            "untracked": self.untracked,
            "first": self.first,
            "last": self.last,
            "reasons": self.reasons,
            "top": self.top,
        }


class RefusalThrottle:
    def __init__(
        self,
        kind: str,
        *,
        per_address: int = 10,
        total: int = 200,
        window_s: float = 60.0,
        max_tracked: int = 10_000,
        top: int = 20,
    ) -> None:
        self.kind = kind
        self.per_address = per_address
        self.total = total
        self.window_s = window_s
        self.max_tracked = max_tracked
        self.top = top
        self._started: float | None = None
        self._tallies: dict[str, _Tally] = {}
        self._recorded = 0
        self._untracked = _Tally()

    def refused(self, remote: str | None, reason: str, now: float) -> bool:
        """Counts one refusal; True when it should be recorded on its own (audit record and log line)."""
        if self._started is None:
            self._started = now
        key = address_key(remote)
        tally = self._tallies.get(key)
        if tally is None:
            if len(self._tallies) >= self.max_tracked:
                tally = self._untracked
            else:
                tally = self._tallies[key] = _Tally(first=now)
        tally.refusals += 1
        if tally is not self._untracked and tally.refusals <= self.per_address and self._recorded < self.total:
            self._recorded += 1
            return True
        if not tally.suppressed:
            tally.first = now
        tally.suppressed += 1
        tally.last = now
        tally.reasons[reason] += 1
        return False

    def due(self, now: float, *, final: bool = False) -> Summary | None:
        """Closes the window once it has lasted `window_s` (or now, when `final`): the summary of what it
        suppressed, if anything, and a fresh allowance for everyone."""
        if self._started is None or (not final and 0 <= now - self._started < self.window_s):
            return None  # (a wall clock stepped back closes the window rather than stretching it)
        suppressed = [(key, t) for key, t in self._tallies.items() if t.suppressed]
        untracked = self._untracked
        summary = None
        if suppressed or untracked.suppressed:
            everyone = [t for _, t in suppressed] + ([untracked] if untracked.suppressed else [])
            reasons: Counter[str] = Counter()
            for t in everyone:
                reasons.update(t.reasons)
            busiest = sorted(suppressed, key=lambda kt: (-kt[1].suppressed, kt[0]))[: self.top]
            summary = Summary(
                kind=self.kind,
                window_s=round(now - self._started, 3),
                suppressed=sum(t.suppressed for t in everyone),
                addresses=len(suppressed),
                untracked=untracked.suppressed,
                first=min(t.first for t in everyone),
                last=max(t.last for t in everyone),
                reasons=dict(reasons.most_common()),
                top=[{"remote": k, "count": t.suppressed, "reasons": dict(t.reasons)} for k, t in busiest],
            )
        self._started = None
        self._tallies.clear()
        self._recorded = 0
        self._untracked = _Tally()
        return summary
