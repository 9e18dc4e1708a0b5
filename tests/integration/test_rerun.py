"""Every script that changes the ledger is safe to re-run (issue 14, finding 8).

redis-py re-sends a command after a connection error or a timeout even when the
server already ran it. Each test runs a script call twice on the server, as such a
retry does (tests/support/rerun.py), and expects the first run's reply and no second
effect; the last ones lose a real reply over a real dropped connection, and let
redis-py's own retry re-send it.
"""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from tests.support.redis_server import RedisServer
from tests.support.rerun import RerunningRedis, reply_cutter
from worker.adapters.store.dead_messages import expire_dead_messages, keep_dead_message
from worker.adapters.store.events import EventPublisher
from worker.adapters.store.keys import (
    DEAD_MESSAGES_KEY,
    DUE_KEY,
    history_key,
    payment_receipt_key,
    waiters_key,
)
from worker.adapters.store.ledger import Ledger
from worker.adapters.store.once import CALL_RETRIES
from worker.core.events import FAILED, ISSUED
from worker.core.ports import ClaimKind
from worker.core.types import JobKey

pytestmark = pytest.mark.integration

PAYLOAD = {"imp_uid": "x", "identifier_sealed": "gAAAA"}
REFUND = {"imp_uid": "x", "reason": "refund"}
STREAM = "test.rerun.events"


def _ledger(client: redis.Redis) -> Ledger:
    return Ledger(
        client, stream=STREAM, event_retention_seconds=3600, retention_seconds=600, lease_seconds=30
    )


@pytest.fixture
def rerunning(redis_server: RedisServer) -> RerunningRedis:
    """A client whose script calls run once plainly until a test sets ``rerun``."""
    return RerunningRedis.from_url(redis_server.admin_url, decode_responses=True)


def _events(client: redis.Redis, task_id: str) -> list[str]:
    return [
        fields["type"]
        for _, fields in client.xrange(STREAM)
        if json.loads(fields["data"]).get("task_id") == task_id
    ]


def _finish(ledger: Ledger, imp_uid: str, fence: int, task_id: str) -> str | None:
    return ledger.finish(
        imp_uid,
        fence=fence,
        state="issued",
        task_id=task_id,
        event_type=ISSUED,
        data={"imp_uid": imp_uid, "task_id": task_id, "duplicate": False},
        receipt={"apply_num": "1"},
        settled=True,
    )


def test_a_rerun_claim_is_the_same_claim(rerunning: RerunningRedis, imp_uid: str) -> None:
    """The re-run answers claimed, with the fence it bumped once; the task waits on nobody."""
    ledger = _ledger(rerunning)
    rerunning.rerun = 1
    claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    assert (claim.kind, claim.fence, claim.attempt) == (ClaimKind.CLAIMED, 1, 1)
    assert rerunning.smembers(waiters_key(imp_uid)) == set()
    # A duplicate message's claim is another call: busy, never taken for the first.
    rerunning.rerun = 1
    assert ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD).kind is ClaimKind.BUSY
    assert ledger.claim(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD).kind is ClaimKind.BUSY


def test_a_rerun_finish_is_not_fenced_out(rerunning: RerunningRedis, imp_uid: str) -> None:
    ledger = _ledger(rerunning)
    claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    rerunning.rerun = 1
    assert _finish(ledger, imp_uid, claim.fence, f"{imp_uid}-t1") is not None
    assert _events(rerunning, f"{imp_uid}-t1") == [ISSUED]
    history = rerunning.lrange(history_key(imp_uid), 0, -1)
    assert len(history) == 1


def test_a_rerun_park_and_extend_hold_once(rerunning: RerunningRedis, imp_uid: str) -> None:
    ledger = _ledger(rerunning)
    claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
    rerunning.rerun = 1
    assert ledger.extend(imp_uid, fence=claim.fence, seconds=5, error={"reason": "unavailable"})
    rerunning.rerun = 1
    until = ledger.now() + 60
    assert ledger.park(imp_uid, fence=claim.fence, until=until, error={"reason": "unavailable"})
    history = rerunning.lrange(history_key(imp_uid), 0, -1)
    assert len(history) == 2


def test_a_rerun_receive_records_once(rerunning: RerunningRedis, imp_uid: str) -> None:
    ledger = _ledger(rerunning)
    rerunning.rerun = 2
    task = f"{imp_uid}-t1"
    assert ledger.receive(imp_uid, task_id=task, payload=PAYLOAD, resend_after=60) == "received"
    refund = f"{imp_uid}-r1"
    assert (
        ledger.receive_cancel(f"{imp_uid}-b", task_id=refund, cancel=REFUND, resend_after=60)
        == "received"
    )
    assert rerunning.smembers(waiters_key(imp_uid)) == set()


