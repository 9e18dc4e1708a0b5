"""Messages Celery discards without running them (past ``expires``, or revoked) still end.

Each ends in one failure event, reason ``expired`` or ``revoked``, and the ledger job the
producer recorded for it ends failed with it, so the sweeper never re-sends it
(worker/core/unrun.py).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery

from tests.support import layout
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.wait import wait_for
from worker.adapters.store.keys import DUE_KEY, ledger_key, payment_receipt_key
from worker.adapters.store.ledger import Ledger
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
    producer.send_task(
        ISSUE_TASK,
        args=[{"imp_uid": imp_uid, "identifier": "01055554321"}],
        task_id=task_id,
        queue=QUEUE,
        expires=datetime.now(UTC) - timedelta(minutes=1),
    )
    event = results.wait(task_id)
    assert event["type"] == "cash_receipt.failed"
    assert event["data"]["error"]["reason"] == "expired"
    assert event["data"]["imp_uid"] == imp_uid
    assert_job_ended(redis_server, imp_uid, "expired")
    assert len(results.for_task(task_id)) == 1


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
