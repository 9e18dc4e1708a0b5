"""The one place a Redis client of the package's own is built from a URL.

REDIS_URL's Redis (the ledger, the events, the token cache, dead messages,
the ingress stream) is reached through :func:`redis_client` by the worker, the
producer helper, the ingress, the CLI, the health check and the demo alike, so
an option every connection needs is added here once. Each caller states its
timeouts: a blocking read needs a longer one than a health check.
"""

from __future__ import annotations

import redis

#: The start of an ingress's client name, ``cashreceipt-ingress:<consumer>``. The
#: ingress names its connection so, and its health check (worker.health) looks for it
#: in CLIENT LIST: a contract with operators and the compose file, never change it.
INGRESS_CLIENT_PREFIX = "cashreceipt-ingress:"


def redis_client(
    url: str,
    *,
    name: str | None = None,
    socket_timeout: float | None = None,
    socket_connect_timeout: float | None = None,
    health_check_interval: int = 0,
) -> redis.Redis:
    """A client of the Redis at ``url`` (redis-py's defaults for what is not given).

    ``name`` is the connection's CLIENT SETNAME, so operators (and tests) can
    tell connections apart; ``health_check_interval`` pings a connection idle
    that long before using it, for long-lived clients.
    """
    return redis.Redis.from_url(
        url,
        client_name=name,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        health_check_interval=health_check_interval,
    )


def as_text(value: object) -> str:
    """A reply field as text: bytes from a client built without ``decode_responses``."""
    return value.decode() if isinstance(value, bytes) else str(value)
