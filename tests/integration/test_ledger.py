"""Ledger transitions on a real Redis: one path for duplicates, fencing, due jobs."""

from __future__ import annotations

import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for
from worker.adapters.privacy.sealing import Sealer
from worker.adapters.store.keys import (
    CALL_PREFIX,
    DEAD_JOBS_KEY,
    DUE_KEY,
    STATUS_PREFIX,
    TERMINAL_PREFIX,
    history_key,
    ledger_key,
    payment_receipt_key,
    status_key,
    terminal_key,
)
from worker.adapters.store.ledger import Ledger
from worker.adapters.store.once import CALL_REPLY_SECONDS
from worker.adapters.store.views import dead_jobs
from worker.config.defaults import JOB_HISTORY_LENGTH
from worker.core.events import CANCELLED, ISSUED, cancelled_detail, event_data
from worker.core.schemas import load_payload
from worker.core.types import JobKey

pytestmark = pytest.mark.integration
PAYLOAD = {"imp_uid": "x", "identifier_sealed": "gAAAA"}


@pytest.fixture
def ledger(redis_server: RedisServer) -> Ledger:
    """A ledger with a short lease, publishing to its own stream."""
    return Ledger(
        redis_server.client(),
        stream="test.ledger.events",
        event_retention_seconds=3600,
        retention_seconds=600,
        lease_seconds=0.5,
    )


def finish(ledger: Ledger, imp_uid: str, fence: int, task_id: str) -> str | None:
    """End a claimed job as issued."""
    return ledger.finish(
        imp_uid,
        fence=fence,
        state="issued",
        task_id=task_id,
        event_type=ISSUED,
        data={"imp_uid": imp_uid, "task_id": task_id, "duplicate": False},
        receipt={"apply_num": "123"},
    )


def fail(ledger: Ledger, imp_uid: str, fence: int, task_id: str) -> str | None:
    """End a claimed job as failed for good (rejected)."""
    return ledger.finish(
        imp_uid,
        fence=fence,
        state="failed",
        task_id=task_id,
        event_type="cash_receipt.failed",
        data={},
        error={"reason": "rejected"},
    )


def test_concurrent_claims_take_exactly_one_path(ledger: Ledger, imp_uid: str) -> None:
    """Twenty tasks race for one payment: one claims, the others see it busy."""
    with ThreadPoolExecutor(20) as pool:
        claims = list(
            pool.map(
                lambda n: ledger.claim(imp_uid, task_id=f"{imp_uid}-t{n}", payload=PAYLOAD),
                range(20),
            )
        )
    kinds = sorted(claim.kind for claim in claims)
    assert kinds == ["busy"] * 19 + ["claimed"]


def test_issued_is_reported_not_reclaimed(ledger: Ledger, imp_uid: str) -> None:
    """Once issued, a new task finds the receipt and the same task finds itself done."""
    claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    assert finish(ledger, imp_uid, claim.fence, f"{imp_uid}-t1")
    other = ledger.claim(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD)
    assert (other.kind, other.receipt) == ("issued", {"apply_num": "123"})
    assert ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD).kind == "done"


def test_fenced_out_claim_cannot_finish(ledger: Ledger, imp_uid: str) -> None:
    """A task whose lease passed and whose job was taken over cannot end it."""
    first = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    time.sleep(0.6)  # the lease is 0.5 s: let it pass (a clock, not a hope)
    second = ledger.claim(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD)
    assert second.kind == "claimed"
    assert second.resumed
    assert second.fence == first.fence + 1
    assert finish(ledger, imp_uid, first.fence, f"{imp_uid}-t1") is None
    assert finish(ledger, imp_uid, second.fence, f"{imp_uid}-t2")


