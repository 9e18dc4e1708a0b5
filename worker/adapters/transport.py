"""One HTTP request to a provider, with what its failure to answer means.

Shared by the i'mport V1 and PortOne V2 clients: whether a request that got no answer
may have reached the provider is a property of the transport, not of the API. A
request that never left (refused, an untrusted certificate, a connect timeout) is
:class:`~worker.core.errors.ConnectionFailed`; one that may have been acted on is
:class:`~worker.core.errors.OutcomeUnknown` when it changes something, and
:class:`~worker.core.errors.ProviderUnavailable` when it only reads. Each client reads
the answers themselves.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote

import requests
from urllib3.exceptions import NewConnectionError

from worker.core.errors import (
    ConnectionFailed,
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
)


class RequestObserver(Protocol):
    """Told about every HTTP request: method, endpoint, status ('none' without an answer), time."""

    def __call__(self, method: str, endpoint: str, status: str, seconds: float) -> None:
        """Record one request (the latency histogram of :mod:`worker.adapters.observe.metrics`)."""


def unobserved(method: str, endpoint: str, status: str, seconds: float) -> None:
    """No observer: nothing to record."""


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    path: str,
    endpoint: str,
    changes: bool,
    timeout: tuple[float, float],
    headers: Mapping[str, str],
    json: dict[str, Any] | None = None,
    params: Mapping[str, str] | None = None,
    observe: RequestObserver = unobserved,
) -> requests.Response:
    """Send one request; its answer, whatever its status, or the error that no answer means.

    ``path`` names the request in errors (never the body: it may hold an identifier);
    ``endpoint`` is its metric label; ``changes`` says whether it may change a receipt.
    """
    started = time.monotonic()
    status = "none"
    try:
        http = session.request(
            method, url, json=json, params=params, headers=dict(headers), timeout=timeout
        )
        status = str(http.status_code)
    except requests.ConnectTimeout:
        raise ConnectionFailed(f"{method} {path}: connect timeout") from None
    except requests.exceptions.SSLError as error:
        # Before ConnectionError, whose subclass this is: an untrusted or
        # mismatched certificate stops the TLS handshake, so no byte of the
        # request was sent. Read as "connection dropped" it would make a
        # POST an unknown outcome. Other TLS errors (a broken record or an
        # abrupt close mid-answer) may come after the request went out.
        if _certificate_refused(error):
            raise ConnectionFailed(
                f"{method} {path}: TLS certificate not trusted (nothing was sent)"
            ) from None
        raise unknown_outcome(method, path, "TLS error", changes=changes) from None
    except requests.Timeout:
        # The request went out; the provider may have acted on it.
        raise unknown_outcome(method, path, "read timeout", changes=changes) from None
    except requests.ConnectionError as error:
        if _never_connected(error):
            raise ConnectionFailed(f"{method} {path}: connection refused") from None
        raise unknown_outcome(method, path, "connection dropped", changes=changes) from None
    except requests.RequestException as error:
        # Chaining is cut everywhere here: requests' texts quote URLs and arguments.
        raise ConnectionFailed(f"{method} {path}: {type(error).__name__}") from None
    finally:
        observe(method, endpoint, status, time.monotonic() - started)
    return http


def path_segment(value: str) -> str:
    """A provider's id as one segment of a URL path: every character but letters, digits
    and ``_.-~`` escaped, so that no id can name another path (``/``, ``?``, ``#``)."""
    return quote(value, safe="")


def json_body(http: requests.Response) -> Any:
    """An answer's body as JSON, or None when it is none (an empty body, a gateway's page):
    whatever its status, the client reads what it says from this."""
    try:
        return http.json()
    except ValueError:
        return None


def unknown_outcome(method: str, path: str, what: str, *, changes: bool) -> ProviderError:
    """No answer: an outcome to look up when the request may have changed a receipt."""
    if not changes:
        # A lookup or a token request changes no receipt, so a lost answer is
        # simply a transient failure, not an outcome to look up.
        return ProviderUnavailable(f"{method} {path}: {what}")
    return OutcomeUnknown(f"{method} {path}: {what}; the outcome must be looked up")


def _certificate_refused(error: requests.exceptions.SSLError) -> bool:
    """True when the server's certificate failed verification, so the handshake never finished.

    requests wraps urllib3's MaxRetryError, whose reason is urllib3's SSLError
    around the ssl module's own error; the type decides, as in
    :func:`_never_connected`, not the message.
    """
    reason = getattr(error.args[0], "reason", None) if error.args else None
    cause = reason.args[0] if reason is not None and reason.args else None
    return isinstance(cause, ssl.SSLCertVerificationError)


def _never_connected(error: requests.ConnectionError) -> bool:
    """True when the TCP connection was refused or never made, so nothing was sent.

    Anything else (a reset, a close without an answer) happened after the
    request may have been written, so its outcome is unknown.
    """
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(reason, NewConnectionError)
