"""Printing URLs that may carry a password (``redis://user:password@host``).

Kept apart from ``celeryconfig`` so that code which runs before the settings
are final (``make run`` checking Redis) can mask a URL without importing them.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``**``, as Celery's banner shows a broker URL.

    For messages: a URL that carries a password must never be printed whole.
    A string too malformed to parse loses everything before its last ``@``.
    """
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            user, _, host = parts.netloc.rpartition("@")
            return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:**@{host}"))
    except ValueError:  # an unbalanced [ in the host
        pass
    if "@" in url:
        return "**@" + url.rpartition("@")[2]
    return url
