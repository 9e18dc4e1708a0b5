"""The issue rule: look before POST. Pure: it talks to a :class:`~worker.core.ports.Provider`.

The rule that keeps a tax document from being issued twice without an
idempotency key (i'mport V1 has none): **never re-POST without looking first**.
i'mport refuses a second active receipt for one payment, so a POST whose
outcome is unknown, a 400 that may mean "already issued", and every retry are
settled by a receipt lookup, then by the payment and its
``cash_receipt_issued`` for PGs whose receipts cannot be looked up (KICC,
Settlebank) or were issued by the PG itself.

A lookup proves nothing while the provider may still act on the request: a
lookup that settles an ambiguous POST or DELETE is made no earlier than
``IAMPORT_SETTLE_SECONDS`` after it was sent (:func:`settle_delay`). The send
time is kept in the job store (:class:`SendLog`), so a retry, a takeover after a
crash and ``cashreceipt settle`` all wait it out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from worker.core.contract import EXTERNAL, PAYMENT, PORTONE
from worker.core.errors import (
    AmountMismatch,
    IdConflict,
    IdTaken,
    InvalidRequest,
    NotEligible,
    NotPaid,
    OutcomeUnknown,
    ProviderError,
)
from worker.core.ports import OperationId, Provider
from worker.core.schemas import ReceiptRequest
from worker.core.types import JobKey, Payment, Receipt

log = logging.getLogger(__name__)

#: Why a job fails when its settling lookup found its unsettled request not acted on.
NOT_ACTED_ON = (
    "no answer, and the provider had not acted on the request after its settle bound "
    "(IAMPORT_SETTLE_SECONDS, PORTONE_SETTLE_SECONDS)"
)


def settle_delay(sent_at: float | None, *, bound: float, now: float) -> float:
    """How long to wait before a lookup may settle a request sent at ``sent_at``.

    Until ``bound`` seconds after the send, the provider may still act on it,
    so a lookup that finds nothing proves nothing. None (nothing unsettled) and
    a bound already past both mean now.
    """
    if sent_at is None:
        return 0.0
    return max(0.0, sent_at + bound - now)


class Superseded(Exception):
    """Another task took the job over: this one must not send anything."""


class SendLog(Protocol):
    """Where the send time of a POST or DELETE is kept until the provider answers it."""

    def sending(self) -> None:
        """Record that a request that changes something is about to go out.

        Raises :class:`Superseded` when this task no longer owns the job.
        """

    def answered(self) -> None:
        """The request got an answer from the provider: nothing is left to settle."""


class _Unlogged:
    """No job store behind the caller: nothing to record."""

    def sending(self) -> None:
        pass

    def answered(self) -> None:
        pass


UNLOGGED: SendLog = _Unlogged()
_T = TypeVar("_T")


def send_logged(log_: SendLog, send: Callable[[Callable[[], None]], _T]) -> _T:
    """Send a POST or DELETE with its send time recorded, cleared when the provider answers.

    ``send`` is handed :meth:`SendLog.sending` and must call it right before
    the request goes out (after any token request, and again before a resend):
    the settling lookup counts the bound from the last send. A success is not
    cleared here: the job's next transition records the outcome, and a store
    round trip per receipt is saved. An ambiguous answer
    (:class:`OutcomeUnknown`) keeps the send time for the settling lookup.
    """
    try:
        return send(log_.sending)
    except OutcomeUnknown:
        raise
    except ProviderError:
        log_.answered()
        raise


@dataclass(frozen=True)
class Issued:
    """A receipt exists for the payment; ``duplicate`` when it predates this job's POST.

    ``late`` when the receipt appeared after this attempt's lookup found none,
    and before its POST: an earlier POST of this job acted on later than the
    bound the lookup waited out, or someone else issued meanwhile. Either way
    the guarantee's limit was crossed, and it is counted for an alert.
    """

    receipt: Receipt
    duplicate: bool
    late: bool = False


def issue_receipt(
    client: Provider,
    request: ReceiptRequest,
    *,
    look_first: bool,
    operation: OperationId,
    sends: SendLog = UNLOGGED,
) -> Issued:
    """Make sure the payment has exactly one active receipt, issuing it if needed.

    ``look_first`` is set on every attempt after the first: an earlier attempt
    may have created the receipt without hearing the answer (the caller has
    waited out the bound on late processing before this lookup). An external
    receipt's job looks on every attempt.
    """
    payment = None
    if payment_first(request.job):
        adopted, payment = _check_payment(client, request)
        if adopted is not None:
            return Issued(adopted, duplicate=not look_first)
    if look_first or request.job.kind == EXTERNAL:
        # An external receipt's id is the merchant's own, reused at will: even a first
        # attempt looks (a job re-opened after id_conflict stands beside a live receipt).
        existing, _ = find_issued(client, request.job, payment=payment)
        if existing is not None:
            return Issued(_this_jobs(existing, request), duplicate=not look_first)
    try:
        receipt = send_logged(
            sends,
            lambda on_send: client.issue_receipt(request, operation=operation, on_send=on_send),
        )
        return Issued(receipt, duplicate=False)
    except OutcomeUnknown:
        existing, _ = find_issued(client, request.job)
        if existing is None:
            raise
        _this_jobs(existing, request)
        log.info("an ambiguous POST for %s had issued the receipt", request.job.receipt_key)
        return Issued(existing, duplicate=False)
    except InvalidRequest as refused:
        # 400 also means "already issued"; only a lookup tells which. On a first
        # attempt the receipt predates this job: a duplicate. On a later one it
        # may be this job's own earlier POST, processed after its lookup missed
        # it (an answer that came after the timeout): not a duplicate.
        existing, latest, payment = _look(client, request.job)
        if existing is None and latest is not None and _own_id(request.job):
            raise _spent(request, status=refused.status) from None
        if existing is not None:
            _this_jobs(existing, request)
            if look_first:
                log.warning(
                    "a receipt for %s appeared after this attempt's lookup found none: "
                    "a request acted on later than IAMPORT_SETTLE_SECONDS",
                    request.job.receipt_key,
                )
            return Issued(existing, duplicate=not look_first, late=look_first)
        if payment is not None and not (payment.paid and payment.cash):
            raise NotEligible(
                f"payment {request.job.id} is {payment.status} by {payment.pay_method}; "
                "a cash receipt needs a paid virtual-account or bank-transfer payment",
                status=400,
            ) from None
        raise


def _this_jobs(receipt: Receipt, request: ReceiptRequest) -> Receipt:
    """``receipt``, when it can be this job's: raises :class:`IdConflict` otherwise.

    A V1 payment's receipt is for the payment, whatever the amount i'mport computed. An
    external receipt is found by the merchant's own id, which merchants reuse: one
    for another amount is another sale's, never this job's duplicate. V1's answer
    shows no identifier, so the amount is all that can be compared. A PortOne V2
    receipt is issued for the amount asked (V2 computes none), so one for another
    amount under the payment id is not this job's either (a receipt issued at approval
    is adopted before any of this, by :func:`_check_payment`).
    """
    if request.job.imp_uid is not None:
        return receipt
    wanted = request.options.get("amount")
    id_name = "payment id" if request.job.provider == PORTONE else "merchant_uid"
    if receipt.amount != wanted:
        raise IdConflict(
            f"{request.job.receipt_key} already carries a receipt for {receipt.amount} won, "
            f"not {wanted}: another sale's, under the same {id_name}",
            status=400,
        )
    # V2's lookup also shows the receipt's type (PERSONAL, CORPORATE): another is another
    # sale's, or another buyer's.
    wanted_type = request.options.get("type") or "person"
    if request.job.provider == PORTONE and receipt.type not in (None, wanted_type):
        raise IdConflict(
            f"{request.job.receipt_key} already carries a {receipt.type} receipt, not a "
            f"{wanted_type} one: another sale's, under the same {id_name}",
            status=400,
        )
    return receipt


def payment_first(job: JobKey) -> bool:
    """Whether a job's payment is read before anything is sent: a PortOne V2 payment's.

    (V1 reads the payment only when a 400 needs explaining: i'mport itself refuses a
    receipt for a payment that is not a paid cash one.)
    """
    return job.provider == PORTONE and job.kind == PAYMENT


def _check_payment(client: Provider, request: ReceiptRequest) -> tuple[Receipt | None, Payment]:
    """A PortOne V2 payment must be paid, for the payload's amount; a receipt it already
    carries (issued in the payment window) is adopted, and None means: issue. The payment
    read comes back too, so that the lookup after it does not read it again.

    Raises :class:`NotPaid` (a virtual account not yet deposited: replayable),
    :class:`NotEligible` (not a cash payment) or :class:`AmountMismatch`.
    """
    job = request.job
    payment = client.get_payment(job.id)
    if payment.status in _NEVER_PAID:
        raise NotEligible(
            f"PortOne payment {job.id} is {payment.status}: it will not be paid, and no "
            "receipt is issued for it",
            status=None,
        )
    if not payment.paid:
        raise NotPaid(
            f"PortOne payment {job.id} is {payment.status}: a receipt is issued once it is "
            "PAID (a virtual account, once deposited); replay the job then",
            status=None,
        )
    if not payment.cash:
        raise NotEligible(
            f"PortOne payment {job.id} was paid by {payment.pay_method}: a cash receipt is "
            "for a virtual-account or transfer payment",
            status=None,
        )
    # A refund's balance is checked by the sale it was taken from.
    wanted = request.sale if request.sale is not None else request.options.get("amount")
    if wanted != payment.amount:
        raise AmountMismatch(
            f"the payload's amount is {wanted} won, PortOne payment {job.id}'s is {payment.amount}",
            status=None,
        )
    tax_free = request.options.get("tax_free") or 0
    if request.sale is None and tax_free != (payment.tax_free or 0):
        # A split the payment does not have: its refunds' balances (read from the payment)
        # could never be re-issued for this receipt's (issue 16 review, finding 6).
        raise AmountMismatch(
            f"the payload's tax-free part is {tax_free} won, PortOne payment {job.id}'s is "
            f"{payment.tax_free or 0}",
            status=None,
        )
    if not payment.cash_receipt_issued:
        return None, payment
    # Issued in the payment window: adopted, never a second receipt for the tax service.
    found, _ = find_issued(client, job, payment=payment)
    return found, payment


def _own_id(job: JobKey) -> bool:
    """Whether the provider keeps one receipt per id, a cancelled one included: a V1
    external receipt's merchant_uid, and any PortOne V2 paymentId (whether either issues
    again after a cancel is unconfirmed)."""
    return job.kind == EXTERNAL or job.provider == PORTONE


#: V2 payment statuses that end without a payment to issue for: a replay would not help,
#: unlike a virtual account not yet deposited (``not_paid``).
_NEVER_PAID = frozenset({"CANCELLED", "FAILED"})


def _spent(request: ReceiptRequest, *, status: int | None) -> IdTaken:
    """An "already issued" behind which only a cancelled receipt stands: the id is spent,
    and another POST would be refused too. An external receipt's balance can go under a
    derived id; a PortOne payment's cannot, so the amount to issue by hand is named."""
    job = request.job
    if job.kind == EXTERNAL:
        who, id_name = (
            ("PortOne", "paymentId") if job.provider == PORTONE else ("i'mport", "merchant_uid")
        )
        return IdTaken(
            f"{job.receipt_key} carries a cancelled receipt, and {who} issues no other "
            f"under it: replay with --new-id to issue under a derived {id_name}",
            status=status,
        )
    amount, tax_free = request.options.get("amount"), request.options.get("tax_free")
    part = f" ({tax_free} won of it tax-free)" if tax_free else ""
    return IdTaken(
        f"{job.receipt_key} carries a cancelled receipt, and PortOne issues no other for "
        f"the payment; a payment takes no new id: issue {amount} won{part} by hand",
        status=status,
    )


