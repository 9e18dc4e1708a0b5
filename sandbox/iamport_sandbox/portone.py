"""PortOne V2's cash receipts in the sandbox: payments and receipts by paymentId, and V2's answers.

Like state.py for i'mport, the operations here know nothing of HTTP transport: each returns a
Reply with V2's body (`{"type", "message"}` on failure) and status, and, for a lookup, what it
told the client about the receipt (audit.py). Shapes follow the OpenAPI schemas: CashReceipt
(ISSUED | CANCELLED | ISSUE_FAILED), IssueCashReceiptResponse, CancelCashReceiptResponse,
GetCashReceiptsResponse and Payment (by status).

V2 has one id for a receipt, the paymentId: a PortOne payment's, or one the merchant mints for
cash taken outside ("외부 결제 건에 대한 수동 발급의 경우, 아이디를 직접 채번하여 입력합니다").
So issuing needs no payment, and a payment exists only when the admin API seeds one; its
`cashReceipt` is the paymentId's receipt, and its `cashReceiptIssuanceStatus` is what was known
at approval and never changes after.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from iamport_sandbox import keys, rules
from iamport_sandbox import portone_rules as v2
from iamport_sandbox.audit import Audit
from iamport_sandbox.errors import InvalidInput
from iamport_sandbox.faults import FaultStep
from iamport_sandbox.portone_input import IssueBody, ListQuery
from iamport_sandbox.portone_rules import CANCELLED, ISSUE_FAILED, ISSUED, Failure, date_time
from iamport_sandbox.state import Ledger, Reply, check_seed
from iamport_sandbox.tokens import Clock

MERCHANT_ID: Final = "merchant-sandbox"
# Whether a paymentId whose receipts are all cancelled may be issued again: the real API's answer
# is unknown (research refunds-domain.md §3), so both are offered; refusing is the default.
REISSUE_MODES: Final = ("refuse", "allow")
# Which receipt GET /payments/{paymentId}/cash-receipt shows when a paymentId has several (a
# cancelled one and its re-issue): unconfirmed, so both readings are offered. `issued_first`
# (the default) shows the newest ISSUED one, else the newest; `oldest` the first the paymentId
# had, of any state (a cancelled one, while its re-issue is live).
LOOKUP_MODES: Final = ("issued_first", "oldest")
# V2 identity-number types, as the i'mport rule (rules.identifier_rejection) names them.
_IDENTITY_TYPES: Final[Mapping[str, str]] = {
    "PHONE": "phone",
    "BUSINESS": "business",
    "CARD": "taxcard",
}
_PAID_STATUSES: Final = frozenset({"PAID", "PARTIAL_CANCELLED", "CANCELLED"})


def channel(channel_key: str) -> dict[str, Any]:
    """SelectedChannel: every sandbox channel is a test channel of its one PG."""
    return {
        "type": "TEST",
        "id": f"channel-id-{channel_key}",
        "key": channel_key,
        "name": "sandbox channel",
        "pgProvider": v2.PG_PROVIDER,
        "pgMerchantId": v2.PG_MERCHANT_ID,
    }


@dataclass(slots=True)
class V2Receipt:
    """One receipt of a paymentId, in any of CashReceipt's three states."""

    payment_id: str
    seq: int
    status: str
    channel_key: str
    order_name: str
    currency: str
    is_manual: bool
    status_updated_at: float
    amount: int = 0
    tax_free: int = 0
    vat: int = 0
    type: str = "PERSONAL"
    pg_receipt_id: str = ""
    issue_number: str = ""
    url: str = ""
    issued_at: float | None = None
    cancelled_at: float | None = None
    request: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """CashReceiptSummary, the body of IssueCashReceiptResponse."""
        return {
            "issueNumber": self.issue_number,
            "url": self.url,
            "pgReceiptId": self.pg_receipt_id,
        }

    def to_json(self, store_id: str) -> dict[str, Any]:
        """CashReceipt: IssuedCashReceipt, CancelledCashReceipt or IssueFailedCashReceipt."""
        data: dict[str, Any] = {
            "status": self.status,
            "merchantId": MERCHANT_ID,
            "storeId": store_id,
            "paymentId": self.payment_id,
            "channel": channel(self.channel_key),
            "orderName": self.order_name,
            "isManual": self.is_manual,
            "statusUpdatedAt": date_time(self.status_updated_at),
        }
        if self.status == ISSUE_FAILED:
            return data
        assert self.issued_at is not None
        data.update(
            amount=self.amount,
            taxFreeAmount=self.tax_free,
            vatAmount=self.vat,
            currency=self.currency,
            type=self.type,
            pgReceiptId=self.pg_receipt_id,
            issueNumber=self.issue_number,
            url=self.url,
            issuedAt=date_time(self.issued_at),
        )
        if self.cancelled_at is not None:
            data["cancelledAt"] = date_time(self.cancelled_at)
        return data

    def in_payment(self) -> dict[str, Any]:
        """PaymentCashReceipt: IssuedPaymentCashReceipt or CancelledPaymentCashReceipt."""
        assert self.issued_at is not None
        data: dict[str, Any] = {
            "status": self.status,
            "type": self.type,
            "pgReceiptId": self.pg_receipt_id,
            "issueNumber": self.issue_number,
            "totalAmount": self.amount,
            "taxFreeAmount": self.tax_free,
            "currency": self.currency,
            "url": self.url,
            "issuedAt": date_time(self.issued_at),
        }
        if self.cancelled_at is not None:
            data["cancelledAt"] = date_time(self.cancelled_at)
        return data

    def time_of(self, field_name: str) -> float | None:
        """The time a list's range and sort go by: ISSUED_AT, CANCELLED_AT or STATUS_UPDATED_AT."""
        if field_name == "ISSUED_AT":
            return self.issued_at
        if field_name == "CANCELLED_AT":
            return self.cancelled_at
        return self.status_updated_at


