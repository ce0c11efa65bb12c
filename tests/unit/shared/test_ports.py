"""free_port: ports below the ephemeral range, never the same twice in a process, never one that is taken."""

from __future__ import annotations

import socket

from shared import ports


def test_ports_come_from_below_the_ephemeral_range_and_are_never_handed_out_twice():
    chosen = [ports.free_port() for _ in range(200)]
    assert len(set(chosen)) == 200
    assert all(ports.LOWEST <= p < ports._ephemeral_start() for p in chosen)
    for port in chosen[:20]:  # each one can be bound
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_never_chosen(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks = iter([port, port + 1 if port + 1 < 65536 else port - 1])
        monkeypatch.setattr(ports, "_ephemeral_start", lambda: 60_000)
        monkeypatch.setattr(ports.random, "randrange", lambda lo, hi: next(picks))
        monkeypatch.setattr(ports, "_given", set())
        assert ports.free_port() != port


def test_without_room_below_the_ephemeral_range_the_kernel_chooses(monkeypatch):
    ephemeral = ports._ephemeral_start()
    monkeypatch.setattr(ports, "_ephemeral_start", lambda: ports.LOWEST + 10)
    port = ports.free_port()
    assert port >= ephemeral  # the kernel's choice is in its ephemeral range
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