def settle_issue(client: Provider, request: ReceiptRequest, sends: SendLog) -> Issued:
    """The settling attempt after the budget: look, never POST.

    Made no earlier than the bound after the job's unsettled POST was sent, so
    the lookup settles it: the send time is cleared. A receipt is the POST's;
    none means it was not acted on, and :class:`OutcomeUnknown` is raised,
    which the spent budget ends as ``retries_exhausted``.
    """
    existing, _ = find_issued(client, request.job)
    sends.answered()
    if existing is None:
        raise OutcomeUnknown(NOT_ACTED_ON)
    return Issued(_this_jobs(existing, request), duplicate=False)


def find_issued(
    client: Provider, job: JobKey, *, payment: Payment | None = None
) -> tuple[Receipt | None, Payment | None]:
    """The job's active receipt, if any, and the payment when it had to be read
    (``payment``: already read).

    An external receipt has no payment to read: its lookup is the only word.
    """
    existing, _, read = _look(client, job, payment=payment)
    return existing, read


def _look(
    client: Provider, job: JobKey, *, payment: Payment | None = None
) -> tuple[Receipt | None, Receipt | None, Payment | None]:
    """:func:`find_issued`, and the newest receipt the lookup showed, live or cancelled."""
    receipt = client.find_receipt(job)
    if receipt is not None and receipt.active:
        return receipt, receipt, None
    payment_id = job.imp_uid or (job.id if payment_first(job) else None)
    if payment_id is None:
        return None, receipt, None
    payment = payment or client.get_payment(payment_id)
    if payment.cash_receipt_issued:
        # The PG offers no lookup (or issued it itself): all we can know is
        # that a receipt exists and what it is for.
        return (
            Receipt(
                imp_uid=job.imp_uid,
                receipt_tid=None,
                apply_num=None,
                type=None,
                amount=payment.balance,
                vat=None,
                receipt_url=None,
                applied_at=None,
                cancelled_at=0,
            ),
            receipt,
            payment,
        )
    return None, receipt, payment