def test_same_task_takes_a_live_lease_only_with_its_fence(ledger: Ledger, imp_uid: str) -> None:
    """Another copy of the owning task waits; the retry it handed its fence to takes over."""
    task_id = f"{imp_uid}-t1"
    first = ledger.claim(imp_uid, task_id=task_id, payload=PAYLOAD)
    assert ledger.claim(imp_uid, task_id=task_id, payload=PAYLOAD).kind == "busy"
    stale = ledger.claim(imp_uid, task_id=task_id, payload=PAYLOAD, fence=first.fence - 1)
    assert stale.kind == "busy"
    again = ledger.claim(imp_uid, task_id=task_id, payload=PAYLOAD, fence=first.fence)
    assert (again.kind, again.resumed, again.attempt) == ("claimed", True, first.attempt + 1)
    # The copy that took over holds the fence now; the handed-on one cannot be used twice.
    assert ledger.claim(imp_uid, task_id=task_id, payload=PAYLOAD, fence=first.fence).kind == (
        "busy"
    )


def test_same_task_takes_its_job_back_once_the_lease_passed(ledger: Ledger, imp_uid: str) -> None:
    """A redelivery after its worker died resumes the job without any fence."""
    first = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    time.sleep(0.6)  # the lease is 0.5 s: let it pass (a clock, not a hope)
    again = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    assert (again.kind, again.resumed, again.fence) == ("claimed", True, first.fence + 1)


def test_a_received_job_is_claimed_by_one_of_two_copies(ledger: Ledger, imp_uid: str) -> None:
    """The producer's message and the sweeper's re-send of it (with the fence): one acts."""
    task_id = f"{imp_uid}-t1"
    ledger.receive(imp_uid, task_id=task_id, payload=PAYLOAD, resend_after=0)
    (job,) = [j for j in ledger.due_jobs(limit=100, regrace_seconds=60) if j.imp_uid == imp_uid]
    original = ledger.claim(imp_uid, task_id=task_id, payload=PAYLOAD)
    resent = ledger.claim(imp_uid, task_id=task_id, payload=PAYLOAD, fence=job.fence)
    assert (original.kind, resent.kind) == ("claimed", "busy")


def test_failed_job_is_reopened_by_a_new_payload(ledger: Ledger, imp_uid: str) -> None:
    """A failed job is re-opened by a new message, with a fresh attempt count."""
    claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    fail(ledger, imp_uid, claim.fence, f"{imp_uid}-t1")
    reopened = ledger.claim(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD)
    assert (reopened.kind, reopened.attempt, reopened.resumed) == ("claimed", 1, False)


def test_received_and_parked_jobs_become_due(
    ledger: Ledger, redis_server: RedisServer, imp_uid: str
) -> None:
    """A producer's received job and a parked one are handed to the sweeper once when due."""
    assert (
        ledger.receive(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD, resend_after=0)
        == "received"
    )
    (job,) = [
        job for job in ledger.due_jobs(limit=100, regrace_seconds=60) if job.imp_uid == imp_uid
    ]
    assert (job.state, job.task_id, job.payload) == ("received", f"{imp_uid}-t1", PAYLOAD)
    assert imp_uid not in [j.imp_uid for j in ledger.due_jobs(limit=100, regrace_seconds=60)]

    claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    assert ledger.park(imp_uid, fence=claim.fence, until=time.time() - 1, error={"reason": "x"})
    due = [job for job in ledger.due_jobs(limit=100, regrace_seconds=60) if job.imp_uid == imp_uid]
    assert [(job.state, job.attempts) for job in due] == [("received", 1)]
    resumed = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    assert (resumed.resumed, resumed.attempt) == (True, 2)


def test_receive_leaves_live_jobs_alone(ledger: Ledger, imp_uid: str) -> None:
    """A producer's second message for a job in flight does not reset it."""
    ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    assert (
        ledger.receive(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD, resend_after=60)
        == "in_flight"
    )


def test_terminal_records_expire_and_leave_the_due_set(
    ledger: Ledger, redis_server: RedisServer, imp_uid: str
) -> None:
    """A finished job gets the ledger retention as its TTL and is no longer due."""
    claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    finish(ledger, imp_uid, claim.fence, f"{imp_uid}-t1")
    client = redis_server.client()
    assert 0 < client.ttl(ledger_key(imp_uid)) <= 600
    assert client.zscore(DUE_KEY, payment_receipt_key(imp_uid)) is None
    record = ledger.raw_record(imp_uid)
    assert record is not None
    assert (record["state"], json.loads(record["receipt"])) == ("issued", {"apply_num": "123"})


