"""The refund steps: cancel the receipt, then re-issue for the balance. Pure: a Provider.

A refunded payment must not keep a live receipt. The provider's cancel
cancels it; after a partial refund a new receipt is then issued for what is
left, which i'mport computes from the payment. The same rules as issuing hold
(:mod:`worker.core.issuing`): look before acting (a DELETE whose answer was
lost is settled by the lookup, whose ``cancelled_at`` tells), retry what is
transient, and record each step in the job store so that a retry never cancels
the new receipt it just issued (the runner's ``cancel_step``).

A partial refund has no idempotency key of its own (the same refund may come
twice, from an outbox relay that repeats), but i'mport keeps the cumulative
``cancel_amount``: a live receipt for exactly ``amount - cancel_amount``
already reflects every refund so far, and cancelling it again would only
issue a third receipt.

An external receipt has no payment behind it: its refund says what is left
(``remaining_amount``, and ``remaining_tax_free`` for a mixed-tax sale), and the
balance's receipt is the kept payload for that amount, under the same merchant_uid.
A live receipt for no more than what is left already reflects this refund: the
same refund again, or an earlier one that came late (refund 1 after refund 2).
The live receipt decides, not the ledger, so this holds after LEDGER_RETENTION.

A PortOne V2 payment's refund is both: PortOne's payment keeps the cumulative
``cancelled`` as i'mport's does, but V2's issue takes an amount, so the balance is
read from the payment (:func:`payment_refund`) and then handled as an external
receipt's is: recorded, compared with the balance recorded before, re-issued.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from worker.core.errors import InvalidRequest, OutcomeUnknown, ProviderUnavailable
from worker.core.issuing import NOT_ACTED_ON, UNLOGGED, SendLog, send_logged
from worker.core.ports import OperationId, Provider
from worker.core.schemas import InvalidPayload, ReceiptRequest
from worker.core.types import JobKey, Receipt

#: Told what each lookup showed live (None: nothing live, or nothing it can show), so
#: that a cancellation refused for good records the live receipt it saw: the job stays
#: issued rather than failed, and no confirmation re-issues over it (model defect 5).
LiveSeen = Callable[[Receipt | None], None]


def _unseen(_receipt: Receipt | None) -> None:
    pass


def cancel_live_receipt(
    client: Provider,
    job: JobKey,
    *,
    operation: OperationId,
    sends: SendLog = UNLOGGED,
    seen: LiveSeen = _unseen,
) -> Receipt | None:
    """Make sure no live receipt remains; returns the cancelled one, or None if there was none.

    The DELETE's send time goes to ``sends``, so an ambiguous one is settled
    only after the bound on late processing.
    """
    gone, receipt = cancel_done(client, job, seen=seen)
    if gone:
        return receipt
    # A live receipt, or one i'mport says exists but cannot show (KICC, Settlebank).
    try:
        return send_logged(
            sends,
            lambda on_send: client.cancel_receipt(job, operation=operation, on_send=on_send),
        )
    except InvalidRequest:
        # 400: nothing issued through i'mport to cancel. Look again, to be sure.
        again = client.find_receipt(job)
        seen(again if again is not None and again.active else None)
        if again is not None and again.active:
            raise
        return again


def settle_cancel(
    client: Provider, job: JobKey, *, sends: SendLog, seen: LiveSeen = _unseen
) -> Receipt | None:
    """The settling attempt after the budget: look, never DELETE.

    The lookup settles the unsettled DELETE, so the send time is cleared (a
    re-issue after a partial refund then goes on as usual). A cancelled receipt
    (or none) is the DELETE's doing; a live one means it was not acted on, and
    :class:`OutcomeUnknown` is raised, which the spent budget ends as
    ``retries_exhausted``.
    """
    gone, receipt = cancel_done(client, job, seen=seen)
    sends.answered()
    if not gone:
        raise OutcomeUnknown(NOT_ACTED_ON)
    return receipt


def cancel_done(
    client: Provider, job: JobKey, *, seen: LiveSeen = _unseen
) -> tuple[bool, Receipt | None]:
    """Whether no live receipt remains (looking only), and the receipt the lookup showed.

    A cancelled receipt may be an attempt's DELETE whose answer was lost; none at all
    means nothing was issued through i'mport.
    """
    receipt = client.find_receipt(job)
    seen(receipt if receipt is not None and receipt.active else None)
    if receipt is not None:
        return not receipt.active, receipt
    if job.imp_uid is None:
        return True, None  # an external receipt's lookup is the only word: none was issued
    return not client.get_payment(job.id).cash_receipt_issued, None


def receipt_for_balance(
    client: Provider, job: JobKey, *, recorded: Receipt | None = None
) -> Receipt | None:
    """The live receipt when it already covers what is left after every refund, else None.

    For a PG whose receipts i'mport cannot look up (KICC, Settlebank) the lookup
    shows nothing, and the payment's ``cash_receipt_issued`` says only that one is
    live: the job's ``recorded`` receipt (what i'mport answered to its last issue or
    re-issue) says what that one is for. Without it a repeated refund would cancel
    and re-issue again, a third receipt for one refund (issue 14, finding 15).
    """
    receipt = client.find_receipt(job)
    payment = None
    if receipt is None and recorded is not None and recorded.active:
        payment = client.get_payment(job.id)
        if not payment.cash_receipt_issued:
            return None  # the recorded receipt is gone, whoever cancelled it
        receipt = recorded
    if receipt is None or not receipt.active or receipt.amount is None:
        return None
    payment = payment or client.get_payment(job.id)
    if payment.cancel_amount <= 0:
        return None  # i'mport shows no refund yet: this receipt predates it
    return receipt if receipt.amount == payment.balance else None


def receipt_covering(client: Provider, job: JobKey, remaining: int) -> Receipt | None:
    """An external receipt's live receipt when it is for no more than ``remaining``, else
    None: that refund was handled already, and nothing is cancelled or issued for it."""
    receipt = client.find_receipt(job)
    if receipt is None or not receipt.active or receipt.amount is None:
        return None
    return receipt if remaining >= receipt.amount else None


def balance_request(request: ReceiptRequest, refund: Mapping[str, Any]) -> ReceiptRequest:
    """The receipt a partial refund leaves: a V1 payment's as it was (i'mport computes the
    balance); any other for ``remaining_amount`` (:func:`balance_fields`), with the sale's
    total kept beside it (:attr:`ReceiptRequest.sale`)."""
    if request.job.imp_uid is not None:
        return request
    sale = request.sale if request.sale is not None else request.options.get("amount")
    return replace(request, options=balance_fields(request.options, refund), sale=sale)


def payment_refund(
    client: Provider, job: JobKey, refunded: int, *, handled: int = 0
) -> dict[str, Any]:
    """A PortOne V2 payment's partial refund as an external receipt's says it: what the
    payment has left (``remaining_amount``: ``total - cancelled``, and
    ``remaining_tax_free``: ``taxFree - cancelledTaxFree`` for a mixed-tax sale).

    V2's cancel takes no amount, and its issue takes the balance: read once, before the
    cancel step, and recorded with it (``note_cancelled``), so that every send of the
    re-issue under one idempotency key carries the same body. A payment that shows less
    refunded than this refund (``refunded``), beyond what the refunds ``handled`` before
    it account for, has not caught up with it yet: that is transient
    (:class:`ProviderUnavailable`), and nothing is cancelled meanwhile.
    """
    payment = client.get_payment(job.id)
    if payment.cancel_amount - handled < refunded:
        beyond = f" beyond the {handled} won handled before" if handled else ""
        raise ProviderUnavailable(
            f"PortOne payment {job.id} shows {payment.cancel_amount} won refunded{beyond}, "
            f"less than this refund's {refunded}: waiting for PortOne to show it",
            status=None,
        )
    tax_free = None
    if payment.tax_free:
        tax_free = payment.tax_free - payment.cancel_tax_free
    return {"remaining_amount": payment.balance, "remaining_tax_free": tax_free}


def recorded_refund(balance: Mapping[str, Any]) -> dict[str, Any]:
    """The partial refund a job's recorded balance (:attr:`~worker.core.ports.JobView.balance`)
    stands for: what every refund so far left, as :func:`balance_fields` takes it."""
    return {"remaining_amount": balance["amount"], "remaining_tax_free": balance.get("tax_free")}


def balance_fields(receipt: Mapping[str, Any], refund: Mapping[str, Any]) -> dict[str, Any]:
    """An external receipt's fields (a payload, or a request's options) for the balance
    a partial ``refund`` leaves: ``amount`` is ``remaining_amount``.

    Its tax-free part is ``remaining_tax_free``: a sale that had one must say what is left
    of it, or :class:`InvalidPayload` is raised (before anything is cancelled). Its VAT
    was set for the whole sale, so the balance's is left to the provider to compute.
    """
    fields = {key: value for key, value in receipt.items() if key != "vat_amount"}
    fields["amount"] = refund["remaining_amount"]
    tax_free = refund.get("remaining_tax_free")
    if tax_free is None and fields.get("tax_free"):
        raise InvalidPayload(
            {
                "remaining_tax_free": [
                    "Required: the receipt has a tax-free part, and the balance's must be said."
                ]
            }
        )
    if tax_free is not None:
        fields["tax_free"] = tax_free
    else:
        fields.pop("tax_free", None)
    return fields
