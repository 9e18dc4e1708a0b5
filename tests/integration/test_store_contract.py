"""The two JobStores keep one contract: the Redis ledger and the in-memory store.

tests/support/memory.py copies the ledger's Lua (worker/adapters/store/lua/) branch for
branch, and the core's unit tests trust it. Each scenario here runs through the
JobStore port on both, with the same clock moves, and expects the same answers, so
the copy cannot drift from the scripts unseen; the refund and hand-over paths
are compared field by field (record, events, due time, history). Time moves by a
clock each store takes (the ledger's: Redis's TIME plus a ClockOffset); nothing sleeps.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import pytest
import redis

from tests.support.ledger_clock import LedgerClock
from tests.support.memory import Clock, MemoryStore
from tests.support.redis_server import RedisServer
from worker.adapters.store.clock import ClockOffset, redis_now
from worker.adapters.store.events import EventPublisher as RedisEvents
from worker.adapters.store.keys import (
    DEAD_JOBS_KEY,
    DUE_KEY,
    history_key,
    payment_receipt_key,
    terminal_key,
)
from worker.adapters.store.ledger import Ledger
from worker.core.errors import ProviderError
from worker.core.events import CANCEL_FAILED, CANCELLED, FAILED, ISSUED, cancelled_detail
from worker.core.ports import Claim, ClaimKind, EventPublisher, JobStore
from worker.core.terminal import TerminalPublisher
from worker.core.types import JobKey

pytestmark = pytest.mark.integration

LEASE = 30.0
PAYLOAD = {"imp_uid": "x", "identifier_sealed": "gAAAA"}
#: A full refund's message (no amount).
REFUND = {"imp_uid": "x", "reason": "refund"}
RECEIPT = {"apply_num": "123"}


class Moving(Protocol):
    """A store's clock, as the scenarios read and move it."""

    def __call__(self) -> float: ...

    def advance(self, seconds: float) -> None: ...


@dataclass
class Store:
    """One JobStore, the clock it reads, and the events it published, by task."""

    jobs: JobStore
    clock: Moving
    events: Callable[[str], list[tuple[str, dict[str, Any]]]]
    #: The event port beside it, publishing to the same stream.
    publisher: EventPublisher
    #: Lets a task's end marker expire, as RESULT_STREAM_RETENTION does.
    forget_marker: Callable[[str], None]
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
        lambda task: store.markers.pop(task, None) and None,
    )


def _ledger(client: redis.Redis, stream: str, offset: ClockOffset) -> Ledger:
    """The Redis store of these scenarios: its own stream, the scenarios' lease and clock."""
    return Ledger(
        client,
        stream=stream,
        event_retention_seconds=3600,
        retention_seconds=600,
        lease_seconds=LEASE,
        clock_offset=offset,
    )


def _redis(server: RedisServer) -> Store:
    client = server.client()
    clock = LedgerClock(client)
    stream = f"test.contract.{uuid.uuid4().hex[:8]}"
    ledger = _ledger(client, stream, clock.offset)

    def events(task_id: str) -> list[tuple[str, dict[str, Any]]]:
        found = [(f["type"], json.loads(f["data"])) for _, f in client.xrange(stream)]
        return [(kind, data) for kind, data in found if data.get("task_id") == task_id]

    publisher = RedisEvents(
        client, stream=stream, retention_seconds=3600, clock_offset=clock.offset
    )
    return Store(
        ledger, clock, events, publisher, lambda task: client.delete(terminal_key(task)) and None
    )


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
    assert abs(jobs.now() - store.clock()) < 1
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
            job=JobKey.payment(imp_uid),
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


# -- the same steps, the same record: refunds and hand-overs, field by field -----------

#: A partial refund's message: it cancels, then re-issues for the balance.
PARTIAL = {"imp_uid": "x", "reason": "refund", "amount": 500}
#: Both stores, with receive_cancel beside the port (the ingress's, not the core's).
Both = Ledger | MemoryStore
Steps = Callable[[Both, str, Callable[[str], str]], list[object]]


#: A record's fields that hold a time in seconds (a float); the others hold ms.
SECONDS_FIELDS = frozenset({"sent_at", "delete_sent_at"})
#: A record's fields that hold a time.
TIME_FIELDS = SECONDS_FIELDS | frozenset(
    {
        "created_at",
        "updated_at",
        "lease_until",
        "next_attempt_at",
        "pending_issue_due",
        "pending_cancel_due",
    }
)


