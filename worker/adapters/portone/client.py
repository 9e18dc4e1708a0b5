"""The PortOne V2 client: cash receipts and payments over ``requests``, exactly once.

Built once per worker process and shared by its threads, like the V1 client, and
like it never retrying by itself: retrying is the task's decision
(:mod:`worker.core.retry`). What V2 adds, and what no official client does:

- **No login tokens.** Every call carries ``Authorization: PortOne <secret>``: each
  login or refresh expires the previous refresh token, so workers sharing a
  secret would log each other out (research §2.1).
- **An ``Idempotency-Key`` on every POST** (:mod:`worker.core.idempotency`), derived
  from the job, the step and its generation: a retry of a request that got no answer
  carries the same key (:class:`~worker.core.ports.OperationId`), and PortOne replays
  its stored answer, or says it is still at work, rather than act twice.
- **Explicit timeouts** (``PORTONE_TIMEOUT``): PortOne recommends a read timeout of
  at least 60 s, and a disconnect does not cancel the request on the server, so
  a lost answer is an outcome to look up after ``PORTONE_SETTLE_SECONDS``.
- **Any error body**: one that is not PortOne's JSON (a gateway's page, an empty
  body) is read by its status (:mod:`worker.adapters.portone.answers`), never a crash.

It is the core's :class:`~worker.core.ports.Provider` for V2, by structure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import requests

from worker.adapters.portone.answers import error_for_answer, error_type
from worker.adapters.portone.shapes import (
    issue_body,
    read_cash_receipt,
    read_issued,
    read_payment,
)
from worker.adapters.privacy.logmask import remember_secret
from worker.adapters.transport import (
    RequestObserver,
    json_body,
    path_segment,
    send,
    unobserved,
)
from worker.core.contract import PORTONE
from worker.core.errors import UnexpectedResponse
from worker.core.idempotency import header_value, idempotency_key
from worker.core.ports import OperationId
from worker.core.types import JobKey, Payment, Receipt, ReceiptOrder

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api.portone.io"
#: How many receipts one list call asks for: a payment id has one, rarely a few.
_PAGE_SIZE = 10


def _unnoted() -> None:
    """No one to tell that a request is about to go out."""


class PortOneClient:
    """A V2 client with explicit timeouts, the API secret on every call and typed errors."""

    #: The provider's name, for a metric label.
    name = PORTONE
    #: A clean answer: HTTP 200; V2 has no envelope code.
    clean_answer: tuple[int | None, int | None] = (200, None)

    def __init__(
        self,
        *,
        base_url: str,
        api_secret: str,
        store_id: str,
        session: requests.Session,
        timeout: float,
        observe: RequestObserver = unobserved,
    ) -> None:
        if not api_secret:
            raise ValueError(
                "the PortOne API secret is missing: set PORTONE_API_SECRET or "
                "PORTONE_API_SECRET_FILE"
            )
        if not store_id:
            raise ValueError("the PortOne store is missing: set PORTONE_STORE_ID")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if session.verify is False:
            raise ValueError("the session must verify TLS certificates (session.verify is False)")
        remember_secret(api_secret)  # never in a log line
        self._base_url = base_url.rstrip("/")
        self._secret = api_secret
        self._store_id = store_id
        self._session = session
        self._observe = observe
        self._timeout = (min(timeout, 10.0), timeout)

    # -- the Provider port ----------------------------------------------------

    def issue_receipt(
        self,
        request: ReceiptOrder,
        *,
        operation: OperationId,
        on_send: Callable[[], None] = _unnoted,
    ) -> Receipt:
        """``POST /cash-receipts`` with the request's idempotency key."""
        answer = self._call(
            "POST",
            "/cash-receipts",
            json=issue_body(request, store_id=self._store_id),
            key=self._key(operation),
            on_send=on_send,
        )
        assert answer is not None
        return read_issued(answer, request)

    def find_receipt(self, job: JobKey) -> Receipt | None:
        """``GET /payments/{paymentId}/cash-receipt``: the live receipt if any, else the one
        shown; None when PortOne has none.

        A payment id has several receipts once a refund cancelled one and re-issued the
        balance, and which of them the lookup shows is unconfirmed. So when it shows one
        that is not live (cancelled, or a failed issue), the list is asked for a live one
        beside it: never "nothing live" while a re-issue stands.
        """
        answer = self._call(
            "GET",
            f"/payments/{path_segment(job.id)}/cash-receipt",
            params=self._store,
            none_on="CASH_RECEIPT_NOT_FOUND",
        )
        if answer is None:
            return None
        shown = read_cash_receipt(answer)
        if shown is not None and shown.active:
            return shown
        return next(iter(self.list_receipts(job, statuses=("ISSUED",))), shown)

    def list_receipts(self, job: JobKey, *, statuses: tuple[str, ...] = ()) -> list[Receipt]:
        """``GET /cash-receipts`` filtered by the payment id (and ``statuses``, if given),
        newest first. Its window is PortOne's default: issued in the last 90 days."""
        filters: dict[str, Any] = {"storeId": self._store_id, "paymentId": job.id}
        if statuses:
            filters["statuses"] = list(statuses)
        query = {
            "filter": filters,
            "sort": {"by": "STATUS_UPDATED_AT", "order": "DESC"},
            "page": {"number": 0, "size": _PAGE_SIZE},
        }
        answer = self._call(
            "GET",
            "/cash-receipts",
            params={"requestBody": json.dumps(query, separators=(",", ":"))},
        )
        items = (answer or {}).get("items")
        if not isinstance(items, list):
            raise UnexpectedResponse("malformed GetCashReceiptsResponse: no items")
        found = (read_cash_receipt(item) for item in items if isinstance(item, dict))
        return [receipt for receipt in found if receipt is not None]

    def get_payment(self, payment_id: str) -> Payment:
        """``GET /payments/{paymentId}``."""
        answer = self._call("GET", f"/payments/{path_segment(payment_id)}", params=self._store)
        assert answer is not None
        return read_payment(answer)

    def cancel_receipt(
        self, job: JobKey, *, operation: OperationId, on_send: Callable[[], None] = _unnoted
    ) -> Receipt:
        """``POST /payments/{paymentId}/cash-receipt/cancel``, then the receipt as cancelled.

        V2's cancel answers only the amount and the time: the receipt itself is looked
        up, so the cancelled event names it as V1's does. The list's newest CANCELLED one
        is the receipt just cancelled: the lookup may show an older one (a payment id's
        first receipt, cancelled by an earlier refund).
        """
        self._call(
            "POST",
            f"/payments/{path_segment(job.id)}/cash-receipt/cancel",
            params=self._store,
            key=self._key(operation),
            on_send=on_send,
        )
        listed = self.list_receipts(job, statuses=("CANCELLED",))
        cancelled = listed[0] if listed else self.find_receipt(job)
        if cancelled is None or cancelled.active:
            raise UnexpectedResponse("PortOne answered the cancel, but shows no cancelled receipt")
        return cancelled

    # -- plumbing ----------------------------------------------------------------

    @property
    def _store(self) -> dict[str, str]:
        """The ``storeId`` query of the calls that take one. Never left out: PortOne would
        act on the secret's own store, which a merchant's secret over several stores is
        not (the list names the store in its filter, and takes no such query)."""
        return {"storeId": self._store_id}

    def _key(self, operation: OperationId) -> str:
        return idempotency_key(
            provider=PORTONE,
            store=self._store_id,
            id=operation.job.id,
            operation=operation.step,
            generation=operation.generation,
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        key: str | None = None,
        none_on: str | None = None,
        on_send: Callable[[], None] = _unnoted,
    ) -> dict[str, Any] | None:
        """One request, its answer's JSON; None when it is the error ``none_on``."""
        headers = {"Accept": "application/json", "Authorization": f"PortOne {self._secret}"}
        if key is not None:
            headers["Idempotency-Key"] = header_value(key)
        changes = method == "POST"
        on_send()
        http = send(
            self._session,
            method,
            self._base_url + path,
            path=path,
            endpoint=_endpoint(path),
            changes=changes,
            timeout=self._timeout,
            headers=headers,
            json=json,
            params=params,
            observe=self._observe,
        )
        body = json_body(http)
        if 200 <= http.status_code < 300 and isinstance(body, dict):
            return body
        if none_on is not None and error_type(body) == none_on:
            return None
        raise error_for_answer(
            method,
            http.status_code,
            body=body,
            headers=http.headers,
            now=time.time(),
            request=f"{method} {path}",
            changes=changes,
        )


def _endpoint(path: str) -> str:
    """A path without its payment id, for a metric label."""
    if path.startswith("/payments/"):
        return "payments/cash-receipt" if "/cash-receipt" in path else "payments"
    return path.strip("/")
