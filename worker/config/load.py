"""Loading ``celeryconfig``, the one place settings come from, and reading an app's settings."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

from worker.config import ConfigError
from worker.config.broker import is_redis_url


def load_celeryconfig() -> ModuleType:
    """Import ``celeryconfig``; a bad setting exits with its message, not a traceback.

    Every entry point (worker, Flower, ``cashreceipt``) goes through here, so a
    wrong value stops each of them at start with the same words.
    """
    try:
        return importlib.import_module("celeryconfig")
    except ConfigError as error:
        raise SystemExit(f"cashreceipt: configuration error: {error}") from None


def redis_url(conf: Any) -> str:
    """The Redis of the ledger, token cache and events, from a Celery app's configuration.

    It is REDIS_URL (``ledger_backend_url``), wherever the broker is. A bare
    producer's app that lacks the setting shares its broker's Redis, which is
    only possible when that broker is Redis; a RabbitMQ-only app is told so.
    """
    url = getattr(conf, "ledger_backend_url", None) or str(conf.broker_url)
    if not is_redis_url(str(url)):
        raise ValueError(
            "the app's broker is not Redis: set ledger_backend_url (REDIS_URL) to the "
            "Redis of the ledger and events"
        )
    return str(url)


def config_secrets(conf: Any) -> list[str]:
    """The literal secrets of the settings, for the log mask: none may appear in a line.

    Celery masks the broker URL's password in its banner; this catches any other
    line that quotes a password, of the broker or of REDIS_URL, the i'mport
    secret or a Fernet key.
    """
    passwords = [
        unquote(urlsplit(str(url)).password or "")
        for url in (conf.broker_url, getattr(conf, "ledger_backend_url", None) or "")
    ]
    return [
        conf.iamport_secret or "",
        *conf.pii_encryption_keys,
        *passwords,
    ]