def _fields(jobs: Both, imp_uid: str) -> dict[str, str]:
    """The record's fields but the stream entry id (each stream numbers its own)."""
    return {k: v for k, v in (jobs.raw_record(imp_uid) or {}).items() if k != "event_id"}


def _timeless(start: float, found: object) -> object:
    """A record's times (or those of records among answers) as :func:`_since` shows them.

    The ledger's clock (Redis's) runs on by the milliseconds the steps take; the
    memory store's stands still: whole seconds from one start compare equal.
    """
    if isinstance(found, list):
        return [_timeless(start, item) for item in found]
    if not isinstance(found, dict):
        return found
    return {
        key: _since(start, value, ms=key not in SECONDS_FIELDS) if key in TIME_FIELDS else value
        for key, value in found.items()
    }


def _since(start: float, value: object, *, ms: bool = True) -> str:
    """A time (epoch ms, or s), as whole seconds after ``start`` (epoch s); '' stays ''."""
    if value in {None, ""}:
        return ""
    seconds = float(cast("str", value)) / (1000 if ms else 1)
    return f"+{round(seconds - start)}s"


def _issued(jobs: JobStore, imp_uid: str, task: str) -> Claim:
    claim = jobs.claim(imp_uid, task_id=task, payload=PAYLOAD)
    finish(jobs, imp_uid, claim.fence, task, receipt={"apply_num": "1"})
    return claim


def partial_refund_with_an_issue_behind(
    jobs: Both, imp_uid: str, task: Callable[[str], str]
) -> list[object]:
    """An issue received while a partial refund runs owns the job when it ends with none."""
    _issued(jobs, imp_uid, task("t1"))
    refund = jobs.claim(imp_uid, task_id=task("r1"), payload=PARTIAL, op="cancel")
    return [
        refund,
        jobs.receive(imp_uid, task_id=task("t2"), payload=PAYLOAD, resend_after=60),
        jobs.claim(imp_uid, task_id=task("t2"), payload=PAYLOAD),
        finish(jobs, imp_uid, refund.fence, task("r1"), state="cancelled", receipt=None)
        is not None,
        _fields(jobs, imp_uid),
        jobs.claim(imp_uid, task_id=task("t2"), payload=PAYLOAD),
    ]


def refund_waiting_for_an_issue(
    jobs: Both, imp_uid: str, task: Callable[[str], str]
) -> list[object]:
    """A refund received while the issue runs takes the job over once it is issued."""
    issue = jobs.claim(imp_uid, task_id=task("t1"), payload=PAYLOAD)
    steps: list[object] = [
        jobs.receive_cancel(imp_uid, task_id=task("r1"), cancel=REFUND, resend_after=60),
        jobs.claim(imp_uid, task_id=task("r1"), payload=REFUND, op="cancel"),
        finish(jobs, imp_uid, issue.fence, task("t1"), receipt={"apply_num": "1"}) is not None,
    ]
    refund = jobs.claim(imp_uid, task_id=task("r1"), payload=REFUND, op="cancel")
    return [
        *steps,
        refund,
        finish(jobs, imp_uid, refund.fence, task("r1"), state="cancelled") is not None,
        jobs.receive_cancel(imp_uid, task_id=task("r2"), cancel=PARTIAL, resend_after=60),
    ]


def partial_refund_reissued(jobs: Both, imp_uid: str, task: Callable[[str], str]) -> list[object]:
    """A partial refund cancels, re-issues after a retry of its own, and ends with two events.

    The DELETE's time stays in the record after its answer, the job's end and a new claim
    (issue 14, finding 14: no POST before the bound after it)."""
    _issued(jobs, imp_uid, task("t1"))
    refund = jobs.claim(imp_uid, task_id=task("r1"), payload=PARTIAL, op="cancel")
    now = jobs.now()
    steps: list[object] = [
        refund,
        jobs.note_sent(imp_uid, fence=refund.fence, at=now, op="cancel", delete=True),
        jobs.note_answered(imp_uid, fence=refund.fence),
        jobs.note_cancelled(imp_uid, fence=refund.fence, receipt=None),
        jobs.note_sent(imp_uid, fence=refund.fence, at=now, op="issue"),
        jobs.extend(imp_uid, fence=refund.fence, seconds=5, error={"reason": "unavailable"}),
    ]
    retry = jobs.claim(imp_uid, task_id=task("r1"), payload=PARTIAL, op="cancel", fence=2)
    ended = jobs.finish(
        imp_uid,
        fence=retry.fence,
        state="issued",
        task_id=task("r1"),
        event_type=CANCELLED,
        data={"imp_uid": imp_uid, "task_id": task("r1")},
        receipt={"apply_num": "3"},
        extra_event=(ISSUED, {"imp_uid": imp_uid, "task_id": task("r1:2")}),
        settled=True,
    )
    return [
        *steps,
        retry,
        ended is not None,
        jobs.claim(imp_uid, task_id=task("t9"), payload=PAYLOAD),
    ]