def test_waiting_messages_end_with_the_owner(
    ledger: Ledger, redis_server: RedisServer, imp_uid: str
) -> None:
    """Messages that waited on a job in flight get their duplicate events when it is issued."""
    owner = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    assert ledger.claim(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD).kind == "busy"
    assert ledger.receive(imp_uid, task_id=f"{imp_uid}-t3", payload=PAYLOAD, resend_after=60) == (
        "in_flight"
    )
    finish(ledger, imp_uid, owner.fence, f"{imp_uid}-t1")
    events = [
        (json.loads(fields["data"])["task_id"], json.loads(fields["data"])["duplicate"])
        for _, fields in redis_server.client().xrange("test.ledger.events")
        if json.loads(fields["data"]).get("imp_uid") == imp_uid
    ]
    assert sorted(events) == [
        (f"{imp_uid}-t1", False),
        (f"{imp_uid}-t2", True),
        (f"{imp_uid}-t3", True),
    ]
    assert ledger.claim(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD).kind == "done"


def test_waiters_of_a_failed_job_report_its_failure(
    ledger: Ledger, redis_server: RedisServer, imp_uid: str
) -> None:
    """Messages that waited end with the owner's failure, as duplicates; a new one re-opens."""
    owner = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    assert ledger.claim(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD).kind == "busy"
    ledger.receive(imp_uid, task_id=f"{imp_uid}-t3", payload=PAYLOAD, resend_after=60)
    ledger.finish(
        imp_uid,
        fence=owner.fence,
        state="failed",
        task_id=f"{imp_uid}-t1",
        event_type="cash_receipt.failed",
        data={"imp_uid": imp_uid, "task_id": f"{imp_uid}-t1", "duplicate": False},
        error={"reason": "rejected"},
    )
    events = sorted(
        (fields["type"], data["task_id"], data["duplicate"])
        for _, fields in redis_server.client().xrange("test.ledger.events")
        if (data := json.loads(fields["data"])).get("imp_uid") == imp_uid
    )
    assert events == [
        ("cash_receipt.failed", f"{imp_uid}-t1", False),
        ("cash_receipt.failed", f"{imp_uid}-t2", True),
        ("cash_receipt.failed", f"{imp_uid}-t3", True),
    ]
    for waiter in (f"{imp_uid}-t2", f"{imp_uid}-t3"):
        assert ledger.claim(imp_uid, task_id=waiter, payload=PAYLOAD).kind == "done"
    reopened = ledger.claim(imp_uid, task_id=f"{imp_uid}-t4", payload=PAYLOAD)
    assert (reopened.kind, reopened.attempt) == ("claimed", 1)


#: What the README documents, and this test measures: "**3.3 KB per issued payment**".
README = Path(__file__).resolve().parents[2] / "README.md"
SIZE_FIGURE = re.compile(r"\*\*(\d+(?:\.\d+)?) KB per issued payment\*\*")
SIZE_SAMPLE = 500