@dataclass(slots=True)
class V2Payment:
    """The Payment fields a cash-receipt client reads (research §3.1)."""

    id: str
    requested_at: float
    status: str = "PAID"
    order_name: str = "sandbox order"
    currency: str = "KRW"
    total: int = 11000
    tax_free: int = 0
    vat: int | None = None
    cancelled: int = 0
    cancelled_tax_free: int = 0
    method: str = "VIRTUAL_ACCOUNT"
    paid_at: float | None = None
    cancelled_at: float | None = None
    issuance_status: str | None = None

    def vat_amount(self) -> int:
        return rules.vat_for(self.total, self.tax_free) if self.vat is None else self.vat

    def to_json(self, store_id: str, channel_key: str, receipt: V2Receipt | None) -> dict[str, Any]:
        """The Payment variant of its status, with `cashReceipt` where that variant has one."""
        paid = self.status in _PAID_STATUSES
        vat = self.vat_amount()
        changed_at = self.cancelled_at or self.paid_at or self.requested_at
        data: dict[str, Any] = {
            "status": self.status,
            "id": self.id,
            "transactionId": f"sbx-tx-{self.id}",
            "merchantId": MERCHANT_ID,
            "storeId": store_id,
            "channel": channel(channel_key),
            "version": "V2",
            "requestedAt": date_time(self.requested_at),
            "updatedAt": date_time(changed_at),
            "statusChangedAt": date_time(changed_at),
            "orderName": self.order_name,
            "amount": {
                "total": self.total,
                "taxFree": self.tax_free,
                "vat": vat,
                "supply": self.total - self.tax_free - vat,
                "discount": 0,
                "paid": self.total if paid else 0,
                "cancelled": self.cancelled,
                "cancelledTaxFree": self.cancelled_tax_free,
            },
            "currency": self.currency,
            "customer": {"name": "홍길동"},
            "origin": {"platformType": "PC", "ipAddress": "127.0.0.1"},
        }
        if self.status != "READY":
            data["method"] = self._method()
        if self.status in {"PAY_PENDING", "VIRTUAL_ACCOUNT_ISSUED"} | _PAID_STATUSES:
            data["pgTxId"] = f"SBX-PG-{self.id}"
        if self.status == "FAILED":
            data["failedAt"] = date_time(changed_at)
            data["failure"] = {"reason": "sandbox failure", "pgCode": "SBX", "pgMessage": "실패"}
        if not paid:
            return data
        assert self.paid_at is not None
        data["paidAt"] = date_time(self.paid_at)
        data["receiptUrl"] = f"https://sandbox.invalid/payments/{self.id}/receipt"
        if receipt is not None:
            data["cashReceipt"] = receipt.in_payment()
        if self.issuance_status is not None:
            data["cashReceiptIssuanceStatus"] = self.issuance_status
        if self.status == "PAID":
            data["disputes"] = []
        else:
            assert self.cancelled_at is not None
            data["cancelledAt"] = date_time(self.cancelled_at)
            data["cancellations"] = [self._cancellation()]
        return data

    def _method(self) -> dict[str, Any]:
        if self.method == "TRANSFER":
            return {"type": "PaymentMethodTransfer", "bank": "KOOKMIN"}
        return {
            "type": "PaymentMethodVirtualAccount",
            "bank": "SHINHAN",
            "accountNumber": "56211234567890",
            "accountType": "NORMAL",
            "remitteeName": "(주)샌드박스",
            "issuedAt": date_time(self.requested_at),
            "expiredAt": date_time(self.requested_at + 3 * 86400),
        }

    def _cancellation(self) -> dict[str, Any]:
        """One SucceededPaymentCancellation for all that was cancelled."""
        assert self.cancelled_at is not None
        return {
            "status": "SUCCEEDED",
            "id": f"sbx-cancellation-{self.id}",
            "pgCancellationId": f"SBX-PG-CANCEL-{self.id}",
            "totalAmount": self.cancelled,
            "taxFreeAmount": self.cancelled_tax_free,
            "vatAmount": rules.vat_for(self.cancelled, self.cancelled_tax_free),
            "reason": "sandbox refund",
            "requestedAt": date_time(self.cancelled_at),
            "cancelledAt": date_time(self.cancelled_at),
        }