def failed_with_waiters(jobs: Both, imp_uid: str, task: Callable[[str], str]) -> list[object]:
    """Messages that found the job taken hear its failure, each once; a new one reopens it."""
    issue = jobs.claim(imp_uid, task_id=task("t1"), payload=PAYLOAD)
    return [
        jobs.claim(imp_uid, task_id=task("t2"), payload=PAYLOAD),
        jobs.receive(imp_uid, task_id=task("t3"), payload=PAYLOAD, resend_after=60),
        jobs.note_sent(imp_uid, fence=issue.fence, at=jobs.now(), op="issue"),
        finish(jobs, imp_uid, issue.fence, task("t1"), state="failed") is not None,
        jobs.receive(imp_uid, task_id=task("t4"), payload=PAYLOAD, resend_after=60),
        _fields(jobs, imp_uid),
        jobs.claim(imp_uid, task_id=task("t4"), payload=PAYLOAD),
        jobs.claim(imp_uid, task_id=task("t2"), payload=PAYLOAD),
    ]


def _terminal(jobs: JobStore, imp_uid: str, task_id: str) -> TerminalPublisher:
    """A task's terminal publisher whose events go out through the store's finish only."""
    return TerminalPublisher(
        events=cast(EventPublisher, None),  # finish publishes through the store
        store=jobs,
        task_id=task_id,
        attempts=1,
        job=JobKey.payment(imp_uid),
        merchant_uid=None,
    )


def cancel_failed_before_any_receipt(
    jobs: Both, imp_uid: str, task: Callable[[str], str]
) -> list[object]:
    """A refund that came first fails for good: the confirmation behind it still issues."""
    refund = jobs.claim(imp_uid, task_id=task("r1"), payload=REFUND, op="cancel")
    terminal = _terminal(jobs, imp_uid, task("r1"))
    return [
        refund,
        jobs.receive(imp_uid, task_id=task("t1"), payload=PAYLOAD, resend_after=60),
        terminal.finish_cancel_failed(
            fence=refund.fence, error=ProviderError("down", status=500), reason="unavailable"
        ),
        _fields(jobs, imp_uid),
        jobs.receive(imp_uid, task_id=task("t2"), payload=PAYLOAD, resend_after=60),
        jobs.claim(imp_uid, task_id=task("t2"), payload=PAYLOAD),
    ]


def reissue_failed_with_waiters(
    jobs: Both, imp_uid: str, task: Callable[[str], str]
) -> list[object]:
    """A partial refund cancels, its re-issue fails for good: each waiter hears the failure."""
    _issued(jobs, imp_uid, task("t1"))
    refund = jobs.claim(imp_uid, task_id=task("r1"), payload=PARTIAL, op="cancel")
    steps: list[object] = [
        refund,
        jobs.receive(imp_uid, task_id=task("t2"), payload=PAYLOAD, resend_after=60),
        jobs.claim(imp_uid, task_id=task("t3"), payload=PAYLOAD),
        jobs.note_cancelled(imp_uid, fence=refund.fence, receipt=None),
    ]
    failure = {"reason": "rejected"}
    ended = jobs.finish(
        imp_uid,
        fence=refund.fence,
        state="failed",
        task_id=task("r1"),
        event_type=CANCELLED,
        data={"imp_uid": imp_uid, "task_id": task("r1"), "receipt": RECEIPT},
        receipt=RECEIPT,
        error=failure,
        extra_event=(FAILED, {"imp_uid": imp_uid, "task_id": task("r1"), "error": failure}),
    )
    return [
        *steps,
        ended is not None,
        _fields(jobs, imp_uid),
        jobs.claim(imp_uid, task_id=task("t2"), payload=PAYLOAD),
        jobs.claim(imp_uid, task_id=task("t3"), payload=PAYLOAD),
    ]


