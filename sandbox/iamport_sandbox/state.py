"""The sandbox's in-memory merchant: payments, receipts, external receipts, and what clients asked
for.

The operations here answer in i'mport's envelope and HTTP statuses but know nothing of HTTP
transport, so the same rules are exercised by unit tests and by the server. The server is a single
asyncio thread and nothing here awaits, so each operation is atomic without locks.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Generic, TypeVar

from iamport_sandbox import keys, rules
from iamport_sandbox.audit import Audit, Shown
from iamport_sandbox.errors import InvalidInput, Refusal
from iamport_sandbox.keys import EXTERNAL, PAYMENT, Key
from iamport_sandbox.tokens import Clock

DEFAULT_AMOUNT: Final = 11000
DEFAULT_PG: Final = "html5_inicis"
DEFAULT_PAY_METHOD: Final = "vbank"
REQUEST_LOG_LIMIT: Final = 100_000
# Whether a merchant_uid whose external receipts are all cancelled may be issued again. The real
# API's answer is unknown (docs/sandbox.md), so both are offered; refusing is the cautious default.
EXTERNAL_REISSUE_MODES: Final = ("refuse", "allow")

SEEDABLE_FIELDS: Final = frozenset(
    {
        "merchant_uid",
        "pay_method",
        "pg_provider",
        "amount",
        "status",
        "cancel_amount",
        "cash_receipt_issued",
        "buyer_name",
        "buyer_tel",
        "buyer_email",
    }
)


@dataclass(frozen=True)
class Reply:
    """An API answer before it becomes HTTP: status, envelope, extra headers, and, for a
    lookup, what it tells the client about the receipt (audit.py)."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    shows: Shown | None = None


def ok(response: dict[str, Any], shows: Shown | None = None) -> Reply:
    return Reply(200, {"code": 0, "message": None, "response": response}, shows=shows)


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, {"code": -1, "message": message, "response": None}, headers or {})


UNAUTHORIZED: Final = "인증 Token이 전달되지 않았거나 유효하지 않습니다."
NO_RECEIPT: Final = "존재하지 않는 거래정보이거나 현금영수증 발행 내역이 확인되지 않습니다."
NOTHING_TO_CANCEL: Final = "취소할 현금영수증 발행 내역이 존재하지 않습니다."
EXTERNAL_ALREADY_ISSUED: Final = "이미 현금영수증이 발행된 주문번호(merchant_uid)입니다."


@dataclass(slots=True)
class Payment:
    """The PaymentAnnotation fields a cash-receipt client reads (research §3.5)."""

    imp_uid: str
    merchant_uid: str
    pay_method: str
    pg_provider: str
    amount: int
    cancel_amount: int
    status: str
    paid_at: int
    cancelled_at: int = 0
    failed_at: int = 0
    cash_receipt_issued: bool = False
    currency: str = "KRW"
    sandbox: bool = True
    name: str = "sandbox order"
    buyer_name: str = "홍길동"
    buyer_tel: str = "010-0000-0000"
    buyer_email: str = "buyer@example.com"
    pg_id: str = "sandbox_mid"
    pg_tid: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["channel"] = "api"
        data["escrow"] = False
        data["cancel_history"] = []
        if self.pay_method == "vbank":
            data.update(
                vbank_code="088",
                vbank_name="신한",
                vbank_num="56211234567890",
                vbank_holder="(주)샌드박스",
                vbank_date=self.paid_at + 86400 * 3,
                vbank_issued_at=max(self.paid_at - 3600, 0),
            )
        elif self.pay_method == "trans":
            data.update(bank_code="004", bank_name="KB국민은행")
        return data


