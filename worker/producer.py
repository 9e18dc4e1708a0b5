"""Enqueueing from Python: validate inside the checkout request, then send.

Any other language sends ``issue_cash_receipt`` to ``cash_receipts`` with the
JSON serializer and no help from us; this helper adds what a Python checkout
gets for free: a bad payload raises :class:`~worker.schemas.InvalidPayload`
right there, with field-level reasons, instead of turning into a failure event
seconds later. It also sends only the normalised payload (unknown fields
dropped, separators stripped) and a masked ``argsrepr``, so Flower and the
worker's "received" log never show the identifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery

from worker.contract import ISSUE_TASK, QUEUE
from worker.masking import mask_payload
from worker.schemas import load_payload


def enqueue_issue(payload: Mapping[str, Any], *, app: Celery | None = None) -> str:
    """Validate ``payload`` and enqueue its receipt; returns the task id.

    Raises :class:`~worker.schemas.InvalidPayload` when the payload can never
    be issued, and kombu's ``OperationalError`` when the broker is unreachable.
    """
    request = load_payload(payload)
    message = request.to_message()
    if app is None:
        from worker.celery import app as default_app  # noqa: PLC0415 (reads config on demand)

        app = default_app
    result = app.send_task(
        ISSUE_TASK,
        args=[message],
        queue=QUEUE,
        serializer="json",
        # Non-empty on purpose: Celery falls back to the raw args for "".
        argsrepr=repr([mask_payload(message)]),
        kwargsrepr="{}",
    )
    return str(result.id)
