"""A URL is shown with its password hidden, and nothing else changed."""

from __future__ import annotations

import pytest

from worker.core.urls import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p%40ss@r:6379/0", "redis://:**@r:6379/0"),
        (
            "rediss://app:pw@r:6380/0?ssl_ca_certs=/ca.pem",
            "rediss://app:**@r:6380/0?ssl_ca_certs=/ca.pem",
        ),
        ("redis://r:6379/0", "redis://r:6379/0"),
        (":pw@r:6379", "**@r:6379"),
        ("redis://:pw@[::1:6379", "**@[::1:6379"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    """The password becomes ** (as in Celery's banner); user, host and query stay readable."""
    assert redact_url(url) == shown
