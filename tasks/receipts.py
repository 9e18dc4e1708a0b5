"""The ``issue_cash_receipt`` task: load the payload, issue, map the outcome.

Like a web view, the task only translates: the payload into a
:class:`~worker.schemas.ReceiptRequest`, the service's errors into "retry in N
seconds" or one failure event. Everything it decides is decided by
:func:`worker.retry.decide`; everything it does is done by
:mod:`worker.service`.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Task

from worker.celery import app
from worker.contract import ISSUE_TASK, QUEUE
from worker.errors import IamportError
from worker.malformed import guard
from worker.retry import compute_backoff, decide
from worker.runtime import Runtime, get_runtime
from worker.schemas import (
    InvalidPayload,
    payload_from_args,
    readable_imp_uid,
    readable_merchant_uid,
)
from worker.service import Report, failure_message, issue_receipt


class ReceiptTask(Task):  # type: ignore[misc]
    """Our task class: malformed messages are caught before Celery unpacks them."""

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
    runtime = get_runtime(self.app.conf)
    attempt = int(self.request.retries) + 1
    try:
        return _issue(self, runtime, attempt, args, kwargs)
    except redis.RedisError:
        # The outcome could not be recorded. Try again later: the next attempt
        # looks the receipt up before anything else, so nothing is issued twice.
        policy = runtime.policy
        delay = compute_backoff(attempt, base=policy.backoff_base, cap=policy.backoff_max)
        raise self.retry(countdown=delay) from None


def _issue(
    task: Task, runtime: Runtime, attempt: int, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    raw = args[0] if args else None
    report = Report(
        events=runtime.events,
        task_id=str(task.request.id),
        attempts=attempt,
        imp_uid=readable_imp_uid(raw),
        merchant_uid=readable_merchant_uid(raw),
    )
    try:
        request = payload_from_args(args, kwargs)
    except InvalidPayload as error:
        report.invalid_payload(error)
        raise ReceiptFailed(f"invalid_payload: {error}") from None
    try:
        issued = issue_receipt(runtime.client, request, look_first=attempt > 1)
    except IamportError as error:
        decision = decide(error, attempt=attempt, policy=runtime.policy)
        if decision.retry:
            raise task.retry(countdown=decision.delay) from None
        report.failed(error, decision.reason or "rejected")
        raise ReceiptFailed(f"{decision.reason}: {failure_message(error)}") from None
    report.issued(issued)
    return "issued:duplicate" if issued.duplicate else "issued"
