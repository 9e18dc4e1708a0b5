"""The two JobStores keep one contract: the Redis ledger and the in-memory store.

tests/support/memory.py copies the ledger's Lua (worker/adapters/store/lua/) branch for
branch, and the core's unit tests trust it. Each scenario here runs through the
JobStore port on both, with the same clock moves, and expects the same answers, so
the copy cannot drift from the scripts unseen. Time moves by a clock each store
takes; nothing sleeps.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.memory import Clock, MemoryStore
from tests.support.redis_server import RedisServer
from worker.adapters.store.events import EventPublisher as RedisEvents
from worker.adapters.store.ledger import Ledger
from worker.core.events import CANCELLED, FAILED, ISSUED, cancelled_detail
from worker.core.ports import Claim, ClaimKind, EventPublisher, JobStore

pytestmark = pytest.mark.integration

LEASE = 30.0
PAYLOAD = {"imp_uid": "x", "identifier_sealed": "gAAAA"}
#: A full refund's message (no amount).
REFUND = {"imp_uid": "x", "reason": "refund"}
RECEIPT = {"apply_num": "123"}


@dataclass
class Store:
    """One JobStore, the clock it reads, and the events it published, by task."""

    jobs: JobStore
    clock: Clock
    events: Callable[[str], list[tuple[str, dict[str, Any]]]]
    #: The event port beside it, publishing to the same stream.
    publisher: EventPublisher
    #: Task ids are this test's own: a task's end marker outlives the test in Redis.
    prefix: str = ""

    def task(self, name: str) -> str:
        return f"{self.prefix}{name}"


def _memory() -> Store:
    clock = Clock(start=time.time())
    store = MemoryStore(clock, lease_seconds=LEASE)
    return Store(
        store,
        clock,
        lambda task: [(e.type, dict(e.data)) for e in store.events_of(task)],
        store.events,
    )


def _redis(server: RedisServer) -> Store:
    # Real time to start from: the stream's entry ids are Redis's own clock.
    clock = Clock(start=time.time())
    client = server.client()
    stream = f"test.contract.{uuid.uuid4().hex[:8]}"
    ledger = Ledger(
        client,
        stream=stream,
        event_retention_seconds=3600,
        retention_seconds=600,
        lease_seconds=LEASE,
        clock=clock,
    )

    def events(task_id: str) -> list[tuple[str, dict[str, Any]]]:
        found = [(f["type"], json.loads(f["data"])) for _, f in client.xrange(stream)]
        return [(kind, data) for kind, data in found if data.get("task_id") == task_id]

    publisher = RedisEvents(client, stream=stream, retention_seconds=3600)
    return Store(ledger, clock, events, publisher)


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "redis":
        found = _redis(request.getfixturevalue("redis_server"))
    else:
        found = _memory()
    found.prefix = f"{uuid.uuid4().hex[:8]}-"
    return found


def claimed(fence: int, attempt: int, *, resumed: bool = False, op: str = "issue") -> Claim:
    return Claim(ClaimKind.CLAIMED, fence=fence, attempt=attempt, resumed=resumed, op=op)


def finish(
    jobs: JobStore, imp_uid: str, fence: int, task_id: str, state: str = "issued", **more: Any
) -> str | None:
    """End the claim: ``issued`` (with RECEIPT), ``cancelled`` or ``failed``."""
    event_type = {"issued": ISSUED, "cancelled": CANCELLED, "failed": FAILED}[state]
    if state == "failed":
        more.setdefault("error", {"reason": "rejected"})
    else:
        more.setdefault("receipt", RECEIPT)
    return jobs.finish(
        imp_uid,
        fence=fence,
        state=state,
        task_id=task_id,
        event_type=event_type,
        data={"imp_uid": imp_uid, "task_id": task_id, "duplicate": False},
        **more,
    )


def test_a_fresh_job_is_received_then_claimed(store: Store, imp_uid: str) -> None:
    jobs = store.jobs
    assert jobs.now() == store.clock()
    assert jobs.view(imp_uid) is None
    assert (
        jobs.receive(imp_uid, task_id=store.task("t1"), payload=PAYLOAD, resend_after=60)
        == "received"
    )
    assert (
        jobs.receive(imp_uid, task_id=store.task("t2"), payload=PAYLOAD, resend_after=60)
        == "received"
    )
    view = jobs.view(imp_uid)
    assert view is not None
    assert (view.state, view.task_id, view.op, view.payload) == (
        "received",
        store.task("t1"),
        "issue",
        PAYLOAD,
    )
    assert (view.cancel, view.sent_at, view.cancel_done) == (None, None, False)

    assert jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD) == claimed(1, 1)
    view = jobs.view(imp_uid)
    assert view is not None
    assert (view.state, view.task_id) == ("in_flight", store.task("t1"))
    # A job nobody received is claimed all the same.
    assert jobs.claim(f"{imp_uid}-b", task_id=store.task("t9"), payload=PAYLOAD) == claimed(1, 1)


def test_a_leased_job_is_busy_but_to_its_own_message_with_the_fence(
    store: Store, imp_uid: str
) -> None:
    jobs = store.jobs
    assert jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD) == claimed(1, 1)
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == Claim(ClaimKind.BUSY)
    # A copy of t1's message without the fence header (a duplicate delivery) is busy too.
    assert jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD) == Claim(ClaimKind.BUSY)
    store.clock.advance(LEASE - 1)
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == Claim(ClaimKind.BUSY)
    # t1's own retry, carrying the current fence, takes its lease over: it may have sent.
    assert jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD, fence=1) == claimed(
        2, 2, resumed=True
    )


def test_an_expired_lease_is_taken_over(store: Store, imp_uid: str) -> None:
    jobs = store.jobs
    assert jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD) == claimed(1, 1)
    store.clock.advance(LEASE + 1)
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == claimed(
        2, 2, resumed=True
    )
    view = jobs.view(imp_uid)
    assert view is not None
    assert (view.state, view.task_id) == ("in_flight", store.task("t2"))


def test_an_extended_lease_holds_until_its_new_end(store: Store, imp_uid: str) -> None:
    jobs = store.jobs
    assert jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD) == claimed(1, 1)
    assert jobs.extend(imp_uid, fence=1, seconds=100, error={"reason": "unavailable"})
    store.clock.advance(LEASE + 1)
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == Claim(ClaimKind.BUSY)
    store.clock.advance(100)
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == claimed(
        2, 2, resumed=True
    )


def test_writes_of_a_claim_taken_over_are_refused(store: Store, imp_uid: str) -> None:
    jobs = store.jobs
    jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD)
    store.clock.advance(LEASE + 1)
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == claimed(
        2, 2, resumed=True
    )
    now = jobs.now()
    error = {"reason": "unavailable"}

    assert jobs.note_sent(imp_uid, fence=1, at=now, op="issue") is False
    assert jobs.note_answered(imp_uid, fence=1) is False
    assert jobs.note_cancelled(imp_uid, fence=1, receipt=None) is False
    assert jobs.extend(imp_uid, fence=1, seconds=5, error=error) is False
    assert jobs.park(imp_uid, fence=1, until=now + 5, error=error) is False
    assert finish(jobs, imp_uid, 1, store.task("t1")) is None
    view = jobs.view(imp_uid)
    assert view is not None
    assert (view.state, view.task_id, view.sent_at, view.cancel_done) == (
        "in_flight",
        store.task("t2"),
        None,
        False,
    )
    assert store.events(store.task("t1")) == []

    assert jobs.note_sent(imp_uid, fence=2, at=now, op="issue") is True
    view = jobs.view(imp_uid)
    assert view is not None
    assert (view.sent_at, view.sent_op) == (now, "issue")


def test_finish_publishes_once_and_a_redelivery_is_done(store: Store, imp_uid: str) -> None:
    jobs = store.jobs
    jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD)
    assert finish(jobs, imp_uid, 1, store.task("t1")) is not None
    assert finish(jobs, imp_uid, 1, store.task("t1")) is None
    data = {"imp_uid": imp_uid, "task_id": store.task("t1"), "duplicate": False}
    assert store.events(store.task("t1")) == [(ISSUED, data)]
    view = jobs.view(imp_uid)
    assert view is not None
    assert view.state == "issued"

    assert jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD) == Claim(ClaimKind.DONE)
    issued = Claim(ClaimKind.ISSUED, receipt=RECEIPT)
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == issued
    assert (
        jobs.receive(imp_uid, task_id=store.task("t3"), payload=PAYLOAD, resend_after=60)
        == "issued"
    )
    assert store.events(store.task("t1")) == [(ISSUED, data)]


def test_a_waiter_hears_the_owners_receipt(store: Store, imp_uid: str) -> None:
    """A message that found the job busy gets its own (duplicate) event when it ends."""
    jobs = store.jobs
    jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD)
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == Claim(ClaimKind.BUSY)
    finish(jobs, imp_uid, 1, store.task("t1"))
    [(kind, data)] = store.events(store.task("t2"))
    assert (kind, data["duplicate"], data["imp_uid"]) == (ISSUED, True, imp_uid)


def test_a_waiter_with_an_outcome_of_its_own_gets_no_second_event(
    store: Store, imp_uid: str
) -> None:
    jobs = store.jobs
    jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD)
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == Claim(ClaimKind.BUSY)

    def publish() -> bool:
        return store.publisher.publish_terminal(
            event_type=FAILED,
            task_id=store.task("t2"),
            imp_uid=imp_uid,
            merchant_uid=None,
            attempts=1,
            duplicate=False,
            detail={"error": {"reason": "invalid_payload"}},
        ).new

    assert publish() is True
    finish(jobs, imp_uid, 1, store.task("t1"))
    assert [kind for kind, _ in store.events(store.task("t2"))] == [FAILED]
    assert publish() is False
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == Claim(ClaimKind.DONE)


def test_a_refund_claims_an_issued_job_and_ends_it_cancelled(store: Store, imp_uid: str) -> None:
    jobs = store.jobs
    jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD)
    finish(jobs, imp_uid, 1, store.task("t1"))
    assert jobs.claim(imp_uid, task_id=store.task("r1"), payload=REFUND, op="cancel") == claimed(
        2, 1, op="cancel"
    )
    view = jobs.view(imp_uid)
    assert view is not None
    assert (view.state, view.op, view.task_id, view.cancel) == (
        "in_flight",
        "cancel",
        store.task("r1"),
        REFUND,
    )
    assert jobs.note_cancelled(imp_uid, fence=2, receipt=None) is True
    view = jobs.view(imp_uid)
    assert view is not None
    assert view.cancel_done is True

    assert finish(jobs, imp_uid, 2, store.task("r1"), state="cancelled") is not None
    cancelled = Claim(ClaimKind.CANCELLED, receipt=RECEIPT)
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == cancelled
    assert jobs.claim(imp_uid, task_id=store.task("r2"), payload=REFUND, op="cancel") == cancelled
    assert jobs.claim(imp_uid, task_id=store.task("r1"), payload=REFUND, op="cancel") == Claim(
        ClaimKind.DONE
    )
    assert (
        jobs.receive(imp_uid, task_id=store.task("t3"), payload=PAYLOAD, resend_after=60)
        == "cancelled"
    )


@pytest.mark.parametrize("answered", [False, True])
def test_a_request_sent_and_never_answered_resumes_the_next_claim(
    store: Store, imp_uid: str, answered: bool
) -> None:
    """A failed job whose POST may have landed is received again: its claim looks first."""
    jobs = store.jobs
    jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD)
    sent = jobs.now()
    assert jobs.note_sent(imp_uid, fence=1, at=sent, op="issue")
    if answered:
        assert jobs.note_answered(imp_uid, fence=1)
    assert finish(jobs, imp_uid, 1, store.task("t1"), state="failed") is not None
    view = jobs.view(imp_uid)
    assert view is not None
    assert (view.state, view.sent_at) == ("failed", None if answered else sent)

    store.clock.advance(1)
    assert (
        jobs.receive(imp_uid, task_id=store.task("t2"), payload=PAYLOAD, resend_after=60)
        == "received"
    )
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == claimed(
        2, 1, resumed=not answered
    )


def test_a_parked_job_resumes_with_its_next_attempt(store: Store, imp_uid: str) -> None:
    jobs = store.jobs
    jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD)
    until = jobs.now() + 60
    assert jobs.park(imp_uid, fence=1, until=until, error={"reason": "rate_limited"})
    view = jobs.view(imp_uid)
    assert view is not None
    assert (view.state, view.task_id) == ("received", store.task("t1"))
    assert jobs.extend(imp_uid, fence=1, seconds=5, error={}) is False
    store.clock.advance(60)
    assert jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD) == claimed(
        2, 2, resumed=True
    )


def test_a_refund_takes_over_an_issue_not_yet_claimed(store: Store, imp_uid: str) -> None:
    """The issue's own message then finds the job cancelled, and hears of it when it ends."""
    jobs = store.jobs
    jobs.receive(imp_uid, task_id=store.task("t1"), payload=PAYLOAD, resend_after=60)
    assert jobs.claim(imp_uid, task_id=store.task("r1"), payload=REFUND, op="cancel") == claimed(
        1, 1, op="cancel"
    )
    view = jobs.view(imp_uid)
    assert view is not None
    assert (view.op, view.task_id, view.payload, view.cancel) == (
        "cancel",
        store.task("r1"),
        PAYLOAD,
        REFUND,
    )
    assert jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD) == Claim(
        ClaimKind.CANCELLED
    )

    assert finish(jobs, imp_uid, 1, store.task("r1"), state="cancelled", receipt=None) is not None
    assert [kind for kind, _ in store.events(store.task("r1"))] == [CANCELLED]
    [(kind, data)] = store.events(store.task("t1"))
    assert (kind, data["task_id"], data["duplicate"]) == (FAILED, store.task("t1"), True)
    assert data["error"] == cancelled_detail()["error"]
