"""Issuing one receipt, and reporting how it ended. No Celery in here.

The rule that keeps a tax document from being issued twice without an
idempotency key (i'mport V1 has none): **never re-POST without looking first**.
i'mport refuses a second active receipt for one payment, so a POST whose
outcome is unknown, a 400 that may mean "already issued", and every retry are
settled by ``GET /receipts/{imp_uid}``, then by ``GET /payments/{imp_uid}`` and
its ``cash_receipt_issued`` for PGs whose receipts cannot be looked up (KICC,
Settlebank) or were issued by the PG itself.

A lookup proves nothing while i'mport may still act on the request: a lookup
that settles an ambiguous POST or DELETE is made no earlier than
``IAMPORT_SETTLE_SECONDS`` after it was sent (:func:`settle_delay`). The send
time is kept in the ledger (:class:`SendLog`), so a retry, a takeover after a
crash and ``cashreceipt settle`` all wait it out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from worker.core.errors import IamportError, InvalidRequest, NotEligible, OutcomeUnknown
from worker.core.events import (
    CANCEL_FAILED,
    CANCELLED,
    FAILED,
    ISSUED,
    event_data,
    failure_detail,
    invalid_detail,
)
from worker.core.masking import mask_text
from worker.core.ports import EventPublisher, JobStore, OperationId, Provider, Published
from worker.core.schemas import InvalidPayload, ReceiptRequest
from worker.core.types import Payment, Receipt

log = logging.getLogger(__name__)

CASH_PAY_METHODS = frozenset({"vbank", "trans"})

#: The ledger field holding when the job's last POST or DELETE was sent (epoch
#: seconds), while its outcome is unsettled; empty once i'mport answered it.
SENT_AT_FIELD = "sent_at"
#: Beside it, which operation sent that request (``issue`` or ``cancel``): a refund that
#: took over an issue waits out the issue's POST, but only settles a DELETE of its own.
#: Read only while ``sent_at`` is set; a record without it (older code) means the job's op.
SENT_OP_FIELD = "sent_op"


def settle_delay(sent_at: float | None, *, bound: float, now: float) -> float:
    """How long to wait before a lookup may settle a request sent at ``sent_at``.

    Until ``bound`` seconds after the send, the provider may still act on it,
    so a lookup that finds nothing proves nothing. None (nothing unsettled) and
    a bound already past both mean now.
    """
    if sent_at is None:
        return 0.0
    return max(0.0, sent_at + bound - now)


def recorded_sent_at(record: Mapping[str, str] | None) -> float | None:
    """The unsettled send time a ledger record holds, or None."""
    raw = (record or {}).get(SENT_AT_FIELD) or ""
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


class Superseded(Exception):
    """Another task took the job over: this one must not send anything."""


class SendLog(Protocol):
    """Where the send time of a POST or DELETE is kept until i'mport answers it."""

    def sending(self) -> None:
        """Record that a request that changes something is about to go out.

        Raises :class:`Superseded` when this task no longer owns the job.
        """

    def answered(self) -> None:
        """The request got an answer from i'mport: nothing is left to settle."""


class _Unlogged:
    """No ledger behind the caller: nothing to record."""

    def sending(self) -> None:
        pass

    def answered(self) -> None:
        pass


UNLOGGED: SendLog = _Unlogged()
_T = TypeVar("_T")


