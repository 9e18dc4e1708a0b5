"""PortOne V2's shapes: the payload's words become V2's, and V2's answers the core's."""

from __future__ import annotations

from typing import Any

import pytest

from worker.adapters.portone.shapes import (
    issue_body,
    read_cash_receipt,
    read_issued,
    read_payment,
)
from worker.core.errors import UnexpectedResponse
from worker.core.types import JobKey, ReceiptOrder


def order(**options: Any) -> ReceiptOrder:
    base = {"channel_key": "channel-key-1", "order_name": "Counter sale", "amount": 33000}
    return ReceiptOrder(
        job=JobKey.portone("pay-1"), identifier="01055554321", options={**base, **options}
    )


def test_the_least_body() -> None:
    assert issue_body(order(), store_id="store-1") == {
        "storeId": "store-1",
        "paymentId": "pay-1",
        "channelKey": "channel-key-1",
        "type": "PERSONAL",
        "orderName": "Counter sale",
        "currency": "KRW",
        "amount": {"total": 33000},
        "customer": {"identityNumber": "01055554321"},
    }


def test_every_field_maps_to_v2s_word() -> None:
    body = issue_body(
        order(
            type="company",
            identifier_type="business",
            tax_free=3000,
            vat_amount=2727,
            product_type="digital",
            pay_method="vbank",
            corp_reg_no="1234567891",
            buyer_name="Kim",
            buyer_email="kim@example.com",
            buyer_tel="01011112222",
            paid_at="2026-12-06T09:30:00Z",
        ),
        store_id="store-1",
    )
    assert body["type"] == "CORPORATE"
    assert body["amount"] == {"total": 33000, "taxFree": 3000, "vat": 2727}
    assert body["customer"] == {
        "identityNumber": "01055554321",
        "identityNumberType": "BUSINESS",
        "name": "Kim",
        "email": "kim@example.com",
        "phoneNumber": "01011112222",
    }
    assert (body["productType"], body["paymentMethod"]) == ("DIGITAL", "VIRTUAL_ACCOUNT")
    assert (body["businessRegistrationNumber"], body["paidAt"]) == (
        "1234567891",
        "2026-12-06T09:30:00Z",
    )


@pytest.mark.parametrize(("ours", "theirs"), [("phone", "PHONE"), ("taxcard", "CARD")])
def test_identifier_types(ours: str, theirs: str) -> None:
    body = issue_body(order(identifier_type=ours), store_id="s")
    assert body["customer"]["identityNumberType"] == theirs


def test_a_resident_number_goes_without_a_type() -> None:
    """V2 has no type for a resident registration number: none is sent."""
    body = issue_body(order(identifier_type="person"), store_id="s")
    assert "identityNumberType" not in body["customer"]


def test_the_issue_answer_and_the_request_make_the_receipt() -> None:
    answer = {"cashReceipt": {"issueNumber": "123", "url": "https://r", "pgReceiptId": "pg-1"}}
    receipt = read_issued(answer, order(type="company", vat_amount=2727))
    assert (receipt.apply_num, receipt.receipt_tid, receipt.receipt_url) == (
        "123",
        "pg-1",
        "https://r",
    )
    assert (receipt.amount, receipt.vat, receipt.type, receipt.applied_at) == (
        33000,
        2727,
        "company",
        None,
    )
    assert receipt.active and receipt.imp_uid is None
    with pytest.raises(UnexpectedResponse):
        read_issued({"cashReceipt": {}}, order())


ISSUED = {
    "status": "ISSUED",
    "paymentId": "pay-1",
    "amount": 33000,
    "vatAmount": 3000,
    "type": "PERSONAL",
    "issueNumber": "123",
    "pgReceiptId": "pg-1",
    "url": "https://r",
    "issuedAt": "2026-12-06T09:30:00Z",
}


def test_a_looked_up_receipt() -> None:
    receipt = read_cash_receipt(ISSUED)
    assert receipt is not None
    assert (receipt.apply_num, receipt.amount, receipt.vat, receipt.type) == (
        "123",
        33000,
        3000,
        "person",
    )
    assert (receipt.applied_at, receipt.cancelled_at) == (1796549400, 0)
    cancelled = read_cash_receipt(
        {**ISSUED, "status": "CANCELLED", "cancelledAt": "2026-12-06T10:30:00Z"}
    )
    assert cancelled is not None and cancelled.cancelled_at == 1796553000
    assert not cancelled.active


@pytest.mark.parametrize("status", ["ISSUE_FAILED", "SOMETHING_NEW"])
def test_a_receipt_that_is_not_one_is_none(status: str) -> None:
    assert read_cash_receipt({**ISSUED, "status": status}) is None


@pytest.mark.parametrize(
    "broken",
    [
        {**ISSUED, "issueNumber": None},
        {**ISSUED, "amount": "33000"},
        {**ISSUED, "status": "CANCELLED"},  # no cancelledAt
    ],
)
def test_a_malformed_receipt_is_unexpected(broken: dict[str, Any]) -> None:
    with pytest.raises(UnexpectedResponse):
        read_cash_receipt(broken)


@pytest.mark.parametrize(
    ("status", "method", "receipt", "paid", "cash", "issued"),
    [
        ("PAID", "PaymentMethodVirtualAccount", None, True, True, False),
        ("PARTIAL_CANCELLED", "PaymentMethodTransfer", None, True, True, False),
        ("VIRTUAL_ACCOUNT_ISSUED", "PaymentMethodVirtualAccount", None, False, True, False),
        ("PAID", "PaymentMethodCard", None, True, False, False),
        ("PAID", "PaymentMethodTransfer", {"status": "ISSUED"}, True, True, True),
    ],
)
def test_a_payment(
    status: str,
    method: str,
    receipt: dict[str, Any] | None,
    paid: bool,
    cash: bool,
    issued: bool,
) -> None:
    answer: dict[str, Any] = {
        "id": "pay-1",
        "status": status,
        "method": {"type": method},
        "amount": {"total": 33000, "cancelled": 1000},
        "currency": "KRW",
    }
    if receipt is not None:
        answer["cashReceipt"] = receipt
    payment = read_payment(answer)
    assert (payment.paid, payment.cash, payment.cash_receipt_issued) == (paid, cash, issued)
    assert (payment.amount, payment.cancel_amount) == (33000, 1000)


def test_issuance_status_alone_says_a_receipt_exists() -> None:
    """ISSUED at approval may come without a cashReceipt object (research §3.1)."""
    payment = read_payment(
        {
            "id": "pay-1",
            "status": "PAID",
            "amount": {"total": 1},
            "cashReceiptIssuanceStatus": "ISSUED",
        }
    )
    assert payment.cash_receipt_issued


def test_a_payments_tax_free_part_and_its_refunded_share_are_read() -> None:
    """A V2 payment's balance is re-issued with ``taxFree - cancelledTaxFree``."""
    amount = {"total": 33000, "taxFree": 3000, "cancelled": 13000, "cancelledTaxFree": 1000}
    payment = read_payment({"id": "pay-1", "status": "PARTIAL_CANCELLED", "amount": amount})
    assert (payment.balance, payment.tax_free, payment.cancel_tax_free) == (20000, 3000, 1000)
    bare = read_payment({"id": "pay-1", "status": "PAID", "amount": {"total": 1}})
    assert (bare.tax_free, bare.cancel_tax_free, bare.cancel_amount) == (None, 0, 0)
