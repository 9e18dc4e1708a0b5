"""Messages written straight into Redis, as a producer in another language would, or garbage."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.worker import ProcessOutput

pytestmark = pytest.mark.integration


def envelope(body: bytes, *, task: str = "issue_cash_receipt", task_id: str | None = None) -> str:
    """A kombu/Celery protocol-2 message for the Redis transport, built by hand."""
    task_id = task_id or str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "js",
                "task": task,
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "group": None,
                "retries": 0,
                "eta": None,
                "expires": None,
                "argsrepr": "<payload>",
                "kwargsrepr": "{}",
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": "cash_receipts"},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def body_of(payload: Any) -> bytes:
    """The JSON body of a protocol-2 message: [args, kwargs, embed]."""
    return json.dumps([[payload], {}, {"callbacks": None, "errbacks": None}]).encode()


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
