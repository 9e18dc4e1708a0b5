"""Kombu/Celery protocol-2 messages for the Redis transport, built by hand.

What a producer in another language LPUSHes onto the ``cash_receipts`` list
(the README's "From any other language").
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

ISSUE_TASK = "issue_cash_receipt"
QUEUE = "cash_receipts"


def envelope_dict(
    body: bytes, *, task: str = ISSUE_TASK, task_id: str | None = None
) -> dict[str, Any]:
    """The envelope as a dict, for tests that change parts of it."""
    task_id = task_id or str(uuid.uuid4())
    return {
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
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def envelope(body: bytes, *, task: str = ISSUE_TASK, task_id: str | None = None) -> str:
    """A kombu/Celery protocol-2 message for the Redis transport, as JSON text."""
    return json.dumps(envelope_dict(body, task=task, task_id=task_id))


def body_of(payload: Any) -> bytes:
    """The JSON body of a protocol-2 message: [args, kwargs, embed]."""
    return json.dumps([[payload], {}, {"callbacks": None, "errbacks": None}]).encode()
