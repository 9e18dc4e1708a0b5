"""The look-before-POST rule's duplicate flag, against a scripted client (pure logic)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.payloads import external_payload
from worker.adapters.privacy.sealing import Sealer
from worker.core.errors import IdConflict, IdTaken, InvalidRequest, NotEligible, OutcomeUnknown
from worker.core.issuing import issue_receipt, settle_delay, settle_issue
from worker.core.ports import OperationId
from worker.core.refunds import settle_cancel
from worker.core.retry import reason_for
from worker.core.schemas import ReceiptRequest, load_payload
from worker.core.types import JobKey, Payment, Receipt, ReceiptOrder

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
    paid=True,
    cash=True,
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

    def issue_receipt(
        self,
        request: ReceiptOrder,
        *,
        operation: OperationId,
        on_send: Callable[[], None],
    ) -> Receipt:
        on_send()
        self.posted = True
        raise InvalidRequest("already issued", status=400)


#: The POST's operation id (V1 ignores it).
OPERATION = OperationId(job=JobKey.payment("imp_1"), step="issue", generation=1)


def request() -> ReceiptRequest:
    sealer = Sealer([], allow_plaintext=True)
    return load_payload({"imp_uid": "imp_1", "identifier": "01055554321"}, sealer)


@pytest.mark.parametrize(("look_first", "duplicate"), [(False, True), (True, False)])
def test_a_400_behind_which_a_receipt_exists(look_first: bool, duplicate: bool) -> None:
    """First attempt: the receipt predates the job. A later one: it may be the job's own."""
    client: Any = ReceiptAppearsAfterTheLookup()
    issued = issue_receipt(client, request(), look_first=look_first, operation=OPERATION)
    assert (issued.receipt, issued.duplicate) == (RECEIPT, duplicate)
    # On a later attempt its lookup waited out the bound on late processing, so the receipt
    # appearing after it is a request acted on beyond the bound: counted for an alert.
    assert issued.late is (not duplicate)


@pytest.mark.parametrize(
    ("sent_at", "bound", "now", "delay"),
    [
        (None, 60.0, 1000.0, 0.0),  # nothing unsettled: look now
        (1000.0, 60.0, 1000.0, 60.0),  # just sent: the whole bound
        (1000.0, 60.0, 1010.0, 50.0),  # ten seconds on (a read timeout): the rest of it
        (1000.0, 60.0, 1060.0, 0.0),  # exactly the bound: now
        (1000.0, 60.0, 5000.0, 0.0),  # long past (a parked job, a crash): now
        (1000.0, 0.0, 1000.0, 0.0),  # no bound: now
        (1000.0, 1.5, 999.0, 2.5),  # our clock stepped back: still the whole wait
    ],
)
def test_settle_delay(sent_at: float | None, bound: float, now: float, delay: float) -> None:
    """The settling lookup comes no earlier than the bound after the request was sent."""
    assert settle_delay(sent_at, bound=bound, now=now) == delay


CANCELLED = Receipt(**{**RECEIPT.as_dict(), "cancelled_at": 2})


class LooksOnly:
    """A client whose POST and DELETE must never be called, showing ``receipt``."""

    def __init__(self, receipt: Receipt | None, *, issued: bool = False) -> None:
        self.receipt = receipt
        self.payment = Payment(**{**PAYMENT.__dict__, "cash_receipt_issued": issued})

    def find_receipt(self, imp_uid: str) -> Receipt | None:
        return self.receipt

    def get_payment(self, imp_uid: str) -> Payment:
        return self.payment

    def issue_receipt(self, request: ReceiptOrder) -> Receipt:
        raise AssertionError("a settling attempt POSTed")

    def cancel_receipt(self, imp_uid: str) -> Receipt:
        raise AssertionError("a settling attempt DELETEd")


class Sends:
    """A SendLog that counts how often the send time was cleared."""

    def __init__(self) -> None:
        self.cleared = 0

    def sending(self) -> None:
        raise AssertionError("a settling attempt sent")

    def answered(self) -> None:
        self.cleared += 1


@pytest.mark.parametrize(
    ("client", "adopted"),
    [
        (LooksOnly(RECEIPT), RECEIPT),  # the unsettled POST was acted on: the job's receipt
        (LooksOnly(CANCELLED), None),  # only a cancelled one: not acted on
        (LooksOnly(None), None),
    ],
)
def test_settle_issue_looks_and_never_posts(client: Any, adopted: Receipt | None) -> None:
    """After the budget: a receipt found is adopted; none raises OutcomeUnknown. Either way the
    lookup settled the POST, so its send time is cleared."""
    sends = Sends()
    if adopted is None:
        with pytest.raises(OutcomeUnknown):
            settle_issue(client, request(), sends)
    else:
        issued = settle_issue(client, request(), sends)
        assert (issued.receipt, issued.duplicate, issued.late) == (adopted, False, False)
    assert sends.cleared == 1


@pytest.mark.parametrize(
    ("client", "gone"),
    [
        (LooksOnly(CANCELLED), True),  # the unsettled DELETE was acted on
        (LooksOnly(None), True),  # nothing issued through i'mport: nothing to cancel
        (LooksOnly(RECEIPT), False),  # still live: not acted on
        (LooksOnly(None, issued=True), False),  # a PG's receipt i'mport cannot show: live
    ],
)
def test_settle_cancel_looks_and_never_deletes(client: Any, gone: bool) -> None:
    """After the budget: a cancelled receipt (or none) is the DELETE's; a live one raises."""
    sends = Sends()
    if gone:
        assert settle_cancel(client, JobKey.payment("imp_1"), sends=sends) == client.receipt
    else:
        with pytest.raises(OutcomeUnknown):
            settle_cancel(client, JobKey.payment("imp_1"), sends=sends)
    assert sends.cleared == 1


