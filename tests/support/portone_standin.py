"""An independent stand-in for PortOne V2's cash-receipt API, for black-box checks.

It shares no code with the project: it imports nothing from ``worker``, ``tasks`` or
the sandbox (``sandbox/``), and reads PortOne's own OpenAPI document (the fragments
vendored in ``tests/standin/portone_v2_schemas.json``, with their source commit).
It serves, on a free loopback port, what a V2 worker calls:

- ``POST /cash-receipts`` (``issueCashReceipt``), ``GET /cash-receipts``
  (``getCashReceipts``, its body as the ``requestBody`` query), ``GET /payments/{id}``
  (``getPayment``), ``GET /payments/{id}/cash-receipt`` (``getCashReceiptByPaymentId``),
  ``POST /payments/{id}/cash-receipt/cancel`` (``cancelCashReceiptByPaymentId``).

Every request is checked, and each deviation is kept as a *problem*, with the request:

- ``Authorization: PortOne <secret>`` on every call (else 401 ``UNAUTHORIZED``);
- a quoted ``Idempotency-Key`` of 16-256 ASCII characters (an RFC 8941 string) on
  every POST (else 400 ``INVALID_REQUEST``): PortOne's API overview page, not the
  OpenAPI file, documents it;
- the store: ``storeId`` in the query of the operations that declare it, in the body
  of ``POST /cash-receipts`` and in ``filter`` of ``GET /cash-receipts``, equal to the
  configured store (the OpenAPI file makes it optional, and PortOne then uses the
  store of the credentials: a worker configured with a store must name it, or it
  acts on another store; ``default_store`` is that other store);
- no query parameter the operation does not declare;
- the JSON body against the operation's request schema (every keyword the vendored
  fragments use; a property the schema does not name is a problem too), a JSON
  ``Content-Type`` on a body, and no body where the operation takes none.

Idempotency, as the overview page says (retention is not modelled): a key still being
processed answers 409 ``IDEMPOTENCY_OUTSTANDING_REQUEST``; a finished key with the same
request replays the stored answer, never acting again; a key with another request is
refused, 422 ``IDEMPOTENCY_KEY_REUSED`` (the type's name is UNCONFIRMED: PortOne only
says a key must never be reused for another request) and is a problem.

Blind requests (the stand-in's oracle):

- a ``POST /cash-receipts`` for a payment id that has a live (ISSUED) receipt;
- a POST (issue or cancel) under a new key while an earlier POST of the same
  operation for the payment id is unsettled: its true answer was never delivered
  (dropped, too late for the client, hidden behind a gateway's page or a 409) and
  no lookup of the payment id began after PortOne had finished with it;
- a cancel under a new key for a payment id with no live receipt.

Faults are scripted per payment id and operation, each consumed by one request; they
act after the request was checked, as something in front of PortOne or PortOne itself
would: ``gateway`` (an answer without acting), ``gateway_after`` (act, then a gateway's
answer instead of PortOne's), ``drop_after`` (act, then close the connection),
``late`` (act, then answer after ``seconds``, or never if the client left) and
``slow`` (the key is outstanding for ``seconds`` before PortOne acts).
"""

from __future__ import annotations

import json
import re
import secrets
import select
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMAS_FILE = Path(__file__).resolve().parents[1] / "standin" / "portone_v2_schemas.json"

#: An RFC 8941 string of 16-256 printable ASCII characters (PortOne's overview page).
_KEY = re.compile(r'^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\]){16,256})"$')
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_INT_RANGE = {"int32": 2**31, "int64": 2**63}

#: What each operation declares: its query parameters, whether it takes a body.
ISSUE, LIST, PAYMENT, RECEIPT, CANCEL = (
    "issueCashReceipt",
    "getCashReceipts",
    "getPayment",
    "getCashReceiptByPaymentId",
    "cancelCashReceiptByPaymentId",
)
_QUERY = {
    ISSUE: frozenset(),
    LIST: frozenset({"requestBody"}),
    PAYMENT: frozenset({"storeId"}),
    RECEIPT: frozenset({"storeId"}),
    CANCEL: frozenset({"storeId"}),
}

GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)


