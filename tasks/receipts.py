"""The ``issue_cash_receipt`` and ``cancel_cash_receipt`` tasks: a thin shell around the runner.

Like a web view, the task only translates: the message into a payload
(:mod:`worker.core.schemas`), the per-process runtime into a
:class:`~worker.core.runner.JobRunner`, and the runner's instruction into
Celery's terms: :class:`~worker.core.runner.Retry` into ``self.retry(...)``
carrying the claim's fence, :class:`~worker.core.runner.Failed` into
:class:`ReceiptFailed`, :class:`~worker.core.runner.Busy` into a bounded poll.
Everything the job does and decides is done and decided by the runner, in the
core; here are only the outcome line, the metrics, and a shutdown's hand-back.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject
from celery.utils.log import get_task_logger

from worker.adapters.observe.logs import outcome_line
from worker.adapters.store.dead_messages import dead_message_record, keep_dead_message
from worker.adapters.store.ledger import FENCE_HEADER
from worker.celery import app, stopping
from worker.celery.malformed import guard
from worker.celery.request import carried_fence
from worker.celery.runtime import Runtime, get_runtime
from worker.core.contract import CANCEL_TASK, ISSUE_TASK, QUEUE
from worker.core.events import external_id, job_fields
from worker.core.masking import mask_payload, masked_args_repr
from worker.core.outcome import Outcome
from worker.core.retry import poll_again, retry_countdown
from worker.core.runner import (
    Busy,
    CancelRunner,
    Done,
    Failed,
    IssueRunner,
    JobRunner,
    Retry,
    Rules,
    UnreadableRunner,
    issue_request,
)
from worker.core.schemas import (
    InvalidPayload,
    PayloadUnreadable,
    kept_unreadable,
    load_cancellation,
    readable_job,
    readable_merchant_uid,
    single_argument,
)
from worker.core.terminal import TerminalPublisher
from worker.core.types import JobKey

# Under celery.task: readable lines name the task and its id by themselves.
log = get_task_logger(__name__)


class ReceiptTask(Task):  # type: ignore[misc]
    """Our task class: masked argument reprs, and a guard against malformed messages."""

    Request = "worker.celery.request:MaskedRequest"

    def start_strategy(self, app: Any, consumer: Any, **kwargs: Any) -> Any:
        """Celery's strategy for this task, behind :func:`worker.celery.malformed.guard`."""
        return guard(super().start_strategy(app, consumer, **kwargs), self)


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
    """One run of a task: load the payload, drive the runner, carry out its instruction."""

    op = "issue"

    def __init__(self, task: Task, runtime: Runtime) -> None:
        self.task = task
        self.runtime = runtime
        self.conf = task.app.conf
        self.message: dict[str, Any] | None = None
        self.runner: JobRunner | None = None
        # How this run ended, for its outcome line and the metrics.
        self.started = time.monotonic()
        self.outcome: Outcome | None = None
        self.reason: str | None = None
        self.attempt = int(task.request.retries) + 1
        self.job: JobKey | None = None

    def guarded(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Run, and whatever happens, end in one outcome line and its count."""
        try:
            outcome = self.run_or_retry(args, kwargs)
        except Exception as error:
            if self.outcome is None:  # neither a failure nor a retry: something unexpected
                self.outcome, self.reason = Outcome.ERROR, type(error).__name__
            raise
        else:
            self.outcome = outcome
            return outcome.value
        finally:
            self.ended()

    def run_or_retry(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
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
                retry = self.retry(self.countdown(0.0), args, cause="shutdown")
                self.outcome = Outcome.HANDED_BACK
                raise retry from None
            self.outcome, self.reason = Outcome.HANDED_BACK, "shutdown"
            raise Reject("handed back at shutdown", requeue=True) from None
        except redis.RedisError:
            # The outcome could not be recorded. Try again later: the ledger keeps
            # the job, and the next attempt looks at i'mport before acting.
            raise self.retry(self.countdown(), args, cause="redis") from None

    @property
    def fence(self) -> int | None:
        """The fence of the claim this run holds, handed on to its retry."""
        return self.runner.fence if self.runner is not None else None

    def ended(self) -> None:
        """The one line a run logs about itself (masked like any other), and its count."""
        outcome = self.outcome or Outcome.ERROR
        runner = self.runner
        fields: dict[str, Any] = {
            "task": self.task.name,
            "task_id": str(self.task.request.id),
            **job_fields(self.job),
            **external_id(self.job),
            "attempt": runner.attempt if runner is not None else self.attempt,
            "outcome": outcome.value,
            "reason": self.reason,
            "duplicate": outcome.duplicate,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
            "provider_status": runner.provider_status if runner is not None else None,
            "provider_code": runner.provider_code if runner is not None else None,
        }
        level = logging.WARNING if outcome.troubled else logging.INFO
        log.log(level, outcome_line(fields), extra=fields)
        metrics = self.runtime.metrics
        for _ in range(runner.late if runner is not None else 0):
            # A receipt that appeared after a settled lookup: counted for the alert.
            metrics.late_processing(self.job)
        metrics.task_ended(job=self.job, task=self.op, outcome=outcome, reason=self.reason)

    def fail(self, reason: str, text: str) -> ReceiptFailed:
        """The exception that ends this run as a failure, after its event is published."""
        self.outcome, self.reason = Outcome.FAILED, reason
        return ReceiptFailed(text)

    def terminal_publisher(self, raw: object) -> TerminalPublisher:
        self.job = readable_job(raw)
        return TerminalPublisher(
            events=self.runtime.events,
            store=self.runtime.ledger,
            task_id=str(self.task.request.id),
            attempts=int(self.task.request.retries) + 1,
            job=self.job,
            merchant_uid=readable_merchant_uid(raw),
        )

    def rules(self) -> Rules:
        """What the runner needs from the configuration."""
        return Rules(
            policy=self.runtime.policy,
            settle_seconds=self.runtime.settle_seconds_for(self.job),
            countdown_max=float(self.conf.retry_countdown_max),
        )

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
        raise NotImplementedError

    def drive(self, runner: JobRunner, args: tuple[Any, ...]) -> Outcome:
        """Carry out the runner's instructions; while another task holds the job, wait for
        its outcome, within a bound (DUPLICATE_WAIT)."""
        self.runner = runner
        started = time.monotonic()
        while True:
            instruction = runner.run()
            if isinstance(instruction, Busy):
                waited = time.monotonic() - started
                pause = poll_again(waited, bound=float(self.conf.duplicate_wait))
                if pause is None:
                    raise self.retry(self.countdown(), args, cause="busy") from None
                stopping.check()
                time.sleep(pause)
                continue
            if isinstance(instruction, Retry):
                assert self.message is not None
                countdown = self.countdown(instruction.delay)
                raise self.retry(countdown, (self.message,), cause=instruction.cause)
            if isinstance(instruction, Failed):
                raise self.fail(instruction.reason, instruction.text)
            assert isinstance(instruction, Done)
            self.reason = instruction.reason
            if instruction.outcome is Outcome.REUSED:
                self.set_aside(args)
            return instruction.outcome

    def set_aside(self, args: tuple[Any, ...]) -> None:
        """Keep a message whose task id was reused in ``cash_receipt:parked``, with why.

        Its task's one event is out already (another message's), and a second under the
        same id could not be told apart from it: the message is kept for an operator, who
        sends it again under a new task id. Its payloads are sealed as any parked one's.
        """
        task_id = str(self.task.request.id)
        body = json.dumps([list(args), {}, {}], ensure_ascii=False).encode()
        envelope = {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": self.task.name, "id": task_id},
            "properties": {"body_encoding": "base64", "correlation_id": task_id},
        }
        record = dead_message_record(
            reason=(
                f"task id {task_id} already ended as another payment's or operation's: "
                "a reused task id; send this message again under a new one"
            ),
            queue=QUEUE,
            envelope=envelope,
            raw=None,
            sealer=self.runtime.sealer,
        )
        keep_dead_message(self.runtime.redis, record)

    def countdown(self, delay: float | None = None) -> float:
        """The countdown of this run's retry: the runner's ``delay``, or None for a wait
        outside the provider; shaped in the core (:func:`worker.core.retry.retry_countdown`)."""
        return retry_countdown(
            delay,
            attempt=self.attempt,
            policy=self.runtime.policy,
            countdown_max=float(self.conf.retry_countdown_max),
        )

    def retry(self, countdown: float, args: tuple[Any, ...], *, cause: str) -> BaseException:
        """Celery's retry in ``countdown`` seconds, re-publishing the payload sealed, with a
        masked repr.

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
                countdown=countdown,
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
            self.outcome, self.reason = Outcome.REQUEUED, "retry_unpublished"
            log.warning(
                "task %s could not publish its retry (%s): its message goes back to the queue",
                self.task.request.id,
                type(unpublished).__name__,
            )
            requeued: BaseException = Reject(unpublished, requeue=True)
            return requeued
        self.outcome, self.reason = Outcome.RETRY, cause
        return exc


