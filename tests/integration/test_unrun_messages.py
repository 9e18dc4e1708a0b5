"""Messages Celery discards without running them (past ``expires``, or revoked) still end.

Each ends in one failure event, reason ``expired`` or ``revoked``, and the ledger job the
producer recorded for it ends failed with it, so the sweeper never re-sends it
(worker/core/unrun.py).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery

from tests.support import layout
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.wait import wait_for
from worker.adapters.store.keys import DUE_KEY, ledger_key, payment_receipt_key
from worker.adapters.store.ledger import FENCE_HEADER, Ledger
from worker.celery.producer import enqueue_issue
from worker.core.contract import CANCEL_TASK, ISSUE_TASK, QUEUE

# On RabbitMQ, Celery also turns `expires` into the message's TTL: one that expires in the
# queue is dropped unseen (the README says what then happens), so whether this message
# reaches the worker depends on its backlog. The Redis transport always delivers it.
pytestmark = [pytest.mark.integration]


def recorded(server: RedisServer, imp_uid: str, task_id: str) -> Ledger:
    """The job recorded as the producer helper records it, before its message is sent."""
    ledger = layout.ledger(server.client(), lease_seconds=60)
    payload = {"imp_uid": imp_uid, "identifier": "01055554321"}
    assert ledger.receive(imp_uid, task_id=task_id, payload=payload, resend_after=3600)
    return ledger


def send_expired(
    producer: Celery, imp_uid: str, task_id: str, headers: dict[str, Any] | None = None
) -> None:
    """An issue message already past its ``expires`` when it is sent."""
    producer.send_task(
        ISSUE_TASK,
        args=[{"imp_uid": imp_uid, "identifier": "01055554321"}],
        task_id=task_id,
        queue=QUEUE,
        expires=datetime.now(UTC) - timedelta(minutes=1),
        headers=headers,
    )


def assert_job_ended(server: RedisServer, imp_uid: str, reason: str) -> None:
    """The job failed with the message, and nothing is left for the sweeper to re-send."""
    client = server.client()
    record = client.hgetall(ledger_key(imp_uid))
    assert record["state"] == "failed"
    assert json.loads(record["last_error"])["reason"] == reason
    assert client.zscore(DUE_KEY, payment_receipt_key(imp_uid)) is None


@pytest.mark.redis_broker
@pytest.mark.usefixtures("worker")
def test_a_message_past_its_expires_ends_failed_and_its_job_with_it(
    redis_server: RedisServer, producer: Celery, results: ResultStream, imp_uid: str
) -> None:
    task_id = str(uuid.uuid4())
    recorded(redis_server, imp_uid, task_id)
    send_expired(producer, imp_uid, task_id)
    event = results.wait(task_id)
    assert event["type"] == "cash_receipt.failed"
    assert event["data"]["error"]["reason"] == "expired"
    assert event["data"]["imp_uid"] == imp_uid
    assert_job_ended(redis_server, imp_uid, "expired")
    assert len(results.for_task(task_id)) == 1


@pytest.mark.redis_broker
@pytest.mark.usefixtures("worker")
def test_the_message_waiting_on_an_unrun_owner_takes_its_job_over(
    redis_server: RedisServer, producer: Celery, results: ResultStream, imp_uid: str
) -> None:
    """Issue 14, finding 18: an issue message waits on a job whose owner's message then
    comes past its ``expires``. The waiter had ended with the owner's ``expired``; it ran,
    so it takes the job over and issues the receipt."""
    owner_id = str(uuid.uuid4())
    ledger = recorded(redis_server, imp_uid, owner_id)
    owner = ledger.claim(imp_uid, task_id=owner_id, payload={"imp_uid": imp_uid})
    # Another confirmation of the payment: recorded as a waiter, sent, and kept busy.
    waiter_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
    # The owner's own message, with its claim's fence.
    send_expired(producer, imp_uid, owner_id, headers={FENCE_HEADER: owner.fence})
    expired = results.wait(owner_id)
    assert expired["data"]["error"]["reason"] == "expired"
    event = results.wait(waiter_id)
    assert event["type"] == "cash_receipt.issued"
    assert event["data"]["duplicate"] is False
    record = redis_server.client().hgetall(ledger_key(imp_uid))
    assert (record["state"], record["task_id"]) == ("issued", waiter_id)
    assert len(results.for_task(owner_id)) == len(results.for_task(waiter_id)) == 1


def revoke_and_wait(producer: Celery, task_id: str) -> None:
    """Revoke ``task_id`` and wait until the worker has it on its revoked list."""
    producer.control.revoke(task_id)
    wait_for(
        lambda: (
            any(
                task_id in ids
                for ids in (producer.control.inspect(timeout=1).revoked() or {}).values()
            )
            or None
        ),
        timeout=20,
        message="the worker to know the revoke",
    )


@pytest.mark.usefixtures("worker")
def test_a_revoked_message_ends_failed_and_its_job_with_it(
    redis_server: RedisServer, producer: Celery, results: ResultStream, imp_uid: str
) -> None:
    task_id = str(uuid.uuid4())
    recorded(redis_server, imp_uid, task_id)
    revoke_and_wait(producer, task_id)
    producer.send_task(
        ISSUE_TASK,
        args=[{"imp_uid": imp_uid, "identifier": "01055554321"}],
        task_id=task_id,
        queue=QUEUE,
    )
    event = results.wait(task_id)
    assert event["type"] == "cash_receipt.failed"
    assert event["data"]["error"]["reason"] == "revoked"
    assert_job_ended(redis_server, imp_uid, "revoked")
    assert len(results.for_task(task_id)) == 1


@pytest.mark.usefixtures("worker")
def test_a_revoked_cancellation_ends_in_cancel_failed(
    producer: Celery, results: ResultStream, imp_uid: str
) -> None:
    """A cancellation sent without the ledger: its event alone, as a cancellation's."""
    task_id = str(uuid.uuid4())
    revoke_and_wait(producer, task_id)
    producer.send_task(CANCEL_TASK, args=[{"imp_uid": imp_uid}], task_id=task_id, queue=QUEUE)
    event = results.wait(task_id)
    assert event["type"] == "cash_receipt.cancel_failed"
    assert event["data"]["error"]["reason"] == "revoked"
    assert len(results.for_task(task_id)) == 1