# -- the schema ----------------------------------------------------------------------------


class Schemas:
    """The vendored OpenAPI fragments and a validator for the keywords they use."""

    def __init__(self, path: Path = SCHEMAS_FILE) -> None:
        document = json.loads(path.read_text(encoding="utf-8"))
        self.source: dict[str, Any] = document["source"]
        self.schemas: dict[str, Any] = document["schemas"]

    def errors(self, value: object, name: str) -> list[str]:
        """Every way ``value`` breaks schema ``name`` (empty: valid)."""
        found: list[str] = []
        self._check(value, {"$ref": f"#/components/schemas/{name}"}, "$", found)
        return found

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in schema:
            schema = self.schemas[str(schema["$ref"]).rsplit("/", 1)[-1]]
        return schema

    def _check(self, value: object, schema: Mapping[str, Any], at: str, found: list[str]) -> None:
        schema = self._resolve(schema)
        if "oneOf" in schema:
            self._one_of(value, schema, at, found)
            return
        kind = schema.get("type")
        if kind is not None and not _is_type(value, kind):
            found.append(f"{at}: {_show(value)} is not of type {kind}")
            return
        if "enum" in schema and value not in schema["enum"]:
            found.append(f"{at}: {_show(value)} is not one of the enum's values")
        self._format(value, schema.get("format"), at, found)
        if isinstance(value, dict) and (kind == "object" or "properties" in schema):
            properties: Mapping[str, Any] = schema.get("properties", {})
            for name in schema.get("required", []):
                if name not in value:
                    found.append(f"{at}: required property {name!r} is missing")
            for name, item in value.items():
                if name in properties:
                    self._check(item, properties[name], f"{at}.{name}", found)
                else:
                    found.append(f"{at}: property {name!r} is not in the schema")
        if isinstance(value, list) and "items" in schema:
            for index, item in enumerate(value):
                self._check(item, schema["items"], f"{at}[{index}]", found)

    def _one_of(self, value: object, schema: Mapping[str, Any], at: str, found: list[str]) -> None:
        discriminator = schema.get("discriminator")
        if discriminator is not None:
            if not isinstance(value, dict):
                found.append(f"{at}: {_show(value)} is not an object")
                return
            tag = value.get(discriminator["propertyName"])
            target = discriminator.get("mapping", {}).get(tag)
            if target is None:
                found.append(f"{at}: discriminator {tag!r} maps to no schema")
                return
            self._check(value, {"$ref": target}, at, found)
            return
        matches = sum(1 for option in schema["oneOf"] if not self._sub_errors(value, option, at))
        if matches != 1:
            found.append(f"{at}: matches {matches} of oneOf's schemas, not exactly one")

    def _sub_errors(self, value: object, schema: Mapping[str, Any], at: str) -> list[str]:
        found: list[str] = []
        self._check(value, schema, at, found)
        return found

    @staticmethod
    def _format(value: object, form: object, at: str, found: list[str]) -> None:
        if form in _INT_RANGE and isinstance(value, int):
            bound = _INT_RANGE[str(form)]
            if not -bound <= value < bound:
                found.append(f"{at}: {value} is out of {form}'s range")
        if form == "date-time" and isinstance(value, str) and not _DATE_TIME.match(value):
            found.append(f"{at}: {value!r} is not an RFC 3339 date-time")


