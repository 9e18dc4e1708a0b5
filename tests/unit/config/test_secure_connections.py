"""The rules that keep Redis and i'mport connections verified and their passwords unprinted."""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from celery.app.utils import filter_hidden_settings

import celeryconfig
from worker.config import ConfigError
from worker.config.broker import choose_broker
from worker.config.tls import (
    amqp_tls,
    check_ca_bundles,
    is_loopback,
    redis_tls,
    refuse_plain_http,
)


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
    ("query", "refused"),
    [
        ("ssl_cert_reqs=none", "ssl_cert_reqs=none is refused"),
        ("ssl_cert_reqs=CERT_NONE", "ssl_cert_reqs=CERT_NONE is refused"),
        ("ssl_cert_reqs=optional", "ssl_cert_reqs=optional is refused"),
        ("ssl_check_hostname=false", "ssl_check_hostname=false is refused"),
        ("ssl_check_hostname=No", "ssl_check_hostname=false is refused"),
        ("ssl_check_hostname=0", "ssl_check_hostname=false is refused"),
        ("ssl_ca_certs=/nonexistent.pem", "ssl_ca_certs=/nonexistent.pem is not a file"),
        ("ssl_ciphers=NULL", "ssl_ciphers is not supported"),
    ],
)
def test_rediss_url_refuses_anything_that_weakens_verification(query: str, refused: str) -> None:
    """Each way redis-py or kombu could be told to skip a check stops the start, by name."""
    with pytest.raises(ConfigError, match=f"^BROKER_URL: {refused}"):
        redis_tls(f"rediss://:pw@r:6380/0?{query}", "BROKER_URL")


@pytest.mark.parametrize("query", ["ssl_check_hostname=true", "ssl_cert_reqs=required"])
def test_rediss_url_keeps_options_that_verify(query: str) -> None:
    """Asking for what is already the policy is accepted, and kept in the URL."""
    url, options = redis_tls(f"rediss://r:6380/0?{query}")
    assert options == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    key, value = query.split("=")
    given = parse_qs(urlsplit(url).query)
    assert given[key] == [value]
    assert given["ssl_cert_reqs"] == ["required"]


def test_a_tls_option_on_a_plain_url_is_refused() -> None:
    """An ssl_* option on redis:// would be ignored, and the connection left unencrypted."""
    with pytest.raises(ConfigError, match="needs a rediss:// \\(TLS\\) URL"):
        redis_tls("redis://r/0?ssl_ca_certs=/etc/hosts")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("10.0.0.5", False),
        ("sandbox", False),
        ("localhost.evil.example", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback_table(host: str | None, loopback: bool) -> None:
    """Only traffic that cannot leave the machine counts as loopback."""
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("amqp://u:p@rabbit:5672/v", None),
        ("pyamqp://rabbit//", None),
        ("amqps://u:p@rabbit:5671/v", {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}),
    ],
)
def test_amqps_is_always_verified(url: str, options: dict[str, object] | None) -> None:
    """amqps:// checks the certificate and the host name; plain amqp:// asks for no TLS."""
    assert amqp_tls(url) == options


def test_a_rabbitmq_url_takes_no_query_options() -> None:
    """A query is how kombu's URL parsing could weaken verification, so none is taken."""
    with pytest.raises(ConfigError, match="takes no query options"):
        amqp_tls("amqps://rabbit:5671/v?ssl=0")


def test_a_ca_bundle_that_is_not_there_stops_the_start(tmp_path: Path) -> None:
    """requests would raise a bare OSError mid-task; the first variable set is the one checked."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    check_ca_bundles({})
    check_ca_bundles({"REQUESTS_CA_BUNDLE": str(bundle), "CURL_CA_BUNDLE": "/nonexistent"})
    check_ca_bundles({"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": str(bundle)})
    with pytest.raises(ConfigError, match=r"^CURL_CA_BUNDLE=/nonexistent does not exist"):
        check_ca_bundles({"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": "/nonexistent"})


@pytest.mark.parametrize(
    ("given", "chosen"),
    [
        (None, ("rediss://r/0?ssl_cert_reqs=required", {"ssl_cert_reqs": ssl.CERT_REQUIRED})),
        ("redis://b/1", ("redis://b/1", None)),
        (
            "rediss://b/1?ssl_cert_reqs=required",
            ("rediss://b/1?ssl_cert_reqs=required", {"ssl_cert_reqs": ssl.CERT_REQUIRED}),
        ),
        ("amqp://rabbit//", ("amqp://rabbit//", None)),
        ("amqps://rabbit//", ("amqps://rabbit//", amqp_tls("amqps://rabbit//"))),
    ],
)
def test_the_broker_is_broker_url_or_redis_url(
    given: str | None, chosen: tuple[str, dict[str, object] | None]
) -> None:
    """Without BROKER_URL the broker is REDIS_URL's server; with it, its own TLS policy applies."""
    assert choose_broker(given, redis_tls("rediss://r/0")) == chosen


def test_a_rediss_broker_url_must_ask_for_verification_itself() -> None:
    """The celery command hands BROKER_URL to kombu as written, so it cannot be rewritten."""
    with pytest.raises(ConfigError, match="must say ssl_cert_reqs=required itself"):
        choose_broker("rediss://b/1", ("redis://r/0", None))


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


def test_the_config_exposes_the_redis_url_only_under_censored_names() -> None:
    """REDIS_URL is held only by broker_url and ledger_backend_url: Celery censors both names."""
    assert not hasattr(celeryconfig, "redis_url")
    assert celeryconfig.ledger_backend_url.startswith(("redis://", "rediss://", "unix://"))
    censored = filter_hidden_settings(
        {"broker_url": "redis://:pw1@r/0", "ledger_backend_url": "rediss://u:pw2@r/0"}
    )
    assert "pw1" not in str(censored)
    assert "pw2" not in str(censored)