class _IssueRun(_Run):
    """``issue_cash_receipt``."""

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
        raw = args[0] if args else None
        terminal = self.terminal_publisher(raw)
        sealer = self.runtime.sealer
        try:
            request = issue_request(
                single_argument(args, kwargs),
                sealer=sealer,
                store=self.runtime.ledger,
                task_id=terminal.task_id,
            )
        except PayloadUnreadable as error:
            if terminal.job is None or not isinstance(raw, dict):
                terminal.invalid_payload(error)  # no job it could end: its event alone
                raise self.fail(error.reason, f"{error.reason}: {error}") from None
            return self.drive_unreadable(terminal, raw)
        except InvalidPayload as error:
            terminal.invalid_payload(error)
            raise self.fail("invalid_payload", f"invalid_payload: {error}") from None
        self.message = request.to_message(sealer)
        runner = IssueRunner(
            sealer=sealer,
            request=request,
            store=self.runtime.ledger,
            provider=self.runtime.provider_for(self.job),
            terminal=terminal,
            rules=self.rules(),
            message=self.message,
            carried_fence=carried_fence(self.task.request),
            attempt=self.attempt,
        )
        return self.drive(runner, args)

    def drive_unreadable(self, terminal: TerminalPublisher, raw: dict[str, Any]) -> Outcome:
        """A payload no configured key opens: its job ends failed (``payload_unreadable``)."""
        assert terminal.job is not None
        runner = UnreadableRunner(
            store=self.runtime.ledger,
            provider=self.runtime.provider_for(self.job),
            terminal=terminal,
            rules=self.rules(),
            job=terminal.job,
            message=kept_unreadable(raw),
            carried_fence=carried_fence(self.task.request),
            attempt=self.attempt,
        )
        self.message = runner.message
        return self.drive(runner, (raw,))


class _CancelRun(_Run):
    """``cancel_cash_receipt``."""

    op = "cancel"

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
        terminal = self.terminal_publisher(args[0] if args else None)
        try:
            self.message = load_cancellation(single_argument(args, kwargs))
        except InvalidPayload as error:
            terminal.cancel_invalid(error)
            raise self.fail("invalid_payload", f"invalid_payload: {error}") from None
        runner = CancelRunner(
            sealer=self.runtime.sealer,
            store=self.runtime.ledger,
            provider=self.runtime.provider_for(self.job),
            terminal=terminal,
            rules=self.rules(),
            message=self.message,
            carried_fence=carried_fence(self.task.request),
            attempt=self.attempt,
        )
        return self.drive(runner, args)
