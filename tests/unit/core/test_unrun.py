"""What a message Celery discarded unrun does to its job (worker/core/unrun.py)."""

from __future__ import annotations

import pytest

from tests.support.memory import Clock, MemoryStore
from worker.core.terminal import TerminalPublisher
from worker.core.unrun import EXPIRED, REVOKED, Unrun, end_unrun

IMP_UID = "imp_unrun"
PAYLOAD = {"imp_uid": IMP_UID, "identifier_sealed": "sealed"}


def terminal(store: MemoryStore, task_id: str) -> TerminalPublisher:
    return TerminalPublisher(
        events=store.events,
        store=store,
        task_id=task_id,
        attempts=1,
        imp_uid=IMP_UID,
        merchant_uid=None,
    )


@pytest.mark.parametrize("reason", [EXPIRED, REVOKED])
def test_the_messages_received_job_ends_failed_with_its_one_event(reason: str) -> None:
    store = MemoryStore(Clock())
    store.receive(IMP_UID, task_id="t1", payload=PAYLOAD, resend_after=60)
    done = end_unrun(store, terminal(store, "t1"), op="issue", reason=reason, carried_fence=None)
    assert done is Unrun.JOB_ENDED
    view = store.view(IMP_UID)
    assert view is not None and view.state == "failed"
    assert IMP_UID not in store.due
    [event] = store.events_of("t1")
    assert (event.type, event.data["error"]["reason"]) == ("cash_receipt.failed", reason)
    # A redelivery of the same message publishes nothing more.
    again = end_unrun(store, terminal(store, "t1"), op="issue", reason=reason, carried_fence=None)
    assert again is Unrun.LEFT
    assert len(store.events_of("t1")) == 1


def test_a_job_held_live_by_another_delivery_is_left_to_it() -> None:
    store = MemoryStore(Clock())
    store.receive(IMP_UID, task_id="t1", payload=PAYLOAD, resend_after=60)
    held = store.claim(IMP_UID, task_id="t1", payload=PAYLOAD)
    assert held.kind == "claimed"
    done = end_unrun(store, terminal(store, "t1"), op="issue", reason=EXPIRED, carried_fence=None)
    assert done is Unrun.LEFT
    assert store.events_of("t1") == []
    view = store.view(IMP_UID)
    assert view is not None and view.state == "in_flight"


def test_a_duplicate_of_another_tasks_job_publishes_alone() -> None:
    store = MemoryStore(Clock())
    store.receive(IMP_UID, task_id="owner", payload=PAYLOAD, resend_after=60)
    done = end_unrun(store, terminal(store, "dup"), op="cancel", reason=REVOKED, carried_fence=None)
    assert done is Unrun.PUBLISHED
    [event] = store.events_of("dup")
    assert event.type == "cash_receipt.cancel_failed"
    view = store.view(IMP_UID)
    assert view is not None and (view.state, view.task_id) == ("received", "owner")


@pytest.mark.parametrize("op", ["issue", "cancel"])
def test_a_job_whose_last_request_is_unsettled_is_not_failed(op: str) -> None:
    """A retry's message expired after an earlier attempt's POST (or DELETE) went unanswered:
    the provider may have acted on it, so failing the job now could report as failed a
    receipt that exists. The job is left for the sweeper, whose run looks first and
    publishes the message's one event."""
    clock = Clock()
    store = MemoryStore(clock)
    store.receive(IMP_UID, task_id="t1", payload=PAYLOAD, resend_after=60)
    claim = store.claim(IMP_UID, task_id="t1", payload=PAYLOAD)
    assert store.note_sent(IMP_UID, fence=claim.fence, at=clock(), op="issue")
    assert store.extend(IMP_UID, fence=claim.fence, seconds=5, error={"reason": "outcome_unknown"})
    clock.now += 3600  # the hold passed: nothing owns the job any more
    done = end_unrun(store, terminal(store, "t1"), op=op, reason=EXPIRED, carried_fence=claim.fence)
    assert done is Unrun.LEFT
    assert store.events_of("t1") == []
    view = store.view(IMP_UID)
    assert view is not None and view.state == "in_flight" and view.sent_at is not None
