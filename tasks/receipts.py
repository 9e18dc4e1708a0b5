"""The ``issue_cash_receipt`` and ``cancel_cash_receipt`` tasks: load, act, map the outcome.

Like a web view, the task only translates: the payload into a
:class:`~worker.core.schemas.ReceiptRequest`, the service's errors into "retry in N
seconds" or one failure event. Everything it decides is decided by
:func:`worker.core.retry.decide`; everything it does is done by the issue rule
(:mod:`worker.core.issuing`) and the refund steps (:mod:`worker.core.refunds`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import replace
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject
from celery.utils.log import get_task_logger

from worker.adapters.observe.logs import outcome_line
from worker.adapters.store.ledger import FENCE_HEADER
from worker.celery import app, stopping
from worker.celery.malformed import guard
from worker.celery.runtime import Runtime, get_runtime
from worker.core.contract import CANCEL_TASK, ISSUE_TASK, QUEUE
from worker.core.errors import IamportError, OutcomeUnknown, TransientError
from worker.core.issuing import (
    SENT_AT_FIELD,
    SENT_OP_FIELD,
    Issued,
    SendLog,
    Superseded,
    issue_receipt,
    recorded_sent_at,
    settle_delay,
    settle_issue,
)
from worker.core.masking import mask_payload, masked_args_repr
from worker.core.ports import Claim, OperationId
from worker.core.refunds import cancel_live_receipt, receipt_for_balance, settle_cancel
from worker.core.retry import (
    Decision,
    compute_backoff,
    decide,
    settle_before_failing,
    settling_attempt,
)
from worker.core.schemas import (
    InvalidPayload,
    ReceiptRequest,
    load_cancellation,
    load_payload,
    payload_from_args,
    readable_imp_uid,
    readable_merchant_uid,
    single_argument,
)
from worker.core.terminal import TerminalPublisher, error_detail, failure_message
from worker.core.types import Receipt

#: How often a duplicate looks at the ledger while another task holds the job.
DUPLICATE_POLL_SECONDS = 0.1

# Under celery.task: readable lines name the task and its id by themselves.
log = get_task_logger(__name__)

#: Why a resumed job waits before it looks: its last POST or DELETE is unsettled.
_SETTLING = "i'mport may still act on the last request; looking after IAMPORT_SETTLE_SECONDS"


class ReceiptTask(Task):  # type: ignore[misc]
    """Our task class: masked argument reprs, and a guard against malformed messages."""

    Request = "worker.celery.request:MaskedRequest"

    def start_strategy(self, app: Any, consumer: Any, **kwargs: Any) -> Any:
        """Celery's strategy for this task, behind :func:`worker.celery.malformed.guard`."""
        return guard(super().start_strategy(app, consumer, **kwargs), self)


#: Outcomes of a message whose job was already done: nothing was asked of i'mport.
DUPLICATE_OUTCOMES = frozenset({"issued:duplicate", "cancelled:duplicate", "done"})


def error_cause(error: IamportError) -> str:
    """A retry's cause for its log line and metric label: the error's class, in snake case."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


class ReceiptFailed(Exception):
    """Raised after the failure event is published, so Celery and Flower count a failure.

    Its text is the reason and the (masked) provider message: nothing from the payload.
    """


_TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "base": ReceiptTask,
    "queue": QUEUE,
    "acks_late": True,
    "ignore_result": True,
    # The attempt budget is ours (RETRY_MAX_ATTEMPTS, applied by decide()); Celery's
    # own MaxRetriesExceededError would put the raw payload in its message.
    "max_retries": None,
    # Expected outcomes: logged in one line, shown as FAILURE in Flower, no traceback.
    "throws": (ReceiptFailed,),
}


@app.task(name=ISSUE_TASK, **_TASK_OPTIONS)
def issue_cash_receipt(self: Task, *args: Any, **kwargs: Any) -> str:
    """Issue the cash receipt of one confirmed payment; returns the outcome's name only."""
    return _IssueRun(self, get_runtime(self.app.conf)).guarded(args, kwargs)


