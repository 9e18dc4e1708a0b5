"""A ledger record's hash fields, and how the job-store port's typed values are kept in them.

The core reads a job as a :class:`~worker.core.ports.JobView` and records its steps
by typed notes (:class:`~worker.core.ports.JobStore`); only the store knows that a
record is a Redis hash of strings, and what each field is called. The field names
are a contract with deployed data (records written by an earlier release are
finished by the next): never rename one. The scripts (worker/adapters/store/lua/)
spell the same names.

Both the Redis ledger and the in-memory store of the tests (tests/support/memory.py)
read and write records through these functions, so the two keep one layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from worker.core.ports import JobView
from worker.core.types import JobKey, Receipt

#: When the job's last POST or DELETE was sent (epoch seconds, ``repr`` of a float),
#: while its outcome is unsettled; empty (or absent) once the provider answered it.
SENT_AT_FIELD = "sent_at"
#: Beside it, which operation sent that request (``issue`` or ``cancel``): a refund that
#: took over an issue waits out the issue's POST, but only settles a DELETE of its own.
#: Read only while ``sent_at`` is set; a record without it (older code) means the job's op.
SENT_OP_FIELD = "sent_op"
#: An external receipt's or a V2 payment's balance after its partial refunds (JSON;
#: JobView.balance).
BALANCE_FIELD = "balance"
#: Beside it, the step and generation of that request (OperationId.sent): a retry of a
#: request that got no answer sends it again under the same idempotency key.
SENT_OPERATION_FIELD = "sent_operation"
#: When any attempt last sent a DELETE for the payment (epoch seconds, ``repr`` of a float).
#: Never emptied, and kept across a job's end and re-opening: i'mport may act on a DELETE
#: late, so no POST goes out until IAMPORT_SETTLE_SECONDS after it (issue 14, finding 14).
DELETE_SENT_AT_FIELD = "delete_sent_at"
#: The refund's step done so far (``cancelled``), so that a retry after the cancel only
#: re-issues. The scripts clear it when a new refund is recorded or claims a finished job,
#: and when the job is re-opened or handed to a task recorded behind the refund.
CANCEL_STEP_FIELD = "cancel_step"
#: The value of :data:`CANCEL_STEP_FIELD` once the live receipt is cancelled.
CANCELLED_STEP = "cancelled"
#: Its value once another refund took over a job whose cancel step was done (claim.lua).
INHERITED_STEP = "inherited"
#: Beside it, the receipt the cancel step cancelled (JSON; empty: there was none). Kept
#: after the refund ends: a repeated refund event names it.
CANCELLED_RECEIPT_FIELD = "cancelled_receipt"

_RECEIPT_FIELDS = tuple(field.name for field in fields(Receipt))


def job_view(job: JobKey, record: Mapping[str, str]) -> JobView:
    """A record, as read from the store (text fields), as the core reads it."""
    # Only a V1 payment's receipt is named by an imp_uid; an older release kept none.
    imp_uid = job.imp_uid
    return JobView(
        state=record.get("state", ""),
        task_id=record.get("task_id", ""),
        op=record.get("op") or "issue",
        payload=_json(record.get("payload")),
        cancel=_json(record.get("cancel")),
        sent_at=sent_at(record),
        delete_sent_at=_seconds(record.get(DELETE_SENT_AT_FIELD)),
        sent_op=record.get(SENT_OP_FIELD) or None,
        sent_operation=record.get(SENT_OPERATION_FIELD) or None,
        balance=_json(record.get(BALANCE_FIELD)),
        failed_before=bool(record.get("last_error")),
        cancel_done=record.get(CANCEL_STEP_FIELD) == CANCELLED_STEP,
        cancel_inherited=record.get(CANCEL_STEP_FIELD) == INHERITED_STEP,
        cancelled_receipt=_receipt(imp_uid, record.get(CANCELLED_RECEIPT_FIELD)),
        has_receipt=bool(record.get("receipt")),
        receipt=_receipt(imp_uid, record.get("receipt")),
    )


def sent_at(record: Mapping[str, str]) -> float | None:
    """The unsettled send time a record holds, or None (answered, or unreadable)."""
    return _seconds(record.get(SENT_AT_FIELD))


def _seconds(raw: str | None) -> float | None:
    """A kept time (epoch seconds), or None: empty, absent or unreadable."""
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def sent_fields(
    *, at: float, op: str, delete: bool = False, operation: str | None = None
) -> dict[str, str]:
    """The fields :meth:`~worker.core.ports.JobStore.note_sent` writes; a DELETE's time
    also goes to the field no answer empties."""
    fields = {SENT_AT_FIELD: repr(at), SENT_OP_FIELD: op}
    if operation is not None:
        fields[SENT_OPERATION_FIELD] = operation
    if delete:
        fields[DELETE_SENT_AT_FIELD] = repr(at)
    return fields


def answered_fields() -> dict[str, str]:
    """The fields :meth:`~worker.core.ports.JobStore.note_answered` writes: ``sent_at`` emptied.

    Emptied rather than deleted, as since the field was added: readers take both as settled.
    """
    return {SENT_AT_FIELD: ""}


def cancelled_fields(
    receipt: Receipt | None, balance: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The fields :meth:`~worker.core.ports.JobStore.note_cancelled` writes, in one write:
    the balance too, when the refund leaves one the job records."""
    fields = {BALANCE_FIELD: json.dumps(dict(balance), sort_keys=True)} if balance else {}
    return fields | {
        CANCELLED_RECEIPT_FIELD: json.dumps(receipt.as_dict()) if receipt else "",
        CANCEL_STEP_FIELD: CANCELLED_STEP,
    }


def _json(raw: str | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw else None


def _receipt(imp_uid: str | None, raw: str | None) -> Receipt | None:
    """A kept receipt; a field an older release did not write reads as None."""
    if not raw:
        return None
    kept: Any = json.loads(raw)
    if not isinstance(kept, dict):
        return None  # an unreadable receipt is none: the core then looks it up
    values: dict[str, Any] = {name: kept.get(name) for name in _RECEIPT_FIELDS}
    return Receipt(**{**values, "imp_uid": values["imp_uid"] or imp_uid})
