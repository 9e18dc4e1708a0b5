"""What a message Celery discarded unrun does to its job (worker/core/unrun.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.memory import Clock, MemoryStore
from worker.core.ports import Claim
from worker.core.terminal import TerminalPublisher
from worker.core.types import JobKey, Receipt
from worker.core.unrun import EXPIRED, REVOKED, Unrun, end_unrun

IMP_UID = "imp_unrun"
PAYLOAD = {"imp_uid": IMP_UID, "identifier_sealed": "sealed"}


def terminal(store: MemoryStore, task_id: str) -> TerminalPublisher:
    return TerminalPublisher(
        events=store.events,
        store=store,
        task_id=task_id,
        attempts=1,
        job=JobKey.payment(IMP_UID),
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


def test_a_duplicate_of_an_issued_payment_hears_of_its_receipt() -> None:
    """Had the message run, it would have got ``issued`` (a duplicate) with the receipt;
    a failure would tell its consumer the payment has none."""
    store = MemoryStore(Clock())
    store.receive(IMP_UID, task_id="t1", payload=PAYLOAD, resend_after=60)
    claim = store.claim(IMP_UID, task_id="t1", payload=PAYLOAD)
    receipt = Receipt(IMP_UID, "r1", "12345678", "person", 1000, 91, None, 1, None)
    assert terminal(store, "t1").finish(fence=claim.fence, issued=receipt)
    done = end_unrun(store, terminal(store, "t2"), op="issue", reason=EXPIRED, carried_fence=None)
    assert done is Unrun.PUBLISHED
    [event] = store.events_of("t2")
    assert (event.type, event.data["duplicate"]) == ("cash_receipt.issued", True)
    assert event.data["receipt"]["receipt_tid"] == "r1"


class _SendsBetween(MemoryStore):
    """A store where a delivery whose lease lapsed sends its POST between the hook's
    view and its claim."""

    sent = False

    def claim(self, imp_uid: str, **kwargs: Any) -> Claim:
        if not self.sent:
            self.sent = True
            owner = super().claim(imp_uid, task_id="t1", payload=PAYLOAD)
            assert self.note_sent(imp_uid, fence=owner.fence, at=self.now(), op="issue")
            self.clock.now += 3600  # its lease lapses again
        return super().claim(imp_uid, **kwargs)


def test_a_request_sent_between_the_view_and_the_claim_is_not_failed() -> None:
    store = _SendsBetween(Clock())
    store.receive(IMP_UID, task_id="t1", payload=PAYLOAD, resend_after=60)
    done = end_unrun(store, terminal(store, "t1"), op="issue", reason=REVOKED, carried_fence=None)
    assert done is Unrun.LEFT
    assert store.events_of("t1") == []
    view = store.view(IMP_UID)
    assert view is not None and view.state == "received" and view.sent_at is not None
    assert IMP_UID in store.due


def test_a_waiter_does_not_inherit_the_owners_expiry() -> None:
    """Issue 14, finding 18: the waiters of an owner whose message never ran had heard its
    ``expired``. They ran; the first of them takes the job over, the others wait on it."""
    store = MemoryStore(Clock())
    store.receive(IMP_UID, task_id="t1", payload=PAYLOAD, resend_after=60)
    owner = store.claim(IMP_UID, task_id="t1", payload=PAYLOAD)
    for waiter in ("t2", "t3"):
        assert store.claim(IMP_UID, task_id=waiter, payload=PAYLOAD).kind == "busy"
    done = end_unrun(
        store, terminal(store, "t1"), op="issue", reason=EXPIRED, carried_fence=owner.fence
    )
    assert done is Unrun.JOB_ENDED
    [event] = store.events_of("t1")
    assert event.data["error"]["reason"] == EXPIRED
    assert store.events_of("t2") == store.events_of("t3") == []
    view = store.view(IMP_UID)
    assert view is not None and (view.state, view.task_id) == ("received", "t2")
    assert IMP_UID in store.due and IMP_UID not in store.dead
    heir = store.claim(IMP_UID, task_id="t2", payload=PAYLOAD)
    assert heir.kind == "claimed"
    receipt = Receipt(IMP_UID, "r1", "12345678", "person", 1000, 91, None, 1, None)
    assert terminal(store, "t2").finish(fence=heir.fence, issued=receipt)
    [waited] = store.events_of("t3")
    assert (waited.type, waited.data["receipt"]["receipt_tid"]) == ("cash_receipt.issued", "r1")


def test_an_unrun_owner_with_no_waiter_ends_its_job_failed() -> None:
    store = MemoryStore(Clock())
    store.receive(IMP_UID, task_id="t1", payload=PAYLOAD, resend_after=60)
    owner = store.claim(IMP_UID, task_id="t1", payload=PAYLOAD)
    end_unrun(store, terminal(store, "t1"), op="issue", reason=REVOKED, carried_fence=owner.fence)
    view = store.view(IMP_UID)
    assert view is not None and view.state == "failed"
    assert IMP_UID in store.dead and IMP_UID not in store.due


def test_an_unrun_refund_of_a_job_with_no_receipt_leaves_it_to_its_confirmation() -> None:
    """Issue 14, finding 10: a refund that came first and was never run ends as a
    cancel_failed; the job, which has no receipt, is not recorded issued: the
    confirmation that follows re-opens it and issues."""
    store = MemoryStore(Clock())
    refund = {"imp_uid": IMP_UID, "reason": "refund"}
    assert store.receive_cancel(IMP_UID, task_id="r1", cancel=refund, resend_after=60) == "received"
    done = end_unrun(store, terminal(store, "r1"), op="cancel", reason=EXPIRED, carried_fence=None)
    assert done is Unrun.JOB_ENDED
    [event] = store.events_of("r1")
    assert event.type == "cash_receipt.cancel_failed"
    view = store.view(IMP_UID)
    assert view is not None and view.state == "failed"
    assert store.receive(IMP_UID, task_id="t1", payload=PAYLOAD, resend_after=60) == "received"
    assert store.claim(IMP_UID, task_id="t1", payload=PAYLOAD).kind == "claimed"
