"""The Redis ``make run`` uses: the one at REDIS_URL, or a private one it starts.

A new user has Python and ``make``, often not a Redis already running. When
nothing answers at a REDIS_URL on this host, the demo starts a ``redis-server``
found on PATH (never downloaded: what runs is what the system's packages vetted),
with append-only persistence and an fsync per write, as production should run it,
so the ledger and the queue of a demo survive its own restart. Its data stays in
``.run/redis/`` between runs.

A Redis the demo did not start is used as it is. The worker refuses one that may
lose what it acknowledged (worker/adapters/store/durability.py): for such a
Redis alone, the demo sets ``REDIS_DURABILITY=accept-risk`` for its worker, unless
the user set the setting, and says so on one line. Losing queued payments and
ledger records on a restart is fine for a local demo; the Redis the demo starts
itself is durable and needs no such setting.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis

from worker.adapters.store.durability import ACCEPT_RISK, SETTING, inspect
from worker.adapters.store.redis_client import redis_client
from worker.core.urls import redact_url

#: Hosts where starting our own server stands in for the one REDIS_URL names.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class NoRedis(Exception):
    """No Redis to use and none the demo may start: the one line to show instead."""


@dataclass(frozen=True)
class RedisPlan:
    """What the demo's processes get as REDIS_URL, and the redis-server to start first."""

    url: str
    #: The redis-server command line, or None when a Redis answered at REDIS_URL.
    command: tuple[str, ...] | None
    #: One line to show about it, or None.
    notice: str | None
    #: Whether the worker must be told REDIS_DURABILITY=accept-risk to start on it.
    accept_risk: bool = False


def plan_redis(url: str, run_dir: Path, path: str | None) -> RedisPlan:
    """Use the Redis at ``url`` if one answers there; else plan a private one (see module)."""
    client = redis_client(url, socket_connect_timeout=2, socket_timeout=5)
    shown = redact_url(url)
    try:
        found = [finding.text for finding in inspect(client) if finding.refuses]
    except redis.AuthenticationError as error:
        raise NoRedis(f"Redis at {shown} refused us ({error}). Fix REDIS_URL.") from None
    except (redis.ConnectionError, redis.TimeoutError) as error:
        return _private(url, error, run_dir, path)
    finally:
        client.close()
    if not found:
        return RedisPlan(url, None, None)
    return RedisPlan(
        url,
        None,
        f"{SETTING}={ACCEPT_RISK} set for the worker (a Redis the demo did not start): "
        f"{'; '.join(found)}. A crash or restart may lose queued payments and ledger records: "
        "fine for a demo only.",
        accept_risk=True,
    )


def _private(url: str, error: Exception, run_dir: Path, path: str | None) -> RedisPlan:
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.hostname not in LOCAL_HOSTS or parts.password:
        # A remote, TLS or password-protected Redis is one the user means: no stand-in.
        raise NoRedis(
            f"Cannot reach Redis at {redact_url(url)} ({error}). Start it or fix REDIS_URL."
        )
    server = shutil.which("redis-server", path=path)
    if server is None:
        raise NoRedis(
            f"No Redis at {redact_url(url)} and no redis-server on PATH to start one: "
            "install it (apt-get install redis-server, brew install redis) or set REDIS_URL."
        )
    # REDIS_URL's own port when it is free, so other tools with the same REDIS_URL find
    # this server; a free one when something that is not Redis holds it.
    port = parts.port or 6379
    if not _is_free(port):
        port = free_port()
    private_url = f"redis://127.0.0.1:{port}{parts.path or '/0'}"
    data = run_dir / "redis"
    command = (
        server,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data),
        # Every acknowledged write reaches the disk before the reply, as in production.
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--save", "",
        "--maxmemory-policy", "noeviction",
    )  # fmt: skip
    notice = (
        f"Redis             {private_url}  (started: none at {redact_url(url)}; "
        f"append-only, fsync always, data in {data}/)"
    )
    return RedisPlan(private_url, command, notice)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port nothing on this host listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