def _is_type(value: object, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    checks: dict[str, type | tuple[type, ...]] = {
        "string": str,
        "boolean": bool,
        "object": dict,
        "array": list,
    }
    return isinstance(value, checks[kind])


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# -- what the stand-in keeps ------------------------------------------------------------------


def now_text(at: float | None = None) -> str:
    """An RFC 3339 date-time in UTC, as PortOne writes them."""
    moment = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Seen:
    """One request as the stand-in saw it, and what became of it."""

    number: int
    method: str
    path: str
    operation: str | None
    payment_id: str | None
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    key: str | None
    started: float
    problems: list[str] = field(default_factory=list)
    fault: str | None = None
    status: int | None = None
    delivered: bool | None = None
    blind: str | None = None
    #: The answer is the key's own (PortOne's first answer to it, or its replay).
    replay: bool = False

    def line(self) -> str:
        """One line for a failure message (the secret masked)."""
        query = {
            name: values[0] if len(values) == 1 else values for name, values in self.query.items()
        }
        parts = [f"#{self.number} {self.method} {self.path}"]
        if query:
            parts.append(f"query={json.dumps(query, ensure_ascii=False)}")
        if self.key is not None:
            parts.append(f"key={self.key[:12]}...")
        if self.body is not None:
            parts.append(f"body={json.dumps(self.body, ensure_ascii=False, sort_keys=True)}")
        if self.fault is not None:
            parts.append(f"fault={self.fault}")
        parts.append(f"-> {self.status} delivered={self.delivered}")
        if self.blind:
            parts.append(f"BLIND({self.blind})")
        if self.problems:
            parts.append(f"PROBLEMS={self.problems}")
        return " ".join(parts)


@dataclass
class Receipt:
    """One cash receipt the stand-in issued."""

    payment_id: str
    store_id: str
    body: dict[str, Any]
    issue_number: str
    pg_receipt_id: str
    issued_at: float
    cancelled_at: float | None = None

    @property
    def live(self) -> bool:
        return self.cancelled_at is None


@dataclass
class Attempt:
    """A POST under one key: when PortOne finished with it, whether its answer got out."""

    key: str
    operation: str
    payment_id: str
    fingerprint: str
    finished: float | None = None
    answer: tuple[int, dict[str, Any]] | None = None
    delivered: bool = False


@dataclass
class Fault:
    """What happens to one request, beyond PortOne's own answer (see the module's doc)."""

    kind: str
    seconds: float = 0.0
    status: int = 502
    body: bytes = GATEWAY_PAGE
    content_type: str | None = "text/html"
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind in {"gateway", "gateway_after"}:
            return f"{self.kind}({self.status}, {len(self.body)} bytes, {self.headers})"
        if self.kind in {"late", "slow"}:
            return f"{self.kind}({self.seconds:g}s)"
        return self.kind


@dataclass
class Payment:
    """A PortOne payment a ``kind: payment`` job's worker reads."""

    payment_id: str
    total: int
    status: str = "PAID"
    method: str = "PaymentMethodVirtualAccount"
    order_name: str = "Order"


class Answer(Exception):
    """An early answer: an error in PortOne's JSON."""

    def __init__(self, status: int, kind: str, message: str = "") -> None:
        super().__init__(f"{status} {kind}")
        self.status = status
        self.body: dict[str, Any] = {"type": kind, "message": message or kind}


class StandIn:
    """The stand-in's state, its checks and its answers, behind one lock."""

    def __init__(
        self,
        *,
        secret: str = "standin-portone-secret",  # noqa: S107 (the stand-in's own)
        store_id: str = "store-8b1c7e2a-standin",
        channel_key: str = "channel-key-5f0e9d3c-standin",
        default_store: str | None = None,
    ) -> None:
        self.secret = secret
        self.store_id = store_id
        self.default_store = default_store or store_id
        self.channel_key = channel_key
        self.merchant_id = "merchant-standin"
        self.schemas = Schemas()
        self.url = ""
        self._lock = threading.Lock()
        self._numbers = iter(range(1, 1_000_000))
        self.seen: list[Seen] = []
        self.receipts: dict[tuple[str, str], list[Receipt]] = defaultdict(list)
        self.payments: dict[str, Payment] = {}
        self.attempts: dict[str, Attempt] = {}
        self._looks: dict[str, list[float]] = defaultdict(list)
        self._faults: dict[tuple[str, str], list[Fault]] = defaultdict(list)
        self.bugs: list[str] = []

    # -- the test's side ----------------------------------------------------------------

    def script(self, payment_id: str, operation: str, *faults: Fault) -> None:
        """Faults for the next requests of ``operation`` for ``payment_id``, in order."""
        with self._lock:
            self._faults[(operation, payment_id)].extend(faults)

    def seed_receipt(self, payment_id: str, body: dict[str, Any]) -> None:
        """A receipt PortOne issued before any request of the test (the payment window's)."""
        with self._lock:
            self.receipts[(self.store_id, payment_id)].append(
                Receipt(
                    payment_id=payment_id,
                    store_id=self.store_id,
                    body=body,
                    issue_number=f"{secrets.randbelow(10**9):09d}",
                    pg_receipt_id=f"pgr-{secrets.token_hex(6)}",
                    issued_at=time.time(),
                )
            )

    def add_payment(self, payment: Payment) -> None:
        with self._lock:
            self.payments[payment.payment_id] = payment

    def requests_for(self, payment_id: str) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.seen if seen.payment_id == payment_id]

    def posts(self, payment_id: str, operation: str = ISSUE) -> list[Seen]:
        return [seen for seen in self.requests_for(payment_id) if seen.operation == operation]

    def live(self, payment_id: str, store: str | None = None) -> list[Receipt]:
        with self._lock:
            receipts = self.receipts[(store or self.store_id, payment_id)]
            return [receipt for receipt in receipts if receipt.live]

    def all_receipts(self, payment_id: str) -> list[Receipt]:
        with self._lock:
            return [
                r for (_, paid), kept in self.receipts.items() if paid == payment_id for r in kept
            ]

    def in_flight(self, payment_id: str) -> bool:
        """Whether a request for ``payment_id`` has no answer yet."""
        return any(seen.status is None for seen in self.requests_for(payment_id))

    def report(self, payment_id: str) -> str:
        """Every request for ``payment_id``, one line each."""
        return "\n".join(seen.line() for seen in self.requests_for(payment_id))

    def problems(self, payment_id: str) -> list[str]:
        return [
            f"#{seen.number} {seen.method} {seen.path}: {problem}"
            for seen in self.requests_for(payment_id)
            for problem in seen.problems
        ]

    def blind(self, payment_id: str) -> list[str]:
        return [
            f"#{seen.number} {seen.method} {seen.path}: {seen.blind}"
            for seen in self.requests_for(payment_id)
            if seen.blind
        ]

    # -- one request ------------------------------------------------------------------------

    def handle(self, handler: _Handler) -> None:
        """Check, fault and answer one request."""
        split = urlsplit(handler.path)
        method, path = handler.command, split.path
        query = parse_qs(split.query, keep_blank_values=True)
        headers = {name: value for name, value in handler.headers.items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        operation, payment_id = _route(method, path)
        seen = Seen(
            number=0,
            method=method,
            path=path,
            operation=operation,
            payment_id=payment_id,
            query=query,
            headers=_masked(headers, self.secret),
            body=None,
            key=None,
            started=time.monotonic(),
        )
        with self._lock:
            seen.number = next(self._numbers)
            self.seen.append(seen)
        try:
            status, answer, fault = self._serve(seen, handler, query, raw)
        except Answer as early:
            status, answer, fault = early.status, early.body, None
        self._send(handler, seen, status, answer, fault)

    def _serve(
        self, seen: Seen, handler: _Handler, query: dict[str, list[str]], raw: bytes
    ) -> tuple[int, dict[str, Any], Fault | None]:
        if seen.operation is None:
            seen.problems.append("no such operation")
            raise Answer(404, "NOT_FOUND", "no such path")
        if handler.headers.get("Authorization") != f"PortOne {self.secret}":
            seen.problems.append("Authorization is not 'PortOne <secret>'")
            raise Answer(401, "UNAUTHORIZED")
        store = self._check_query(seen, query)
        body = self._check_body(seen, handler, raw)
        if seen.method == "POST":
            seen.key = self._check_key(seen, handler.headers.get_all("Idempotency-Key") or [])
        if seen.operation == ISSUE:
            store = self._body_store(seen, body)
        with self._lock:
            fault = self._next_fault(seen)
        if fault is not None and fault.kind == "gateway":
            return 0, {}, fault
        if seen.method == "GET":
            with self._lock:
                status, answer = self._read(seen, store, body)
            return status, answer, fault
        return (*self._post(seen, store, body, fault), fault)

    def _check_query(self, seen: Seen, query: dict[str, list[str]]) -> str:
        assert seen.operation is not None
        declared = _QUERY[seen.operation]
        for name, values in query.items():
            if name not in declared:
                seen.problems.append(
                    f"query parameter {name!r} is not declared by {seen.operation}"
                )
            elif len(values) != 1:
                seen.problems.append(f"query parameter {name!r} is given {len(values)} times")
        if "storeId" not in declared:
            return self.default_store
        stores = query.get("storeId")
        if not stores:
            seen.problems.append(
                f"no storeId: PortOne acts on the credentials' store ({self.default_store}), "
                f"which need not be the configured one ({self.store_id})"
            )
            return self.default_store
        if stores[0] != self.store_id:
            seen.problems.append(f"storeId {stores[0]!r} is not the configured store")
            raise Answer(403, "FORBIDDEN", "no access to that store")
        return self.store_id

    def _check_body(self, seen: Seen, handler: _Handler, raw: bytes) -> Any:
        operation = seen.operation
        if operation == LIST:
            texts = seen.query.get("requestBody")
            if raw:
                seen.problems.append("GET /cash-receipts with a body (the client sends a query)")
            if not texts:
                return None
            body = self._json(seen, texts[0].encode("utf-8"), "requestBody")
            self._schema(seen, body, "GetCashReceiptsBody")
            return body
        if operation == ISSUE:
            content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip()
            if content_type != "application/json":
                seen.problems.append(f"Content-Type {content_type!r} is not application/json")
            body = self._json(seen, raw, "body")
            if isinstance(body, dict) and isinstance(body.get("paymentId"), str):
                with self._lock:
                    seen.payment_id = body["paymentId"]
            self._schema(seen, body, "IssueCashReceiptBody")
            return body
        if raw:
            seen.problems.append(f"{operation} takes no body, got {len(raw)} bytes")
        return None

    def _json(self, seen: Seen, raw: bytes, what: str) -> Any:
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            seen.problems.append(f"the {what} is not JSON: {raw[:60]!r}")
            raise Answer(400, "INVALID_REQUEST", f"the {what} is not JSON") from None
        seen.body = body
        return body

    def _schema(self, seen: Seen, body: Any, name: str) -> None:
        errors = self.schemas.errors(body, name)
        if errors:
            seen.problems.extend(f"{name}: {error}" for error in errors)
            raise Answer(400, "INVALID_REQUEST", "; ".join(errors))

    def _check_key(self, seen: Seen, values: list[str]) -> str:
        if len(values) != 1:
            seen.problems.append(f"a POST with {len(values)} Idempotency-Key headers, not one")
            raise Answer(400, "INVALID_REQUEST", "Idempotency-Key")
        matched = _KEY.match(values[0])
        if matched is None:
            seen.problems.append(
                f"Idempotency-Key {values[0]!r} is not a quoted string of 16-256 ASCII characters"
            )
            raise Answer(400, "INVALID_REQUEST", "Idempotency-Key")
        return matched.group(1)

    def _body_store(self, seen: Seen, body: Mapping[str, Any]) -> str:
        store = body.get("storeId")
        if store is None:
            seen.problems.append(
                f"no storeId in the body: PortOne issues in the credentials' store "
                f"({self.default_store})"
            )
            return self.default_store
        if store != self.store_id:
            seen.problems.append(f"storeId {store!r} is not the configured store")
            raise Answer(403, "FORBIDDEN", "no access to that store")
        return self.store_id

    def _next_fault(self, seen: Seen) -> Fault | None:
        assert seen.operation is not None
        queue = self._faults.get((seen.operation, seen.payment_id or ""))
        if not queue:
            return None
        fault = queue.pop(0)
        seen.fault = fault.describe()
        return fault

    # -- reads --------------------------------------------------------------------------------

    def _read(self, seen: Seen, store: str, body: Any) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        if seen.operation == RECEIPT:
            assert seen.payment_id is not None
            self._looks[seen.payment_id].append(now)
            kept = self.receipts[(store, seen.payment_id)]
            if not kept:
                raise Answer(404, "CASH_RECEIPT_NOT_FOUND")
            return 200, self._cash_receipt(kept[-1])
        if seen.operation == PAYMENT:
            assert seen.payment_id is not None
            payment = self.payments.get(seen.payment_id)
            if payment is None or store != self.store_id:
                raise Answer(404, "PAYMENT_NOT_FOUND")
            self._looks[seen.payment_id].append(now)
            return 200, self._payment(payment)
        filters: Mapping[str, Any] = (body or {}).get("filter") or {}
        wanted = filters.get("paymentId")
        if filters.get("storeId") is None:
            seen.problems.append("GET /cash-receipts without filter.storeId")
        if filters.get("storeId", self.default_store) != self.store_id:
            raise Answer(403, "FORBIDDEN")
        if isinstance(wanted, str):
            seen.payment_id = wanted
            self._looks[wanted].append(now)
        items = [
            self._cash_receipt(receipt)
            for (kept_store, paid), kept in self.receipts.items()
            if kept_store == self.store_id and wanted in (None, paid)
            for receipt in kept
        ]
        page = (body or {}).get("page") or {}
        size = int(page.get("size", 10))
        return 200, {
            "items": items[:size],
            "page": {"number": int(page.get("number", 0)), "size": size, "totalCount": len(items)},
        }

    def _cash_receipt(self, receipt: Receipt) -> dict[str, Any]:
        body = receipt.body
        amount = body["amount"]
        answer: dict[str, Any] = {
            "status": "ISSUED" if receipt.live else "CANCELLED",
            "merchantId": self.merchant_id,
            "storeId": receipt.store_id,
            "paymentId": receipt.payment_id,
            "channel": self._channel(),
            "amount": amount["total"],
            "currency": body["currency"],
            "orderName": body["orderName"],
            "isManual": True,
            "type": body["type"],
            "pgReceiptId": receipt.pg_receipt_id,
            "issueNumber": receipt.issue_number,
            "url": f"https://receipt.standin.invalid/{receipt.pg_receipt_id}",
            "issuedAt": now_text(receipt.issued_at),
            "statusUpdatedAt": now_text(receipt.cancelled_at or receipt.issued_at),
        }
        if "taxFree" in amount:
            answer["taxFreeAmount"] = amount["taxFree"]
        answer["vatAmount"] = amount.get("vat", (amount["total"] - amount.get("taxFree", 0)) // 11)
        if receipt.cancelled_at is not None:
            answer["cancelledAt"] = now_text(receipt.cancelled_at)
        return answer

    def _channel(self) -> dict[str, Any]:
        return {
            "type": "TEST",
            "key": self.channel_key,
            "pgProvider": "TOSSPAYMENTS",
            "pgMerchantId": "tosstest",
        }

    def _payment(self, payment: Payment) -> dict[str, Any]:
        stamp = now_text()
        kept = self.receipts[(self.store_id, payment.payment_id)]
        answer: dict[str, Any] = {
            "status": payment.status,
            "id": payment.payment_id,
            "transactionId": f"tx-{payment.payment_id}",
            "merchantId": self.merchant_id,
            "storeId": self.store_id,
            "method": (
                {"type": payment.method, "accountNumber": "1234567890123", "bank": "SHINHAN"}
                if payment.method == "PaymentMethodVirtualAccount"
                else {"type": payment.method}
            ),
            "channel": self._channel(),
            "version": "V2",
            "requestedAt": stamp,
            "updatedAt": stamp,
            "statusChangedAt": stamp,
            "orderName": payment.order_name,
            "amount": {
                "total": payment.total,
                "taxFree": 0,
                "vat": payment.total // 11,
                "supply": payment.total - payment.total // 11,
                "discount": 0,
                "paid": payment.total,
                "cancelled": 0,
                "cancelledTaxFree": 0,
            },
            "currency": "KRW",
            "customer": {},
            "origin": {"platformType": "PC", "ipAddress": "203.0.113.7"},
            "paidAt": stamp,
            "disputes": [],
        }
        if kept:
            latest = kept[-1]
            answer["cashReceipt"] = {
                "status": "ISSUED" if latest.live else "CANCELLED",
                "type": latest.body["type"],
                "pgReceiptId": latest.pg_receipt_id,
                "issueNumber": latest.issue_number,
                "totalAmount": latest.body["amount"]["total"],
                "currency": "KRW",
                "issuedAt": now_text(latest.issued_at),
                **({"cancelledAt": now_text(latest.cancelled_at)} if not latest.live else {}),
            }
            answer["cashReceiptIssuanceStatus"] = "ISSUED" if latest.live else "NOT_ISSUED"
        return answer

    # -- POSTs ---------------------------------------------------------------------------------

    def _post(
        self, seen: Seen, store: str, body: Any, fault: Fault | None
    ) -> tuple[int, dict[str, Any]]:
        assert seen.operation is not None and seen.payment_id is not None and seen.key is not None
        fingerprint = json.dumps(
            [seen.method, seen.path, body], sort_keys=True, separators=(",", ":")
        )
        with self._lock:
            attempt = self.attempts.get(seen.key)
            if attempt is not None:
                if attempt.fingerprint != fingerprint:
                    seen.problems.append("Idempotency-Key reused for another request")
                    raise Answer(
                        422, "IDEMPOTENCY_KEY_REUSED", "the key was used for another request"
                    )
                if attempt.answer is None:
                    raise Answer(409, "IDEMPOTENCY_OUTSTANDING_REQUEST", "still processing")
                seen.replay = True
                return attempt.answer
            seen.blind = self._blind(seen)
            attempt = Attempt(
                key=seen.key,
                operation=seen.operation,
                payment_id=seen.payment_id,
                fingerprint=fingerprint,
            )
            self.attempts[seen.key] = attempt
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.seconds)
        with self._lock:
            try:
                answer = (
                    self._issue(seen.payment_id, store, body)
                    if seen.operation == ISSUE
                    else self._cancel(seen.payment_id, store)
                )
            except Answer as refused:
                answer = (refused.status, refused.body)
            attempt.answer = answer
            attempt.finished = time.monotonic()
        seen.replay = True
        return answer

    def _blind(self, seen: Seen) -> str | None:
        assert seen.payment_id is not None and seen.operation is not None
        live = [r for r in self.receipts[(self.store_id, seen.payment_id)] if r.live]
        if seen.operation == ISSUE and live:
            return "a new issue while the payment id has a live receipt"
        if seen.operation == CANCEL and not live:
            return "a new cancel while the payment id has no live receipt"
        looks = self._looks[seen.payment_id]
        for earlier in self._attempts_of(seen.payment_id, seen.operation):
            if earlier.delivered:
                continue
            if earlier.finished is None:
                return f"a new key while key {earlier.key[:12]}... is still being processed"
            if not any(look >= earlier.finished for look in looks):
                return (
                    f"a new key while key {earlier.key[:12]}... had no answer delivered "
                    "and no lookup since PortOne finished with it"
                )
        return None

    def _attempts_of(self, payment_id: str, operation: str) -> list[Attempt]:
        return [
            attempt
            for attempt in self.attempts.values()
            if attempt.operation == operation and attempt.payment_id == payment_id
        ]

    def _issue(
        self, payment_id: str, store: str, body: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if body["channelKey"] != self.channel_key:
            raise Answer(404, "CHANNEL_NOT_FOUND")
        kept = self.receipts[(store, payment_id)]
        if any(receipt.live for receipt in kept):
            raise Answer(409, "CASH_RECEIPT_ALREADY_ISSUED")
        receipt = Receipt(
            payment_id=payment_id,
            store_id=store,
            body=dict(body),
            issue_number=f"{secrets.randbelow(10**9):09d}",
            pg_receipt_id=f"pgr-{secrets.token_hex(6)}",
            issued_at=time.time(),
        )
        kept.append(receipt)
        return 200, {
            "cashReceipt": {
                "issueNumber": receipt.issue_number,
                "url": f"https://receipt.standin.invalid/{receipt.pg_receipt_id}",
                "pgReceiptId": receipt.pg_receipt_id,
            }
        }

    def _cancel(self, payment_id: str, store: str) -> tuple[int, dict[str, Any]]:
        kept = self.receipts[(store, payment_id)]
        if not kept:
            raise Answer(404, "CASH_RECEIPT_NOT_FOUND")
        receipt = kept[-1]
        if not receipt.live:
            raise Answer(404, "CASH_RECEIPT_NOT_ISSUED")
        receipt.cancelled_at = time.time()
        return 200, {
            "cancelledAmount": receipt.body["amount"]["total"],
            "cancelledAt": now_text(receipt.cancelled_at),
        }

    # -- the answer ----------------------------------------------------------------------------

    def _send(
        self,
        handler: _Handler,
        seen: Seen,
        status: int,
        answer: dict[str, Any],
        fault: Fault | None,
    ) -> None:
        self._self_check(seen, status, answer)
        kind = fault.kind if fault is not None else None
        if kind == "drop_after":
            handler.drop()
            self._delivered(seen, status, delivered=False)
            return
        if kind == "late":
            assert fault is not None
            if not handler.wait_while_connected(fault.seconds):
                handler.drop()
                self._delivered(seen, status, delivered=False)
                return
        if kind in {"gateway", "gateway_after"}:
            assert fault is not None
            delivered = handler.answer(fault.status, fault.body, fault.content_type, fault.headers)
            self._delivered(seen, fault.status, delivered=delivered, truth=False)
            return
        content = json.dumps(answer, ensure_ascii=False).encode("utf-8")
        delivered = handler.answer(status, content, "application/json", {})
        self._delivered(seen, status, delivered=delivered)

    def _delivered(self, seen: Seen, status: int, *, delivered: bool, truth: bool = True) -> None:
        with self._lock:
            seen.status = status
            seen.delivered = delivered
            attempt = self.attempts.get(seen.key or "")
            # The key's own answer (first or replayed) reached the client: it is settled.
            if attempt is not None and seen.replay and truth and delivered:
                attempt.delivered = True

    def _self_check(self, seen: Seen, status: int, answer: dict[str, Any]) -> None:
        """The stand-in's own 200 answers must match PortOne's response schemas."""
        if status != 200:
            return
        name = {
            ISSUE: "IssueCashReceiptResponse",
            LIST: "GetCashReceiptsResponse",
            PAYMENT: "Payment",
            RECEIPT: "CashReceipt",
            CANCEL: "CancelCashReceiptResponse",
        }[seen.operation or ""]
        errors = self.schemas.errors(answer, name)
        if errors:
            with self._lock:
                self.bugs.extend(f"stand-in's own {name}: {error}" for error in errors)


def _route(method: str, path: str) -> tuple[str | None, str | None]:
    """The operation and the payment id of a request; (None, None) for another path."""
    if path == "/cash-receipts":
        return {"POST": ISSUE, "GET": LIST}.get(method), None
    parts = path.split("/")
    if len(parts) >= 3 and parts[0] == "" and parts[1] == "payments" and parts[2]:
        payment_id = unquote(parts[2])
        rest = parts[3:]
        if rest == [] and method == "GET":
            return PAYMENT, payment_id
        if rest == ["cash-receipt"] and method == "GET":
            return RECEIPT, payment_id
        if rest == ["cash-receipt", "cancel"] and method == "POST":
            return CANCEL, payment_id
    return None, None


def _masked(headers: Mapping[str, str], secret: str) -> dict[str, str]:
    return {
        name: value.replace(secret, "<secret>") if name.lower() == "authorization" else value
        for name, value in headers.items()
    }


# -- HTTP --------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.standin.handle(self)

    def do_POST(self) -> None:
        self.server.standin.handle(self)

    def do_DELETE(self) -> None:
        self.server.standin.handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the stand-in keeps its own record."""

    def answer(
        self, status: int, body: bytes, content_type: str | None, headers: Mapping[str, str]
    ) -> bool:
        """Write one answer; False when the client had already left."""
        if self._client_left():
            self.drop()
            return False
        try:
            self.send_response(status)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True

    def drop(self) -> None:
        """Close the connection without a word."""
        self.close_connection = True
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def wait_while_connected(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the client leaves first; whether it is still there."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._client_left(min(0.05, max(0.0, deadline - time.monotonic()))):
                return False
        return not self._client_left()

    def _client_left(self, wait: float = 0.0) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], wait)
            if not readable:
                return False
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True
        return peeked == b""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: StandIn


@contextmanager
def running_standin(**options: Any) -> Iterator[StandIn]:
    """A stand-in on a free loopback port, for the length of the block."""
    standin = StandIn(**options)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.standin = standin
    standin.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
