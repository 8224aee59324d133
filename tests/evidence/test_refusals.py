"""Refusal summaries (orchestrator/evidence/refusals.py): pure, no I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.evidence.refusals import RefusalThrottle, address_key


def test_each_address_gets_its_allowance_then_is_summarised() -> None:
    throttle = RefusalThrottle("webhook", per_address=3, total=100, window_s=60)
    recorded = [throttle.refused("192.0.2.1", "bad_signature", 1000.0 + i) for i in range(10)]
    assert recorded == [True] * 3 + [False] * 7
    assert throttle.refused("192.0.2.2", "bad_signature", 1005.0) is True  # another address has its own
    assert throttle.due(1059.0) is None  # the window is still open
    summary = throttle.due(1060.0)
    assert summary is not None
    assert (summary.kind, summary.suppressed, summary.addresses, summary.untracked) == ("webhook", 7, 1, 0)
    assert (summary.first, summary.last) == (1003.0, 1009.0)
    assert summary.reasons == {"bad_signature": 7}
    assert summary.top == [{"remote": "192.0.2.1", "count": 7, "reasons": {"bad_signature": 7}}]
    assert throttle.refused("192.0.2.1", "bad_signature", 1061.0) is True  # a new window, a new allowance
    assert throttle.due(1200.0) is None  # nothing suppressed in it: no record


def test_the_controller_wide_allowance_caps_individual_records() -> None:
    throttle = RefusalThrottle("auth", per_address=5, total=20)
    recorded = sum(throttle.refused(f"198.51.100.{n}", "invalid_token", 1.0) for n in range(200))
    assert recorded == 20
    summary = throttle.due(0.0, final=True)
    assert summary is not None and summary.suppressed == 180 and summary.addresses == 180


def test_addresses_past_the_tracking_limit_are_counted_not_lost() -> None:
    throttle = RefusalThrottle("webhook", per_address=1, total=10**6, max_tracked=50, top=5)
    for n in range(1000):
        throttle.refused(f"10.0.{n // 256}.{n % 256}", "unknown_source", float(n))
    summary = throttle.due(0.0, final=True)
    assert summary is not None
    assert summary.suppressed == 950 and summary.untracked == 950 and summary.addresses == 0
    assert len(summary.top) == 0 and summary.reasons == {"unknown_source": 950}


def test_ipv6_addresses_share_an_allowance_per_64() -> None:
    throttle = RefusalThrottle("webhook", per_address=2)
    recorded = [throttle.refused(f"2001:db8:1:2::{n:x}", "bad_signature", 1.0) for n in range(1, 50)]
    assert sum(recorded) == 2
    assert throttle.refused("2001:db8:1:3::1", "bad_signature", 1.0) is True  # another /64
    summary = throttle.due(0.0, final=True)
    assert summary is not None and summary.top[0]["remote"] == "2001:db8:1:2::/64"


def test_address_keys() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8::1") == "2001:db8::/64"
    assert address_key(None) == address_key("") == "unknown"
    assert address_key("not-an-address") == "not-an-address"


def test_a_clock_stepping_back_closes_the_window() -> None:
    throttle = RefusalThrottle("auth", per_address=1)
    throttle.refused("192.0.2.1", "invalid_token", 5000.0)
    throttle.refused("192.0.2.1", "invalid_token", 5001.0)
    summary = throttle.due(4000.0)
    assert summary is not None and summary.suppressed == 1


@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["a", "b", "c"])), max_size=400))
def test_every_refusal_is_either_recorded_or_in_the_summary(events: list[tuple[int, str]]) -> None:
    throttle = RefusalThrottle("webhook", per_address=3, total=25, max_tracked=10)
    recorded = sum(throttle.refused(f"192.0.2.{who}", reason, 1.0) for who, reason in events)
    summary = throttle.due(2.0, final=True)
    suppressed = summary.suppressed if summary is not None else 0
    assert recorded + suppressed == len(events)
    assert recorded <= 25
    if summary is not None:
        assert sum(summary.reasons.values()) == suppressed
