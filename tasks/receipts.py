"""The ``issue_cash_receipt`` task: load the payload, issue, map the outcome.

Like a web view, the task only translates: the payload into a
:class:`~worker.schemas.ReceiptRequest`, the service's errors into "retry in N
seconds" or one failure event. Everything it decides is decided by
:func:`worker.retry.decide`; everything it does is done by
:mod:`worker.service`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import redis
from celery import Task

from worker.celery import app
from worker.contract import ISSUE_TASK, QUEUE
from worker.errors import IamportError
from worker.ledger import Claim
from worker.malformed import guard
from worker.masking import mask_payload, masked_args_repr
from worker.retry import compute_backoff, decide
from worker.runtime import Runtime, get_runtime
from worker.schemas import (
    InvalidPayload,
    ReceiptRequest,
    payload_from_args,
    readable_imp_uid,
    readable_merchant_uid,
)
from worker.service import Report, error_detail, failure_message, issue_receipt

#: How often a duplicate looks at the ledger while another task holds the job.
DUPLICATE_POLL_SECONDS = 0.1


class ReceiptTask(Task):  # type: ignore[misc]
    """Our task class: masked argument reprs, and a guard against malformed messages."""

    Request = "worker.request:MaskedRequest"

    def start_strategy(self, app: Any, consumer: Any, **kwargs: Any) -> Any:
        """Celery's strategy for this task, behind :func:`worker.malformed.guard`."""
        return guard(super().start_strategy(app, consumer, **kwargs), self)


class ReceiptFailed(Exception):
    """Raised after the failure event is published, so Celery and Flower count a failure.

    Its text is the reason and the (masked) provider message: nothing from the payload.
    """


@app.task(
    name=ISSUE_TASK,
    bind=True,
    base=ReceiptTask,
    queue=QUEUE,
    acks_late=True,
    ignore_result=True,
    # The attempt budget is ours (RETRY_MAX_ATTEMPTS, applied by decide()); Celery's
    # own MaxRetriesExceededError would put the raw payload in its message.
    max_retries=None,
    # Expected outcomes: logged in one line, shown as FAILURE in Flower, no traceback.
    throws=(ReceiptFailed,),
)
def issue_cash_receipt(self: Task, *args: Any, **kwargs: Any) -> str:
    """Issue the cash receipt of one confirmed payment; returns the outcome's name only."""
    attempt = _Attempt(self, get_runtime(self.app.conf))
    try:
        return attempt.run(args, kwargs)
    except redis.RedisError:
        # The outcome could not be recorded. Try again later: the ledger keeps
        # the job, and the next attempt looks the receipt up before any POST.
        raise attempt.retry(attempt.backoff(), args) from None


class _Attempt:
    """One run of the task: claim the job in the ledger, issue, end or hand back."""

    def __init__(self, task: Task, runtime: Runtime) -> None:
        self.task = task
        self.runtime = runtime
        self.conf = task.app.conf
        self.request: ReceiptRequest | None = None

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        raw = args[0] if args else None
        report = Report(
            events=self.runtime.events,
            ledger=self.runtime.ledger,
            task_id=str(self.task.request.id),
            attempts=int(self.task.request.retries) + 1,
            imp_uid=readable_imp_uid(raw),
            merchant_uid=readable_merchant_uid(raw),
        )
        try:
            self.request = payload_from_args(args, kwargs, self.runtime.sealer)
        except InvalidPayload as error:
            report.invalid_payload(error)
            raise ReceiptFailed(f"invalid_payload: {error}") from None
        deadline = time.monotonic() + float(self.conf.duplicate_wait)
        while True:
            claim = self.runtime.ledger.claim(
                self.request.imp_uid,
                task_id=report.task_id,
                payload=self.request.to_message(self.runtime.sealer),
            )
            if claim.kind == "claimed":
                outcome = self._issue(replace(report, attempts=claim.attempt), claim)
                if outcome is not None:
                    return outcome
                # Fenced out: another task took the job over. Report its outcome.
                continue
            if claim.kind == "done":
                return "done"  # a redelivery: this task already published its outcome
            if claim.kind == "issued":
                report.issued_duplicate(claim.receipt or {})
                return "issued:duplicate"
            if claim.kind == "cancelled":
                report.refused("cancelled", "the receipt of this payment was cancelled")
                raise ReceiptFailed("cancelled: the receipt of this payment was cancelled")
            # busy: another task holds the job. Wait for its outcome, within a bound.
            if time.monotonic() >= deadline:
                raise self.retry(self.backoff(), args) from None
            time.sleep(DUPLICATE_POLL_SECONDS)

    def _issue(self, report: Report, claim: Claim) -> str | None:
        """Issue as the job's owner; None when another task took the job over meanwhile."""
        assert self.request is not None
        ledger, policy = self.runtime.ledger, self.runtime.policy
        try:
            issued = issue_receipt(self.runtime.client, self.request, look_first=claim.resumed)
        except IamportError as error:
            decision = decide(error, attempt=claim.attempt, policy=policy)
            if not decision.retry:
                reason = decision.reason or "rejected"
                if not report.finish(fence=claim.fence, error=error, reason=reason):
                    return None
                raise ReceiptFailed(f"{reason}: {failure_message(error)}") from None
            last = error_detail(error, "retrying")["error"]
            imp_uid = self.request.imp_uid
            if decision.delay > float(self.conf.retry_countdown_max):
                # A long wait (an outage): hand the job to the ledger, hold nothing.
                until = time.time() + decision.delay
                ledger.park(imp_uid, fence=claim.fence, until=until, error=last)
                return "parked"
            if not ledger.extend(imp_uid, fence=claim.fence, seconds=decision.delay, error=last):
                return None
            raise self.retry(
                decision.delay, (self.request.to_message(self.runtime.sealer),)
            ) from None
        if not report.finish(fence=claim.fence, issued=issued.receipt, duplicate=issued.duplicate):
            return None
        return "issued:duplicate" if issued.duplicate else "issued"

    def backoff(self) -> float:
        """A delay from the retry policy, for waits outside i'mport."""
        policy = self.runtime.policy
        attempt = int(self.task.request.retries) + 1
        return compute_backoff(attempt, base=policy.backoff_base, cap=policy.backoff_max)

    def retry(self, delay: float, args: tuple[Any, ...]) -> BaseException:
        """Celery's retry, re-publishing the payload sealed, with a masked repr.

        Celery would otherwise re-send the arguments as they came, plaintext
        identifier included, with an argsrepr recomputed from them. A payload
        that never validated is re-sent masked: only its failure event is owed.
        """
        if self.request is not None:
            new_args = [self.request.to_message(self.runtime.sealer)]
        elif args and isinstance(args[0], dict):
            new_args = [mask_payload(args[0])]
        else:
            new_args = []
        exc: BaseException = self.task.retry(
            args=new_args,
            kwargs={},
            countdown=min(delay, float(self.conf.retry_countdown_max)),
            argsrepr=masked_args_repr(new_args),
            kwargsrepr="{}",
            throw=False,
        )
        return exc
