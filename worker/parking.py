"""Parked messages: what the worker cannot run, kept where an operator can see it.

Celery drops a message whose task this worker does not know, and one it cannot
decode, after logging its body; kombu's Redis transport stops the worker on a
queue entry that is not even JSON. Here every such message is set aside
instead, in the Redis list ``cash_receipt:parked`` (newest first), with the
reason. ``cashreceipt parked`` lists them; ``cashreceipt parked --requeue``
pushes the readable ones back to their queue, e.g. once a worker that knows
their task is deployed.

Parked envelopes keep their base64 body, so they can be replayed, but the
``argsrepr``/``kwargsrepr`` headers, which a bare producer fills with the raw
arguments, are replaced. An unreadable entry is kept as masked text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import redis

from worker.masking import mask_text

log = logging.getLogger(__name__)

PARKED_KEY = "cash_receipt:parked"
#: A flood of garbage must not fill a noeviction Redis; the oldest beyond this
#: are trimmed, and the trim is logged.
PARKED_LIMIT = 10_000
RAW_LIMIT = 64 * 1024


def parked_record(
    *, reason: str, queue: str | None, envelope: Mapping[str, Any] | None, raw: bytes | str | None
) -> dict[str, Any]:
    """The JSON-ready record of one parked message."""
    headers = dict(envelope.get("headers") or {}) if envelope else {}
    clean: dict[str, Any] | None = None
    if envelope is not None:
        clean = dict(envelope)
        if headers:
            headers.update(argsrepr="<redacted>", kwargsrepr="<redacted>")
            clean["headers"] = headers
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return {
        "parked_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "reason": mask_text(reason),
        "queue": queue,
        "task": headers.get("task") if isinstance(headers.get("task"), str) else None,
        "id": headers.get("id") if isinstance(headers.get("id"), str) else None,
        "envelope": clean,
        "raw": mask_text(text[:RAW_LIMIT]) if clean is None and text else None,
    }


def park(client: redis.Redis, record: Mapping[str, Any]) -> None:
    """Keep ``record``; trim the list at :data:`PARKED_LIMIT`."""
    pipe = client.pipeline()
    pipe.lpush(PARKED_KEY, json.dumps(record, ensure_ascii=False))
    pipe.ltrim(PARKED_KEY, 0, PARKED_LIMIT - 1)
    pipe.llen(PARKED_KEY)
    length = pipe.execute()[-1]
    log.error(
        "parked a message (task %s, id %s, queue %s): %s",
        record.get("task"),
        record.get("id"),
        record.get("queue"),
        record.get("reason"),
    )
    if length >= PARKED_LIMIT:
        log.warning("%s is at its limit of %d; the oldest are trimmed", PARKED_KEY, PARKED_LIMIT)


def list_parked(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The newest parked records."""
    return [json.loads(item) for item in client.lrange(PARKED_KEY, 0, limit - 1)]


def requeue_parked(client: redis.Redis) -> int:
    """Push every parked envelope back to its queue; unreadable ones stay. Returns how many."""
    moved = 0
    for item in client.lrange(PARKED_KEY, 0, -1):
        record = json.loads(item)
        if record.get("envelope") is None or not record.get("queue"):
            continue
        pipe = client.pipeline(transaction=True)
        pipe.lpush(record["queue"], json.dumps(record["envelope"]))
        pipe.lrem(PARKED_KEY, 1, item)  # type: ignore[arg-type]  # the exact bytes listed
        pipe.execute()
        moved += 1
    return moved