def test_size_of_one_issued_payment(tmp_path: Path) -> None:
    """What one issued payment costs in Redis, every key and its event, against the README.

    A producer's receive, the claim and the finish, for a realistic payload,
    SIZE_SAMPLE times on a Redis of its own; used_memory before and after,
    divided. Prints the parts (``pytest -s``): the figure in the README must be
    the measured one, within 15%.
    """
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        client = server.client()
        ledger = Ledger(
            client,
            stream="cash_receipt.events",
            event_retention_seconds=604800,
            retention_seconds=2592000,
            lease_seconds=410,
        )
        sealer = Sealer([Fernet.generate_key().decode()])
        before = int(client.info("memory")["used_memory"])
        for _ in range(SIZE_SAMPLE):
            imp_uid, task_id = issue_one(ledger, sealer)
        with_calls = int(client.info("memory")["used_memory"])
        # The replies of the script calls (receive, claim, finish) go after CALL_REPLY_SECONDS.
        calls = list(client.scan_iter(f"{CALL_PREFIX}*", count=1000))
        client.delete(*calls)
        after = int(client.info("memory")["used_memory"])
        parts = {
            "record": client.memory_usage(ledger_key(imp_uid)),
            "history": client.memory_usage(history_key(imp_uid)),
            "markers": client.memory_usage(terminal_key(task_id))
            + client.memory_usage(status_key(imp_uid)),
        }
        keys_per_payment = (client.dbsize() - 1) / SIZE_SAMPLE  # less the stream
        # What goes after RESULT_STREAM_RETENTION: the event and its markers.
        client.delete("cash_receipt.events")
        for prefix in (TERMINAL_PREFIX, STATUS_PREFIX):
            for key in client.scan_iter(f"{prefix}*", count=1000):
                client.delete(key)
        ledger_only = int(client.info("memory")["used_memory"])
    finally:
        server.stop()
    per_payment = (after - before) / SIZE_SAMPLE
    replies = (with_calls - after) / SIZE_SAMPLE
    long_kept = (ledger_only - before) / SIZE_SAMPLE
    print(
        f"\nper issued payment: {per_payment:.0f} B in all ({keys_per_payment:g} keys + its event):"
        f" {long_kept:.0f} B kept LEDGER_RETENTION (record, history),"
        f" {per_payment - long_kept:.0f} B kept RESULT_STREAM_RETENTION (event, markers);"
        f" last one: record {parts['record']} B, history {parts['history']} B,"
        f" markers {parts['markers']} B; and {replies:.0f} B for {CALL_REPLY_SECONDS} s,"
        f" the replies of its {len(calls) / SIZE_SAMPLE:g} script calls"
    )
    match = SIZE_FIGURE.search(README.read_text())
    assert match, "the README states the size per issued payment"
    documented = float(match.group(1)) * 1000
    assert keys_per_payment == 4  # record, history, terminal marker, status pointer
    assert abs(per_payment - documented) <= 0.15 * documented, (per_payment, documented)


def issue_one(ledger: Ledger, sealer: Sealer) -> tuple[str, str]:
    """One payment as the helper and a worker record it: received, claimed, issued."""
    imp_uid, task_id = f"imp_{uuid.uuid4().hex[:12]}", str(uuid.uuid4())
    payload = load_payload(
        {
            "imp_uid": imp_uid,
            "merchant_uid": "order-2026-11-24-000123",
            "identifier": "010-1234-5678",
            "identifier_type": "phone",
            "buyer_name": "홍길동",
            "buyer_email": "buyer@example.com",
            "buyer_tel": "010-1234-5678",
        },
        sealer,
    ).to_message(sealer)
    ledger.receive(imp_uid, task_id=task_id, payload=payload, resend_after=460)
    claim = ledger.claim(imp_uid, task_id=task_id, payload=payload)
    receipt = {
        "imp_uid": imp_uid, "receipt_tid": "SBX-RCT-0000000001", "apply_num": "123456789",
        "type": "person", "amount": 11000, "vat": 1000,
        "receipt_url": "https://iniweb.inicis.com/receipt/0000000001", "applied_at": 1795545489,
        "cancelled_at": 0,
    }  # fmt: skip
    data = event_data(
        task_id=task_id, job=JobKey.payment(imp_uid), merchant_uid="order-2026-11-24-000123",
        attempts=1,
        duplicate=False, detail={"receipt": receipt}, occurred_at=ledger.now(),
    )  # fmt: skip
    ledger.finish(
        imp_uid, fence=claim.fence, state="issued", task_id=task_id, event_type=ISSUED,
        data=data, receipt=receipt,
    )  # fmt: skip
    return imp_uid, task_id


def test_a_taken_over_owner_still_gets_its_event(
    ledger: Ledger, redis_server: RedisServer, imp_uid: str
) -> None:
    """When another message takes a job whose lease passed, the old owner's message ends too."""
    ledger.claim(imp_uid, task_id=f"{imp_uid}-old", payload=PAYLOAD)
    time.sleep(0.6)  # the lease is 0.5 s: let it pass (a clock, not a hope)
    new = ledger.claim(imp_uid, task_id=f"{imp_uid}-new", payload=PAYLOAD)
    finish(ledger, imp_uid, new.fence, f"{imp_uid}-new")
    published = {
        json.loads(fields["data"])["task_id"]: json.loads(fields["data"])["duplicate"]
        for _, fields in redis_server.client().xrange("test.ledger.events")
        if json.loads(fields["data"]).get("imp_uid") == imp_uid
    }
    assert published == {f"{imp_uid}-new": False, f"{imp_uid}-old": True}