def send_logged(log_: SendLog, send: Callable[[Callable[[], None]], _T]) -> _T:
    """Send a POST or DELETE with its send time recorded, cleared when i'mport answers.

    ``send`` is handed :meth:`SendLog.sending` and must call it right before
    the request goes out (after any token request, and again before a resend):
    the settling lookup counts the bound from the last send. A success is not
    cleared here: the job's next transition records the outcome, and a Redis
    round trip per receipt is saved. An ambiguous answer
    (:class:`OutcomeUnknown`) keeps the send time for the settling lookup.
    """
    try:
        return send(log_.sending)
    except OutcomeUnknown:
        raise
    except IamportError:
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
    waited out the bound on late processing before this lookup).
    """
    if look_first:
        existing, _ = find_issued(client, request.imp_uid)
        if existing is not None:
            return Issued(existing, duplicate=False)
    try:
        receipt = send_logged(
            sends,
            lambda on_send: client.issue_receipt(
                request.imp_uid, request.body(), operation=operation, on_send=on_send
            ),
        )
        return Issued(receipt, duplicate=False)
    except OutcomeUnknown:
        existing, _ = find_issued(client, request.imp_uid)
        if existing is None:
            raise
        log.info("an ambiguous POST for %s had issued the receipt", request.imp_uid)
        return Issued(existing, duplicate=False)
    except InvalidRequest:
        # 400 also means "already issued"; only a lookup tells which. On a first
        # attempt the receipt predates this job: a duplicate. On a later one it
        # may be this job's own earlier POST, processed after its lookup missed
        # it (an answer that came after the timeout): not a duplicate.
        existing, payment = find_issued(client, request.imp_uid)
        if existing is not None:
            if look_first:
                log.warning(
                    "a receipt for %s appeared after this attempt's lookup found none: "
                    "a request acted on later than IAMPORT_SETTLE_SECONDS",
                    request.imp_uid,
                )
            return Issued(existing, duplicate=not look_first, late=look_first)
        if payment is not None and (
            payment.status != "paid" or payment.pay_method not in CASH_PAY_METHODS
        ):
            raise NotEligible(
                f"payment {request.imp_uid} is {payment.status} by {payment.pay_method}; "
                "a cash receipt needs a paid virtual-account or bank-transfer payment",
                status=400,
            ) from None
        raise


#: Why a job fails when its settling lookup found its unsettled request not acted on.
NOT_ACTED_ON = "no answer, and i'mport had not acted on the request after IAMPORT_SETTLE_SECONDS"


def settle_issue(client: Provider, imp_uid: str, sends: SendLog) -> Issued:
    """The settling attempt after the budget: look, never POST.

    Made no earlier than the bound after the job's unsettled POST was sent, so
    the lookup settles it: the send time is cleared. A receipt is the POST's;
    none means it was not acted on, and :class:`OutcomeUnknown` is raised,
    which the spent budget ends as ``retries_exhausted``.
    """
    existing, _ = find_issued(client, imp_uid)
    sends.answered()
    if existing is None:
        raise OutcomeUnknown(NOT_ACTED_ON)
    return Issued(existing, duplicate=False)


def find_issued(client: Provider, imp_uid: str) -> tuple[Receipt | None, Payment | None]:
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


def error_detail(error: IamportError, reason: str) -> dict[str, Any]:
    """The ``error`` of a failure event for what i'mport answered."""
    return failure_detail(
        reason, status=error.status, code=error.code, message=failure_message(error)
    )