def unrun_owner_with_waiters(jobs: Both, imp_uid: str, task: Callable[[str], str]) -> list[object]:
    """Issue 14, finding 18: an owner that never ran hands its job to the first waiter."""
    issue = jobs.claim(imp_uid, task_id=task("t1"), payload=PAYLOAD)
    terminal = _terminal(jobs, imp_uid, task("t1"))
    steps: list[object] = [
        jobs.claim(imp_uid, task_id=task("t2"), payload=PAYLOAD),
        jobs.receive(imp_uid, task_id=task("t3"), payload=PAYLOAD, resend_after=60),
        terminal.finish_unrun(fence=issue.fence, op="issue", reason="expired", message="late"),
        _fields(jobs, imp_uid),
    ]
    heir = jobs.claim(imp_uid, task_id=task("t2"), payload=PAYLOAD)
    return [*steps, heir, finish(jobs, imp_uid, heir.fence, task("t2")) is not None]


def reopened_under_its_own_task(
    jobs: Both, imp_uid: str, task: Callable[[str], str]
) -> list[object]:
    """Issue 14, finding 13: a task recorded again, in hand or after it ended, re-opens
    nothing; another task still re-opens the failed job."""
    first = jobs.receive(imp_uid, task_id=task("t1"), payload=PAYLOAD, resend_after=60)
    issue = jobs.claim(imp_uid, task_id=task("t1"), payload=PAYLOAD)
    return [
        first,
        jobs.receive(imp_uid, task_id=task("t1"), payload=PAYLOAD, resend_after=60),
        finish(jobs, imp_uid, issue.fence, task("t1"), state="failed") is not None,
        jobs.receive(imp_uid, task_id=task("t1"), payload=PAYLOAD, resend_after=60),
        _fields(jobs, imp_uid),
        jobs.claim(imp_uid, task_id=task("t1"), payload=PAYLOAD),
        jobs.receive(imp_uid, task_id=task("t2"), payload=PAYLOAD, resend_after=60),
    ]


def refund_recorded_behind_a_failed_issue(
    jobs: Both, imp_uid: str, task: Callable[[str], str]
) -> list[object]:
    """Issue 14, finding 17: the issue fails for good; the refund recorded behind it owns
    the job (due, not dead), and its waiter hears the failure."""
    issue = jobs.claim(imp_uid, task_id=task("t1"), payload=PAYLOAD)
    return [
        jobs.claim(imp_uid, task_id=task("t2"), payload=PAYLOAD),
        jobs.receive_cancel(imp_uid, task_id=task("r1"), cancel=REFUND, resend_after=60),
        finish(jobs, imp_uid, issue.fence, task("t1"), state="failed") is not None,
        _fields(jobs, imp_uid),
        jobs.claim(imp_uid, task_id=task("r1"), payload=REFUND, op="cancel"),
    ]


def both_recorded_behind_a_partial_refund(
    jobs: Both, imp_uid: str, task: Callable[[str], str]
) -> list[object]:
    """Issue 14, finding 17: a refund and a confirmation recorded behind a partial refund
    that fails for good each run in turn: the refund first, then the confirmation."""
    refund = jobs.claim(imp_uid, task_id=task("r1"), payload=PARTIAL, op="cancel")
    steps: list[object] = [
        jobs.receive(imp_uid, task_id=task("t1"), payload=PAYLOAD, resend_after=60),
        jobs.receive_cancel(imp_uid, task_id=task("r2"), cancel=PARTIAL, resend_after=60),
        finish(jobs, imp_uid, refund.fence, task("r1"), state="failed") is not None,
        _fields(jobs, imp_uid),
    ]
    second = jobs.claim(imp_uid, task_id=task("r2"), payload=PARTIAL, op="cancel")
    return [
        *steps,
        second,
        finish(jobs, imp_uid, second.fence, task("r2"), state="cancelled", receipt=None)
        is not None,
        _fields(jobs, imp_uid),
        jobs.claim(imp_uid, task_id=task("t1"), payload=PAYLOAD),
    ]


def refund_recorded_behind_a_partial_refund(
    jobs: Both, imp_uid: str, task: Callable[[str], str]
) -> list[object]:
    """Issue 14, finding 17: a further refund recorded behind a partial refund that ended
    with no receipt to replace owns the job then."""
    refund = jobs.claim(imp_uid, task_id=task("r1"), payload=PARTIAL, op="cancel")
    return [
        jobs.receive_cancel(imp_uid, task_id=task("r2"), cancel=REFUND, resend_after=60),
        finish(jobs, imp_uid, refund.fence, task("r1"), state="cancelled", receipt=None)
        is not None,
        _fields(jobs, imp_uid),
        jobs.claim(imp_uid, task_id=task("r2"), payload=REFUND, op="cancel"),
    ]


