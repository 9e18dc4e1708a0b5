"""Enqueueing from Python: validate inside the checkout request, then send.

Any other language sends ``issue_cash_receipt`` to ``cash_receipts`` with the
JSON serializer and no help from us; this helper adds what a Python checkout
gets for free: a bad payload raises :class:`~worker.core.schemas.InvalidPayload`
right there, with field-level reasons, instead of turning into a failure event
seconds later. It also sends only the normalised payload (unknown fields
dropped, separators stripped) and a masked ``argsrepr``, so Flower and the
worker's "received" log never show the identifier.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from celery import Celery

from worker.adapters.privacy.sealing import Sealer
from worker.adapters.store.events import EventPublisher
from worker.adapters.store.ledger import Ledger
from worker.adapters.store.redis_client import redis_client
from worker.celery.app import app as worker_app
from worker.config.defaults import (
    LEDGER_LEASE_SECONDS,
    LEDGER_RETENTION,
    PROVIDERS,
    RESULT_STREAM,
    RESULT_STREAM_RETENTION,
    VISIBILITY_TIMEOUT,
)
from worker.config.load import redis_url
from worker.config.parse import env_providers
from worker.core.contract import CANCEL_TASK, ISSUE_TASK, QUEUE
from worker.core.masking import masked_args_repr
from worker.core.ports import ClaimKind
from worker.core.runner import reused, settled_message
from worker.core.schemas import (
    InvalidPayload,
    load_cancellation,
    load_payload,
    payload_job,
    readable_job,
)
from worker.core.terminal import TerminalPublisher
from worker.core.types import JobKey

#: The namespace of task ids derived from a refund's ``refund_id``.
_REFUND_IDS = uuid.UUID("6f1c1f0e-5b8e-4f43-9d1e-2c7a3e0b9a51")


def refund_task_id(job: JobKey, refund_id: str | None) -> str | None:
    """The task id of a refund its producer named: one per job and ``refund_id``.

    A UUID (version 5), so it is a task id like any other, and two jobs' refunds with
    the same ``refund_id`` never share one. None when the refund names no id.
    """
    if refund_id is None:
        return None
    return str(uuid.uuid5(_REFUND_IDS, f"{job.receipt_key}\x00{refund_id}"))


def enqueue_issue(
    payload: Mapping[str, Any], *, app: Celery | None = None, task_id: str | None = None
) -> str:
    """Validate ``payload``, seal its identifier and enqueue its receipt; returns the task id.

    Raises :class:`~worker.core.schemas.InvalidPayload` when the payload can never
    be issued, :class:`~worker.adapters.privacy.sealing.SealingUnavailable` when no PII key is
    configured (and plaintext was not allowed), and kombu's
    ``OperationalError`` when the broker is unreachable.

    ``task_id`` makes a retry of the same request idempotent (the ingress
    derives it from the stream entry): the same id ends in the same one event.
    """
    if app is None:
        app = worker_app
    sealer = Sealer.from_conf(app.conf)
    request = load_payload(payload, sealer)
    _refuse_unserved(app, request.job)
    message = request.to_message(sealer)
    task_id = task_id or str(uuid.uuid4())
    # The ledger first: if the message is lost on its way to a worker, the
    # sweeper re-sends it from here once the visibility timeout has passed.
    ledger = _ledger(app)
    state = ledger.receive(
        request.job,
        task_id=task_id,
        payload=message,
        resend_after=_resend_after(app),
    )
    if state == "done":
        # This very task already ended (an ingress entry handled twice), unless its id
        # is being reused for another payment.
        _not_reused(app, task_id, job=request.job, op="issue")
        return task_id
    if state in SETTLED:
        return end_settled(
            ledger,
            _events(app),
            op="issue",
            state=state,
            message=message,
            task_id=task_id,
            sealer=sealer,
        )
    return _send(app, ISSUE_TASK, message, task_id)


class TaskIdReused(ValueError):
    """The task id already ended as another job's, or another operation's: a task id names
    one message, and its one event is out. Nothing was recorded or sent; enqueue again
    with a new task id (or none: the helper makes one)."""


def _not_reused(app: Celery, task_id: str, *, job: JobKey, op: str) -> None:
    """Raise :class:`TaskIdReused` when ``task_id`` ended for another job or operation.

    What the ledger answers ``done`` is the same task again (a retried enqueue, an
    ingress entry handled twice), and returning its id is right; a task id reused for
    another payment, or for a refund of an issue's id, would otherwise vanish with no
    event and nothing sent (review of issue 14, F1).
    """
    ended = _ledger(app).task_end(task_id)
    if ended is not None and reused(ended, job=job, op=op):
        raise TaskIdReused(
            f"task id {task_id} already ended as {ended.receipt_key or 'another job'}'s "
            f"{ended.op}; it cannot also name {job.receipt_key}'s {op}: enqueue with a new "
            "task id"
        )


#: What :meth:`~worker.adapters.store.ledger.Ledger.receive` (and ``receive_cancel``)
#: answer, without recording the task, when its job ended so that it has nothing to do.
SETTLED = frozenset({"issued", "cancelled"})


def end_settled(
    ledger: Ledger,
    events: EventPublisher,
    *,
    op: str,
    state: str,
    message: Mapping[str, Any],
    task_id: str,
    sealer: Sealer | None = None,
) -> str:
    """End a task the ledger did not record: its one event now, and no message sent.

    Nothing re-sends a task the ledger did not record, so a message the broker lost
    would end in no event. The event is the one a worker publishes when the message
    meets such a job (:func:`~worker.core.runner.settled_message`), under the task's
    once-only marker; the message is not sent, as it would only find that marker (or,
    once the marker had expired, publish a second event). A job that ended under this
    very task (the same task id again, after its marker expired) has its event already.
    """
    job = readable_job(message)
    assert job is not None  # a validated message names its job
    terminal = TerminalPublisher(
        events=events,
        store=ledger,
        task_id=task_id,
        attempts=0,
        job=job,
        merchant_uid=message.get("merchant_uid"),
    )
    claim = ledger.settled_claim(job, task_id=task_id, state=state, op=op)
    if claim.kind is not ClaimKind.DONE:
        settled_message(terminal, claim, message, sealer)
    return task_id


def served_providers(app: Celery) -> tuple[str, ...]:
    """The providers the workers serve: the app's PROVIDERS, or the environment's for an
    app that is not ours (a producer's own Celery app)."""
    configured = getattr(app.conf, "providers", None)
    if configured:
        return tuple(configured)
    return env_providers(os.environ, "PROVIDERS", PROVIDERS)


def _refuse_unserved(app: Celery, job: JobKey) -> None:
    """A payload for a provider no worker serves is refused here, in the producer's request,
    rather than ending ``not_configured`` seconds later."""
    served = served_providers(app)
    if job.provider not in served:
        raise InvalidPayload(
            {
                "provider": [
                    f"Must be one of PROVIDERS ({', '.join(served)}): the workers do not "
                    f"serve {job.provider!r}."
                ]
            }
        )


def _send(app: Celery, task: str, message: Mapping[str, Any], task_id: str) -> str:
    """Send one job's message to the queue as JSON, its ``argsrepr`` masked; returns the id."""
    app.send_task(
        task,
        args=[message],
        task_id=task_id,
        queue=QUEUE,
        serializer="json",
        argsrepr=masked_args_repr([message]),
        kwargsrepr="{}",
    )
    return task_id


_ledgers: dict[str, Ledger] = {}
_publishers: dict[str, EventPublisher] = {}


def _resend_after(app: Celery) -> float:
    """How long the sweeper leaves a recorded job to its message before re-sending it."""
    return float(getattr(app.conf, "broker_visibility_timeout", 0) or VISIBILITY_TIMEOUT)


def _result_stream(app: Celery) -> tuple[str, int]:
    """The result stream's name and how long it keeps events (seconds)."""
    conf = app.conf
    stream = getattr(conf, "result_stream", None) or RESULT_STREAM
    return stream, int(getattr(conf, "result_stream_retention", 0) or RESULT_STREAM_RETENTION)


def _events(app: Celery) -> EventPublisher:
    """The result stream's publisher on the ledger's Redis (REDIS_URL)."""
    url = redis_url(app.conf)
    if url not in _publishers:
        stream, retention = _result_stream(app)
        _publishers[url] = EventPublisher(
            redis_client(url), stream=stream, retention_seconds=retention
        )
    return _publishers[url]


def _ledger(app: Celery) -> Ledger:
    """One ledger client per Redis URL (REDIS_URL), made on first use."""
    url = redis_url(app.conf)
    if url not in _ledgers:
        conf = app.conf
        stream, retention = _result_stream(app)
        _ledgers[url] = Ledger(
            redis_client(url),
            stream=stream,
            event_retention_seconds=retention,
            retention_seconds=int(getattr(conf, "ledger_retention", 0) or LEDGER_RETENTION),
            lease_seconds=float(getattr(conf, "ledger_lease_seconds", 0) or LEDGER_LEASE_SECONDS),
        )
    return _ledgers[url]


def enqueue_cancel(
    payload: Mapping[str, Any], *, app: Celery | None = None, task_id: str | None = None
) -> str:
    """Validate a payment-cancelled payload and enqueue ``cancel_cash_receipt``; returns the id.

    ``payload`` names the receipt: ``imp_uid`` for a payment, ``kind: external`` and
    ``merchant_uid`` for an external receipt. A payment's ``amount`` (the refunded
    amount), or an external receipt's ``remaining_amount`` (what is left), makes it a
    partial refund: the receipt is cancelled and a new one issued for the balance.
    Raises :class:`~worker.core.schemas.InvalidPayload` when it is malformed.

    Without ``task_id``, a ``refund_id`` names the task (:func:`refund_task_id`): the
    same refund sent twice is one task, with one event.

    The cancellation is recorded in the ledger before it is sent, so a
    message the broker loses is re-sent by the sweeper and listed by
    ``cashreceipt stuck`` meanwhile.
    """
    if app is None:
        app = worker_app
    message = load_cancellation(payload)
    job = payload_job(message)
    _refuse_unserved(app, job)
    task_id = task_id or refund_task_id(job, message.get("refund_id")) or str(uuid.uuid4())
    # The ledger first, as for an issue: a refund whose message is lost must
    # not leave its receipt live. The sweeper re-sends it when it is due.
    ledger = _ledger(app)
    state = ledger.receive_cancel(
        job, task_id=task_id, cancel=message, resend_after=_resend_after(app)
    )
    if state == "done":
        _not_reused(app, task_id, job=job, op="cancel")
        return task_id
    if state == "cancelled":
        # Nothing left to cancel, and nothing recorded: the duplicate's event, at once.
        return end_settled(
            ledger, _events(app), op="cancel", state=state, message=message, task_id=task_id
        )
    return _send(app, CANCEL_TASK, message, task_id)
