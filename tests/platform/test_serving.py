"""Who sent a request (orchestrator/platform/serving.py client_address): pure."""

from __future__ import annotations

import ipaddress

import pytest

from orchestrator.platform.serving import client_address

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # not a proxy: its header is whatever it wrote
        ("10.1.2.3", None, "10.1.2.3"),
        ("10.1.2.3", "", "10.1.2.3"),
        ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", "198.51.100.1, 10.9.9.9", "198.51.100.1"),  # two proxies
        ("10.1.2.3", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # left of the first untrusted hop: not believed
        ("10.1.2.3", "10.5.5.5, 10.6.6.6", "10.5.5.5"),  # every hop is a proxy: the leftmost
        ("10.1.2.3", "garbage, 198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", "198.51.100.1, garbage", "10.1.2.3"),  # unreadable next hop: stop at the proxy
        ("::ffff:10.1.2.3", "198.51.100.1", "198.51.100.1"),
        ("2001:db8:ffff::1", "2001:db8:1::7", "2001:db8:1::7"),
        (None, "198.51.100.1", None),
    ],
)
def test_client_address(peer: str | None, forwarded: str | None, expected: str | None) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_nothing_is_believed_without_trusted_proxies() -> None:
    assert client_address("10.1.2.3", "198.51.100.1", ()) == "10.1.2.3"
