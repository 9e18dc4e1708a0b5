"""i'mport's V1 shapes: the POST body it is sent, and its answers read into neutral types."""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker.adapters.iamport.shapes import (
    RECEIPT_SCHEMA,
    read_payment,
    read_receipt,
    receipt_body,
)
from worker.adapters.privacy.sealing import Sealer
from worker.core.errors import UnexpectedResponse
from worker.core.schemas import load_payload

PLAIN = Sealer([], allow_plaintext=True)

RECEIPT = {
    "imp_uid": "imp_1",
    "apply_num": "123",
    "type": "person",
    "amount": 11000,
    "vat": 1000,
    "applied_at": 1,
}


def test_the_body_is_the_payloads_receipt_fields_in_order() -> None:
    """The bytes i'mport is sent: the identifier first, then every given field as it came."""
    request = load_payload(
        {
            "tax_free": 500,
            "buyer_tel": "010-0000-0000",
            "note": "not an i'mport field",
            "identifier": "010 5555 4321",
            "buyer_name": "김철수",
            "imp_uid": "imp_2",
            "identifier_type": "phone",
        },
        PLAIN,
    )
    sent = json.dumps(receipt_body(request))
    assert sent == (
        '{"identifier": "01055554321", "identifier_type": "phone", "type": "person", '
        '"buyer_name": "\\uae40\\ucca0\\uc218", "buyer_tel": "010-0000-0000", "tax_free": 500}'
    )
    minimal = load_payload({"imp_uid": "imp_1", "identifier": "01055554321"}, PLAIN)
    assert receipt_body(minimal) == {"identifier": "01055554321", "type": "person"}


def test_receipt_annotation_requires_its_required_fields() -> None:
    """i'mport's answer is typed: a receipt without apply_num is not a receipt."""
    assert RECEIPT_SCHEMA.load(RECEIPT)["cancelled_at"] == 0
    assert RECEIPT_SCHEMA.validate({k: v for k, v in RECEIPT.items() if k != "apply_num"})
    assert read_receipt(RECEIPT).active
    with pytest.raises(UnexpectedResponse, match="malformed ReceiptAnnotation"):
        read_receipt({k: v for k, v in RECEIPT.items() if k != "apply_num"})


@pytest.mark.parametrize(
    ("fields", "paid", "cash"),
    [
        ({"status": "paid", "pay_method": "vbank"}, True, True),
        ({"status": "paid", "pay_method": "trans"}, True, True),
        ({"status": "paid", "pay_method": "card"}, True, False),
        ({"status": "paid", "pay_method": None}, True, False),
        ({"status": "ready", "pay_method": "vbank"}, False, True),
        ({"status": "cancelled", "pay_method": "trans"}, False, True),
        ({"status": "failed", "pay_method": "card"}, False, False),
    ],
)
def test_a_payment_says_paid_and_cash_in_neutral_words(
    fields: dict[str, Any], paid: bool, cash: bool
) -> None:
    """i'mport's status and pay method become the two facts the issue rule reads."""
    payment = read_payment({"imp_uid": "imp_1", "amount": 11000, **fields})
    assert (payment.paid, payment.cash) == (paid, cash)
    # Its own words stay, for the messages that quote them.
    assert (payment.status, payment.pay_method) == (fields["status"], fields["pay_method"])


def test_a_malformed_payment_is_unexpected() -> None:
    with pytest.raises(UnexpectedResponse, match="malformed PaymentAnnotation"):
        read_payment({"imp_uid": "imp_1", "amount": 11000})