def test_cancellation_recorded_behind_an_issue_owns_the_job_once_issued(
    ledger: Ledger, redis_server: RedisServer, imp_uid: str
) -> None:
    """A refund recorded while the issue is in flight is due after it, even with no message."""
    owner = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    cancel = {"imp_uid": imp_uid}
    state = ledger.receive_cancel(imp_uid, task_id=f"{imp_uid}-c1", cancel=cancel, resend_after=0)
    assert state == "in_flight"
    assert ledger.raw_record(imp_uid)["task_id"] == f"{imp_uid}-t1"  # type: ignore[index]
    finish(ledger, imp_uid, owner.fence, f"{imp_uid}-t1")

    record = ledger.raw_record(imp_uid)
    assert record is not None
    assert (record["state"], record["op"], record["task_id"]) == (
        "received",
        "cancel",
        f"{imp_uid}-c1",
    )
    assert redis_server.client().ttl(ledger_key(imp_uid)) == -1  # not expiring while owed
    (job,) = [j for j in ledger.due_jobs(limit=100, regrace_seconds=60) if j.imp_uid == imp_uid]
    assert (job.op, job.task_id, job.payload) == ("cancel", f"{imp_uid}-c1", cancel)


def test_a_repeated_cancellation_of_the_same_task_changes_nothing(
    ledger: Ledger, imp_uid: str
) -> None:
    """An ingress entry handled twice records its cancellation once."""
    cancel = {"imp_uid": imp_uid, "amount": 100}
    first = ledger.receive_cancel(imp_uid, task_id=f"{imp_uid}-c1", cancel=cancel, resend_after=60)
    claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-c1", payload=cancel, op="cancel")
    again = ledger.receive_cancel(imp_uid, task_id=f"{imp_uid}-c1", cancel=cancel, resend_after=0)
    assert (first, claim.kind, again) == ("received", "claimed", "in_flight")
    record = ledger.raw_record(imp_uid)
    assert record is not None
    assert (record["attempts"], record["fence"]) == ("1", str(claim.fence))


def test_dead_view_drops_index_entries_whose_record_expired(
    redis_server: RedisServer, imp_uid: str
) -> None:
    """A failed job outlives neither LEDGER_RETENTION nor, once listed, its index entry."""
    client = redis_server.client()
    short = Ledger(
        client,
        stream="test.ledger.events",
        event_retention_seconds=3600,
        retention_seconds=1,
        lease_seconds=0.5,
    )
    claim = short.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    fail(short, imp_uid, claim.fence, f"{imp_uid}-t1")
    assert client.zscore(DEAD_JOBS_KEY, payment_receipt_key(imp_uid)) is not None
    wait_for(lambda: not client.exists(ledger_key(imp_uid)), message="the record to expire")
    assert imp_uid not in [job.imp_uid for job, _ in dead_jobs(client)]
    assert client.zscore(DEAD_JOBS_KEY, payment_receipt_key(imp_uid)) is None


def test_issue_recorded_behind_a_partial_refund_owns_the_job_after_it(
    ledger: Ledger, redis_server: RedisServer, imp_uid: str
) -> None:
    """A partial refund that found nothing to replace hands the job to the issue that came."""
    refund = {"imp_uid": imp_uid, "amount": 100}
    ledger.receive_cancel(imp_uid, task_id=f"{imp_uid}-c1", cancel=refund, resend_after=60)
    cancel = ledger.claim(imp_uid, task_id=f"{imp_uid}-c1", payload=refund, op="cancel")
    assert ledger.receive(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD, resend_after=0) == (
        "in_flight"
    )
    assert ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD).kind == "busy"
    ledger.finish(
        imp_uid,
        fence=cancel.fence,
        state="cancelled",
        task_id=f"{imp_uid}-c1",
        event_type="cash_receipt.cancelled",
        data={"imp_uid": imp_uid, "task_id": f"{imp_uid}-c1"},
    )
    record = ledger.raw_record(imp_uid)
    assert record is not None
    assert (record["state"], record["op"], record["task_id"]) == (
        "received",
        "issue",
        f"{imp_uid}-t1",
    )
    assert json.loads(record["payload"]) == PAYLOAD
    events = [
        json.loads(fields["data"]).get("task_id")
        for _, fields in redis_server.client().xrange("test.ledger.events")
    ]
    assert f"{imp_uid}-t1" not in events  # not failed as a stale issue
    (job,) = [j for j in ledger.due_jobs(limit=100, regrace_seconds=60) if j.imp_uid == imp_uid]
    assert (job.op, job.task_id) == ("issue", f"{imp_uid}-t1")
    assert ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD).kind == "claimed"


