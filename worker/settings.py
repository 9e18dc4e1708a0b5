"""Moved to :mod:`worker.config.load`; kept until every importer points there."""

from worker.config.load import config_secrets, load_celeryconfig, redis_url

__all__ = ["config_secrets", "load_celeryconfig", "redis_url"]
