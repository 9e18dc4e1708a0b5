"""Ledger transitions on a real Redis: one path for duplicates, fencing, due jobs."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.fernet import Fernet

from tests.support.redis_server import RedisServer
from worker.events import ISSUED
from worker.ledger import DUE_KEY, Ledger, ledger_key
from worker.schemas import load_payload
from worker.sealing import Sealer

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
    ledger.finish(
        imp_uid,
        fence=claim.fence,
        state="failed",
        task_id=f"{imp_uid}-t1",
        event_type="cash_receipt.failed",
        data={},
        error={"reason": "rejected"},
    )
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
    assert client.zscore(DUE_KEY, imp_uid) is None
    record = ledger.record(imp_uid)
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


def test_size_of_one_issued_payment(
    ledger: Ledger, redis_server: RedisServer, imp_uid: str
) -> None:
    """What one issued payment costs in Redis (README: LEDGER_RETENTION), measured, bounded."""
    sealer = Sealer([Fernet.generate_key().decode()])
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
    task_id = str(uuid.uuid4())
    claim = ledger.claim(imp_uid, task_id=task_id, payload=payload)
    receipt = {
        "imp_uid": imp_uid, "receipt_tid": "SBX-RCT-0000000001", "apply_num": "123456789",
        "type": "person", "amount": 11000, "vat": 1000,
        "receipt_url": "https://iniweb.inicis.com/receipt/0000000001", "applied_at": 1795545489,
        "cancelled_at": 0,
    }  # fmt: skip
    ledger.finish(
        imp_uid, fence=claim.fence, state="issued", task_id=task_id, event_type=ISSUED,
        data={"imp_uid": imp_uid, "task_id": task_id, "duplicate": False, "receipt": receipt},
        receipt=receipt,
    )  # fmt: skip
    client = redis_server.client()
    record = client.memory_usage(ledger_key(imp_uid))
    markers = client.memory_usage(f"cash_receipt:terminal:{task_id}") + client.memory_usage(
        f"cash_receipt:last_event:{imp_uid}"
    )
    print(f"\nledger record {record} B, event markers {markers} B")
    assert record < 2560
    assert markers < 512


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