@app.task(name=CANCEL_TASK, **_TASK_OPTIONS)
def cancel_cash_receipt(self: Task, *args: Any, **kwargs: Any) -> str:
    """Cancel a refunded payment's receipt (and re-issue the rest after a partial refund)."""
    return _CancelRun(self, get_runtime(self.app.conf)).guarded(args, kwargs)


class _Run:
    """One run of a task: claim the job in the ledger, act, end it or hand it back."""

    op = "issue"

    def __init__(self, task: Task, runtime: Runtime) -> None:
        self.task = task
        self.runtime = runtime
        self.conf = task.app.conf
        self.message: dict[str, Any] | None = None
        # How this run ended, for its outcome line and the metrics.
        self.started = time.monotonic()
        self.outcome = ""
        self.reason: str | None = None
        self.attempt = int(task.request.retries) + 1
        self.imp_uid: str | None = None
        self.provider_status: int | None = None
        self.provider_code: int | None = None
        #: The fence of the claim this run holds, handed on to its retry.
        self.fence: int | None = None
        #: When the job's last POST or DELETE was sent, while unanswered (epoch s) ...
        self.sent_at: float | None = None
        #: ... by which operation (None: unrecorded, the job's own) ...
        self.sent_op: str | None = None
        #: ... and whether this run sent it (not adopted from the ledger).
        self.sent_here = False

    def guarded(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Run, and whatever happens, end in one outcome line and its count."""
        try:
            outcome = self.run_or_retry(args, kwargs)
        except Exception as error:
            if not self.outcome:  # neither a failure nor a retry: something unexpected
                self.outcome, self.reason = "error", type(error).__name__
            raise
        else:
            self.outcome = outcome
            return outcome
        finally:
            self.ended()

    def run_or_retry(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            with stopping.running(str(self.task.request.id)):
                return self.run(args, kwargs)
        except stopping.HandedBack:
            # The worker is stopping and cancelled this task at a safe point: the job
            # goes back to the queue for another worker. Holding a claim, it goes as
            # a retry that carries the claim's fence, now, which alone may take over
            # the live lease; holding none, the message itself is requeued.
            log.warning(
                "task %s handed back to the queue: the worker is stopping", self.task.request.id
            )
            if self.fence is not None:
                retry = self.retry(0, args, cause="shutdown")
                self.outcome = "handed_back"
                raise retry from None
            self.outcome, self.reason = "handed_back", "shutdown"
            raise Reject("handed back at shutdown", requeue=True) from None
        except redis.RedisError:
            # The outcome could not be recorded. Try again later: the ledger keeps
            # the job, and the next attempt looks at i'mport before acting.
            raise self.retry(self.backoff(), args, cause="redis") from None

    def ended(self) -> None:
        """The one line a run logs about itself (masked like any other), and its count."""
        outcome = self.outcome or "error"
        fields: dict[str, Any] = {
            "task": self.task.name,
            "task_id": str(self.task.request.id),
            "imp_uid": self.imp_uid,
            "attempt": self.attempt,
            "outcome": outcome,
            "reason": self.reason,
            "duplicate": outcome in DUPLICATE_OUTCOMES,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
            "provider_status": self.provider_status,
            "provider_code": self.provider_code,
        }
        level = logging.WARNING if outcome in {"failed", "error"} else logging.INFO
        log.log(level, outcome_line(fields), extra=fields)
        self.runtime.metrics.task_ended(task=self.op, outcome=outcome, reason=self.reason)

    def answered(self, error: IamportError | None = None) -> None:
        """What i'mport last said in this run: its HTTP status and code (none: no answer)."""
        if error is None:
            self.provider_status, self.provider_code = 200, 0
        else:
            self.provider_status, self.provider_code = error.status, error.code

    def count_late(self, issued: Issued) -> None:
        """A receipt that appeared after a settled lookup: count it for the alert."""
        if issued.late:
            self.runtime.metrics.late_processing("iamport")

    def fail(self, reason: str, text: str) -> ReceiptFailed:
        """The exception that ends this run as a failure, after its event is published."""
        self.outcome, self.reason = "failed", reason
        return ReceiptFailed(text)

    def terminal_publisher(self, raw: object) -> TerminalPublisher:
        self.imp_uid = readable_imp_uid(raw)
        return TerminalPublisher(
            events=self.runtime.events,
            store=self.runtime.ledger,
            task_id=str(self.task.request.id),
            attempts=int(self.task.request.retries) + 1,
            imp_uid=readable_imp_uid(raw),
            merchant_uid=readable_merchant_uid(raw),
        )

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        raise NotImplementedError

    def claim_loop(self, terminal: TerminalPublisher, imp_uid: str, args: tuple[Any, ...]) -> str:
        """Claim the job; while another task holds it, wait for its outcome, within a bound."""
        assert self.message is not None
        deadline = time.monotonic() + float(self.conf.duplicate_wait)
        carried = _carried_fence(self.task.request)
        acted = False
        while True:
            claim = self.runtime.ledger.claim(
                imp_uid,
                task_id=terminal.task_id,
                payload=self.message,
                op=self.op,
                fence=carried,
            )
            if claim.kind == "claimed":
                self.attempt = claim.attempt
                self.fence = claim.fence
                if acted:
                    # One attempt per message, so that a message's time stays within
                    # the visibility timeout (celeryconfig's time rule): the job is
                    # handed on to a new message of this task, with its fence.
                    raise self.retry(0.0, (self.message,), cause="handed_on") from None
                acted = True
                outcome = self.attempt_once(terminal, imp_uid, claim)
                if outcome is not None:
                    return outcome
                self.fence = None
                continue  # fenced out: another task took the job over; report its outcome
            if claim.kind == "done":
                return "done"  # a redelivery: this task already published its outcome
            if claim.kind != "busy":
                return self.settled(terminal, claim)
            if time.monotonic() >= deadline:
                raise self.retry(self.backoff(), args, cause="busy") from None
            stopping.check()
            time.sleep(DUPLICATE_POLL_SECONDS)

    def act(self, terminal: TerminalPublisher, claim: Claim) -> str | None:
        raise NotImplementedError

    def settled(self, terminal: TerminalPublisher, claim: Claim) -> str:
        raise NotImplementedError

    def sends(self, imp_uid: str, claim: Claim) -> SendLog:
        """The ledger as this run's :class:`~worker.core.issuing.SendLog`, under its fence."""
        return _LedgerSends(self, imp_uid, claim.fence)

    def attempt_once(self, terminal: TerminalPublisher, imp_uid: str, claim: Claim) -> str | None:
        """The claimed attempt: act, unless the job's last request is not settled yet.

        A retry, a takeover after a crash and a redelivery all come here: their
        lookup must wait until i'mport can no longer act on the job's last POST
        or DELETE, or it would prove nothing. None: another task owns the job now.
        """
        try:
            if claim.resumed:
                # The job's last POST or DELETE, while unsettled: this run's until it sends.
                record = self.runtime.ledger.record(imp_uid)
                self.sent_at = recorded_sent_at(record)
                self.sent_op = (record or {}).get(SENT_OP_FIELD) or None
                wait = settle_delay(
                    self.sent_at, bound=self.runtime.settle_seconds, now=time.time()
                )
                if wait > 0:
                    return self.hand_back(imp_uid, claim, OutcomeUnknown(_SETTLING), wait)
            return self.act(replace(terminal, attempts=claim.attempt), claim)
        except Superseded:
            return None

    def hand_back(
        self, imp_uid: str, claim: Claim, error: IamportError, delay: float
    ) -> str | None:
        """Retry later: a short countdown, or, for a long wait, park the job in the ledger.

        While the job's last POST or DELETE is unsettled, no sooner than the
        bound on late processing after it was sent: the retry's first step is
        the lookup that settles it.
        """
        delay = max(
            delay, settle_delay(self.sent_at, bound=self.runtime.settle_seconds, now=time.time())
        )
        last = error_detail(error, "retrying")["error"]
        ledger = self.runtime.ledger
        # No countdown is longer than RETRY_COUNTDOWN_MAX, nor one a Retry-After set longer
        # than RETRY_BACKOFF_MAX: the visibility timeout covers only the smaller of the two.
        retry_after = error.retry_after if isinstance(error, TransientError) else None
        if delay > float(self.conf.retry_countdown_max) or (
            retry_after is not None and retry_after > self.runtime.policy.backoff_max
        ):
            ledger.park(imp_uid, fence=claim.fence, until=time.time() + delay, error=last)
            self.reason = error_cause(error)
            return "parked"
        if not ledger.extend(imp_uid, fence=claim.fence, seconds=delay, error=last):
            return None
        assert self.message is not None
        raise self.retry(delay, (self.message,), cause=error_cause(error)) from None

    def decision(self, error: IamportError, claim: Claim) -> Decision:
        """Retry or give up; never give up while the job's last request is unsettled."""
        policy = self.runtime.policy
        return settle_before_failing(
            decide(error, attempt=claim.attempt, policy=policy),
            unsettled=self.sent_at is not None,
            attempt=claim.attempt,
            policy=policy,
            sent_here=self.sent_here,
        )

    def settling(self, claim: Claim) -> bool:
        """Whether this attempt only looks: the budget is spent, and the job's last request,
        one this operation sent, is unsettled. A refund that took over an issue whose POST
        is unsettled has waited it out; it looks, then DELETEs what it finds live."""
        own = self.sent_op in (None, self.op)
        return settling_attempt(
            unsettled=self.sent_at is not None and own,
            attempt=claim.attempt,
            policy=self.runtime.policy,
        )

    def backoff(self) -> float:
        """A delay from the retry policy, for waits outside i'mport."""
        policy = self.runtime.policy
        attempt = int(self.task.request.retries) + 1
        return compute_backoff(attempt, base=policy.backoff_base, cap=policy.backoff_max)

    def retry(self, delay: float, args: tuple[Any, ...], *, cause: str) -> BaseException:
        """Celery's retry, re-publishing the payload sealed, with a masked repr.

        Celery would otherwise re-send the arguments as they came, plaintext
        identifier included, with an argsrepr recomputed from them. A payload
        that never validated is re-sent masked: only its failure event is owed.
        """
        if self.message is not None:
            new_args = [self.message]
        elif args and isinstance(args[0], dict):
            new_args = [mask_payload(args[0])]
        else:
            new_args = []
        try:
            exc: BaseException = self.task.retry(
                args=new_args,
                kwargs={},
                countdown=min(delay, float(self.conf.retry_countdown_max)),
                argsrepr=masked_args_repr(new_args),
                kwargsrepr="{}",
                # Only a retry of the claim this run holds may take over its lease.
                headers={FENCE_HEADER: self.fence},
                throw=False,
            )
        except Reject as refused:
            unpublished: Exception = refused.reason
            # Celery turns a retry it could not publish into Reject(requeue=False),
            # an ack: the broker may take the ack while it refused the publish (a
            # Redis out of memory, or back up a moment later), and the message would
            # be gone. It goes back to the queue instead; if the broker refuses
            # that too, it stays unacked and the visibility timeout returns it.
            self.outcome, self.reason = "requeued", "retry_unpublished"
            log.warning(
                "task %s could not publish its retry (%s): its message goes back to the queue",
                self.task.request.id,
                type(unpublished).__name__,
            )
            requeued: BaseException = Reject(unpublished, requeue=True)
            return requeued
        self.outcome, self.reason = "retry", cause
        return exc


class _LedgerSends:
    """A run's POST and DELETE send times, kept in its job's ledger record under its fence."""

    def __init__(self, run: _Run, imp_uid: str, fence: int) -> None:
        self._run, self._imp_uid, self._fence = run, imp_uid, fence

    def sending(self) -> None:
        now = time.time()
        ledger = self._run.runtime.ledger
        op = self._run.op
        sent = {SENT_AT_FIELD: repr(now), SENT_OP_FIELD: op}
        if not ledger.note_all(self._imp_uid, fence=self._fence, fields=sent):
            raise Superseded  # fenced out: the job's new owner sends, not this run
        self._run.sent_at, self._run.sent_op, self._run.sent_here = now, self._run.op, True

    def answered(self) -> None:
        self._run.sent_at, self._run.sent_here = None, False
        ledger = self._run.runtime.ledger
        ledger.note(self._imp_uid, fence=self._fence, field=SENT_AT_FIELD, value="")


def _carried_fence(request: Any) -> int | None:
    """The fence a message was handed a job with (FENCE_HEADER), or None."""
    value = getattr(request, FENCE_HEADER, None)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


class _IssueRun(_Run):
    """``issue_cash_receipt``."""

    request: ReceiptRequest

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        terminal = self.terminal_publisher(args[0] if args else None)
        try:
            self.request = payload_from_args(args, kwargs, self.runtime.sealer)
        except InvalidPayload as error:
            terminal.invalid_payload(error)
            raise self.fail("invalid_payload", f"invalid_payload: {error}") from None
        self.message = self.request.to_message(self.runtime.sealer)
        return self.claim_loop(terminal, self.request.imp_uid, args)

    def settled(self, terminal: TerminalPublisher, claim: Claim) -> str:
        if claim.kind == "issued":
            terminal.issued_duplicate(claim.receipt or {})
            return "issued:duplicate"
        # cancelled: a stale issue message never issues again.
        terminal.refused("cancelled", "the receipt of this payment was cancelled")
        raise self.fail("cancelled", "cancelled: the receipt of this payment was cancelled")

    def act(self, terminal: TerminalPublisher, claim: Claim) -> str | None:
        """Issue as the job's owner; None when another task took the job over meanwhile."""
        imp_uid = self.request.imp_uid
        try:
            if self.settling(claim):
                issued = settle_issue(self.runtime.client, imp_uid, self.sends(imp_uid, claim))
            else:
                issued = issue_receipt(
                    self.runtime.client,
                    self.request,
                    look_first=claim.resumed,
                    operation=OperationId(imp_uid=imp_uid, step="issue", fence=claim.fence),
                    sends=self.sends(imp_uid, claim),
                )
                self.count_late(issued)
        except IamportError as error:
            self.answered(error)
            decision = self.decision(error, claim)
            if decision.retry:
                return self.hand_back(imp_uid, claim, error, decision.delay)
            reason = decision.reason or "rejected"
            if not terminal.finish(fence=claim.fence, error=error, reason=reason):
                return None
            raise self.fail(reason, f"{reason}: {failure_message(error)}") from None
        self.answered()
        if not terminal.finish(
            fence=claim.fence, issued=issued.receipt, duplicate=issued.duplicate
        ):
            return None
        return "issued:duplicate" if issued.duplicate else "issued"


class _CancelRun(_Run):
    """``cancel_cash_receipt``."""

    op = "cancel"

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        terminal = self.terminal_publisher(args[0] if args else None)
        try:
            self.message = load_cancellation(single_argument(args, kwargs))
        except InvalidPayload as error:
            terminal.cancel_invalid(error)
            raise self.fail("invalid_payload", f"invalid_payload: {error}") from None
        return self.claim_loop(terminal, self.message["imp_uid"], args)

    def settled(self, terminal: TerminalPublisher, claim: Claim) -> str:
        # cancelled already: this cancellation repeated one that happened.
        terminal.cancelled_duplicate(claim.receipt)
        return "cancelled:duplicate"

    def act(self, terminal: TerminalPublisher, claim: Claim) -> str | None:
        assert self.message is not None
        imp_uid = self.message["imp_uid"]
        ledger, client = self.runtime.ledger, self.runtime.client
        record = ledger.record(imp_uid) or {}
        cancelled_json = record.get("cancelled_receipt")
        try:
            if record.get("cancel_step") == "cancelled":
                cancelled = Receipt(**json.loads(cancelled_json)) if cancelled_json else None
            elif "amount" in self.message and (live := receipt_for_balance(client, imp_uid)):
                # This refund was already handled (the same event, sent again):
                # no DELETE, no POST; the live receipt stays the job's.
                earlier = json.loads(cancelled_json) if cancelled_json else None
                ok = terminal.finish_cancel_duplicate(fence=claim.fence, live=live, earlier=earlier)
                return "cancelled:duplicate" if ok else None
            else:
                if self.settling(claim):
                    cancelled = settle_cancel(client, imp_uid, sends=self.sends(imp_uid, claim))
                else:
                    cancelled = cancel_live_receipt(
                        client,
                        imp_uid,
                        operation=OperationId(imp_uid=imp_uid, step="cancel", fence=claim.fence),
                        sends=self.sends(imp_uid, claim),
                    )
                step = {
                    "cancelled_receipt": json.dumps(cancelled.as_dict()) if cancelled else "",
                    "cancel_step": "cancelled",
                }
                if not ledger.note_all(imp_uid, fence=claim.fence, fields=step):
                    return None
        except IamportError as error:
            self.answered(error)
            decision = self.decision(error, claim)
            if decision.retry:
                return self.hand_back(imp_uid, claim, error, decision.delay)
            reason = decision.reason or "rejected"
            if not terminal.finish_cancel_failed(fence=claim.fence, error=error, reason=reason):
                return None
            raise self.fail(reason, f"cancel {reason}: {failure_message(error)}") from None
        if record.get("cancel_step") != "cancelled":
            self.answered()
        if "amount" not in self.message or not record.get("payload"):
            ok = terminal.finish_cancelled(fence=claim.fence, cancelled=cancelled)
            return "cancelled" if ok else None
        return self.reissue(terminal, claim, cancelled, json.loads(record["payload"]))

    def reissue(
        self,
        terminal: TerminalPublisher,
        claim: Claim,
        cancelled: Receipt | None,
        payload: dict[str, Any],
    ) -> str | None:
        """After a partial refund: a new receipt for what is left, which i'mport computes."""
        request = load_payload(payload, self.runtime.sealer)
        try:
            sends = self.sends(request.imp_uid, claim)
            if self.settling(claim):
                issued = settle_issue(self.runtime.client, request.imp_uid, sends)
            else:
                # Look first: an earlier attempt may have issued it without hearing back.
                issued = issue_receipt(
                    self.runtime.client,
                    request,
                    look_first=True,
                    operation=OperationId(
                        imp_uid=request.imp_uid, step="reissue", fence=claim.fence
                    ),
                    sends=sends,
                )
                self.count_late(issued)
        except IamportError as error:
            self.answered(error)
            decision = self.decision(error, claim)
            if decision.retry:
                return self.hand_back(request.imp_uid, claim, error, decision.delay)
            reason = decision.reason or "rejected"
            self.reason = reason
            ok = terminal.finish_cancelled(
                fence=claim.fence, cancelled=cancelled, reissue_error=(error, reason)
            )
            return "cancelled:reissue_failed" if ok else None
        self.answered()
        ok = terminal.finish_cancelled(
            fence=claim.fence, cancelled=cancelled, reissued=issued.receipt
        )
        return "cancelled:reissued" if ok else None
