"""Messages written straight into Redis, as a producer in another language would, or garbage."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support.envelopes import body_of, envelope, envelope_dict
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.worker import ProcessOutput

# Raw entries go straight onto the Redis broker's list: with RabbitMQ there is no such list.
pytestmark = [pytest.mark.integration, pytest.mark.redis_broker]
PHONE = "01055554321"


@pytest.mark.usefixtures("worker")
def test_hand_built_message_is_issued(
    redis_server: RedisServer, results: ResultStream, imp_uid: str
) -> None:
    """An LPUSH of the documented envelope is all another language needs."""
    task_id = str(uuid.uuid4())
    payload = {"imp_uid": imp_uid, "identifier": "01055554321"}
    redis_server.client().lpush("cash_receipts", envelope(body_of(payload), task_id=task_id))
    assert results.wait(task_id)["type"] == "cash_receipt.issued"


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b'{"imp_uid": "IMPUID", "identifier": "01055554321"}',
        b'"just a string"',
        b"[]",
    ],
)
def test_undecodable_bodies_do_not_stop_the_worker(
    redis_server: RedisServer,
    results: ResultStream,
    worker: ProcessOutput,
    imp_uid: str,
    body: bytes,
) -> None:
    """A body that is not a Celery message is dropped with a masked log; the worker goes on."""
    body = body.replace(b"IMPUID", imp_uid.encode())
    task_id = str(uuid.uuid4())
    redis_server.client().lpush("cash_receipts", envelope(body, task_id=task_id))
    follow_up = str(uuid.uuid4())
    payload = {"imp_uid": f"{imp_uid}_next", "identifier": "01055554321"}
    redis_server.client().lpush("cash_receipts", envelope(body_of(payload), task_id=follow_up))
    assert results.wait(follow_up)["type"] == "cash_receipt.issued"
    events = results.for_task(task_id)
    assert len(events) == 1
    assert events[0]["type"] == "cash_receipt.failed"
    assert events[0]["data"]["error"]["reason"] == "invalid_payload"
    if b"IMPUID" in body or imp_uid.encode() in body:
        assert events[0]["data"]["imp_uid"] == imp_uid
    assert "01055554321" not in worker.text


@pytest.mark.parametrize("body", [b"not json at all", b'{"imp_uid": "IMPUID"}', b"[]"])
def test_a_malformed_cancel_message_ends_in_one_cancel_failed(
    redis_server: RedisServer,
    results: ResultStream,
    worker: ProcessOutput,
    imp_uid: str,
    body: bytes,
) -> None:
    """A ``cancel_cash_receipt`` message the guard discards ends as a cancellation, as the
    ingress ends a malformed cancellation entry: ``cash_receipt.cancel_failed``."""
    body = body.replace(b"IMPUID", imp_uid.encode())
    task_id = str(uuid.uuid4())
    message = envelope(body, task="cancel_cash_receipt", task_id=task_id)
    redis_server.client().lpush("cash_receipts", message)
    event = results.wait(task_id)
    assert event["type"] == "cash_receipt.cancel_failed"
    assert event["data"]["error"]["reason"] == "invalid_payload"
    if imp_uid.encode() in body:
        assert event["data"]["imp_uid"] == imp_uid
    assert len(results.for_task(task_id)) == 1


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("timelimit", [30, [30], "x", [30, 60, 90], {"a": 1}])
def test_a_malformed_timelimit_ends_in_one_failure_not_a_parked_message(
    redis_server: RedisServer, results: ResultStream, imp_uid: str, timelimit: object
) -> None:
    """Celery unpacks ``timelimit`` inside its request: a readable message with another
    shape was parked, with no event (review of issue 14, F6). One ``invalid_payload``."""
    task_id = str(uuid.uuid4())
    message = envelope_dict(body_of({"imp_uid": imp_uid, "identifier": PHONE}), task_id=task_id)
    message["headers"]["timelimit"] = timelimit
    redis_server.client().lpush("cash_receipts", json.dumps(message))
    event = results.wait(task_id)
    assert (event["type"], event["data"]["imp_uid"]) == ("cash_receipt.failed", imp_uid)
    assert event["data"]["error"]["reason"] == "invalid_payload"
    assert "timelimit" in json.dumps(event["data"]["error"]["fields"])
    assert len(results.for_task(task_id)) == 1
