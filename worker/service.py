"""Issuing one receipt, and reporting how it ended. No Celery in here.

The rule that keeps a tax document from being issued twice without an
idempotency key (i'mport V1 has none): **never re-POST without looking first**.
i'mport refuses a second active receipt for one payment, so a POST whose
outcome is unknown, a 400 that may mean "already issued", and every retry are
settled by ``GET /receipts/{imp_uid}``, then by ``GET /payments/{imp_uid}`` and
its ``cash_receipt_issued`` for PGs whose receipts cannot be looked up (KICC,
Settlebank) or were issued by the PG itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from worker.errors import IamportError, InvalidRequest, NotEligible, OutcomeUnknown
from worker.events import FAILED, ISSUED, EventPublisher, Published
from worker.iamport import IamportClient, Payment, Receipt
from worker.masking import mask_text
from worker.schemas import InvalidPayload, ReceiptRequest

log = logging.getLogger(__name__)

CASH_PAY_METHODS = frozenset({"vbank", "trans"})

# Whether a retry of the same job could still help, per failure reason.
RETRYABLE_REASONS = frozenset({"retries_exhausted", "auth", "not_eligible"})


@dataclass(frozen=True)
class Issued:
    """A receipt exists for the payment; ``duplicate`` when it predates this job's POST."""

    receipt: Receipt
    duplicate: bool


def issue_receipt(client: IamportClient, request: ReceiptRequest, *, look_first: bool) -> Issued:
    """Make sure the payment has exactly one active receipt, issuing it if needed.

    ``look_first`` is set on every attempt after the first: an earlier attempt
    may have created the receipt without hearing the answer.
    """
    if look_first:
        existing, _ = find_issued(client, request.imp_uid)
        if existing is not None:
            return Issued(existing, duplicate=False)
    try:
        return Issued(client.issue_receipt(request.imp_uid, request.body()), duplicate=False)
    except OutcomeUnknown:
        existing, _ = find_issued(client, request.imp_uid)
        if existing is None:
            raise
        log.info("an ambiguous POST for %s had issued the receipt", request.imp_uid)
        return Issued(existing, duplicate=False)
    except InvalidRequest:
        # 400 also means "already issued"; only a lookup tells which.
        existing, payment = find_issued(client, request.imp_uid)
        if existing is not None:
            return Issued(existing, duplicate=True)
        if payment is not None and (
            payment.status != "paid" or payment.pay_method not in CASH_PAY_METHODS
        ):
            raise NotEligible(
                f"payment {request.imp_uid} is {payment.status} by {payment.pay_method}; "
                "a cash receipt needs a paid virtual-account or bank-transfer payment",
                status=400,
            ) from None
        raise


def find_issued(client: IamportClient, imp_uid: str) -> tuple[Receipt | None, Payment | None]:
    """The payment's active receipt, if any, and the payment when it had to be read."""
    receipt = client.find_receipt(imp_uid)
    if receipt is not None and receipt.active:
        return receipt, None
    payment = client.get_payment(imp_uid)
    if payment.cash_receipt_issued:
        # The PG offers no lookup (or issued it itself): all we can know is
        # that a receipt exists and what it is for.
        return (
            Receipt(
                imp_uid=imp_uid,
                receipt_tid=None,
                apply_num=None,
                type=None,
                amount=payment.amount - payment.cancel_amount,
                vat=None,
                receipt_url=None,
                applied_at=None,
                cancelled_at=0,
            ),
            payment,
        )
    return None, payment


def failure_message(error: IamportError) -> str:
    """What i'mport said, in its words, masked: the message a failure shows."""
    return mask_text(error.provider_message or str(error))


@dataclass(frozen=True)
class Report:
    """Publishes the terminal event of one task message."""

    events: EventPublisher
    task_id: str
    attempts: int
    imp_uid: str | None
    merchant_uid: str | None

    def issued(self, issued: Issued) -> Published:
        """The receipt exists."""
        return self._publish(
            ISSUED, duplicate=issued.duplicate, detail={"receipt": issued.receipt.as_dict()}
        )

    def invalid_payload(self, error: InvalidPayload) -> Published:
        """The payload can never be issued as it is."""
        return self._publish(
            FAILED,
            duplicate=False,
            detail={
                "error": {
                    "reason": "invalid_payload",
                    "status": None,
                    "code": None,
                    "message": str(error),
                    "retryable": False,
                    "fields": error.errors,
                }
            },
        )

    def failed(self, error: IamportError, reason: str) -> Published:
        """i'mport said no for good, or the retry budget ran out."""
        return self._publish(
            FAILED,
            duplicate=False,
            detail={
                "error": {
                    "reason": reason,
                    "status": error.status,
                    "code": error.code,
                    "message": failure_message(error),
                    "retryable": reason in RETRYABLE_REASONS,
                }
            },
        )

    def _publish(self, event_type: str, *, duplicate: bool, detail: dict[str, Any]) -> Published:
        published = self.events.publish_terminal(
            event_type=event_type,
            task_id=self.task_id,
            imp_uid=self.imp_uid,
            merchant_uid=self.merchant_uid,
            attempts=self.attempts,
            duplicate=duplicate,
            detail=detail,
        )
        if not published.new:
            log.warning(
                "task %s already published its outcome as %s; nothing new published",
                self.task_id,
                published.entry_id,
            )
        return published