def parked_refund_taken_over(jobs: Both, imp_uid: str, task: Callable[[str], str]) -> list[object]:
    """Issue 14, finding 12: a second refund takes a parked one over; the first ends with
    the second's outcome, and a repeat of its own then finds it done."""
    _issued(jobs, imp_uid, task("t1"))
    first = jobs.claim(imp_uid, task_id=task("r1"), payload=REFUND, op="cancel")
    steps: list[object] = [
        jobs.park(imp_uid, fence=first.fence, until=jobs.now() + 600, error={"reason": "x"}),
        jobs.receive_cancel(imp_uid, task_id=task("r2"), cancel=REFUND, resend_after=60),
    ]
    second = jobs.claim(imp_uid, task_id=task("r2"), payload=REFUND, op="cancel")
    return [
        *steps,
        second,
        _fields(jobs, imp_uid),
        finish(jobs, imp_uid, second.fence, task("r2"), state="cancelled") is not None,
        jobs.claim(imp_uid, task_id=task("r1"), payload=REFUND, op="cancel"),
    ]


def refund_recorded_behind_a_full_refund(
    jobs: Both, imp_uid: str, task: Callable[[str], str]
) -> list[object]:
    """Issue 14, findings 12 and 17: a refund recorded behind a full refund has nothing
    left to cancel: it ends with that refund's outcome, a duplicate, even if its message
    is lost."""
    refund = jobs.claim(imp_uid, task_id=task("r1"), payload=REFUND, op="cancel")
    return [
        jobs.receive_cancel(imp_uid, task_id=task("r2"), cancel=PARTIAL, resend_after=60),
        finish(jobs, imp_uid, refund.fence, task("r1"), state="cancelled") is not None,
        _fields(jobs, imp_uid),
        jobs.claim(imp_uid, task_id=task("r2"), payload=PARTIAL, op="cancel"),
    ]


def two_refunds_recorded_behind_an_issue(
    jobs: Both, imp_uid: str, task: Callable[[str], str]
) -> list[object]:
    """Issue 14, finding 12: of two refunds recorded behind an issue, the later runs; the
    earlier ends with its outcome, even though the issue ended first."""
    issue = jobs.claim(imp_uid, task_id=task("t1"), payload=PAYLOAD)
    steps: list[object] = [
        jobs.receive_cancel(imp_uid, task_id=task("r1"), cancel=PARTIAL, resend_after=60),
        jobs.receive_cancel(imp_uid, task_id=task("r2"), cancel=REFUND, resend_after=60),
        finish(jobs, imp_uid, issue.fence, task("t1")) is not None,
        _fields(jobs, imp_uid),
    ]
    refund = jobs.claim(imp_uid, task_id=task("r2"), payload=REFUND, op="cancel")
    return [
        *steps,
        refund,
        finish(jobs, imp_uid, refund.fence, task("r2"), state="cancelled") is not None,
        jobs.claim(imp_uid, task_id=task("r1"), payload=PARTIAL, op="cancel"),
    ]


