"""PortOne V2's shapes: the body of ``POST /cash-receipts``, and its answers read.

The payload's words become V2's (research §2.6), and V2's answers become the core's
provider-neutral :class:`~worker.core.types.Receipt` and
:class:`~worker.core.types.Payment`, whose field names the events keep:
``issueNumber`` → ``apply_num``, ``pgReceiptId`` → ``receipt_tid``, ``url`` →
``receipt_url``, ``issuedAt`` → ``applied_at`` and ``cancelledAt`` → ``cancelled_at``
(UNIX seconds), ``PERSONAL``/``CORPORATE`` → ``person``/``company``.

The issue answer carries only the number, the URL and the PG's id: the receipt it
makes has its amount, VAT (when the payload set it) and type from the request, and
no ``applied_at``; a lookup (a retry's, a refund's) fills them from PortOne.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeGuard

from worker.core.errors import UnexpectedResponse
from worker.core.types import Payment, Receipt, ReceiptOrder

_TYPES = {"person": "PERSONAL", "company": "CORPORATE"}
_TYPES_READ = {value: key for key, value in _TYPES.items()}
#: V2 has no type for a resident registration number (identifier_type ``person``): the
#: number goes without one, and the PG reads it (issue 16; README, "PortOne V2 receipts").
_IDENTIFIER_TYPES = {"phone": "PHONE", "business": "BUSINESS", "taxcard": "CARD"}
_PRODUCT_TYPES = {"real": "PHYSICAL", "digital": "DIGITAL"}
_PAY_METHODS = {"trans": "TRANSFER", "vbank": "VIRTUAL_ACCOUNT"}
#: A payment a receipt may be issued for: paid, or refunded in part.
PAID_STATUSES = frozenset({"PAID", "PARTIAL_CANCELLED"})
#: The payment methods a cash receipt is for (V2's ``method.type``).
CASH_METHODS = frozenset({"PaymentMethodVirtualAccount", "PaymentMethodTransfer"})


def issue_body(request: ReceiptOrder, *, store_id: str) -> dict[str, Any]:
    """The body of ``POST /cash-receipts``: the same for every send of one request."""
    options = request.options
    amount: dict[str, Any] = {"total": options["amount"]}
    if options.get("tax_free") is not None:
        amount["taxFree"] = options["tax_free"]
    if options.get("vat_amount") is not None:
        amount["vat"] = options["vat_amount"]
    customer: dict[str, Any] = {"identityNumber": request.identifier}
    if (kind := _IDENTIFIER_TYPES.get(options.get("identifier_type") or "")) is not None:
        customer["identityNumberType"] = kind
    for ours, theirs in (
        ("buyer_name", "name"),
        ("buyer_email", "email"),
        ("buyer_tel", "phoneNumber"),
    ):
        if options.get(ours) is not None:
            customer[theirs] = options[ours]
    body: dict[str, Any] = {
        "storeId": store_id,
        "paymentId": request.job.id,
        "channelKey": options["channel_key"],
        "type": _TYPES[options.get("type") or "person"],
        "orderName": options["order_name"],
        "currency": options.get("currency") or "KRW",
        "amount": amount,
        "customer": customer,
    }
    optional = (
        ("product_type", "productType", _PRODUCT_TYPES),
        ("pay_method", "paymentMethod", _PAY_METHODS),
    )
    for ours, theirs, words in optional:
        if options.get(ours) is not None:
            body[theirs] = words[options[ours]]
    if options.get("paid_at") is not None:
        body["paidAt"] = options["paid_at"]
    if options.get("corp_reg_no") is not None:
        body["businessRegistrationNumber"] = options["corp_reg_no"]
    return body


def read_issued(answer: Mapping[str, Any], request: ReceiptOrder) -> Receipt:
    """An ``IssueCashReceiptResponse`` as the core's :class:`Receipt`."""
    summary = answer.get("cashReceipt")
    if not isinstance(summary, dict) or not isinstance(summary.get("issueNumber"), str):
        raise UnexpectedResponse("malformed IssueCashReceiptResponse: no cashReceipt.issueNumber")
    options = request.options
    return Receipt(
        imp_uid=None,
        receipt_tid=_text(summary.get("pgReceiptId")),
        apply_num=summary["issueNumber"],
        type=options.get("type") or "person",
        amount=options.get("amount"),
        vat=options.get("vat_amount"),
        receipt_url=_text(summary.get("url")),
        applied_at=None,
        cancelled_at=0,
    )


def read_cash_receipt(answer: Mapping[str, Any]) -> Receipt | None:
    """A ``CashReceipt`` as the core's :class:`Receipt`: ISSUED is live, CANCELLED has its
    ``cancelled_at``; ISSUE_FAILED (and a status this release does not know) is none."""
    status = answer.get("status")
    if status not in {"ISSUED", "CANCELLED"}:
        return None
    number, amount = answer.get("issueNumber"), answer.get("amount")
    if not isinstance(number, str) or not _integer(amount):
        raise UnexpectedResponse(f"malformed {status} CashReceipt: no issueNumber or amount")
    cancelled = _seconds(answer.get("cancelledAt")) if status == "CANCELLED" else 0
    if status == "CANCELLED" and not cancelled:
        raise UnexpectedResponse("malformed CANCELLED CashReceipt: no cancelledAt")
    return Receipt(
        imp_uid=None,
        receipt_tid=_text(answer.get("pgReceiptId")),
        apply_num=number,
        type=_TYPES_READ.get(str(answer.get("type"))),
        amount=amount,
        vat=answer.get("vatAmount") if _integer(answer.get("vatAmount")) else None,
        receipt_url=_text(answer.get("url")),
        applied_at=_seconds(answer.get("issuedAt")),
        cancelled_at=cancelled,
    )


def read_payment(answer: Mapping[str, Any]) -> Payment:
    """A V2 ``Payment`` as the core's :class:`Payment`; a malformed one is unexpected."""
    payment_id, status, amount = answer.get("id"), answer.get("status"), answer.get("amount")
    if not isinstance(payment_id, str) or not isinstance(status, str):
        raise UnexpectedResponse("malformed Payment: no id or status")
    if not isinstance(amount, dict) or not _integer(amount.get("total")):
        raise UnexpectedResponse("malformed Payment: no amount.total")
    method = answer.get("method")
    method_type = method.get("type") if isinstance(method, dict) else None
    cancelled = amount.get("cancelled")
    receipt = answer.get("cashReceipt")
    issued = isinstance(receipt, dict) and receipt.get("status") == "ISSUED"
    return Payment(
        imp_uid=payment_id,
        merchant_uid=None,
        pay_method=method_type if isinstance(method_type, str) else None,
        pg_provider=None,
        status=status,
        amount=amount["total"],
        cancel_amount=_whole(cancelled),
        currency=str(answer.get("currency") or "KRW"),
        cash_receipt_issued=issued or answer.get("cashReceiptIssuanceStatus") == "ISSUED",
        paid=status in PAID_STATUSES,
        cash=method_type in CASH_METHODS,
        tax_free=amount["taxFree"] if _integer(amount.get("taxFree")) else None,
        cancel_tax_free=_whole(amount.get("cancelledTaxFree")),
    )


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole(value: object) -> int:
    """An amount that may be absent (nothing refunded): 0 then."""
    return value if _integer(value) else 0


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _seconds(value: object) -> int | None:
    """An RFC 3339 date-time as UNIX seconds; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except ValueError:
        return None