SEEDABLE_FIELDS: Final = frozenset(
    {
        "status",
        "orderName",
        "currency",
        "amount",
        "paidAt",
        "method",
        "cashReceipt",
        "cashReceiptIssuanceStatus",
    }
)
_AMOUNT_FIELDS: Final = {
    "total": "total",
    "taxFree": "tax_free",
    "vat": "vat",
    "cancelled": "cancelled",
    "cancelledTaxFree": "cancelled_tax_free",
}


def _seed_whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{name} must be a non-negative integer")
    return value


def _seed_choice(value: Any, name: str, allowed: Any) -> str:
    if value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(sorted(allowed))}")
    return str(value)


def _seed_time(value: Any, name: str) -> float:
    if isinstance(value, str):
        try:
            return v2.parse_date_time(value)
        except ValueError:
            pass
    raise InvalidInput(f"{name} must be an RFC 3339 date-time, e.g. 2026-01-02T03:04:05+09:00")


def _check_seeded(payment: V2Payment) -> None:
    """The amounts and the status must agree, as on a real payment."""
    if payment.tax_free > payment.total or payment.cancelled > payment.total:
        raise InvalidInput("amount.taxFree and amount.cancelled must not exceed amount.total")
    if payment.cancelled_tax_free > min(payment.tax_free, payment.cancelled):
        raise InvalidInput("amount.cancelledTaxFree must not exceed taxFree nor cancelled")
    if payment.vat is not None and payment.vat > payment.total - payment.tax_free:
        raise InvalidInput("amount.vat must not exceed amount.total - amount.taxFree")
    cancelled = payment.cancelled
    if payment.status == "PARTIAL_CANCELLED" and not 0 < cancelled < payment.total:
        raise InvalidInput("a PARTIAL_CANCELLED payment has 0 < amount.cancelled < amount.total")
    if payment.status == "CANCELLED" and cancelled != payment.total:
        raise InvalidInput("a CANCELLED payment has amount.cancelled == amount.total")
    if payment.status not in {"PARTIAL_CANCELLED", "CANCELLED"} and cancelled:
        raise InvalidInput(f"a {payment.status} payment has nothing cancelled")
    if payment.status == "VIRTUAL_ACCOUNT_ISSUED" and payment.method != "VIRTUAL_ACCOUNT":
        raise InvalidInput("a VIRTUAL_ACCOUNT_ISSUED payment's method is VIRTUAL_ACCOUNT")


