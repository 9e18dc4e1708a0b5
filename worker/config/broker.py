"""The broker choice: Redis (REDIS_URL's server unless BROKER_URL says otherwise) or RabbitMQ."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from worker.config import ConfigError
from worker.config.tls import amqp_tls, redis_tls

REDIS_SCHEMES = ("redis", "rediss", "unix")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
#: BROKER_QUEUE_TYPE: RabbitMQ's replicated queue, or the single-node one.
QUEUE_TYPES = ("quorum", "classic")


def is_redis_url(url: str) -> bool:
    """Whether a broker URL is Redis (else RabbitMQ): the transport settings differ."""
    return urlsplit(url).scheme in REDIS_SCHEMES


def choose_broker(
    given: str | None, redis: tuple[str, dict[str, Any] | None]
) -> tuple[str, dict[str, Any] | None]:
    """``broker_url`` and ``broker_use_ssl``: BROKER_URL (``given``, already parsed) or REDIS_URL.

    ``redis`` is REDIS_URL as :func:`~worker.config.tls.redis_tls` returned it.
    A Redis BROKER_URL gets the same TLS policy as REDIS_URL, and a RabbitMQ one
    is always verified when it is ``amqps://``.
    """
    if given is None:
        return redis
    if not is_redis_url(given):
        return given, amqp_tls(given)
    url, options = redis_tls(given, "BROKER_URL")
    if url != given:
        # The celery command hands BROKER_URL to kombu as written, past celeryconfig.
        raise ConfigError(
            "BROKER_URL: a rediss:// broker URL must say ssl_cert_reqs=required itself"
        )
    return url, options