@dataclass(slots=True)
class Receipt:
    """A ReceiptAnnotation (ExternalReceiptAnnotation for an external sale) plus what the admin
    API shows about how it came to be."""

    key: Key
    receipt_tid: str
    apply_num: str
    type: str
    amount: int
    vat: int
    receipt_url: str
    applied_at: int
    cancelled_at: int = 0
    pg_provider: str = ""
    request: dict[str, Any] = field(default_factory=dict)

    def annotation(self) -> dict[str, Any]:
        return {
            self.key.id_field: self.key.uid,
            "receipt_tid": self.receipt_tid,
            "apply_num": self.apply_num,
            "type": self.type,
            "amount": self.amount,
            "vat": self.vat,
            "receipt_url": self.receipt_url,
            "applied_at": self.applied_at,
            "cancelled_at": self.cancelled_at,
        }

    def admin_view(self) -> dict[str, Any]:
        """An external receipt has no payment, so no PG to show: its `request` has the channel."""
        view = {**self.annotation(), "request": self.request}
        if self.key.kind == PAYMENT:
            view["pg_provider"] = self.pg_provider
        return view


def _text(params: Mapping[str, Any], name: str) -> str | None:
    """A body field as text; JSON numbers are tolerated because form bodies are all text."""
    value = params.get(name)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    raise Refusal(400, f"{name} must be a string")


def _whole(params: Mapping[str, Any], name: str) -> int | None:
    """A non-negative integer field, from JSON or from a form's text."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise Refusal(400, f"{name} must be a non-negative integer")


def _one_of(value: str | None, allowed: frozenset[str], name: str) -> None:
    if value is not None and value not in allowed:
        raise Refusal(400, f"{name}은(는) {', '.join(sorted(allowed))} 중 하나여야 합니다.")


@dataclass(frozen=True)
class IssueRequest:
    """The body of POST /receipts/{imp_uid}, checked for shape before the payment is read."""

    identifier: str
    identifier_type: str | None
    type: str
    tax_free: int
    vat_amount: int | None

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> IssueRequest:
        identifier = _text(params, "identifier")
        if identifier is None:
            raise Refusal(400, "현금영수증 발행번호(identifier)가 누락되었습니다.")
        identifier_type = _text(params, "identifier_type")
        receipt_type = _text(params, "type") or "person"
        _one_of(identifier_type, rules.IDENTIFIER_TYPES, "identifier_type")
        _one_of(receipt_type, rules.RECEIPT_TYPES, "type")
        _one_of(_text(params, "product_type"), rules.PRODUCT_TYPES, "product_type")
        return cls(
            identifier=identifier,
            identifier_type=identifier_type,
            type=receipt_type,
            tax_free=_whole(params, "tax_free") or 0,
            vat_amount=_whole(params, "vat_amount"),
        )

    def vat(self, amount: int) -> int:
        """The receipt's VAT: the explicit `vat_amount` if sent, else 1/11 of the taxable part."""
        if self.tax_free > amount:
            raise Refusal(
                400, f"면세금액(tax_free {self.tax_free})이 발행금액({amount})보다 큽니다."
            )
        if self.vat_amount is None:
            return rules.vat_for(amount, self.tax_free)
        if self.vat_amount > amount - self.tax_free:
            raise Refusal(400, f"부가세(vat_amount {self.vat_amount})가 과세금액보다 큽니다.")
        return self.vat_amount


_EXTERNAL_REQUIRED: Final[Mapping[str, str]] = {
    "channel_key": "채널키(channel_key)가 누락되었습니다.",
    "name": "주문명(name)이 누락되었습니다.",
}
_EXTERNAL_TEXT_FIELDS: Final = ("buyer_name", "buyer_email", "buyer_tel", "corp_reg_no")


def _amount(params: Mapping[str, Any]) -> int:
    """The sale's amount: with no payment to take it from, a receipt of 0 won or less is wrong."""
    value = params.get("amount")
    if value is None or value == "":
        raise Refusal(400, "발행금액(amount)이 누락되었습니다.")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Refusal(400, f"발행금액(amount)은 0보다 큰 정수여야 합니다. (amount: {value!r})")
    return value


