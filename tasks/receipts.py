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
from worker.service import Report, failure_message, issue_receipt


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
    attempt = _Attempt(self, get_runtime(self.app.conf), number=int(self.request.retries) + 1)
    try:
        return attempt.run(args, kwargs)
    except redis.RedisError:
        # The outcome could not be recorded. Try again later: the next attempt
        # looks the receipt up before anything else, so nothing is issued twice.
        raise attempt.retry(attempt.backoff(), args) from None


class _Attempt:
    """One run of the task: what it loaded, and how it retries."""

    def __init__(self, task: Task, runtime: Runtime, *, number: int) -> None:
        self.task = task
        self.runtime = runtime
        self.number = number
        self.request: ReceiptRequest | None = None

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        raw = args[0] if args else None
        report = Report(
            events=self.runtime.events,
            task_id=str(self.task.request.id),
            attempts=self.number,
            imp_uid=readable_imp_uid(raw),
            merchant_uid=readable_merchant_uid(raw),
        )
        try:
            self.request = payload_from_args(args, kwargs, self.runtime.sealer)
        except InvalidPayload as error:
            report.invalid_payload(error)
            raise ReceiptFailed(f"invalid_payload: {error}") from None
        try:
            issued = issue_receipt(self.runtime.client, self.request, look_first=self.number > 1)
        except IamportError as error:
            decision = decide(error, attempt=self.number, policy=self.runtime.policy)
            if decision.retry:
                raise self.retry(decision.delay, args) from None
            report.failed(error, decision.reason or "rejected")
            raise ReceiptFailed(f"{decision.reason}: {failure_message(error)}") from None
        report.issued(issued)
        return "issued:duplicate" if issued.duplicate else "issued"

    def backoff(self) -> float:
        """A delay from the retry policy, for failures outside i'mport."""
        policy = self.runtime.policy
        return compute_backoff(self.number, base=policy.backoff_base, cap=policy.backoff_max)

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
            countdown=delay,
            argsrepr=masked_args_repr(new_args),
            kwargsrepr="{}",
            throw=False,
        )
        return exc
