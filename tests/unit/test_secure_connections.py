"""The rules that keep Redis and i'mport connections verified and their passwords unprinted."""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import requests
from celery.app.utils import filter_hidden_settings

import celeryconfig
from celeryconfig import ConfigError, redis_tls, refuse_plain_http
from worker.iamport import IamportClient
from worker.urls import redact_url


def test_plain_redis_url_is_left_alone() -> None:
    """A redis:// URL passes through unchanged and asks for no TLS."""
    assert redis_tls("redis://:pw@r:6379/0") == ("redis://:pw@r:6379/0", None)


def test_rediss_url_gets_verification_written_in() -> None:
    """A bare rediss:// URL becomes ssl_cert_reqs=required, for kombu and redis-py alike."""
    url, options = redis_tls("rediss://user:pw@r:6380/0")
    assert url == "rediss://user:pw@r:6380/0?ssl_cert_reqs=required"
    assert options == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # redis-py reads the same URL as "verify the certificate and the host name".
    pool = redis.Redis.from_url(url).connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_cert_reqs"] == "required"


def test_rediss_url_keeps_a_private_ca(tmp_path: Path) -> None:
    """ssl_ca_certs is kept in the URL and handed to the broker, next to the query already there."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    url, options = redis_tls(f"rediss://r:6380/0?ssl_ca_certs={ca}&ssl_cert_reqs=required")
    assert parse_qs(urlsplit(url).query) == {
        "ssl_ca_certs": [str(ca)],
        "ssl_cert_reqs": ["required"],
    }
    assert options == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8787",
        "http://127.3.2.1:8787",
        "http://localhost:8787",
        "http://[::1]:8787",
        "https://api.iamport.kr",
    ],
)
def test_http_is_allowed_on_loopback_only(url: str) -> None:
    """Plain http to loopback never leaves the machine, so it needs no flag."""
    refuse_plain_http(url, allow_http=False)


@pytest.mark.parametrize("url", ["http://sandbox:8787", "http://localhost.evil.example"])
def test_http_elsewhere_needs_the_flag(url: str) -> None:
    """Any other http host is refused unless IAMPORT_ALLOW_HTTP=1 says it is meant."""
    with pytest.raises(ConfigError, match="plain http"):
        refuse_plain_http(url, allow_http=False)
    refuse_plain_http(url, allow_http=True)


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


def test_the_config_exposes_the_redis_url_only_under_censored_names() -> None:
    """REDIS_URL is held only by broker_url and ledger_backend_url: Celery censors both names."""
    assert not hasattr(celeryconfig, "redis_url")
    assert celeryconfig.ledger_backend_url.startswith(("redis://", "rediss://", "unix://"))
    censored = filter_hidden_settings(
        {"broker_url": "redis://:pw1@r/0", "ledger_backend_url": "rediss://u:pw2@r/0"}
    )
    assert "pw1" not in str(censored)
    assert "pw2" not in str(censored)


def test_client_refuses_a_session_that_does_not_verify() -> None:
    """An IamportClient cannot be built on a session with verify=False."""
    session = requests.Session()
    session.verify = False
    with pytest.raises(ValueError, match="verify TLS certificates"):
        IamportClient(
            base_url="https://api.iamport.kr",
            imp_key="k",
            imp_secret="s",
            session=session,
            token_cache=None,  # type: ignore[arg-type]
            timeout=1,
        )
