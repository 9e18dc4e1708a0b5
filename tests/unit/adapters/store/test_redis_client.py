"""The one Redis client builder passes each caller's options, and redis-py's defaults otherwise."""

from __future__ import annotations

from worker.adapters.store.redis_client import redis_client


def test_options_reach_the_connections() -> None:
    client = redis_client(
        "redis://localhost:1/0",
        name="cashreceipt-ingress:h-1",
        socket_timeout=7.0,
        socket_connect_timeout=3.0,
        health_check_interval=30,
    )
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["client_name"] == "cashreceipt-ingress:h-1"
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (7.0, 3.0)
    assert kwargs["health_check_interval"] == 30


def test_defaults_are_redis_pys() -> None:
    kwargs = redis_client("redis://localhost:1/0").connection_pool.connection_kwargs
    assert kwargs.get("client_name") is None
    assert kwargs.get("socket_timeout") is None
    assert kwargs.get("socket_connect_timeout") is None
    assert kwargs.get("health_check_interval", 0) == 0


def test_the_url_still_wins() -> None:
    """A timeout in REDIS_URL's query is kept, as redis-py's from_url keeps it."""
    client = redis_client("redis://localhost:1/0?socket_timeout=9", socket_timeout=7.0)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 9.0