@dataclass(frozen=True)
class ExternalIssueRequest:
    """The body of POST /receipts/external/{merchant_uid}. With no payment behind it, the body
    is all there is, so all of it is checked before the merchant_uid's receipts are read."""

    receipt: IssueRequest
    amount: int
    vat: int

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> ExternalIssueRequest:
        for name, missing in _EXTERNAL_REQUIRED.items():
            if _text(params, name) is None:
                raise Refusal(400, missing)
        amount = _amount(params)
        receipt = IssueRequest.parse(params)
        for name in _EXTERNAL_TEXT_FIELDS:
            _text(params, name)
        _one_of(_text(params, "pay_method"), rules.CASH_PAY_METHODS, "pay_method")
        return cls(receipt=receipt, amount=amount, vat=receipt.vat(amount))


def _check_issuable(payment: Payment, request: IssueRequest, params: Mapping[str, Any]) -> None:
    """The payment-side reasons i'mport refuses to issue (spec 400 and 501)."""
    if payment.status != "paid":
        raise Refusal(
            400,
            "결제완료(paid) 상태가 아닌 결제건에는 현금영수증을 발행할 수 없습니다. "
            f"(status: {payment.status})",
        )
    if payment.pay_method not in rules.CASH_PAY_METHODS:
        raise Refusal(
            400,
            "가상계좌(vbank) 또는 계좌이체(trans) 결제건에만 현금영수증을 발행할 수 있습니다. "
            f"(pay_method: {payment.pay_method})",
        )
    pg = payment.pg_provider
    if pg not in rules.ISSUE_PGS:
        raise Refusal(
            501, f"현재 포트원이 현금영수증 발행을 지원하지 않는 PG사입니다. (pg_provider: {pg})"
        )
    missing = rules.missing_pg_fields(pg, params)
    if missing:
        raise Refusal(
            400, f"{pg} 현금영수증 발행에 필요한 파라메터가 누락되었습니다: {', '.join(missing)}"
        )
    if pg == "nice_v2" and request.identifier_type == "taxcard":
        raise Refusal(400, "nice_v2는 현금영수증카드 번호(taxcard)로 API 발행을 할 수 없습니다.")


def check_seed(fields: Any, allowed: frozenset[str]) -> None:
    """An admin seed is a JSON object of known payment fields."""
    if not isinstance(fields, dict):
        raise InvalidInput("body must be a JSON object")
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise InvalidInput(
            f"unknown payment fields: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _seed_value(name: str, value: Any) -> Any:
    """Check one admin-seeded payment field."""
    if name in {"amount", "cancel_amount"}:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(f"{name} must be a non-negative integer")
        return value
    if name == "status":
        if value not in rules.PAYMENT_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(sorted(rules.PAYMENT_STATUSES))}")
        return value
    if name == "cash_receipt_issued":
        if not isinstance(value, bool):
            raise InvalidInput("cash_receipt_issued must be true or false")
        return value
    if name == "buyer_email":
        if not isinstance(value, str):
            raise InvalidInput("buyer_email must be a string")
        return value
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string")
    return value.strip()


PaymentT = TypeVar("PaymentT")
ReceiptT = TypeVar("ReceiptT")
KeyT = TypeVar("KeyT")


class Ledger(Generic[PaymentT, ReceiptT, KeyT]):
    """What the sandbox keeps for one API: payments by id, receipts by key and in the order they
    were made, how many each key's POSTs created, the request log, and approval numbers."""

    def __init__(self, clock: Clock, *, id_seed: int | None = None) -> None:
        self._clock = clock
        self._ids = random.Random(id_seed)  # noqa: S311 - fake approval numbers, not secrets
        self._receipt_seq = 0
        self.payments: dict[str, PaymentT] = {}
        self.receipts: dict[KeyT, list[ReceiptT]] = {}
        self.all_receipts: list[ReceiptT] = []
        self.issued_counts: Counter[KeyT] = Counter()
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_LIMIT)

    def reset(self) -> None:
        """Forget everything but the receipt sequence, so receipt ids stay unique for the run."""
        self.payments.clear()
        self.receipts.clear()
        self.all_receipts.clear()
        self.issued_counts.clear()
        self.requests.clear()

    def _next_receipt_seq(self) -> int:
        self._receipt_seq += 1
        return self._receipt_seq

    def _approval_number(self) -> str:
        """A 9-digit number, as the NTS approval number looks."""
        return f"{self._ids.randrange(10**9):09d}"


