"""The port reservation of tests/ports.py: what makes it race-free, checked on this machine's kernel."""

from __future__ import annotations

import socket

import pytest

from ports import free_port


def test_a_reserved_port_is_nobody_elses_until_our_server_listens() -> None:
    port = free_port()
    with socket.socket() as plain, pytest.raises(OSError, match="Address already in use"):
        plain.bind(("127.0.0.1", port))  # as anyone binds who does not ask for SO_REUSEADDR
    for _ in range(2000):
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            assert other.getsockname()[1] != port  # the kernel never hands it out
    with socket.socket() as client, pytest.raises(ConnectionRefusedError):
        client.connect(("127.0.0.1", port))  # nothing listens on it
    for _ in range(2):  # as a controller binds it, and again when it restarts
        with socket.create_server(("127.0.0.1", port)), pytest.raises(OSError, match="Address already in use"):
            socket.create_server(("127.0.0.1", port)).close()  # one listener at a time
