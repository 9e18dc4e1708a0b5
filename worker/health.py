"""Container health checks: ``python -m worker.health ingress``.

One image runs every service, so the image's HEALTHCHECK (``celery inspect
ping``, answered by a worker) is wrong for the ingress; the compose file gives
the ingress this one instead. The ingress names its Redis connection
``cashreceipt-ingress:<hostname>-<pid>``; it is healthy when a connection of
that name, from this container's host name, is open: it is connected and
reading its stream. Exit 0 healthy; 1 not: Redis cannot be reached, no ingress
of this host is connected, or a setting is bad (its one line on stderr, no
traceback). Docker reads 0 and 1 and reserves 2, so the check itself never
exits 2; only a usage error (not the compose file's command) does.

An ingress that refused to start on a Redis that may lose what it acknowledged
(``REDIS_DURABILITY``) has exited before naming a connection: unhealthy, with
the reason in its own log, not here.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from worker.adapters.store.redis_client import INGRESS_CLIENT_PREFIX, redis_client
from worker.config.load import load_celeryconfig


def ingress_connected(clients: Iterable[Mapping[str, Any]], hostname: str) -> bool:
    """Whether CLIENT LIST shows an ingress of ``hostname``."""
    prefix = f"{INGRESS_CLIENT_PREFIX}{hostname}-"
    return any(str(client.get("name", "")).startswith(prefix) for client in clients)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["ingress"]:
        print("usage: python -m worker.health ingress", file=sys.stderr)
        return 2
    try:
        conf = load_celeryconfig()
    except SystemExit as error:
        # A bad setting: its one line, and "unhealthy" (Docker reserves 2), not a traceback.
        print(error.code, file=sys.stderr)
        return 1
    client = redis_client(conf.ledger_backend_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        healthy = ingress_connected(client.client_list(), socket.gethostname())
    except redis.RedisError as error:
        print(f"unhealthy: Redis: {type(error).__name__}", file=sys.stderr)
        return 1
    if not healthy:
        print("unhealthy: no ingress of this host is connected to Redis", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
