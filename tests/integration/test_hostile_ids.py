"""Ids that once named the store's own keys, issued through a real worker (issue 14, finding 1).

In layout 1 the imp_uids ``due`` and ``failed`` were the ledger's indexes: their first
script failed with WRONGTYPE, and from then on no payment was recorded at all.
``x:history`` and ``x:waiters`` were payment ``x``'s side keys, and the task id ``r:2``
the second marker of a partial refund ``r``, which made that task look done. Here each
gets its receipt and its one event, and the system goes on issuing afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from tests.support.envelopes import body_of, envelope
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.wait import wait_for
from tests.support.worker import producer_app, running_worker, worker_env
from worker.adapters.store.keys import DEAD_MESSAGES_KEY
from worker.celery.producer import TaskIdReused, enqueue_cancel, enqueue_issue
from worker.core.contract import CANCEL_TASK
from worker.core.schemas import InvalidPayload

pytestmark = pytest.mark.integration
PHONE = "01055554321"
ISSUED, CANCELLED = "cash_receipt.issued", "cash_receipt.cancelled"


@pytest.fixture
def own_sandbox() -> Iterator[Sandbox]:
    """A sandbox of this test's own: the ids here are literal, not unique."""
    with running_sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def producer(own_redis: RedisServer) -> Iterator[Celery]:
    app = producer_app(own_redis.url)
    yield app
    app.close()


def _issue(producer: Celery, imp_uid: str, **options: Any) -> str:
    return enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer, **options)


def _ended(results: ResultStream, task_id: str) -> tuple[str, bool]:
    event = results.wait(task_id, timeout=30)
    return event["type"], event["data"]["duplicate"]


def test_hostile_ids_each_get_their_receipt(
    own_redis: RedisServer, own_sandbox: Sandbox, producer: Celery
) -> None:
    """``due``, ``failed``, ``x:history``, ``x:waiters``, the task id ``r:2``: one receipt
    each, one event each, and a payment after them all is issued too."""
    results = ResultStream(own_redis.client())
    own_sandbox.seed_payment("x", amount=33000)
    with running_worker(worker_env(own_redis.url, own_sandbox.url)):
        # On a quiet system: the indexes' names first.
        for imp_uid in ("due", "failed"):
            assert _ended(results, _issue(producer, imp_uid)) == (ISSUED, False)

        # x:waiters is recorded, then x gets a waiter; x's history exists before x:history.
        assert _ended(results, _issue(producer, "x:waiters")) == (ISSUED, False)
        owner, waiter = _issue(producer, "x"), _issue(producer, "x")
        assert sorted([_ended(results, owner), _ended(results, waiter)]) == [
            (ISSUED, False),
            (ISSUED, True),
        ]
        assert _ended(results, _issue(producer, "x:history")) == (ISSUED, False)

        # A partial refund's two events under task r; then a task named r:2.
        own_sandbox.seed_payment("x", cancel_amount=11000)
        enqueue_cancel({"imp_uid": "x", "amount": 11000}, app=producer, task_id="r")
        wait_for(lambda: len(results.for_task("r")) == 2, timeout=30, message="r's two events")
        assert sorted(event["type"] for event in results.for_task("r")) == [CANCELLED, ISSUED]
        assert _ended(results, _issue(producer, "y", task_id="r:2")) == (ISSUED, False)

        assert _ended(results, _issue(producer, "after")) == (ISSUED, False)

    counts = own_sandbox.receipts()["issued_counts"]
    assert {uid: counts.get(uid) for uid in ("due", "failed", "x:waiters", "x:history", "y")} == {
        "due": 1,
        "failed": 1,
        "x:waiters": 1,
        "x:history": 1,
        "y": 1,
    }
    assert counts.get("x") == 2  # the receipt, and the one re-issued for the balance
    assert counts.get("after") == 1