def test_a_cancel_failed_with_a_refund_behind_it_is_not_dead(
    ledger: Ledger, redis_server: RedisServer, imp_uid: str
) -> None:
    """The later refund owns the job at once: it is due, not listed as a dead letter."""
    first = {"imp_uid": imp_uid}
    ledger.receive_cancel(imp_uid, task_id=f"{imp_uid}-c1", cancel=first, resend_after=60)
    claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-c1", payload=first, op="cancel")
    ledger.receive_cancel(imp_uid, task_id=f"{imp_uid}-c2", cancel=first, resend_after=0)
    ledger.finish(
        imp_uid,
        fence=claim.fence,
        state="issued",
        task_id=f"{imp_uid}-c1",
        event_type="cash_receipt.cancel_failed",
        data={"imp_uid": imp_uid, "task_id": f"{imp_uid}-c1"},
        error={"reason": "retries_exhausted"},
    )
    assert redis_server.client().zscore(DEAD_JOBS_KEY, payment_receipt_key(imp_uid)) is None
    record = ledger.raw_record(imp_uid)
    assert record is not None
    assert (record["state"], record["task_id"]) == ("received", f"{imp_uid}-c2")


def test_issue_messages_stranded_by_a_cancellation_end_as_the_core_says(
    ledger: Ledger, redis_server: RedisServer, imp_uid: str
) -> None:
    """An issue message that waited on a refund ends failed, with the core's error shape.

    The FINISH script publishes it for every waiter, but the shape is the core's
    (:func:`worker.core.events.cancelled_detail`), handed to the script in ARGV.
    """
    owner = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    finish(ledger, imp_uid, owner.fence, f"{imp_uid}-t1")
    cancel = {"imp_uid": imp_uid}
    ledger.receive_cancel(imp_uid, task_id=f"{imp_uid}-c1", cancel=cancel, resend_after=60)
    refund = ledger.claim(imp_uid, task_id=f"{imp_uid}-c1", payload=cancel, op="cancel")
    assert refund.kind == "claimed"
    # An issue message recorded (by the producer or the ingress) while the refund runs.
    assert ledger.receive(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD, resend_after=60) == (
        "in_flight"
    )
    ledger.finish(
        imp_uid,
        fence=refund.fence,
        state="cancelled",
        task_id=f"{imp_uid}-c1",
        event_type=CANCELLED,
        data={"imp_uid": imp_uid, "task_id": f"{imp_uid}-c1", "duplicate": False},
    )
    stranded = [
        data
        for _, fields in redis_server.client().xrange("test.ledger.events")
        if (data := json.loads(fields["data"])).get("task_id") == f"{imp_uid}-t2"
    ]
    assert [(event["duplicate"], event["error"]) for event in stranded] == [
        (True, cancelled_detail()["error"])
    ]