class Merchant(Ledger[Payment, Receipt, Key]):
    """One merchant account's payments and receipts, plus the record of every API request."""

    def __init__(
        self,
        clock: Clock,
        *,
        id_seed: int | None = None,
        allow_duplicates: bool = False,
        external_reissue: str = "refuse",
    ) -> None:
        super().__init__(clock, id_seed=id_seed)
        self.audit = Audit(allow_duplicates=allow_duplicates)
        self.external_reissue = external_reissue

    def reset(self) -> None:
        super().reset()
        self.audit.clear()

    # -- payments ---------------------------------------------------------------------------

    def payment(self, imp_uid: str) -> Payment:
        """Any imp_uid is a payment: unknown ones become a paid vbank payment on first touch."""
        payment = self.payments.get(imp_uid)
        if payment is None:
            now = int(self._clock())
            payment = Payment(
                imp_uid=imp_uid,
                merchant_uid=f"merchant_{imp_uid}",
                pay_method=DEFAULT_PAY_METHOD,
                pg_provider=DEFAULT_PG,
                amount=DEFAULT_AMOUNT,
                cancel_amount=0,
                status="paid",
                paid_at=now,
                pg_tid=f"SBX-PG-{imp_uid}",
            )
            self.payments[imp_uid] = payment
        return payment

    def seed_payment(self, imp_uid: str, fields: Any) -> Payment:
        """Create or update a payment from admin input; InvalidInput leaves it untouched."""
        check_seed(fields, SEEDABLE_FIELDS)
        key = keys.payment(imp_uid)
        updated = asdict(self.payment(imp_uid))
        updated.update({name: _seed_value(name, value) for name, value in fields.items()})
        if updated["cancel_amount"] > updated["amount"]:
            raise InvalidInput("cancel_amount must not exceed amount")
        was_active = self.has_receipt(key)
        now = int(self._clock())
        status = updated["status"]
        if status == "cancelled" and not updated["cancelled_at"]:
            updated["cancelled_at"] = now
        if status == "failed" and not updated["failed_at"]:
            updated["failed_at"] = now
        if status in {"ready", "failed"}:
            updated["paid_at"] = 0
        elif not updated["paid_at"]:
            updated["paid_at"] = now
        payment = Payment(**updated)
        self.payments[imp_uid] = payment
        self.audit.changed(key, was_active=was_active, is_active=self.has_receipt(key))
        return payment

    def get_payment(self, imp_uid: str) -> Reply:
        payment = self.payment(imp_uid)
        shows = self.audit.shown(keys.payment(imp_uid), active=payment.cash_receipt_issued)
        return ok(payment.to_json(), shows)

    # -- receipts, of payments and external sales alike --------------------------------------

    def active_receipt(self, key: Key) -> Receipt | None:
        """The newest uncancelled receipt: with duplicates allowed there may be older ones."""
        history = self.receipts.get(key, [])
        return next((r for r in reversed(history) if not r.cancelled_at), None)

    def has_receipt(self, key: Key) -> bool:
        """What a lookup of either kind would show as issued, for the audit's epochs."""
        if self.active_receipt(key) is not None:
            return True
        return key.kind == PAYMENT and self.payment(key.uid).cash_receipt_issued

    def _create(
        self,
        key: Key,
        request: IssueRequest,
        *,
        amount: int,
        vat: int,
        params: Mapping[str, Any],
        base_url: str,
        pg_provider: str = "",
    ) -> Receipt:
        was_active = self.has_receipt(key)
        receipt_tid = f"SBX-RCT-{self._next_receipt_seq():010d}"
        receipt = Receipt(
            key=key,
            receipt_tid=receipt_tid,
            apply_num=self._approval_number(),
            type=request.type,
            amount=amount,
            vat=vat,
            receipt_url=f"{base_url}/__sandbox__/receipt-view/{receipt_tid}",
            applied_at=int(self._clock()),
            pg_provider=pg_provider,
            request=rules.mask_fields(params),
        )
        self.receipts.setdefault(key, []).append(receipt)
        self.all_receipts.append(receipt)
        self.issued_counts[key] += 1
        self.audit.created(key)
        self.audit.changed(key, was_active=was_active, is_active=True)
        return receipt

    def _lookup(self, key: Key) -> Reply:
        """The newest active receipt, else the latest (cancelled); a 404 showing none if none."""
        history = self.receipts.get(key)
        if not history:
            return Reply(
                404, error(404, NO_RECEIPT).body, shows=self.audit.shown(key, active=False)
            )
        receipt = self.active_receipt(key) or history[-1]
        return ok(receipt.annotation(), self.audit.shown(key, active=not receipt.cancelled_at))

    @staticmethod
    def _tax_service(request: IssueRequest, reject_message: str | None) -> None:
        """The last refusals, at the moment the PG and the tax service would be asked."""
        rejection = rules.identifier_rejection(request.identifier, request.identifier_type)
        if rejection is not None:
            raise Refusal(500, f"현금영수증 발행에 실패했습니다. {rejection}")
        if reject_message is not None:
            # The PG's words go through untouched, as i'mport relays them (research §4.2).
            raise Refusal(500, reject_message)

    # -- payment receipts -------------------------------------------------------------------

    def issue_receipt(
        self,
        imp_uid: str,
        params: Mapping[str, Any],
        *,
        base_url: str,
        reject_message: str | None = None,
    ) -> Reply:
        """POST /receipts/{imp_uid}. Checks run in the order documented in docs/sandbox.md."""
        try:
            receipt = self._issue(imp_uid, params, base_url, reject_message)
        except Refusal as refusal:
            return error(refusal.status, refusal.message)
        return ok(receipt.annotation())

    def _issue(
        self,
        imp_uid: str,
        params: Mapping[str, Any],
        base_url: str,
        reject_message: str | None,
    ) -> Receipt:
        key = keys.payment(imp_uid)
        request = IssueRequest.parse(params)
        payment = self.payment(imp_uid)
        _check_issuable(payment, request, params)
        if self.active_receipt(key) is not None and not self.audit.allow_duplicates:
            raise Refusal(400, "이미 현금영수증이 발행된 결제건입니다.")
        amount = payment.amount - payment.cancel_amount
        vat = request.vat(amount)
        self._tax_service(request, reject_message)
        receipt = self._create(
            key,
            request,
            amount=amount,
            vat=vat,
            params=params,
            base_url=base_url,
            pg_provider=payment.pg_provider,
        )
        payment.cash_receipt_issued = True
        return receipt

    def get_receipt(self, imp_uid: str) -> Reply:
        """GET /receipts/{imp_uid} where the PG can look: the newest active receipt, else the
        latest one (cancelled); 404 when none was issued. Elsewhere a 404 that shows nothing."""
        if self.payment(imp_uid).pg_provider not in rules.LOOKUP_PGS:
            return error(404, NO_RECEIPT)
        return self._lookup(keys.payment(imp_uid))

    def cancel_receipt(self, imp_uid: str, *, reject_message: str | None = None) -> Reply:
        """DELETE /receipts/{imp_uid}: cancel the active receipt so a new one may be issued."""
        key = keys.payment(imp_uid)
        payment = self.payment(imp_uid)
        pg = payment.pg_provider
        if pg not in rules.CANCEL_PGS:
            return error(
                501,
                f"현재 포트원이 현금영수증 취소를 지원하지 않는 PG사입니다. (pg_provider: {pg})",
            )
        receipt = self.active_receipt(key)
        if receipt is None:
            return error(400, NOTHING_TO_CANCEL)
        if reject_message is not None:
            return error(500, reject_message)
        was_active = self.has_receipt(key)
        receipt.cancelled_at = int(self._clock())
        # With duplicates allowed an older receipt may still be active.
        payment.cash_receipt_issued = self.active_receipt(key) is not None
        self.audit.cancelled(key)
        self.audit.changed(key, was_active=was_active, is_active=self.has_receipt(key))
        return ok(receipt.annotation())

    # -- external receipts ------------------------------------------------------------------

    def issue_external(
        self,
        merchant_uid: str,
        params: Mapping[str, Any],
        *,
        base_url: str,
        reject_message: str | None = None,
    ) -> Reply:
        """POST /receipts/external/{merchant_uid}: the body, then "already issued", then the tax
        service and the PG, in the order documented in docs/sandbox.md."""
        try:
            receipt = self._issue_external(merchant_uid, params, base_url, reject_message)
        except Refusal as refusal:
            return error(refusal.status, refusal.message)
        return ok(receipt.annotation())

    def _issue_external(
        self,
        merchant_uid: str,
        params: Mapping[str, Any],
        base_url: str,
        reject_message: str | None,
    ) -> Receipt:
        key = keys.external(merchant_uid)
        request = ExternalIssueRequest.parse(params)
        if self._external_taken(key):
            raise Refusal(400, EXTERNAL_ALREADY_ISSUED)
        self._tax_service(request.receipt, reject_message)
        return self._create(
            key,
            request.receipt,
            amount=request.amount,
            vat=request.vat,
            params=params,
            base_url=base_url,
        )

    def _external_taken(self, key: Key) -> bool:
        """An active receipt takes the merchant_uid unless duplicates are allowed; cancelled
        ones take it unless re-issue is allowed. The two settings answer different questions."""
        if self.active_receipt(key) is not None:
            return not self.audit.allow_duplicates
        return bool(self.receipts.get(key)) and self.external_reissue == "refuse"

    def get_external(self, merchant_uid: str) -> Reply:
        """GET /receipts/external/{merchant_uid}: as the payment lookup where the PG can look."""
        return self._lookup(keys.external(merchant_uid))

    def cancel_external(self, merchant_uid: str, *, reject_message: str | None = None) -> Reply:
        """DELETE /receipts/external/{merchant_uid}: 404 if never issued (the spec), 400 if
        every receipt is already cancelled (as the payment DELETE answers)."""
        key = keys.external(merchant_uid)
        if not self.receipts.get(key):
            return error(404, NO_RECEIPT)
        receipt = self.active_receipt(key)
        if receipt is None:
            return error(400, NOTHING_TO_CANCEL)
        if reject_message is not None:
            return error(500, reject_message)
        receipt.cancelled_at = int(self._clock())
        self.audit.cancelled(key)
        # With duplicates allowed an older receipt may still be active.
        self.audit.changed(key, was_active=True, is_active=self.has_receipt(key))
        return ok(receipt.annotation())

    def find_receipt(self, receipt_tid: str) -> Receipt | None:
        return next((r for r in self.all_receipts if r.receipt_tid == receipt_tid), None)

    # -- admin views ------------------------------------------------------------------------

    def receipts_view(self) -> dict[str, Any]:
        """Payment and external receipts apart: an imp_uid and a merchant_uid may be equal."""
        return {
            "receipts": self._receipts_of(PAYMENT),
            "issued_counts": self._counts_of(PAYMENT),
            "external_receipts": self._receipts_of(EXTERNAL),
            "external_issued_counts": self._counts_of(EXTERNAL),
        }

    def _receipts_of(self, kind: str) -> list[dict[str, Any]]:
        return [r.admin_view() for r in self.all_receipts if r.key.kind == kind]

    def _counts_of(self, kind: str) -> dict[str, int]:
        return {key.uid: n for key, n in self.issued_counts.items() if key.kind == kind}

    def requests_view(self, filters: Mapping[str, str]) -> dict[str, Any]:
        """Entries whose `imp_uid` and `merchant_uid` match those given (each entry has one)."""
        entries = [e for e in self.requests if all(e[f] == v for f, v in filters.items())]
        return {"requests": [dict(e) for e in entries]}
