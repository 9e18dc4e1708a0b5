"""Text no producer should send, sent the way a producer in another language would.

A lone surrogate (``"\\ud800"`` in JSON, which any JSON parser turns into a
string UTF-8 cannot encode) and JSON nested deeper than a parser's recursion
limit: each ends in one failure event or a dead letter, never in a receipt
whose event cannot be published, nor in a message or an entry that never ends.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.support.envelopes import body_of, envelope
from tests.support.hostile import LONE, deep_json, sent_for
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import ProcessOutput
from worker.adapters.store.keys import DEAD_MESSAGES_KEY
from worker.core.contract import CANCEL_TASK

pytestmark = pytest.mark.integration

PHONE = "01055554321"


def new_imp_uid() -> str:
    """A payment nobody has seen yet."""
    return f"imp_{uuid.uuid4().hex[:12]}"


@pytest.mark.redis_broker
@pytest.mark.parametrize(
    ("task", "field"),
    [
        ("issue_cash_receipt", "merchant_uid"),
        ("issue_cash_receipt", "buyer_name"),
        ("issue_cash_receipt", "imp_uid"),
        (CANCEL_TASK, "merchant_uid"),
        (CANCEL_TASK, "reason"),
    ],
)
@pytest.mark.usefixtures("worker")
def test_lone_surrogate_in_a_raw_message_fails_once_and_posts_nothing(
    redis_server: RedisServer, results: ResultStream, sandbox: Sandbox, task: str, field: str
) -> None:
    """A foreign producer's ``"\\ud800"``: one invalid_payload event, nothing sent to i'mport."""
    imp_uid = new_imp_uid()
    payload: dict[str, Any] = {"imp_uid": imp_uid, "merchant_uid": "order-1"}
    if task != CANCEL_TASK:
        payload["identifier"] = PHONE
    payload[field] = f"{payload.get(field, 'x')}{LONE}"
    body = body_of(payload)
    assert b"\\ud800" in body  # as JSON carries it: an escape, valid UTF-8 on the wire
    task_id = str(uuid.uuid4())
    redis_server.client().lpush("cash_receipts", envelope(body, task=task, task_id=task_id))

    event = results.wait(task_id)
    assert event["type"] == (
        "cash_receipt.cancel_failed" if task == CANCEL_TASK else "cash_receipt.failed"
    )
    assert event["data"]["error"]["reason"] == "invalid_payload"
    assert field in event["data"]["error"]["fields"]
    assert event["data"]["imp_uid"] == (None if field == "imp_uid" else imp_uid)
    assert LONE not in json.dumps(event, ensure_ascii=False)
    assert sent_for(sandbox, imp_uid) == []
    assert len(results.for_task(task_id)) == 1


@pytest.mark.redis_broker
def test_deeply_nested_raw_message_does_not_stop_the_worker(
    redis_server: RedisServer, results: ResultStream, worker: ProcessOutput, imp_uid: str
) -> None:
    """A task message nested 100,000 deep, in its args or as its whole body: one failure event
    each, and the message behind them is issued."""
    client = redis_server.client()
    in_args = str(uuid.uuid4())
    body = (
        b'[[{"imp_uid": "' + imp_uid.encode() + b'", "identifier": ' + deep_json() + b"}], {}, {}]"
    )
    client.lpush("cash_receipts", envelope(body, task_id=in_args))
    whole = str(uuid.uuid4())
    client.lpush("cash_receipts", envelope(deep_json(), task_id=whole))
    follow_up = str(uuid.uuid4())
    payload = {"imp_uid": f"{imp_uid}_next", "identifier": PHONE}
    client.lpush("cash_receipts", envelope(body_of(payload), task_id=follow_up))
    assert results.wait(follow_up, timeout=30)["type"] == "cash_receipt.issued"
    for task_id in (in_args, whole):
        event = results.wait(task_id)
        assert event["type"] == "cash_receipt.failed"
        assert event["data"]["error"]["reason"] == "invalid_payload"
    assert results.for_task(in_args)[0]["data"]["imp_uid"] == imp_uid


@pytest.mark.redis_broker
@pytest.mark.parametrize("shape", ["deep", "lone_surrogate"])
def test_hostile_message_of_an_unknown_task_is_parked(
    redis_server: RedisServer, results: ResultStream, worker: ProcessOutput, shape: str
) -> None:
    """A task this worker does not know, its body nested 100,000 deep or holding "\\ud800":
    parked under its id, and the message behind it is issued."""
    client = redis_server.client()
    imp_uid = new_imp_uid()
    body = deep_json() if shape == "deep" else body_of({"imp_uid": imp_uid, "note": f"x{LONE}"})
    unknown = str(uuid.uuid4())
    client.lpush("cash_receipts", envelope(body, task="reissue_cash_receipt_v2", task_id=unknown))
    follow_up = str(uuid.uuid4())
    payload = {"imp_uid": imp_uid, "identifier": PHONE}
    client.lpush("cash_receipts", envelope(body_of(payload), task_id=follow_up))
    assert results.wait(follow_up, timeout=30)["type"] == "cash_receipt.issued"
    parked = wait_for(
        lambda: [
            record
            for record in map(json.loads, client.lrange(DEAD_MESSAGES_KEY, 0, -1))
            if record.get("id") == unknown
        ],
        message="the unknown task to be parked",
    )
    assert len(parked) == 1
    assert LONE not in json.dumps(parked, ensure_ascii=False)


@pytest.mark.redis_broker
def test_lone_surrogate_in_the_task_id_fails_once(
    redis_server: RedisServer, results: ResultStream, worker: ProcessOutput, sandbox: Sandbox
) -> None:
    """A task id UTF-8 cannot encode names no event key: the message is malformed, ends in one
    failure event under an id derived from it, posts nothing; the message behind it is issued."""
    client = redis_server.client()
    imp_uid = new_imp_uid()
    body = body_of({"imp_uid": imp_uid, "identifier": PHONE})
    client.lpush("cash_receipts", envelope(body, task_id=f"t-{LONE}"))
    follow_up = str(uuid.uuid4())
    client.lpush(
        "cash_receipts",
        envelope(body_of({"imp_uid": new_imp_uid(), "identifier": PHONE}), task_id=follow_up),
    )
    assert results.wait(follow_up, timeout=30)["type"] == "cash_receipt.issued"
    (event,) = wait_for(
        lambda: results.for_imp_uid(imp_uid), message="the malformed message's event"
    )
    assert event["type"] == "cash_receipt.failed"
    assert event["data"]["error"]["reason"] == "invalid_payload"
    assert sent_for(sandbox, imp_uid) == []