class RefusesAnIneligiblePayment:
    """No receipt, and a payment the provider says is not paid, or not paid in cash."""

    def __init__(self, *, paid: bool, cash: bool) -> None:
        self.payment = Payment(
            **{
                **PAYMENT.__dict__,
                "status": "ready",
                "pay_method": "card",
                "paid": paid,
                "cash": cash,
            }
        )

    def find_receipt(self, imp_uid: str) -> Receipt | None:
        return None

    def get_payment(self, imp_uid: str) -> Payment:
        return self.payment

    def issue_receipt(
        self, request: ReceiptOrder, *, operation: OperationId, on_send: Callable[[], None]
    ) -> Receipt:
        on_send()
        raise InvalidRequest("no cash receipt for this payment", status=400)


@pytest.mark.parametrize(("paid", "cash"), [(False, True), (True, False), (False, False)])
def test_a_400_for_an_ineligible_payment_is_not_eligible(paid: bool, cash: bool) -> None:
    """The provider's neutral facts decide; its own words are quoted in the message."""
    client: Any = RefusesAnIneligiblePayment(paid=paid, cash=cash)
    with pytest.raises(NotEligible) as caught:
        issue_receipt(client, request(), look_first=False, operation=OPERATION)
    assert str(caught.value) == (
        "HTTP 400: payment imp_1 is ready by card; "
        "a cash receipt needs a paid virtual-account or bank-transfer payment"
    )


def test_a_400_for_an_eligible_payment_stays_an_invalid_request() -> None:
    client: Any = RefusesAnIneligiblePayment(paid=True, cash=True)
    with pytest.raises(InvalidRequest) as caught:
        issue_receipt(client, request(), look_first=False, operation=OPERATION)
    assert not isinstance(caught.value, NotEligible)


EXTERNAL = external_payload()


class ExternalIdTaken:
    """i'mport answers 400 "already issued": the merchant_uid carries a receipt of ``amount``."""

    def __init__(self, amount: int) -> None:
        self.receipt = Receipt(**{**RECEIPT.as_dict(), "imp_uid": None, "amount": amount})
        self.payments = 0

    def find_receipt(self, job: JobKey) -> Receipt | None:
        assert job == JobKey.external("order-7")
        return self.receipt

    def get_payment(self, imp_uid: str) -> Payment:
        self.payments += 1
        raise AssertionError("an external receipt has no payment to read")

    def issue_receipt(self, request: ReceiptOrder, **_: Any) -> Receipt:
        raise InvalidRequest("already issued", status=400)


@pytest.mark.parametrize("look_first", [False, True])
def test_an_external_id_taken_by_another_amount_is_an_id_conflict(look_first: bool) -> None:
    """Merchants reuse their ids: a receipt for another amount is another sale's. It is
    never this job's duplicate, and never adopted as its own (issue 15)."""
    with pytest.raises(IdConflict) as caught:
        issue_receipt(
            ExternalIdTaken(amount=11000),  # type: ignore[arg-type]
            load_payload(EXTERNAL),
            look_first=look_first,
            operation=OPERATION,
        )
    assert caught.value.status == 400
    assert reason_for(caught.value) == "id_conflict"
    assert "11000" in str(caught.value) and "33000" in str(caught.value)


@pytest.mark.parametrize(("look_first", "duplicate"), [(False, True), (True, False)])
def test_an_external_id_taken_by_the_same_amount_is_this_jobs(
    look_first: bool, duplicate: bool
) -> None:
    """On a first attempt, the same amount is a duplicate (the receipt predates this job);
    on a later one, this job's own earlier POST. No payment is read for either."""
    client = ExternalIdTaken(amount=33000)
    issued = issue_receipt(
        client,  # type: ignore[arg-type]
        load_payload(EXTERNAL),
        look_first=look_first,
        operation=OPERATION,
    )
    assert (issued.receipt, issued.duplicate) == (client.receipt, duplicate)
    assert client.payments == 0


def test_the_settling_lookup_of_an_external_receipt_compares_its_amount() -> None:
    """The settling attempt adopts a receipt only when it can be this job's: one for
    another amount under the merchant_uid is another sale's (issue 15)."""
    with pytest.raises(IdConflict):
        settle_issue(ExternalIdTaken(amount=11000), load_payload(EXTERNAL), Sends())  # type: ignore[arg-type]
    client = ExternalIdTaken(amount=33000)
    issued = settle_issue(client, load_payload(EXTERNAL), Sends())  # type: ignore[arg-type]
    assert issued.receipt == client.receipt


class ExternalIdSpent(ExternalIdTaken):
    """The merchant_uid's only receipt was cancelled, and i'mport refuses another."""

    def __init__(self) -> None:
        super().__init__(amount=33000)
        self.receipt = Receipt(**{**self.receipt.as_dict(), "cancelled_at": 1700000000})
        self.lookups = 0

    def find_receipt(self, job: JobKey) -> Receipt | None:
        self.lookups += 1
        return super().find_receipt(job)


@pytest.mark.parametrize("look_first", [False, True])
def test_an_external_id_whose_receipt_was_cancelled_is_taken(look_first: bool) -> None:
    """A 400 "already issued" behind which only a cancelled receipt stands: the id is
    spent (a re-issue after a refund, where i'mport refuses it), a failure of its own."""
    client = ExternalIdSpent()
    with pytest.raises(IdTaken) as caught:
        issue_receipt(
            client,  # type: ignore[arg-type]
            load_payload(EXTERNAL),
            look_first=look_first,
            operation=OPERATION,
        )
    assert reason_for(caught.value) == "id_taken"
    # One look before the POST, one after its 400: the same lookup tells "spent".
    assert client.lookups == 2
    assert "--new-id" in str(caught.value)
