"""The store keeps the port's typed values in a record's fields, as earlier releases did.

The field names and value formats are a contract with deployed data (issue 13 moved
them from the core into worker/adapters/store/record.py without changing them);
tests/integration/test_layout_compat.py checks the same against a captured fixture.
"""

from __future__ import annotations

import json

import pytest

from tests.support.memory import Clock, MemoryStore
from worker.adapters.store.record import (
    answered_fields,
    cancelled_fields,
    job_view,
    sent_at,
    sent_fields,
)
from worker.core.types import JobKey, Receipt

#: A cancelled receipt: imp_uid, receipt_tid, apply_num, type, amount, vat, url, applied, cancelled.
RECEIPT = Receipt("imp_1", "t", "A1", "personal", 1000, 91, None, 1, 2)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({}, None),
        ({"sent_at": ""}, None),  # answered: nothing to settle
        ({"sent_at": "1700000000.25"}, 1700000000.25),
        ({"sent_at": "junk"}, None),
    ],
)
def test_sent_at(record: dict[str, str], expected: float | None) -> None:
    """The record's send time, while unsettled."""
    assert sent_at(record) == expected


def test_the_notes_write_the_fields_earlier_releases_wrote() -> None:
    assert sent_fields(at=1700000000.25, op="cancel") == {
        "sent_at": "1700000000.25",
        "sent_op": "cancel",
    }
    assert answered_fields() == {"sent_at": ""}
    # Since issue 16, beside them: which request, so that its retry sends the same key.
    assert sent_fields(at=1.5, op="issue", operation="issue:3")["sent_operation"] == "issue:3"
    assert cancelled_fields(None) == {"cancelled_receipt": "", "cancel_step": "cancelled"}
    written = cancelled_fields(RECEIPT)
    assert json.loads(written["cancelled_receipt"]) == RECEIPT.as_dict()


def test_a_record_of_an_older_release_reads_as_a_view() -> None:
    """Without ``sent_op`` (older code) the job's own op sent it; a receipt kept with
    fewer fields than today's reads with the rest None."""
    record = {
        "state": "in_flight",
        "task_id": "t-1",
        "op": "cancel",
        "payload": json.dumps({"imp_uid": "imp_1", "amount": 1000}),
        "cancel": json.dumps({"imp_uid": "imp_1", "amount": 300}),
        "sent_at": "12.5",
        "cancel_step": "cancelled",
        "cancelled_receipt": json.dumps({"apply_num": "A1"}),
        "fence": "3",
    }
    job = job_view(JobKey.payment("imp_1"), record)
    assert (job.state, job.task_id, job.op) == ("in_flight", "t-1", "cancel")
    assert job.payload == {"imp_uid": "imp_1", "amount": 1000}
    assert job.cancel == {"imp_uid": "imp_1", "amount": 300}
    assert (job.sent_at, job.sent_op, job.cancel_done) == (12.5, None, True)
    assert job.cancelled_receipt is not None
    assert (job.cancelled_receipt.imp_uid, job.cancelled_receipt.apply_num) == ("imp_1", "A1")
    assert job.cancelled_receipt.receipt_tid is None


def test_a_view_reads_back_what_the_notes_wrote() -> None:
    """The in-memory store keeps the same fields as the ledger, fenced the same way."""
    store = MemoryStore(Clock())
    store.receive("imp_1", task_id="t-1", payload={"imp_uid": "imp_1"}, resend_after=60)
    claim = store.claim("imp_1", task_id="t-1", payload={"imp_uid": "imp_1"})
    assert store.note_sent("imp_1", fence=claim.fence, at=5.0, op="issue")
    assert not store.note_sent("imp_1", fence=claim.fence + 1, at=6.0, op="issue")
    job = store.view("imp_1")
    assert job is not None
    assert (job.sent_at, job.sent_op, job.payload) == (5.0, "issue", {"imp_uid": "imp_1"})
    assert store.note_answered("imp_1", fence=claim.fence)
    assert store.note_cancelled("imp_1", fence=claim.fence, receipt=RECEIPT)
    job = store.view("imp_1")
    assert job is not None
    assert (job.sent_at, job.cancel_done, job.cancelled_receipt) == (None, True, RECEIPT)
    assert store.view("imp_2") is None
