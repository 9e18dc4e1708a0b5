"""A private redis-server per test session: never the shared one on 6379.

The class is shared with the benchmark (``cashreceipt_bench.servers``): fault tests
stop and restart it on the same port and folder, and its options make it ask
for a password or speak TLS only. Here it always runs with the stack's ACL
(docker/redis/users.acl): the worker processes, the ingress and the commands the
tests start log in as the restricted ``cashreceipt`` user, as in production,
while the tests' own client may do anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cashreceipt_bench import servers

#: The one ACL file, the compose Redis's too.
ACL = Path(__file__).resolve().parents[2] / "docker" / "redis" / "users.acl"


class RedisServer(servers.RedisServer):
    """The bench's private Redis, with the stack's ACL."""

    def __init__(self, folder: Path, **options: Any) -> None:
        super().__init__(folder, acl=ACL, **options)


@contextmanager
def running_redis(folder: Path, **options: Any) -> Iterator[RedisServer]:
    """A started server; on the way out, any command its ACL refused fails the test."""
    server = RedisServer(folder, **options)
    server.start()
    try:
        yield server
        denied = server.denied() if server.process is not None else []
        assert not denied, f"docker/redis/users.acl refused: {denied}"
    finally:
        server.stop()


__all__ = ["ACL", "RedisServer", "running_redis"]
