"""The tests' private redis-server: it is the one that answers on its port, or it fails.

free_port() finds a port nothing listens on at that moment; another process
may take it before redis-server binds it. Without the check, a test would then
run (and FLUSHDB) against whatever took the port, such as another test run's
Redis on this shared host.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def test_a_port_taken_before_the_start_moves_the_server_to_another(tmp_path: Path) -> None:
    """Another Redis took the port first: ours starts on a new port, and answers as itself."""
    other = RedisServer(tmp_path / "other")
    other.start()
    ours = RedisServer(tmp_path / "ours")
    ours.port = other.port  # as if free_port() had handed out the same port twice
    try:
        ours.start()
        assert ours.port != other.port
        assert ours.process is not None
        assert ours.client().info("server")["process_id"] == ours.process.pid
    finally:
        ours.stop()
        other.stop()


def test_a_restart_on_a_port_taken_meanwhile_fails(tmp_path: Path) -> None:
    """A restart keeps its port, which its clients know: if it was taken, say so, loudly."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    server.stop()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", server.port))
        taken.listen()
        with pytest.raises(RuntimeError, match=f"could not listen on 127.0.0.1:{server.port}"):
            server.start()
    server.start()  # the port is free again: the same server comes back on it
    assert server.client().ping()
    server.stop()
