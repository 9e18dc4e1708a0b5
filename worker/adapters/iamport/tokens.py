"""The i'mport access token, shared in Redis by every worker process on every host.

i'mport hands every caller of one merchant account the same token, so sharing is
not needed for correctness; it saves one getToken round trip per process and
per renewal, and lets an operator see the token's remaining life in one place.
"""

from __future__ import annotations

import redis


class RedisTokenCache:
    """A token cache on plain Redis strings with a TTL."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def get(self, key: str) -> str | None:
        """The cached token, or None when absent or expired."""
        value = self._redis.get(key)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def put(self, key: str, token: str, ttl: float) -> None:
        """Cache ``token``; Redis drops it ``ttl`` seconds from now."""
        self._redis.set(key, token, px=max(1, int(ttl * 1000)))