def test_the_typed_notes_are_fenced_and_read_back_as_a_view(
    ledger: Ledger, redis_server: RedisServer, imp_uid: str
) -> None:
    """The core's steps reach Redis in the fields earlier releases wrote, under the fence."""
    ledger.receive(imp_uid, task_id="t-1", payload=PAYLOAD, resend_after=60)
    old = ledger.claim(imp_uid, task_id="t-1", payload=PAYLOAD)
    new = ledger.claim(imp_uid, task_id="t-1", payload=PAYLOAD, fence=old.fence)
    assert new.kind == "claimed"
    assert not ledger.note_sent(imp_uid, fence=old.fence, at=12.5, op="issue")
    assert ledger.note_sent(imp_uid, fence=new.fence, at=12.5, op="cancel")
    fields = redis_server.client().hmget(ledger_key(imp_uid), ["sent_at", "sent_op"])
    assert fields == ["12.5", "cancel"]
    job = ledger.view(imp_uid)
    assert job is not None
    assert (job.state, job.task_id, job.op, job.payload) == ("in_flight", "t-1", "issue", PAYLOAD)
    assert (job.sent_at, job.sent_op, job.cancel_done) == (12.5, "cancel", False)

    assert ledger.note_answered(imp_uid, fence=new.fence)
    assert not ledger.note_cancelled(imp_uid, fence=old.fence, receipt=None)
    assert ledger.note_cancelled(imp_uid, fence=new.fence, receipt=None)
    job = ledger.view(imp_uid)
    assert job is not None
    assert (job.sent_at, job.cancel_done, job.cancelled_receipt) == (None, True, None)
    assert ledger.view(f"{imp_uid}-none") is None


def test_the_history_keeps_its_length(ledger: Ledger, redis_server: RedisServer) -> None:
    """Holds and the finish each add an entry; the history keeps the newest JOB_HISTORY_LENGTH."""
    imp_uid = f"imp_{uuid.uuid4().hex[:12]}"
    claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    for _ in range(JOB_HISTORY_LENGTH + 5):
        assert ledger.extend(imp_uid, fence=claim.fence, seconds=60, error={"reason": "x"})
    client = redis_server.client()
    assert client.llen(history_key(imp_uid)) == JOB_HISTORY_LENGTH
    assert finish(ledger, imp_uid, claim.fence, f"{imp_uid}-t1")
    assert client.llen(history_key(imp_uid)) == JOB_HISTORY_LENGTH
    assert json.loads(client.lindex(history_key(imp_uid), 0))["outcome"] == ISSUED


def _refund_that_cancelled(ledger: Ledger, imp_uid: str, task_id: str) -> int:
    """A partial refund claimed, its cancel step done (``cancel_step``): returns its fence."""
    refund = {"imp_uid": imp_uid, "amount": 100}
    ledger.receive_cancel(imp_uid, task_id=task_id, cancel=refund, resend_after=60)
    claim = ledger.claim(imp_uid, task_id=task_id, payload=refund, op="cancel")
    assert claim.kind == "claimed"
    assert ledger.note_cancelled(imp_uid, fence=claim.fence, receipt=None)
    return claim.fence


@pytest.mark.parametrize("reopened_by", ["receive", "pending_issue"])
def test_a_reopened_job_forgets_an_earlier_refunds_cancel_step(
    ledger: Ledger, imp_uid: str, reopened_by: str
) -> None:
    """A refund that takes over the re-opened job cancels again: no stale cancel step.

    ``receive``: the refund's re-issue failed for good and a new issue re-opens the job.
    ``pending_issue``: an issue recorded behind the refund owns the job once it ends.
    """
    owner = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    finish(ledger, imp_uid, owner.fence, f"{imp_uid}-t1")
    fence = _refund_that_cancelled(ledger, imp_uid, f"{imp_uid}-c1")
    if reopened_by == "pending_issue":
        ledger.receive(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD, resend_after=60)
        ending = {"state": "cancelled", "event_type": CANCELLED}
    else:
        ending = {"state": "failed", "event_type": "cash_receipt.failed"}
    ledger.finish(
        imp_uid,
        fence=fence,
        task_id=f"{imp_uid}-c1",
        data={"imp_uid": imp_uid, "task_id": f"{imp_uid}-c1"},
        **ending,
    )
    if reopened_by == "receive":
        assert (
            ledger.receive(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD, resend_after=60)
            == "received"
        )
    job = ledger.view(imp_uid)
    assert job is not None
    assert (job.state, job.task_id, job.op) == ("received", f"{imp_uid}-t2", "issue")
    assert not job.cancel_done
    # A second refund takes the unfinished issue over: its cancel step is still to do.
    refund = {"imp_uid": imp_uid, "amount": 50}
    claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-c2", payload=refund, op="cancel")
    assert claim.kind == "claimed"
    job = ledger.view(imp_uid)
    assert job is not None
    assert not job.cancel_done
