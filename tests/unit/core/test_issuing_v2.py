"""PortOne V2 payments (issue 16): the payment is read first, paid, for the amount asked;
a receipt it already carries is adopted, never issued twice."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from worker.core.errors import (
    AmountMismatch,
    IdConflict,
    InvalidRequest,
    NotEligible,
    NotPaid,
    ProviderUnavailable,
)
from worker.core.events import RETRYABLE_REASONS
from worker.core.issuing import issue_receipt
from worker.core.ports import OperationId
from worker.core.refunds import payment_refund
from worker.core.retry import reason_for
from worker.core.types import JobKey, Payment, Receipt, ReceiptOrder

JOB = JobKey.portone("pay-1")
OPERATION = OperationId(job=JOB, step="issue", generation=1)
PAID = Payment(
    imp_uid="pay-1",
    merchant_uid=None,
    pay_method="PaymentMethodVirtualAccount",
    pg_provider=None,
    status="PAID",
    amount=33000,
    cancel_amount=0,
    currency="KRW",
    cash_receipt_issued=False,
    paid=True,
    cash=True,
)
LIVE = Receipt(
    imp_uid=None,
    receipt_tid="pg-1",
    apply_num="123",
    type="person",
    amount=33000,
    vat=3000,
    receipt_url=None,
    applied_at=1,
    cancelled_at=0,
)


class V2:
    """A PortOne V2 stand-in: the payment it shows, the receipt it has, the POSTs it got."""

    def __init__(self, payment: Payment, receipt: Receipt | None = None) -> None:
        self.payment, self.receipt, self.posts, self.payments = payment, receipt, 0, 0

    def get_payment(self, payment_id: str) -> Payment:
        assert payment_id == "pay-1"
        self.payments += 1
        return self.payment

    def find_receipt(self, job: JobKey) -> Receipt | None:
        return self.receipt

    def issue_receipt(self, request: ReceiptOrder, **_: Any) -> Receipt:
        self.posts += 1
        return LIVE


def order(amount: int = 33000) -> Any:
    return ReceiptOrder(job=JOB, identifier="01055554321", options={"amount": amount})


@pytest.mark.parametrize("look_first", [False, True])
def test_a_paid_payment_is_issued_once_reading_the_payment_once(look_first: bool) -> None:
    client = V2(PAID)
    issued = issue_receipt(client, order(), look_first=look_first, operation=OPERATION)  # type: ignore[arg-type]
    assert (issued.receipt, issued.duplicate, client.posts) == (LIVE, False, 1)
    assert client.payments == 1


@pytest.mark.parametrize(
    ("payment", "amount", "error", "reason"),
    [
        (
            replace(PAID, status="VIRTUAL_ACCOUNT_ISSUED", paid=False),
            33000,
            NotPaid,
            "not_paid",
        ),
        (replace(PAID, pay_method="PaymentMethodCard", cash=False), 33000, NotEligible, None),
        (PAID, 30000, AmountMismatch, "amount_mismatch"),
        # Never to be paid: not replayable, unlike not_paid.
        (replace(PAID, status="CANCELLED", paid=False), 33000, NotEligible, "not_eligible"),
        (replace(PAID, status="FAILED", paid=False), 33000, NotEligible, "not_eligible"),
    ],
)
def test_a_payment_that_cannot_have_this_receipt_sends_nothing(
    payment: Payment, amount: int, error: type[Exception], reason: str | None
) -> None:
    client = V2(payment)
    with pytest.raises(error) as caught:
        issue_receipt(client, order(amount), look_first=False, operation=OPERATION)  # type: ignore[arg-type]
    assert client.posts == 0
    if reason is not None:
        assert reason_for(caught.value) == reason  # type: ignore[arg-type]


def test_not_paid_can_be_replayed() -> None:
    assert "not_paid" in RETRYABLE_REASONS


@pytest.mark.parametrize("shown", [LIVE, None])
def test_a_receipt_issued_in_the_payment_window_is_adopted(shown: Receipt | None) -> None:
    """cashReceipt, or only cashReceiptIssuanceStatus ISSUED: no POST, or the tax service
    would get two receipts."""
    client = V2(replace(PAID, cash_receipt_issued=True), shown)
    issued = issue_receipt(client, order(), look_first=False, operation=OPERATION)  # type: ignore[arg-type]
    assert client.posts == 0
    assert issued.duplicate
    assert issued.receipt.amount == 33000
    assert issued.receipt.imp_uid is None


def test_an_external_v2_job_reads_no_payment() -> None:
    """A paymentId the merchant chose for cash taken outside names no PortOne payment."""

    class NoPayment(V2):
        def get_payment(self, payment_id: str) -> Payment:
            raise AssertionError("an external receipt has no payment to read")

    client = NoPayment(PAID)
    external = ReceiptOrder(
        job=JobKey.portone("pay-1", "external"), identifier="0", options={"amount": 1}
    )
    issue_receipt(client, external, look_first=False, operation=OPERATION)  # type: ignore[arg-type]
    assert client.posts == 1


@pytest.mark.parametrize(
    ("cancelled", "tax_free", "cancelled_tax_free", "refunded", "expected"),
    [
        # total - cancelled; taxFree - cancelledTaxFree for a mixed-tax sale
        (13000, 3000, 1000, 13000, {"remaining_amount": 20000, "remaining_tax_free": 2000}),
        # a sale with no tax-free part says none
        (13000, 0, 0, 13000, {"remaining_amount": 20000, "remaining_tax_free": None}),
        # a later refund already shown: the balance is what PortOne shows now
        (18000, None, 0, 13000, {"remaining_amount": 15000, "remaining_tax_free": None}),
        # nothing left: a full refund
        (33000, None, 0, 13000, {"remaining_amount": 0, "remaining_tax_free": None}),
    ],
)
def test_a_v2_payments_refund_reads_its_balance_from_the_payment(
    cancelled: int,
    tax_free: int | None,
    cancelled_tax_free: int,
    refunded: int,
    expected: dict[str, Any],
) -> None:
    shown = replace(
        PAID,
        status="PARTIAL_CANCELLED",
        cancel_amount=cancelled,
        tax_free=tax_free,
        cancel_tax_free=cancelled_tax_free,
    )
    assert payment_refund(V2(shown), JOB, refunded) == expected  # type: ignore[arg-type]


def test_a_refund_the_payment_does_not_show_yet_is_transient() -> None:
    """The balance would be the whole sale: nothing is cancelled, and the task retries."""
    with pytest.raises(ProviderUnavailable) as caught:
        payment_refund(V2(replace(PAID, cancel_amount=5000)), JOB, 13000)  # type: ignore[arg-type]
    assert reason_for(caught.value) not in {"rejected", "id_taken"}
    assert "shows 5000 won refunded, less than this refund's 13000" in str(caught.value)


def test_a_balance_is_checked_by_its_sale_not_by_the_payments_total() -> None:
    """A refund's re-issue asks for the balance; the payment's total is the sale's."""
    client = V2(replace(PAID, status="PARTIAL_CANCELLED", cancel_amount=13000))
    balance = replace(order(20000), sale=33000)
    issued = issue_receipt(client, balance, look_first=False, operation=OPERATION)  # type: ignore[arg-type]
    assert (issued.duplicate, client.posts) == (False, 1)
    with pytest.raises(AmountMismatch):
        issue_receipt(
            client, replace(order(20000), sale=30000), look_first=False, operation=OPERATION
        )  # type: ignore[arg-type]


