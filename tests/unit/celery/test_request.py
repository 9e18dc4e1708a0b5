"""What a worker shows of one task message (``celery inspect active/reserved``): masked."""

from __future__ import annotations

import json

from kombu.message import Message

import tasks.receipts  # noqa: F401 (registers the tasks)
from worker.celery.app import app
from worker.celery.request import MaskedRequest
from worker.core.contract import ISSUE_TASK

PHONE = "01097771234"


def test_remote_control_shows_no_producer_text_in_clear() -> None:
    """The arguments, and the producer's exchange name, which it writes as it likes
    (review of issue 14, F4); the routing key of our queue stays as it is."""
    body = json.dumps([[{"imp_uid": "imp_1", "identifier": PHONE, "buyer_name": "김민준"}], {}, {}])
    message = Message(
        body=body,
        headers={"id": "t-1", "task": ISSUE_TASK, "shadow": f"tel_{PHONE}", "root_id": PHONE},
        delivery_info={"exchange": "tel_010_9777_1234", "routing_key": "cash_receipts"},
        content_type="application/json",
        content_encoding="utf-8",
    )
    request = MaskedRequest(message, app=app, task=app.tasks[ISSUE_TASK])
    shown = request.info(safe=False)
    text = json.dumps(shown, ensure_ascii=False, default=str)
    assert all(part not in text for part in ("9777", "김민준")), text
    assert shown["delivery_info"]["routing_key"] == "cash_receipts"
    assert shown["name"] == ISSUE_TASK
    assert request.delivery_info["exchange"] == "tel_010_9777_1234"  # routing keeps it
