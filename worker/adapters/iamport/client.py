"""The i'mport (PortOne V1) client: tokens, receipts and payments over ``requests``.

Built once per worker process (see :mod:`worker.celery.runtime`) and shared by its
threads. It never retries by itself except for one token renewal on a 401:
retrying is the task's decision, made by :mod:`worker.core.retry`, because a blind
re-POST of a receipt that may already exist is exactly how a tax document gets
issued twice.

It is the core's :class:`~worker.core.ports.Provider` for V1, by structure: mypy
checks it where the client is handed to the core. Its answers come back as the
core's provider-neutral :class:`~worker.core.types.Receipt` and
:class:`~worker.core.types.Payment`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import requests

from worker.adapters.iamport.answers import CHANGING_METHODS, error_for_answer, is_envelope
from worker.adapters.iamport.shapes import read_payment, read_receipt, receipt_body
from worker.adapters.privacy.logmask import remember_secret
from worker.adapters.store.keys import token_key
from worker.adapters.transport import (
    RequestObserver,
    json_body,
    path_segment,
    send,
    unobserved,
)
from worker.core.contract import EXTERNAL
from worker.core.errors import (
    AuthenticationFailed,
    UnexpectedResponse,
)
from worker.core.masking import mask_text
from worker.core.ports import OperationId
from worker.core.types import JobKey, Payment, Receipt, ReceiptOrder

log = logging.getLogger(__name__)

#: Renew a cached token this long before i'mport says it expires. Asking in
#: its last minute also makes i'mport extend it by five minutes for everyone.
TOKEN_RENEW_MARGIN = 60.0
TOKEN_PATH = "/users/getToken"  # noqa: S105 (a path, not a password)


class TokenCache(Protocol):
    """Where access tokens are shared between worker processes."""

    def get(self, key: str) -> str | None:
        """The cached token, or None."""

    def put(self, key: str, token: str, ttl: float) -> None:
        """Cache ``token`` for ``ttl`` seconds."""


def _unnoted() -> None:
    """No one to tell that a request is about to go out."""


class IamportClient:
    """A small V1 client with explicit timeouts, a shared token and typed errors."""

    #: The provider's name, for a metric label.
    name = "iamport"
    #: A clean answer: HTTP 200 and the envelope's code 0 (anything else raises).
    clean_answer: tuple[int | None, int | None] = (200, 0)

    def __init__(
        self,
        *,
        base_url: str,
        imp_key: str,
        imp_secret: str,
        session: requests.Session,
        token_cache: TokenCache,
        timeout: float,
        observe: RequestObserver = unobserved,
    ) -> None:
        if not imp_key or not imp_secret:
            raise ValueError("i'mport credentials are missing: set IAMPORT_KEY and IAMPORT_SECRET")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if session.verify is False:
            # The first request carries the key and secret: certificates are always checked.
            raise ValueError("the session must verify TLS certificates (session.verify is False)")
        self._base_url = base_url.rstrip("/")
        self._imp_key = imp_key
        self._imp_secret = imp_secret
        self._session = session
        self._tokens = token_cache
        self._observe = observe
        # (connect, read): requests has no timeout by default, which is a hang.
        self._timeout = (timeout, timeout)
        # One cache entry per merchant account, without putting the key in Redis.
        self._token_key = token_key(imp_key)
        # The token this process last used, and until when (monotonic) it may use it
        # without asking the shared cache: a Redis round trip per request saved.
        self._local_token: tuple[str, float] | None = None

    # -- receipts and payments -------------------------------------------------

    def issue_receipt(
        self,
        request: ReceiptOrder,
        *,
        operation: OperationId | None = None,
        on_send: Callable[[], None] = _unnoted,
    ) -> Receipt:
        """``POST /receipts/{imp_uid}``, or ``/receipts/external/{merchant_uid}`` for an
        external receipt. Anything but a clean answer raises.

        ``on_send`` is called right before the POST goes out, and again before
        it is resent after a 401: not before a token request. What it raises
        stops the POST (nothing is sent) and reaches the caller. ``operation``
        is ignored: V1 has no idempotency key.
        """
        job = request.job
        response = self._call(
            "POST", _receipt_path(job), json=receipt_body(request), on_send=on_send
        )
        return read_receipt(response, external=job.kind == EXTERNAL)

    def find_receipt(self, job: JobKey | str) -> Receipt | None:
        """``GET`` the receipt (a string: a V1 payment's imp_uid); None on 404, which for
        some PGs proves nothing."""
        job = JobKey.of(job)
        try:
            response = self._call("GET", _receipt_path(job), not_found_ok=True)
        except _NotFound:
            return None
        return read_receipt(response, external=job.kind == EXTERNAL)

    def list_receipts(self, job: JobKey | str) -> list[Receipt]:
        """The job's receipts, newest first: V1 shows only the newest, so at most one."""
        found = self.find_receipt(job)
        return [found] if found is not None else []

    def cancel_receipt(
        self,
        job: JobKey | str,
        *,
        operation: OperationId | None = None,
        on_send: Callable[[], None] = _unnoted,
    ) -> Receipt:
        """``DELETE /receipts/{imp_uid}``: the cancelled receipt, with ``cancelled_at`` set.

        ``on_send`` and ``operation`` as for :meth:`issue_receipt`.
        """
        job = JobKey.of(job)
        response = self._call("DELETE", _receipt_path(job), on_send=on_send)
        return read_receipt(response, external=job.kind == EXTERNAL)

    def get_payment(self, imp_uid: str) -> Payment:
        """``GET /payments/{imp_uid}``."""
        return read_payment(self._call("GET", f"/payments/{path_segment(imp_uid)}"))

    # -- plumbing ----------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        not_found_ok: bool = False,
        on_send: Callable[[], None] = _unnoted,
    ) -> dict[str, Any]:
        """Send one authorised request; renew the token once if i'mport says 401.

        ``on_send`` is called after the token is in hand, right before each
        send of the request itself, the resend after a 401 included.
        """
        token = self._token(force=False)
        on_send()
        try:
            return self._send(method, path, token=token, json=json, not_found_ok=not_found_ok)
        except AuthenticationFailed:
            log.info("i'mport refused the cached token; renewing it once")
            token = self._token(force=True)
            on_send()
            return self._send(method, path, token=token, json=json, not_found_ok=not_found_ok)

    def _token(self, *, force: bool) -> str:
        if not force:
            local = self._local_token
            if local is not None and time.monotonic() < local[1]:
                return local[0]
            cached = self._tokens.get(self._token_key)
            if cached:
                remember_secret(cached)
                # The shared entry expires TOKEN_RENEW_MARGIN before i'mport's own
                # expiry, so a copy kept that long more is still valid there. If it
                # was revoked meanwhile, the 401 renews it as it would anyway.
                self._local_token = (cached, time.monotonic() + TOKEN_RENEW_MARGIN / 2)
                return cached
        response = self._send(
            "POST",
            TOKEN_PATH,
            token=None,
            json={"imp_key": self._imp_key, "imp_secret": self._imp_secret},
        )
        try:
            token = str(response["access_token"])
            remember_secret(token)  # a secret like IAMPORT_SECRET: never in a log line
            # Lifetime from i'mport's own two clocks, so our clock's skew cannot matter.
            lifetime = float(response["expired_at"]) - float(response["now"])
        except (KeyError, TypeError, ValueError):
            raise UnexpectedResponse(
                "getToken answered without access_token/now/expired_at"
            ) from None
        margin = min(TOKEN_RENEW_MARGIN, lifetime / 2)
        if lifetime - margin > 0:
            self._tokens.put(self._token_key, token, lifetime - margin)
            self._local_token = (token, time.monotonic() + lifetime - margin)
        return token

    def _send(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        json: dict[str, Any] | None = None,
        not_found_ok: bool = False,
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        started = time.monotonic()
        http = send(
            self._session,
            method,
            self._base_url + path,
            path=path,
            endpoint=_endpoint(path),
            changes=_changes(method, path),
            timeout=self._timeout,
            headers=headers,
            json=json,
            observe=self._observe,
        )
        log.debug(
            "i'mport %s %s -> %s in %.1f ms",
            method,
            path,
            http.status_code,
            (time.monotonic() - started) * 1000,
        )
        return _envelope(http, method, path, not_found_ok=not_found_ok)


class _NotFound(Exception):
    """A 404 the caller asked to see as "nothing there"."""


def _envelope(
    http: requests.Response, method: str, path: str, *, not_found_ok: bool
) -> dict[str, Any]:
    """Accept only a 2xx with ``code == 0`` and a response; turn the rest into errors.

    What an answer means is decided by :func:`worker.adapters.iamport.answers.error_for_answer`
    from its status and whether its body is i'mport's envelope.
    """
    body = json_body(http)
    if http.status_code == 404 and not_found_ok:
        raise _NotFound
    if is_envelope(body):
        code, response = body["code"], body["response"]
        if 200 <= http.status_code < 300 and code == 0:
            if isinstance(response, dict):
                return response
            raise UnexpectedResponse(
                f"{method} {path}: success without a response", status=http.status_code
            )
        message = body.get("message")
        body = {**body, "message": mask_text(str(message)) if message is not None else None}
    raise error_for_answer(
        method,
        http.status_code,
        body=body,
        headers=http.headers,
        # A Retry-After date is read against this host's clock, as it was received.
        now=time.time(),
        request=f"{method} {path}",
        changes=_changes(method, path),
    )


def _endpoint(path: str) -> str:
    """A path without its imp_uid, for a metric label: ``receipts``, ``payments``, ``token``."""
    if path == TOKEN_PATH:
        return "token"
    return path.strip("/").split("/", 1)[0]


def _receipt_path(job: JobKey) -> str:
    """Where a job's receipt lives: a payment's, or an external receipt's by merchant_uid."""
    if job.kind == EXTERNAL:
        return f"/receipts/external/{path_segment(job.id)}"
    return f"/receipts/{path_segment(job.id)}"


def _changes(method: str, path: str) -> bool:
    """Whether a request may change a receipt at i'mport: a token request may not."""
    return method in CHANGING_METHODS and path != TOKEN_PATH
