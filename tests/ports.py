"""The one way tests get a TCP port number before a server listens on it.

Binding port 0, closing the socket and handing out the number races: until the server binds it, any other process
can take the port (the kernel may hand it to the next `bind(("", 0))` or outgoing connection on the machine), and a
test may then wait on, and talk to, a stranger -- another test's controller answering `/readyz` with 200.

Letting the server bind port 0 itself is race-free, and the in-process controllers of `conftest.controller_factory`
do so; but a port chosen by the server is known only once it listens, and some tests need the number before:

* `server.public_url` must be the controller's real URL (it is the OIDC issuer Vault fetches the discovery
  document from and checks tokens against), and it is read when the controller is built;
* a restarted controller process must come back where its clients, a following CLI and Vault, know it.

(Retrying a start that failed with EADDRINUSE on a fresh port would serve neither: the issuer is fixed in the config
before the start, and a restart must keep its port. Nor can a listening socket be handed to `orchestrator serve`.)

So `free_port` reserves: the socket it binds (SO_REUSEADDR, never listening) stays open as long as this process
lives. Meanwhile the kernel gives the port to nobody else (neither `bind` to port 0 nor an outgoing connection
picks a bound port), a plain `bind` to it fails with EADDRINUSE, and a connection to it is refused, as to any port
where nothing listens. Our servers can still bind it: every listener of the controller binds with SO_REUSEADDR
(`socket.create_server`, asyncio's `create_server`), which Linux allows next to a bound socket that is not
listening -- and only one of them can listen at a time. What could still take the port is a process that picks
this very number itself, with SO_REUSEADDR, and listens first; then our server's start fails with EADDRINUSE,
loudly, and no test talks to the wrong server. (Linux's rules; tests/test_ports.py checks them on this kernel.)

The reservation is released when the process exits (a few sockets per test run, never reused within it).
"""

from __future__ import annotations

import socket

_reserved: list[socket.socket] = []


def free_port() -> int:
    """A TCP port reserved for this process on every IPv4 address (see the module docstring): nothing listens on it
    until one of our servers binds it, and nobody else can take it meanwhile."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    _reserved.append(sock)
    return int(sock.getsockname()[1])