@pytest.mark.redis_broker
def test_dot_segments_end_in_one_failure_and_reach_no_path(
    own_redis: RedisServer, own_sandbox: Sandbox, producer: Celery
) -> None:
    """``.`` and ``..`` as imp_uids from a bare producer: requests would turn
    ``/receipts/..`` into ``/``. Each ends in one ``invalid_payload`` failure, and the
    sandbox sees no request at all."""
    results = ResultStream(own_redis.client())
    with running_worker(worker_env(own_redis.url, own_sandbox.url)):
        for imp_uid in (".", ".."):
            with pytest.raises(InvalidPayload):
                _issue(producer, imp_uid)  # the helper refuses it; a bare producer sends it
            task_id = str(uuid.uuid4())
            body = body_of({"imp_uid": imp_uid, "identifier": PHONE})
            own_redis.client().lpush("cash_receipts", envelope(body, task_id=task_id))
            event = results.wait(task_id, timeout=30)
            assert event["type"] == "cash_receipt.failed"
            assert event["data"]["error"]["reason"] == "invalid_payload"
            assert event["data"]["imp_uid"] == imp_uid
            assert len(results.for_task(task_id)) == 1
    assert own_sandbox.admin.requests() == []


def test_a_task_id_reused_for_another_job_is_refused_by_the_helper(
    own_redis: RedisServer, own_sandbox: Sandbox, producer: Celery
) -> None:
    """A task id names one message, whose one event is out. The same task again returns
    its id; reused for another payment, or for a refund of the issue's id, it vanished
    with no event and nothing sent (review of issue 14, F1). The helper refuses it."""
    results = ResultStream(own_redis.client())
    own_sandbox.seed_payment("a", amount=33000)
    with running_worker(worker_env(own_redis.url, own_sandbox.url)):
        assert _ended(results, _issue(producer, "a", task_id="order-1")) == (ISSUED, False)
        assert _issue(producer, "a", task_id="order-1") == "order-1"  # the same task again
        with pytest.raises(TaskIdReused, match="iamport:a's issue"):
            _issue(producer, "b", task_id="order-1")
        with pytest.raises(TaskIdReused, match="cannot also name iamport:a's cancel"):
            enqueue_cancel({"imp_uid": "a"}, app=producer, task_id="order-1")
    assert len(results.for_task("order-1")) == 1
    assert own_sandbox.admin.issued_count("b") == 0


@pytest.mark.redis_broker
def test_a_bare_message_under_a_task_id_that_ended_for_another_job_is_set_aside(
    own_redis: RedisServer, own_sandbox: Sandbox, producer: Celery
) -> None:
    """A bare producer reuses a task id for another payment, and for a refund of the
    issue's id: each message is taken for the same task again no longer, but kept in
    ``cash_receipt:parked`` with why, and nothing is sent for it (review of issue 14, F1)."""
    results = ResultStream(own_redis.client())
    own_sandbox.seed_payment("a", amount=33000)
    client = own_redis.client()
    with running_worker(worker_env(own_redis.url, own_sandbox.url)):
        assert _ended(results, _issue(producer, "a", task_id="order-2")) == (ISSUED, False)
        reused = [
            envelope(body_of({"imp_uid": "b", "identifier": PHONE}), task_id="order-2"),
            envelope(body_of({"imp_uid": "a"}), task=CANCEL_TASK, task_id="order-2"),
        ]
        for message in reused:
            client.lpush("cash_receipts", message)
        wait_for(
            lambda: len(client.lrange(DEAD_MESSAGES_KEY, 0, -1)) == 2,
            timeout=30,
            message="both reused messages to be set aside",
        )
    records = [json.loads(item) for item in client.lrange(DEAD_MESSAGES_KEY, 0, -1)]
    assert all("reused task id" in record["reason"] for record in records)
    assert {record["task"] for record in records} == {"issue_cash_receipt", CANCEL_TASK}
    assert PHONE not in json.dumps(records)
    assert len(results.for_task("order-2")) == 1
    assert own_sandbox.admin.issued_count("b") == 0
    assert [r["method"] for r in own_sandbox.admin.requests("a")].count("DELETE") == 0