def test_a_receipt_for_another_amount_under_the_payment_id_is_not_this_jobs() -> None:
    """V2 issues the amount asked: a 409 "already issued" whose lookup shows a receipt for
    another amount is ``id_conflict``, never adopted as this job's."""

    class Refusing(V2):
        def issue_receipt(self, request: ReceiptOrder, **_: Any) -> Receipt:
            self.posts += 1
            self.receipt = replace(LIVE, amount=30000)
            raise InvalidRequest("409 CASH_RECEIPT_ALREADY_ISSUED", status=409)

    client = Refusing(PAID)
    with pytest.raises(IdConflict) as caught:
        issue_receipt(client, order(), look_first=False, operation=OPERATION)  # type: ignore[arg-type]
    assert "30000 won, not 33000" in str(caught.value)
    assert reason_for(caught.value) == "id_conflict"


def test_a_live_receipt_of_another_type_under_the_payment_id_is_not_this_jobs() -> None:
    """A CORPORATE receipt for the same amount is not a PERSONAL sale's duplicate."""
    client = V2(PAID, replace(LIVE, type="company"))
    with pytest.raises(IdConflict) as caught:
        issue_receipt(client, order(), look_first=True, operation=OPERATION)  # type: ignore[arg-type]
    assert "company receipt, not a person one" in str(caught.value)
    assert client.posts == 0
