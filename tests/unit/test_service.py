"""The look-before-POST rule's duplicate flag, against a scripted client (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import InvalidRequest
from worker.iamport import Payment, Receipt
from worker.schemas import ReceiptRequest, load_payload
from worker.sealing import Sealer
from worker.service import issue_receipt

RECEIPT = Receipt(
    imp_uid="imp_1",
    receipt_tid="t",
    apply_num="123",
    type="person",
    amount=1000,
    vat=91,
    receipt_url=None,
    applied_at=1,
    cancelled_at=0,
)
PAYMENT = Payment(
    imp_uid="imp_1",
    merchant_uid=None,
    pay_method="vbank",
    pg_provider="inicis",
    status="paid",
    amount=1000,
    cancel_amount=0,
    currency="KRW",
    cash_receipt_issued=False,
)


class ReceiptAppearsAfterTheLookup:
    """The receipt is created between this attempt's lookup and its POST.

    That is what an earlier POST of the same job does when i'mport processes it
    after the client's timeout: the lookup misses it, the POST hears 400.
    """

    def __init__(self) -> None:
        self.posted = False

    def find_receipt(self, imp_uid: str) -> Receipt | None:
        return RECEIPT if self.posted else None

    def get_payment(self, imp_uid: str) -> Payment:
        return PAYMENT

    def issue_receipt(self, imp_uid: str, body: dict[str, Any]) -> Receipt:
        self.posted = True
        raise InvalidRequest("already issued", status=400)


def request() -> ReceiptRequest:
    sealer = Sealer([], allow_plaintext=True)
    return load_payload({"imp_uid": "imp_1", "identifier": "01055554321"}, sealer)


@pytest.mark.parametrize(("look_first", "duplicate"), [(False, True), (True, False)])
def test_a_400_behind_which_a_receipt_exists(look_first: bool, duplicate: bool) -> None:
    """First attempt: the receipt predates the job. A later one: it may be the job's own."""
    client: Any = ReceiptAppearsAfterTheLookup()
    issued = issue_receipt(client, request(), look_first=look_first)
    assert (issued.receipt, issued.duplicate) == (RECEIPT, duplicate)
