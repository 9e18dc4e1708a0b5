"""The TLS policy: every Redis, RabbitMQ and i'mport connection is verified, or the start stops."""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from worker.config import ConfigError
from worker.core.urls import redact_url

#: Files a rediss:// REDIS_URL may name in its query, under redis-py's names.
REDIS_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
#: The values redis-py reads as false.
_FALSE_WORDS = frozenset({"0", "F", "FALSE", "N", "NO"})


def redis_tls(url: str, name: str = "REDIS_URL") -> tuple[str, dict[str, Any] | None]:
    """A Redis URL with certificate verification written into it, and ``broker_use_ssl`` to match.

    Left alone, a ``rediss://`` broker URL is not safe: kombu connects without
    checking the server's certificate (``CERT_NONE``, with a warning only) and,
    under our own transport class, without TLS at all; and both kombu and
    redis-py obey ``ssl_cert_reqs=none`` in the URL. So the URL gets an
    explicit ``ssl_cert_reqs=required``, which kombu and redis-py both read,
    and any option that would weaken verification stops the process instead.
    A private CA is trusted with ``ssl_ca_certs=<file>``; ``ssl_certfile`` and
    ``ssl_keyfile`` give a client certificate. Error messages name the setting
    (``name``: REDIS_URL or BROKER_URL) and never echo the URL: it may hold a
    password.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if parts.scheme != "rediss":
        for key, _ in query:
            if key.startswith("ssl_"):
                raise ConfigError(f"{name}: {key} needs a rediss:// (TLS) URL")
        return url, None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    given_reqs = False
    for key, value in query:
        if key == "ssl_cert_reqs":
            if value != "required":
                raise ConfigError(
                    f"{name}: ssl_cert_reqs={value} is refused: certificate verification "
                    "stays on. Leave ssl_cert_reqs out, and trust a private CA with "
                    "ssl_ca_certs=/path/to/ca.pem"
                )
            given_reqs = True
        elif key == "ssl_check_hostname":
            if value.strip().upper() in _FALSE_WORDS:
                raise ConfigError(
                    f"{name}: ssl_check_hostname=false is refused: any certificate from a "
                    "trusted CA would pass. Connect by a name (or IP) that the certificate lists"
                )
        elif key in REDIS_TLS_FILES:
            if not os.path.isfile(value):
                raise ConfigError(f"{name}: {key}={value} is not a file")
            options[key] = value
        elif key.startswith("ssl_"):
            raise ConfigError(
                f"{name}: {key} is not supported; use ssl_ca_certs, ssl_certfile, ssl_keyfile"
            )
    if not given_reqs:
        query_text = "&".join(filter(None, [parts.query, "ssl_cert_reqs=required"]))
        url = urlunsplit(parts._replace(query=query_text))
    return url, options


def is_loopback(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: traffic that never leaves the machine."""
    if not host:
        return False
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_plain_http(
    url: str, *, allow_http: bool, name: str = "IAMPORT", what: str = "the i'mport key and secret"
) -> None:
    """Stop when ``<name>_API_URL`` would send a provider's credentials unencrypted.

    Plain http is fine on loopback (the sandbox under ``make run`` and the
    tests) and, with ``<name>_ALLOW_HTTP=1``, on a private network such as the
    compose stack's ``http://sandbox:8787``; anywhere else it is a typo.
    """
    parts = urlsplit(url)
    if parts.scheme == "http" and not allow_http and not is_loopback(parts.hostname):
        raise ConfigError(
            f"{name}_API_URL={redact_url(url)} is plain http: {what} "
            f"would cross the network unencrypted. Use https, or set {name}_ALLOW_HTTP=1 for a "
            "sandbox on a private network"
        )


#: The variables requests reads for another CA bundle (only when verification is on).
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def check_ca_bundles(env: Mapping[str, str]) -> None:
    """Stop at start when requests would be pointed at a CA bundle that is not there.

    requests reads these only to *replace* the trusted CAs; an empty value is
    ignored, so neither can turn verification off. A path that does not exist,
    though, makes every request raise a bare OSError mid-task.
    """
    # requests takes the first one that is not empty, as here.
    name = next((name for name in CA_BUNDLE_VARIABLES if env.get(name)), None)
    if name is not None and not os.path.exists(env[name]):
        raise ConfigError(
            f"{name}={env[name]} does not exist; it names the CAs that i'mport's "
            "certificate is checked against"
        )


def amqp_tls(url: str) -> dict[str, Any] | None:
    """``broker_use_ssl`` for a RabbitMQ URL: an ``amqps://`` broker is always verified.

    py-amqp given just ``ssl=True`` checks the certificate against the system's
    CAs but not the host name; naming ``server_hostname`` (kombu fills in the
    URL's host) turns the host name check on. Query options are refused: they
    are the way kombu's URL parsing could weaken this.
    """
    parts = urlsplit(url)
    if parts.query:
        raise ConfigError("BROKER_URL: a RabbitMQ URL takes no query options here")
    if parts.scheme != "amqps":
        return None
    return {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