def test_a_rerun_hand_out_still_hands_the_job_out(rerunning: RerunningRedis, imp_uid: str) -> None:
    """The sweeper's hand-out pushes the due time on: its re-run must still return the job."""
    ledger = _ledger(rerunning)
    ledger.receive(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD, resend_after=-1)
    rerunning.rerun = -1
    try:
        jobs = ledger.due_jobs(limit=500, regrace_seconds=30)
    finally:
        rerunning.rerun = 0
    assert [job.task_id for job in jobs if job.imp_uid == imp_uid] == [f"{imp_uid}-t1"]
    assert rerunning.zscore(DUE_KEY, payment_receipt_key(imp_uid)) is not None


def test_a_rerun_publish_is_still_new(rerunning: RerunningRedis, imp_uid: str) -> None:
    events = EventPublisher(rerunning, stream=STREAM, retention_seconds=3600)
    rerunning.rerun = 1
    published = events.publish_terminal(
        event_type=FAILED,
        task_id=f"{imp_uid}-t1",
        job=JobKey.payment(imp_uid),
        merchant_uid=None,
        attempts=1,
        duplicate=False,
        detail={"error": {"reason": "invalid_payload"}},
    )
    assert published.new
    assert _events(rerunning, f"{imp_uid}-t1") == [FAILED]


def test_a_rerun_parked_message_is_kept_once(own_redis: RedisServer) -> None:
    client = RerunningRedis.from_url(own_redis.admin_url, decode_responses=True)
    expire_dead_messages(client)  # the script is loaded: the re-run is of the real call
    client.rerun = 1
    now_ms = int(client.time()[0]) * 1000
    keep_dead_message(client, {"reason": "unknown task", "parked_at_ms": now_ms})
    assert client.llen(DEAD_MESSAGES_KEY) == 1


def test_a_claim_whose_reply_a_dropped_connection_lost_is_the_callers(
    redis_server: RedisServer, imp_uid: str
) -> None:
    """A real dropped connection after the server ran the claim: redis-py's retry gets it."""
    with reply_cutter(redis_server.port) as cutter:
        client = redis.Redis.from_url(cutter.url(redis_server.admin_url), decode_responses=True)
        ledger = _ledger(client)
        # Every script loaded, so that the reply cut is the script's, not NOSCRIPT.
        warm = f"{imp_uid}-warm"
        _finish(ledger, warm, ledger.claim(warm, task_id=warm, payload=PAYLOAD).fence, warm)

        cutter.cut_next()
        claim = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
        assert cutter.cut == 1
        assert (claim.kind, claim.fence) == (ClaimKind.CLAIMED, 1)
        cutter.cut_next()
        assert _finish(ledger, imp_uid, claim.fence, f"{imp_uid}-t1") is not None
        assert cutter.cut == 2
    assert _events(redis_server.client(), f"{imp_uid}-t1") == [ISSUED]


def test_a_call_id_is_new_for_every_call(rerunning: RerunningRedis) -> None:
    """Two calls with the same arguments are two calls: ids are never reused."""
    imp_uid = f"imp_{uuid.uuid4().hex[:12]}"
    ledger = _ledger(rerunning)
    first = ledger.claim(imp_uid, task_id="t", payload=PAYLOAD)
    assert ledger.claim(imp_uid, task_id="t", payload=PAYLOAD, fence=first.fence).fence == 2


def test_a_call_whose_every_re_send_is_lost_raises_and_ran_once(
    redis_server: RedisServer, imp_uid: str
) -> None:
    """The store re-sends a lost call a bounded number of times, then raises; the job is
    as that call left it, claimed once: the next attempt is a new call, and waits."""
    with reply_cutter(redis_server.port) as cutter:
        client = redis.Redis.from_url(cutter.url(redis_server.admin_url), decode_responses=True)
        ledger = _ledger(client)
        warm = f"{imp_uid}-warm"
        ledger.claim(warm, task_id=warm, payload=PAYLOAD)

        cutter.cut_next(times=CALL_RETRIES + 1)
        with pytest.raises(redis.ConnectionError):
            ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
        assert cutter.cut == CALL_RETRIES + 1
        view = ledger.raw_record(imp_uid) or {}
        assert (view["state"], view["fence"]) == ("in_flight", "1")
        again = ledger.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD)
        assert again.kind is ClaimKind.BUSY
