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
from worker.masking import masked_args_repr
from worker.schemas import load_payload
from worker.sealing import Sealer


def enqueue_issue(payload: Mapping[str, Any], *, app: Celery | None = None) -> str:
    """Validate ``payload``, seal its identifier and enqueue its receipt; returns the task id.

    Raises :class:`~worker.schemas.InvalidPayload` when the payload can never
    be issued, :class:`~worker.sealing.SealingUnavailable` when no PII key is
    configured (and plaintext was not allowed), and kombu's
    ``OperationalError`` when the broker is unreachable.
    """
    if app is None:
        from worker.celery import app as default_app  # noqa: PLC0415 (reads config on demand)

        app = default_app
    sealer = Sealer.from_conf(app.conf)
    message = load_payload(payload, sealer).to_message(sealer)
    result = app.send_task(
        ISSUE_TASK,
        args=[message],
        queue=QUEUE,
        serializer="json",
        argsrepr=masked_args_repr([message]),
        kwargsrepr="{}",
    )
    return str(result.id)