@dataclass(frozen=True)
class TerminalPublisher:
    """Publishes the terminal event of one task message.

    The owner of a job ends it through the ledger (:meth:`finish`), which makes
    the transition and publishes in one step; everything else (an invalid
    payload, a duplicate of a settled job) publishes directly. Either way, a
    task id publishes once.
    """

    events: EventPublisher
    ledger: JobStore
    task_id: str
    attempts: int
    imp_uid: str | None
    merchant_uid: str | None

    def issued_duplicate(self, receipt: Mapping[str, Any]) -> Published:
        """This message repeated a payment whose receipt exists."""
        return self._publish(ISSUED, duplicate=True, detail={"receipt": dict(receipt)})

    def invalid_payload(self, error: InvalidPayload) -> Published:
        """The payload can never be issued as it is."""
        return self._publish(FAILED, duplicate=False, detail=invalid_detail(error))

    def refused(self, reason: str, message: str) -> Published:
        """This message repeated a payment that cannot be issued again (cancelled)."""
        detail = failure_detail(reason, status=None, code=None, message=message)
        return self._publish(FAILED, duplicate=True, detail=detail)

    def finish(
        self,
        *,
        fence: int,
        issued: Receipt | None = None,
        duplicate: bool = False,
        error: IamportError | None = None,
        reason: str = "",
    ) -> bool:
        """End the owned job as issued (``issued``) or failed (``error``, ``reason``).

        False when the claim was fenced out: another task owns the job now.
        """
        assert self.imp_uid is not None
        if issued is not None:
            state, event_type, detail = "issued", ISSUED, {"receipt": issued.as_dict()}
        else:
            assert error is not None
            state, event_type, detail = "failed", FAILED, error_detail(error, reason)
        data = event_data(
            task_id=self.task_id,
            imp_uid=self.imp_uid,
            merchant_uid=self.merchant_uid,
            attempts=self.attempts,
            duplicate=duplicate,
            detail=detail,
        )
        entry = self.ledger.finish(
            self.imp_uid,
            fence=fence,
            state=state,
            task_id=self.task_id,
            event_type=event_type,
            data=data,
            receipt=detail.get("receipt"),
            error=detail.get("error"),
            settled=issued is not None,
        )
        return entry is not None

    def cancelled_duplicate(self, receipt: Mapping[str, Any] | None) -> Published:
        """This cancellation repeated one that already happened."""
        return self._publish(
            CANCELLED, duplicate=True, detail={"receipt": dict(receipt) if receipt else None}
        )

    def cancel_invalid(self, error: InvalidPayload) -> Published:
        """The cancellation payload is malformed."""
        return self._publish(CANCEL_FAILED, duplicate=False, detail=invalid_detail(error))

    def finish_cancelled(
        self,
        *,
        fence: int,
        cancelled: Receipt | None,
        reissued: Receipt | None = None,
        reissue_error: tuple[IamportError, str] | None = None,
    ) -> bool:
        """End a cancellation: ``cancelled``, and after a partial refund the new receipt.

        Both events are one ledger transition. A re-issue that failed for good
        leaves the job failed (replayable) with its failure event.
        """
        assert self.imp_uid is not None
        cancelled_data = self._data(
            duplicate=False, detail={"receipt": cancelled.as_dict() if cancelled else None}
        )
        extra: tuple[str, Mapping[str, Any]] | None = None
        state, receipt, error = "cancelled", cancelled.as_dict() if cancelled else None, None
        if reissued is not None:
            state, receipt = "issued", reissued.as_dict()
            extra = (ISSUED, self._data(duplicate=False, detail={"receipt": receipt}))
        elif reissue_error is not None:
            detail = error_detail(*reissue_error)
            state, error = "failed", detail["error"]
            extra = (FAILED, self._data(duplicate=False, detail=detail))
        entry = self.ledger.finish(
            self.imp_uid,
            fence=fence,
            state=state,
            task_id=self.task_id,
            event_type=CANCELLED,
            data=cancelled_data,
            receipt=receipt,
            error=error,
            extra_event=extra,
            settled=reissue_error is None,
        )
        return entry is not None

    def finish_cancel_duplicate(
        self, *, fence: int, live: Receipt, earlier: Mapping[str, Any] | None
    ) -> bool:
        """A refund already reflected by the live receipt: a duplicate; the job stays issued.

        The event carries the receipt the earlier handling cancelled, when known.
        """
        assert self.imp_uid is not None
        entry = self.ledger.finish(
            self.imp_uid,
            fence=fence,
            state="issued",
            task_id=self.task_id,
            event_type=CANCELLED,
            data=self._data(duplicate=True, detail={"receipt": dict(earlier) if earlier else None}),
            receipt=live.as_dict(),
            settled=True,
        )
        return entry is not None

    def finish_cancel_failed(self, *, fence: int, error: IamportError, reason: str) -> bool:
        """The receipt could not be cancelled: it stays live, and the job issued.

        The ledger lists it with the dead letters, so that a refunded payment's
        live receipt is seen, and ``cashreceipt replay`` sends the cancellation again.
        """
        assert self.imp_uid is not None
        detail = error_detail(error, reason)
        entry = self.ledger.finish(
            self.imp_uid,
            fence=fence,
            state="issued",
            task_id=self.task_id,
            event_type=CANCEL_FAILED,
            data=self._data(duplicate=False, detail=detail),
            error=detail["error"],
        )
        return entry is not None

    def _data(self, *, duplicate: bool, detail: dict[str, Any]) -> dict[str, Any]:
        return event_data(
            task_id=self.task_id,
            imp_uid=self.imp_uid,
            merchant_uid=self.merchant_uid,
            attempts=self.attempts,
            duplicate=duplicate,
            detail=detail,
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


def settle(
    imp_uid: str,
    *,
    ledger: JobStore,
    client: Provider,
    events: EventPublisher,
    settle_seconds: float,
) -> str:
    """Force a lookup at i'mport and settle the job: ``cashreceipt settle``.

    Nothing is done while i'mport may still act on the job's last POST or
    DELETE (``settling``: try again after IAMPORT_SETTLE_SECONDS). The job is
    claimed under its own task id, but only when no live claim holds it (it
    is ``received``, or its owner's lease passed): taking over a worker that
    is still in the middle of its POST would let the re-sent job POST too.
    Such a job is left alone (``busy``). If i'mport has an active receipt, the
    job ends issued (its event goes out for the task that started it); if
    not, it is handed back to the ledger, due now, and the sweeper re-sends it.
    ``settle_seconds`` is IAMPORT_SETTLE_SECONDS.
    """
    record = ledger.record(imp_uid)
    if record is None:
        return "unknown"
    if (left_as_is := _not_to_settle(record, settle_seconds)) is not None:
        return left_as_is
    task_id = record["task_id"]
    if record.get("op") == "cancel":
        return _settle_cancel(ledger, imp_uid, task_id, json.loads(record.get("cancel") or "{}"))
    payload = json.loads(record["payload"])
    claim = ledger.claim(imp_uid, task_id=task_id, payload=payload)
    if claim.kind != "claimed":
        return claim.kind
    existing, _ = find_issued(client, imp_uid)
    if existing is not None:
        terminal = TerminalPublisher(
            events=events,
            ledger=ledger,
            task_id=task_id,
            attempts=claim.attempt,
            imp_uid=imp_uid,
            merchant_uid=payload.get("merchant_uid"),
        )
        return "issued" if terminal.finish(fence=claim.fence, issued=existing) else "fenced"
    note = {"reason": "settled", "message": "no receipt at i'mport; re-sent"}
    ledger.park(imp_uid, fence=claim.fence, until=time.time(), error=note)
    return "resent"


def _not_to_settle(record: Mapping[str, str], settle_seconds: float) -> str | None:
    """Why ``cashreceipt settle`` leaves a job as it is: it ended, or it is still settling."""
    if record["state"] in {"issued", "failed", "cancelled"}:
        return record["state"]
    if settle_delay(recorded_sent_at(record), bound=settle_seconds, now=time.time()) > 0:
        # i'mport may still act on the job's last POST or DELETE: a lookup now proves nothing.
        return "settling"
    return None


def _settle_cancel(ledger: JobStore, imp_uid: str, task_id: str, cancel: dict[str, Any]) -> str:
    """A cancellation has nothing to adopt: hand it back due now, to be re-sent."""
    claim = ledger.claim(imp_uid, task_id=task_id, payload=cancel, op="cancel")
    if claim.kind != "claimed":
        return claim.kind
    note = {"reason": "settled", "message": "a cancellation; re-sent"}
    ledger.park(imp_uid, fence=claim.fence, until=time.time(), error=note)
    return "resent"
