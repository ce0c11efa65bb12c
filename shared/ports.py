"""Free local ports for servers that are told their port before they bind it (the launcher, tests, benches)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Ports below the kernel's ephemeral range: outgoing connections (every database client's) take their local port
# from that range, so a port found free there can be taken by a connection before the server binds it.
LOWEST = 10_000
_given: set[int] = set()  # handed out by this process: never twice, as the first may not be bound yet


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default; other systems use higher ranges


def in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could not bind the port now (a port left in TIME_WAIT is free: servers set SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, chosen at random below the ephemeral range (the kernel's choice when that
    range starts too low to leave room)."""
    top = _ephemeral_start()
    for _ in range(100 if top - LOWEST > 1_000 else 0):
        port = random.randrange(LOWEST, top)
        if port not in _given and not in_use(port, host):
            _given.add(port)
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
