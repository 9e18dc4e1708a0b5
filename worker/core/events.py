"""What a result event says: its types, its ``data``, and a failure's ``error``.

Decided in one place. The ingress, which dead-letters an entry it cannot read,
the tasks, which end a job, and the store's scripts, which copy an owner's event
for the tasks that waited on it, all publish them; none has to import another's
machinery to agree on them. The README lists every key.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.core.contract import EXTERNAL, PORTONE
from worker.core.ports import TaskEnd
from worker.core.schemas import PAYLOAD_UNREADABLE, InvalidPayload
from worker.core.types import JobKey

#: What every result event's type starts with; the rest says how the job ended.
EVENT_PREFIX = "cash_receipt."
ISSUED = EVENT_PREFIX + "issued"
FAILED = EVENT_PREFIX + "failed"
CANCELLED = EVENT_PREFIX + "cancelled"
CANCEL_FAILED = EVENT_PREFIX + "cancel_failed"


def event_kind(event_type: str) -> str:
    """How a job ended, from its event's type: ``issued``, ``failed``, ``cancelled``..."""
    return event_type.removeprefix(EVENT_PREFIX)


# Whether a retry of the same job could still help, per failure reason.
# An unreadable payload opens again once the key that sealed it is configured again.
RETRYABLE_REASONS = frozenset(
    {
        "retries_exhausted",
        "auth",
        "not_eligible",
        "not_paid",
        "not_configured",
        PAYLOAD_UNREADABLE,
    }
)


def invalid_detail(error: InvalidPayload) -> dict[str, Any]:
    """The ``error`` of an invalid-payload event, or of an unreadable one (its reason)."""
    return {
        "error": {
            "reason": error.reason,
            "status": None,
            "code": None,
            "message": str(error),
            "retryable": error.reason in RETRYABLE_REASONS,
            "fields": error.errors,
        }
    }


def failure_detail(
    reason: str, *, status: int | None, code: int | None, message: str
) -> dict[str, Any]:
    """The ``error`` of a failure event; ``message`` is already masked."""
    return {
        "error": {
            "reason": reason,
            "status": status,
            "code": code,
            "message": message,
            "retryable": reason in RETRYABLE_REASONS,
        }
    }


#: Why an issue message ends failed once its payment's receipt was cancelled.
CANCELLED_MESSAGE = "the receipt of this payment was cancelled"


#: Why a partial refund's re-issue fails when the job keeps no payload to issue from.
NO_PAYLOAD_MESSAGE = (
    "the receipt was cancelled, but no payload is kept to re-issue the balance from "
    "(the ledger record expired after LEDGER_RETENTION, or this worker never issued the "
    "receipt): send the confirmation again, or replay with --identifier-stdin"
)


def no_payload_detail() -> dict[str, Any]:
    """The ``error`` of a partial refund that cancelled a receipt it cannot replace."""
    return failure_detail("no_payload", status=None, code=None, message=NO_PAYLOAD_MESSAGE)


def cancelled_detail() -> dict[str, Any]:
    """The ``error`` of an issue message that came after its receipt was cancelled.

    The runner publishes it for a late message, and :func:`waiter_event` puts it
    in the event of the issue messages still waiting when the cancellation ended.
    """
    return failure_detail("cancelled", status=None, code=None, message=CANCELLED_MESSAGE)


def event_data(
    *,
    task_id: str,
    job: JobKey | None,
    merchant_uid: str | None,
    attempts: int,
    duplicate: bool,
    detail: Mapping[str, Any],
    occurred_at: float,
) -> dict[str, Any]:
    """The ``data`` field of a result event (the README lists every key).

    ``job`` None: the payload named no job that can be read (its event still goes
    out, under its task id). ``occurred_at`` (epoch seconds) is the caller's clock,
    the store's for the core: the core reads no clock of its own.
    """
    when = datetime.fromtimestamp(occurred_at, UTC)
    return {
        "event_id": uuid.uuid4().hex,
        "occurred_at": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        **job_fields(job),
        "merchant_uid": job.id if job is not None and job.kind == EXTERNAL else merchant_uid,
        "task_id": task_id,
        "attempts": attempts,
        "duplicate": duplicate,
        **detail,
    }