class PortOne(Ledger[V2Payment, V2Receipt, str]):
    """One V2 store's payments and receipts (by paymentId), plus the record of every V2 API
    request."""

    def __init__(
        self,
        clock: Clock,
        audit: Audit,
        *,
        store_id: str,
        channel_keys: tuple[str, ...],
        reissue: str = "refuse",
        lookup: str = "issued_first",
        id_seed: int | None = None,
    ) -> None:
        super().__init__(clock, id_seed=id_seed)
        self.audit = audit
        self.store_id = store_id
        self.channel_keys = channel_keys
        self.reissue = reissue
        self.lookup_mode = lookup

    def check_store(self, store_id: str | None) -> None:
        """`storeId` is optional; given, it must be the store the secret belongs to."""
        if store_id is not None and store_id != self.store_id:
            raise Failure("FORBIDDEN", f"접근 권한이 없는 상점입니다. (storeId {store_id})")

    # -- what a paymentId has ---------------------------------------------------------------

    def _history(self, payment_id: str) -> list[V2Receipt]:
        return self.receipts.get(payment_id, [])

    def _newest(self, payment_id: str, status: str) -> V2Receipt | None:
        return next((r for r in reversed(self._history(payment_id)) if r.status == status), None)

    def _issued_in_window(self, payment_id: str) -> bool:
        """Issued at approval, as far as the payment says, with no receipt PortOne can show."""
        payment = self.payments.get(payment_id)
        return (
            payment is not None
            and payment.issuance_status == "ISSUED"
            and all(r.is_manual for r in self._history(payment_id))
        )

    def active_count(self, payment_id: str) -> int:
        issued = sum(r.status == ISSUED for r in self._history(payment_id))
        return issued + self._issued_in_window(payment_id)

    def _recount(self, payment_id: str, created: int = 0) -> None:
        self.audit.recount(
            keys.portone(payment_id), active=self.active_count(payment_id), created=created
        )

    def current(self, payment_id: str) -> V2Receipt | None:
        """What the lookup shows: the newest ISSUED receipt, else the latest of any state; in
        the `oldest` lookup mode, the first of any state."""
        history = self._history(payment_id)
        if self.lookup_mode == "oldest":
            return history[0] if history else None
        return self._newest(payment_id, ISSUED) or (history[-1] if history else None)

    def _in_payment(self, payment_id: str) -> V2Receipt | None:
        """What the payment's `cashReceipt` shows: as the lookup, but never a failed issue."""
        shown = [r for r in self._history(payment_id) if r.status != ISSUE_FAILED]
        return self._newest(payment_id, ISSUED) or (shown[-1] if shown else None)

    # -- issue ------------------------------------------------------------------------------

    def issue(
        self,
        body: IssueBody,
        *,
        base_url: str,
        request: dict[str, Any],
        reject: FaultStep | None = None,
    ) -> Reply:
        """POST /cash-receipts, after the body's checks: the channel, "already issued", then the
        PG and the tax service, in the order documented in docs/sandbox.md."""
        try:
            receipt = self._issue(body, base_url, request, reject)
        except Failure as refusal:
            return refusal.reply()
        return Reply(200, {"cashReceipt": receipt.summary()})

    def _issue(
        self, body: IssueBody, base_url: str, request: dict[str, Any], reject: FaultStep | None
    ) -> V2Receipt:
        payment_id = body.payment_id
        if body.channel_key not in self.channel_keys:
            raise Failure(
                "CHANNEL_NOT_FOUND", f"채널을 찾을 수 없습니다. (channelKey {body.channel_key})"
            )
        if self._taken(payment_id):
            raise Failure("CASH_RECEIPT_ALREADY_ISSUED", "이미 현금영수증이 발급된 결제 건입니다.")
        now = self._clock()
        refusal = _pg_refusal(body, reject)
        if refusal is not None:
            pg_code, pg_message = refusal
            self._add(
                V2Receipt(
                    payment_id=payment_id,
                    seq=self._next_receipt_seq(),
                    status=ISSUE_FAILED,
                    channel_key=body.channel_key,
                    order_name=body.order_name,
                    currency=body.currency,
                    is_manual=True,
                    status_updated_at=now,
                    request=request,
                )
            )
            raise Failure(
                "PG_PROVIDER",
                f"PG사에서 오류를 전달했습니다. [{pg_code}] {pg_message}",
                pgCode=pg_code,
                pgMessage=pg_message,
            )
        vat = rules.vat_for(body.total, body.tax_free) if body.vat is None else body.vat
        receipt = self._new_issued(
            payment_id,
            channel_key=body.channel_key,
            order_name=body.order_name,
            amount=body.total,
            tax_free=body.tax_free,
            vat=vat,
            receipt_type=body.type,
            is_manual=True,
            issued_at=now,
            base_url=base_url,
        )
        receipt.request = request
        self.issued_counts[payment_id] += 1
        self._add(receipt)
        self._recount(payment_id, created=1)
        return receipt

    def _taken(self, payment_id: str) -> bool:
        """An ISSUED receipt (or one issued at approval) takes the paymentId unless duplicates are
        allowed; cancelled ones take it unless re-issue is allowed. Failed issues never do."""
        if self.active_count(payment_id):
            return not self.audit.allow_duplicates
        cancelled = any(r.status == CANCELLED for r in self._history(payment_id))
        return cancelled and self.reissue == "refuse"

    def _new_issued(
        self,
        payment_id: str,
        *,
        channel_key: str,
        order_name: str,
        amount: int,
        tax_free: int,
        vat: int,
        receipt_type: str,
        is_manual: bool,
        issued_at: float,
        base_url: str,
    ) -> V2Receipt:
        seq = self._next_receipt_seq()
        pg_receipt_id = f"SBX-V2-RCT-{seq:010d}"
        return V2Receipt(
            payment_id=payment_id,
            seq=seq,
            status=ISSUED,
            channel_key=channel_key,
            order_name=order_name,
            currency="KRW",
            is_manual=is_manual,
            status_updated_at=issued_at,
            amount=amount,
            tax_free=tax_free,
            vat=vat,
            type=receipt_type,
            pg_receipt_id=pg_receipt_id,
            issue_number=self._approval_number(),
            url=f"{base_url}/__sandbox__/portone/receipt-view/{pg_receipt_id}",
            issued_at=issued_at,
        )

    def _add(self, receipt: V2Receipt) -> None:
        self.receipts.setdefault(receipt.payment_id, []).append(receipt)
        self.all_receipts.append(receipt)

    # -- lookup, cancel, list, payment --------------------------------------------------------

    def lookup(self, payment_id: str) -> Reply:
        """GET /payments/{paymentId}/cash-receipt; 404 CASH_RECEIPT_NOT_FOUND if it has none."""
        key = keys.portone(payment_id)
        receipt = self.current(payment_id)
        if receipt is None:
            missing = v2.failure("CASH_RECEIPT_NOT_FOUND", "현금영수증이 존재하지 않습니다.")
            return replace(missing, shows=self.audit.shown(key, active=False))
        shows = self.audit.shown(key, active=receipt.status == ISSUED)
        return Reply(200, receipt.to_json(self.store_id), shows=shows)

    def cancel(self, payment_id: str, reject: FaultStep | None = None) -> Reply:
        """POST /payments/{paymentId}/cash-receipt/cancel: the newest ISSUED receipt, in whole.
        NOT_FOUND when the paymentId never had one, NOT_ISSUED when none is ISSUED now."""
        if not self._history(payment_id):
            return v2.failure("CASH_RECEIPT_NOT_FOUND", "현금영수증이 존재하지 않습니다.")
        receipt = self._newest(payment_id, ISSUED)
        if receipt is None:
            return v2.failure("CASH_RECEIPT_NOT_ISSUED", "발급된 상태의 현금영수증이 없습니다.")
        if reject is not None:
            return v2.failure(
                "PG_PROVIDER",
                f"PG사에서 오류를 전달했습니다. [{reject.pg_code}] {reject.message}",
                pgCode=reject.pg_code,
                pgMessage=reject.message,
            )
        now = self._clock()
        receipt.status = CANCELLED
        receipt.cancelled_at = receipt.status_updated_at = now
        self._recount(payment_id)
        return Reply(200, {"cancelledAmount": receipt.amount, "cancelledAt": date_time(now)})

    def list(self, query: ListQuery) -> Reply:
        """GET /cash-receipts: filter, sort, then the page asked for. Filtered by a paymentId,
        and not to statuses that leave ISSUED out, the answer is a lookup for the audit."""
        since, until = query.window(self._clock())
        matching = [r for r in self.all_receipts if self._matches(r, query, since, until)]
        # Receipts without the time sorted by (a failed one has no issuedAt) come last.
        timed = [r for r in matching if r.time_of(query.sort_by) is not None]
        timed.sort(key=lambda r: (r.time_of(query.sort_by), r.seq))
        if query.sort_order == "DESC":
            timed.reverse()
        found = timed + [r for r in matching if r.time_of(query.sort_by) is None]
        start = query.page_number * query.page_size
        page = found[start : start + query.page_size]
        body = {
            "items": [r.to_json(self.store_id) for r in page],
            "page": {
                "number": query.page_number,
                "size": query.page_size,
                "totalCount": len(found),
            },
        }
        shows = None
        if query.payment_id is not None and (query.statuses is None or ISSUED in query.statuses):
            shows = self.audit.shown(
                keys.portone(query.payment_id), active=any(r.status == ISSUED for r in page)
            )
        return Reply(200, body, shows=shows)

    def _matches(self, receipt: V2Receipt, query: ListQuery, since: float, until: float) -> bool:
        moment = receipt.time_of(query.time_range_field)
        checks = (
            moment is not None and since <= moment <= until,
            query.payment_id in {None, receipt.payment_id},
            query.is_test in {None, True},
            query.order_name in {None, receipt.order_name},
            query.statuses is None or receipt.status in query.statuses,
            query.is_manual in {None, receipt.is_manual},
            query.pg_receipt_id in {None, receipt.pg_receipt_id},
            query.pg_merchant_id in {None, v2.PG_MERCHANT_ID},
            query.pg_providers is None or v2.PG_PROVIDER in query.pg_providers,
            query.pg_companies is None or v2.PG_COMPANY in query.pg_companies,
            query.version in {None, "V2"},
            query.types is None or receipt.type in query.types,
        )
        return all(checks)

    def get_payment(self, payment_id: str) -> Reply:
        """GET /payments/{paymentId}: only seeded payments exist. What it shows of the receipt:
        `cashReceipt`'s status if it has one, else `cashReceiptIssuanceStatus`."""
        payment = self.payments.get(payment_id)
        if payment is None:
            return v2.failure("PAYMENT_NOT_FOUND", "결제 건이 존재하지 않습니다.")
        receipt = self._in_payment(payment_id)
        body = payment.to_json(self.store_id, self.channel_keys[0], receipt)
        shown = body.get("cashReceipt")
        active = (
            shown["status"] == ISSUED
            if shown is not None
            else body.get("cashReceiptIssuanceStatus") == "ISSUED"
        )
        return Reply(200, body, shows=self.audit.shown(keys.portone(payment_id), active=active))

    # -- admin --------------------------------------------------------------------------------

    def seed_payment(self, payment_id: str, fields: Any, *, base_url: str) -> dict[str, Any]:
        """Create or update a payment from admin input (fields not sent keep their value); a
        `cashReceipt` adds a receipt issued at approval. InvalidInput changes nothing."""
        check_seed(fields, SEEDABLE_FIELDS)
        now = self._clock()
        existing = self.payments.get(payment_id)
        payment = replace(existing) if existing else V2Payment(id=payment_id, requested_at=now)
        _apply_seed(payment, fields, now)
        _check_seeded(payment)
        window = fields.get("cashReceipt")
        receipt = None if window is None else self._window_receipt(payment, window, base_url)
        if receipt is not None and "cashReceiptIssuanceStatus" not in fields:
            payment.issuance_status = "ISSUED"
        was_in_window = self._issued_in_window(payment_id)
        self.payments[payment_id] = payment
        created = 0
        if receipt is not None:
            self._add(receipt)
            created = 1
        elif self._issued_in_window(payment_id) and not was_in_window:
            created = 1
        self._recount(payment_id, created)
        return self.get_payment(payment_id).body

    def _window_receipt(self, payment: V2Payment, raw: Any, base_url: str) -> V2Receipt:
        """A receipt issued at approval (isManual false), ISSUED or CANCELLED."""
        if not isinstance(raw, dict):
            raise InvalidInput("cashReceipt must be an object")
        allowed = {"status", "type", "totalAmount", "taxFreeAmount", "issuedAt", "cancelledAt"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise InvalidInput(f"unknown cashReceipt fields: {', '.join(unknown)}")
        if payment.status not in _PAID_STATUSES:
            raise InvalidInput("only a PAID, PARTIAL_CANCELLED or CANCELLED payment has one")
        status = _seed_choice(raw.get("status", ISSUED), "cashReceipt.status", {ISSUED, CANCELLED})
        total = _seed_whole(raw.get("totalAmount", payment.total), "cashReceipt.totalAmount")
        tax_free = _seed_whole(
            raw.get("taxFreeAmount", payment.tax_free), "cashReceipt.taxFreeAmount"
        )
        if tax_free > total:
            raise InvalidInput("cashReceipt.taxFreeAmount must not exceed totalAmount")
        issued_at = payment.paid_at
        if "issuedAt" in raw:
            issued_at = _seed_time(raw["issuedAt"], "cashReceipt.issuedAt")
        assert issued_at is not None
        receipt = self._new_issued(
            payment.id,
            channel_key=self.channel_keys[0],
            order_name=payment.order_name,
            amount=total,
            tax_free=tax_free,
            vat=rules.vat_for(total, tax_free),
            receipt_type=_seed_choice(
                raw.get("type", "PERSONAL"), "cashReceipt.type", v2.CASH_RECEIPT_TYPES
            ),
            is_manual=False,
            issued_at=issued_at,
            base_url=base_url,
        )
        if status == CANCELLED:
            cancelled_at = self._clock()
            if "cancelledAt" in raw:
                cancelled_at = _seed_time(raw["cancelledAt"], "cashReceipt.cancelledAt")
            receipt.status = CANCELLED
            receipt.cancelled_at = receipt.status_updated_at = cancelled_at
        return receipt

    def find_receipt(self, pg_receipt_id: str) -> V2Receipt | None:
        return next((r for r in self.all_receipts if r.pg_receipt_id == pg_receipt_id), None)

    def receipts_view(self) -> dict[str, Any]:
        """Every receipt (cancelled and failed ones too) with the masked body that asked for it,
        and how many receipts the API created per paymentId (seeded ones are not counted)."""
        return {
            "receipts": [
                {**r.to_json(self.store_id), "request": r.request} for r in self.all_receipts
            ],
            "issued_counts": dict(self.issued_counts),
        }

    def requests_view(self, payment_id: str | None) -> dict[str, Any]:
        entries = [e for e in self.requests if payment_id in {None, e["paymentId"]}]
        return {"requests": [dict(e) for e in entries]}


def _apply_seed(payment: V2Payment, fields: Mapping[str, Any], now: float) -> None:
    """Each seeded field onto the payment, checked one by one."""
    if "status" in fields:
        payment.status = _seed_choice(fields["status"], "status", v2.PAYMENT_STATUSES)
    if "orderName" in fields:
        name = fields["orderName"]
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput("orderName must be a non-empty string")
        payment.order_name = name
    if "currency" in fields:
        payment.currency = _seed_choice(fields["currency"], "currency", v2.CURRENCIES)
    if "method" in fields:
        payment.method = _seed_choice(fields["method"], "method", v2.PAYMENT_METHODS)
    if "cashReceiptIssuanceStatus" in fields:
        value = fields["cashReceiptIssuanceStatus"]
        payment.issuance_status = (
            None
            if value is None
            else _seed_choice(value, "cashReceiptIssuanceStatus", v2.ISSUANCE_STATUSES)
        )
    amount = fields.get("amount", {})
    if not isinstance(amount, dict) or set(amount) - set(_AMOUNT_FIELDS):
        raise InvalidInput(f"amount must be an object of {', '.join(_AMOUNT_FIELDS)}")
    for name, attribute in _AMOUNT_FIELDS.items():
        if name in amount:
            value = amount[name]
            checked = None if value is None and name == "vat" else _seed_whole(value, name)
            setattr(payment, attribute, checked)
    if payment.status == "CANCELLED" and "cancelled" not in amount:
        payment.cancelled = payment.total
    _apply_times(payment, fields, now)


def _apply_times(payment: V2Payment, fields: Mapping[str, Any], now: float) -> None:
    """paidAt as seeded (or now) for a paid status, none otherwise; cancelledAt likewise."""
    paid = payment.status in _PAID_STATUSES
    if "paidAt" in fields:
        payment.paid_at = _seed_time(fields["paidAt"], "paidAt")
    elif paid and payment.paid_at is None:
        payment.paid_at = now
    if not paid:
        payment.paid_at = None
    cancelled = payment.status in {"PARTIAL_CANCELLED", "CANCELLED"}
    payment.cancelled_at = (payment.cancelled_at or now) if cancelled else None
    if payment.paid_at is not None:
        payment.requested_at = min(payment.requested_at, payment.paid_at)


def _pg_refusal(body: IssueBody, reject: FaultStep | None) -> tuple[str, str] | None:
    """The PG's (and the tax service's) refusal, as (pgCode, pgMessage): an identity number
    that is not digits only (V2 asks for "숫자만"), or that the NTS rule refuses (rules.py), or a
    `reject` fault."""
    number = body.identity_number
    kind = None if body.identity_number_type is None else _IDENTITY_TYPES[body.identity_number_type]
    rejection = None if number.isdigit() else rules.TS1_MESSAGE
    rejection = rejection or rules.identifier_rejection(number, kind)
    if rejection is not None:
        return "TS1", rejection.removeprefix("[TS1] ")
    if reject is not None:
        return reject.pg_code, reject.message
    return None