def _events(found: Iterable[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The events by task id; each ``event_id`` and ``occurred_at`` only as there or not.

    A waiter's ``event_id`` is derived from the owner's stream entry id, and each
    stream numbers its entries its own way; ``occurred_at`` is the ledger's clock,
    Redis's, which runs on while the memory store's stands still. The waiters are a
    Redis set, whose order is no promise (MemoryStore sorts them): so the events of one
    finish are compared as a set.
    """
    events = [
        (kind, {**data, **{key: key in data for key in ("event_id", "occurred_at")}})
        for kind, data in found
    ]
    return sorted(events, key=lambda event: (str(event[1].get("task_id")), event[0]))


def _history(start: float, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History entries with their times as :func:`_since` shows them."""
    return [{**entry, "at": _since(start, entry["at"])} for entry in entries]


def _traces(
    server: RedisServer, steps: Steps, imp_uid: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``steps`` answered and left, on the ledger and in memory, from one start time."""
    imp_uid, prefix = imp_uid or f"imp_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex[:8]
    client, stream = server.client(), f"test.contract.{uuid.uuid4().hex[:8]}"
    # One start for both: the memory store's clock starts at Redis's.
    start = redis_now(client)
    ledger = _ledger(client, stream, ClockOffset())
    memory = MemoryStore(Clock(start), lease_seconds=LEASE)

    def task(name: str) -> str:
        return f"{prefix}-{name}"

    redis_trace = {
        "answers": _timeless(start, steps(ledger, imp_uid, task)),
        "record": _timeless(start, _fields(ledger, imp_uid)),
        "events": _events((f["type"], json.loads(f["data"])) for _, f in client.xrange(stream)),
        "due": _since(start, client.zscore(DUE_KEY, payment_receipt_key(imp_uid))),
        "dead": client.zscore(DEAD_JOBS_KEY, payment_receipt_key(imp_uid)) is not None,
        "history": _history(
            start, [json.loads(e) for e in client.lrange(history_key(imp_uid), 0, -1)]
        ),
    }
    memory_trace = {
        "answers": _timeless(start, steps(memory, imp_uid, task)),
        "record": _timeless(start, _fields(memory, imp_uid)),
        "events": _events((e.type, e.data) for e in memory.stream),
        "due": _since(start, memory.due.get(imp_uid)),
        "dead": imp_uid in memory.dead,
        "history": _history(start, memory.history.get(imp_uid, [])),
    }
    return redis_trace, memory_trace


@pytest.mark.parametrize(
    "steps",
    [
        partial_refund_with_an_issue_behind,
        refund_waiting_for_an_issue,
        partial_refund_reissued,
        failed_with_waiters,
        cancel_failed_before_any_receipt,
        reissue_failed_with_waiters,
        reopened_under_its_own_task,
        unrun_owner_with_waiters,
        refund_recorded_behind_a_failed_issue,
        both_recorded_behind_a_partial_refund,
        refund_recorded_behind_a_partial_refund,
        parked_refund_taken_over,
        refund_recorded_behind_a_full_refund,
        two_refunds_recorded_behind_an_issue,
    ],
)
def test_the_same_steps_leave_the_same_record(redis_server: RedisServer, steps: Steps) -> None:
    """Answers, record fields, events, due time, dead mark and history, one by one."""
    redis_trace, memory_trace = _traces(redis_server, steps)
    for part in redis_trace:
        assert memory_trace[part] == redis_trace[part], part


@pytest.mark.parametrize(
    ("order", "steps"),
    [
        (("due", "x"), partial_refund_reissued),
        (("failed", "x"), failed_with_waiters),
        (("x", "x:history"), partial_refund_reissued),
        (("x:waiters", "x"), failed_with_waiters),
    ],
    ids=["due", "failed", "x:history", "x:waiters"],
)
def test_ids_that_named_a_key_leave_the_same_record(
    own_redis: RedisServer, order: tuple[str, str], steps: Steps
) -> None:
    """Issue 14, finding 1: an id that named one of the ledger's own keys in layout 1 (an
    index, payment x's history or waiters) is only an id, on Redis as in memory, whose
    payments share nothing. Each pair runs in the order that met in layout 1: the
    index's name on a quiet Redis; x's history before x:history; x:waiters before x
    has a waiter."""
    for imp_uid in order:
        redis_trace, memory_trace = _traces(own_redis, steps, imp_uid)
        for part in redis_trace:
            assert memory_trace[part] == redis_trace[part], (imp_uid, part)


def test_a_reopened_job_keeps_no_cancel_step_of_an_earlier_refund(
    store: Store, imp_uid: str
) -> None:
    """A partial refund cancelled, then failed to re-issue; a new issue re-opens the job.

    The next refund to take it over has its own DELETE to send (issue 14, finding 18).
    """
    jobs = store.jobs
    assert jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD) == claimed(1, 1)
    assert finish(jobs, imp_uid, 1, store.task("t1")) is not None
    refund = jobs.claim(imp_uid, task_id=store.task("r1"), payload=PARTIAL, op="cancel")
    assert refund == claimed(2, 1, op="cancel")
    assert jobs.note_cancelled(imp_uid, fence=2, receipt=None)
    assert finish(jobs, imp_uid, 2, store.task("r1"), state="failed") is not None
    reopened = jobs.receive(imp_uid, task_id=store.task("t2"), payload=PAYLOAD, resend_after=60)
    assert reopened == "received"
    view = jobs.view(imp_uid)
    assert view is not None and not view.cancel_done
    assert jobs.claim(imp_uid, task_id=store.task("r2"), payload=PARTIAL, op="cancel").fence == 3
    view = jobs.view(imp_uid)
    assert view is not None and not view.cancel_done


def test_a_cancel_failed_before_any_receipt_leaves_the_job_to_its_confirmation(
    store: Store, imp_uid: str
) -> None:
    """Issue 14, finding 10: the job ends failed, not issued; the confirmation issues."""
    jobs = store.jobs
    refund = jobs.claim(imp_uid, task_id=store.task("r1"), payload=REFUND, op="cancel")
    assert refund == claimed(1, 1, op="cancel")
    waiting = jobs.receive(imp_uid, task_id=store.task("t1"), payload=PAYLOAD, resend_after=60)
    assert waiting == "in_flight"
    terminal = TerminalPublisher(
        events=store.publisher,
        store=jobs,
        task_id=store.task("r1"),
        attempts=1,
        job=JobKey.payment(imp_uid),
        merchant_uid=None,
    )
    error = ProviderError("down", status=500)
    assert terminal.finish_cancel_failed(fence=1, error=error, reason="unavailable")
    [(kind, _)] = store.events(store.task("r1"))
    assert kind == CANCEL_FAILED
    view = jobs.view(imp_uid)
    assert view is not None and view.state == "failed"
    # The waiter ends once, failed: no issued duplicate with an empty receipt.
    [(kind, data)] = store.events(store.task("t1"))
    assert (kind, data["duplicate"], data.get("receipt")) == (FAILED, True, None)
    reopened = jobs.receive(imp_uid, task_id=store.task("t2"), payload=PAYLOAD, resend_after=60)
    assert reopened == "received"
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == claimed(2, 1)


def _failed_reissue(store: Store, imp_uid: str, *behind: str) -> None:
    """A partial refund whose re-issue fails for good, with issue messages recorded behind
    it (``behind``, in order: the last one recorded runs next)."""
    jobs = store.jobs
    _issued(jobs, imp_uid, store.task("t1"))
    refund = jobs.claim(imp_uid, task_id=store.task("r1"), payload=PARTIAL, op="cancel")
    for name in behind:
        waiting = jobs.receive(imp_uid, task_id=store.task(name), payload=PAYLOAD, resend_after=60)
        assert waiting == "in_flight"
    assert jobs.note_cancelled(imp_uid, fence=refund.fence, receipt=None)
    failure = {"reason": "rejected"}
    assert (
        jobs.finish(
            imp_uid,
            fence=refund.fence,
            state="failed",
            task_id=store.task("r1"),
            event_type=CANCELLED,
            data={"imp_uid": imp_uid, "task_id": store.task("r1"), "receipt": RECEIPT},
            receipt=RECEIPT,
            error=failure,
            extra_event=(
                FAILED,
                {"imp_uid": imp_uid, "task_id": store.task("r1")} | {"error": failure},
            ),
        )
        is not None
    )


def test_a_failed_reissue_ends_every_waiter_once(store: Store, imp_uid: str) -> None:
    """Issue 14, finding 11: the issue messages a partial refund took over as waiters
    each end in one event when that re-issue fails for good: the one recorded last
    runs (finding 17), and the others end with its outcome."""
    _failed_reissue(store, imp_uid, "t2", "t3")
    jobs = store.jobs
    claim = jobs.claim(imp_uid, task_id=store.task("t3"), payload=PAYLOAD)
    assert claim.kind is ClaimKind.CLAIMED
    assert finish(jobs, imp_uid, claim.fence, store.task("t3"), state="failed") is not None
    [(kind, data)] = store.events(store.task("t2"))
    assert (kind, data["duplicate"]) == (FAILED, True)
    assert "receipt" not in data
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == Claim(ClaimKind.DONE)


def test_a_task_whose_marker_expired_neither_reopens_nor_claims_its_ended_job(
    redis_server: RedisServer, imp_uid: str
) -> None:
    """Issue 14, finding 13: past RESULT_STREAM_RETENTION the marker is gone, but the record
    still names the task that ended the job: a copy of its message that late is ``done``."""
    client = redis_server.client()
    ledger = _ledger(client, f"test.contract.{uuid.uuid4().hex[:8]}", ClockOffset())
    task_id = f"{uuid.uuid4().hex[:8]}-t1"
    issue = ledger.claim(imp_uid, task_id=task_id, payload=PAYLOAD)
    assert finish(ledger, imp_uid, issue.fence, task_id, state="failed") is not None
    client.delete(terminal_key(task_id))
    assert ledger.receive(imp_uid, task_id=task_id, payload=PAYLOAD, resend_after=60) == "done"
    assert ledger.claim(imp_uid, task_id=task_id, payload=PAYLOAD).kind is ClaimKind.DONE
    assert (ledger.raw_record(imp_uid) or {})["state"] == "failed"


@pytest.mark.parametrize("state", ["failed", "issued"])
def test_a_stale_retry_of_a_task_taken_over_never_reopens_the_job(
    store: Store, imp_uid: str, state: str
) -> None:
    """t2 took the job over from t1, which became its waiter, and ended it. A retry of t1
    that comes later still carries t1's old fence: it is ``done``, even once t1's marker
    has expired; a failed job re-opened by it would POST again under a task already ended."""
    jobs = store.jobs
    assert jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD) == claimed(1, 1)
    store.clock.advance(LEASE + 1)
    assert jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD) == claimed(
        2, 2, resumed=True
    )
    assert finish(jobs, imp_uid, 2, store.task("t2"), state=state) is not None
    [(_, heard)] = store.events(store.task("t1"))
    assert heard["duplicate"] is True
    store.forget_marker(store.task("t1"))

    late = jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD, fence=1)
    assert late == Claim(ClaimKind.DONE)
    view = jobs.view(imp_uid)
    assert view is not None
    assert (view.state, view.task_id) == (state, store.task("t2"))
    assert len(store.events(store.task("t1"))) == 1


def test_an_issue_recorded_behind_a_failed_reissue_still_runs(store: Store, imp_uid: str) -> None:
    """Issue 14, finding 17: a confirmation recorded behind the partial refund owns the job
    when the re-issue fails (it may carry another identifier), and ends in its own event."""
    _failed_reissue(store, imp_uid, "t2")
    assert store.events(store.task("t2")) == []
    jobs = store.jobs
    view = jobs.view(imp_uid)
    assert view is not None
    assert (view.state, view.op, view.task_id) == ("received", "issue", store.task("t2"))
    claim = jobs.claim(imp_uid, task_id=store.task("t2"), payload=PAYLOAD)
    assert claim.kind is ClaimKind.CLAIMED
    assert finish(jobs, imp_uid, claim.fence, store.task("t2"), receipt=RECEIPT) is not None
    [(kind, data)] = store.events(store.task("t2"))
    assert (kind, data["duplicate"]) == (ISSUED, False)


@pytest.mark.parametrize("behind", ["taken_over", "recorded"])
def test_a_refund_another_ends_for_hears_its_outcome_once(
    store: Store, imp_uid: str, behind: str
) -> None:
    """Issue 14, finding 12: a refund that a second one took over (parked), or that was
    recorded behind a full refund, ends in one event: the cancellation, a duplicate."""
    jobs = store.jobs
    _issued(jobs, imp_uid, store.task("t1"))
    first = jobs.claim(imp_uid, task_id=store.task("r1"), payload=REFUND, op="cancel")
    if behind == "taken_over":
        jobs.park(imp_uid, fence=first.fence, until=jobs.now() + 600, error={"reason": "x"})
        owner, other = store.task("r2"), store.task("r1")
        claim = jobs.claim(imp_uid, task_id=owner, payload=REFUND, op="cancel")
    else:
        owner, other, claim = store.task("r1"), store.task("r2"), first
        jobs.receive_cancel(imp_uid, task_id=other, cancel=REFUND, resend_after=60)
    assert finish(jobs, imp_uid, claim.fence, owner, state="cancelled") is not None
    [(kind, data)] = store.events(other)
    assert (kind, data["task_id"], data["duplicate"]) == (CANCELLED, other, True)
    assert jobs.claim(imp_uid, task_id=other, payload=REFUND, op="cancel") == Claim(ClaimKind.DONE)


def test_an_earlier_refund_recorded_behind_an_issue_hears_the_later_ones_outcome(
    store: Store, imp_uid: str
) -> None:
    """Issue 14, finding 12 (found by the model): a second refund recorded behind the same
    issue took the first one's place; the first ends with the second's outcome, once."""
    jobs = store.jobs
    issue = jobs.claim(imp_uid, task_id=store.task("t1"), payload=PAYLOAD)
    jobs.receive_cancel(imp_uid, task_id=store.task("r1"), cancel=REFUND, resend_after=60)
    jobs.receive_cancel(imp_uid, task_id=store.task("r2"), cancel=REFUND, resend_after=60)
    assert finish(jobs, imp_uid, issue.fence, store.task("t1")) is not None
    assert store.events(store.task("r1")) == []
    refund = jobs.claim(imp_uid, task_id=store.task("r2"), payload=REFUND, op="cancel")
    assert finish(jobs, imp_uid, refund.fence, store.task("r2"), state="cancelled") is not None
    [(kind, data)] = store.events(store.task("r1"))
    assert (kind, data["duplicate"]) == (CANCELLED, True)