#: The event types a refund's task ends with (a partial refund's first event too).
CANCEL_EVENTS = frozenset({CANCELLED, CANCEL_FAILED})


def task_end_of(event: Mapping[str, Any] | None) -> TaskEnd | None:
    """What a task's (first) terminal event says of how it ended: its job and operation."""
    if event is None:
        return None
    key = event["data"].get("receipt_key")
    return TaskEnd(
        receipt_key=key if isinstance(key, str) else None,
        op="cancel" if event["type"] in CANCEL_EVENTS else "issue",
    )


def job_fields(job: JobKey | None) -> dict[str, Any]:
    """What names the job in every event and outcome log line: ``receipt_key``,
    ``provider``, ``kind``, ``imp_uid`` (a V1 payment's id; null for another kind) and, for
    a PortOne V2 job, ``payment_id`` (absent for a V1 one, whose events keep their shape)."""
    if job is None:
        return {"receipt_key": None, "provider": None, "kind": None, "imp_uid": None}
    fields: dict[str, Any] = {
        "receipt_key": job.receipt_key,
        "provider": job.provider,
        "kind": job.kind,
        "imp_uid": job.imp_uid,
    }
    if job.provider == PORTONE:
        fields["payment_id"] = job.id
    return fields


def external_id(job: JobKey | None) -> dict[str, Any]:
    """A V1 external receipt's own id, ``merchant_uid``, for an outcome log line (events
    carry it already, beside the payment's). Nothing for another kind of job."""
    if job is not None and job.provider != PORTONE and job.kind == EXTERNAL:
        return {"merchant_uid": job.id}
    return {}


@dataclass(frozen=True)
class WaiterEvent:
    """The event of a message that waited on a job, as the job ends: a template.

    The store publishes it for each waiter in the same transition as the
    owner's event, filling in what only it knows then: the waiter's ``task_id``,
    an ``event_id`` derived from the owner's event, and, when ``live_receipt``,
    the receipt the job's record holds (the one a refund's transition left live).
    """

    event_type: str
    #: The event's data, but for ``task_id`` and ``event_id``.
    data: dict[str, Any]
    live_receipt: bool


def waiter_event(
    *,
    state: str,
    event_type: str,
    data: Mapping[str, Any],
    extra_event: tuple[str, Mapping[str, Any]] | None = None,
) -> WaiterEvent:
    """What a waiting issue message gets when its job ends ``state`` with the owner's
    ``event_type`` and ``data``: always a duplicate of the owner's outcome.

    - ``issued``: ``issued``, with the live receipt. When the owner's own event is
      another one (a refund's re-issue, a cancel_failed), its error and receipt go.
    - ``failed``: ``failed``, with the owner's error: an issue's failure, a
      cancel_failed of a job with no receipt, or (``extra_event``) the failure of
      a partial refund's re-issue.
    - ``cancelled`` (a full refund): ``failed``, reason ``cancelled``: that
      message will never issue.
    """
    if state == "failed" and extra_event is not None:
        event_type, data = extra_event
    template = {key: value for key, value in data.items() if key not in {"task_id", "event_id"}}
    template["duplicate"] = True
    if state == "cancelled":
        template.pop("receipt", None)
        template["error"] = cancelled_detail()["error"]
        return WaiterEvent(FAILED, template, live_receipt=False)
    if state == "failed":
        template.pop("receipt", None)
        return WaiterEvent(FAILED, template, live_receipt=False)
    if event_type == ISSUED:
        return WaiterEvent(ISSUED, template, live_receipt=False)
    template.pop("error", None)
    template.pop("receipt", None)
    return WaiterEvent(ISSUED, template, live_receipt=True)
