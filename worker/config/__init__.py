"""The rules behind ``celeryconfig``: parsers, the TLS policy, the broker choice, the time rule.

``celeryconfig.py`` holds the settings, each read from the environment where
it is assigned; the functions it calls live here, so they can be imported and
tested without an environment. No module in this package reads ``os.environ``
when it is imported: each function is handed the mapping it reads.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is missing, malformed or inconsistent with another.

    ``load_celeryconfig`` recognises it by its name, so the name stays.
    """
