"""Result events: exactly one terminal event per task message, in a Redis stream.

Consumers read ``cash_receipt.events`` (the ``RESULT_STREAM``) with a consumer
group. Each entry has two fields, ``type`` and ``data`` (a JSON object); the
README documents every key.

Exactly one: the XADD happens inside a Lua script (worker/adapters/store/lua/publish_once.lua)
together with a marker keyed by the Celery task id. A redelivered or repeated
message whose task already published its outcome publishes nothing new. The
marker lives as long as the stream keeps events, so the guarantee holds for the
whole retention window.

Retention is by age (``XADD ... MINID ~``, by Redis's clock), not by length: a length cap on a
stream deletes entries that a slow consumer group has not read yet, however
recent they are; an age cap only deletes what is older than the documented
retention.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import redis

from worker.adapters.store.clock import ClockOffset, offset_ms, redis_now
from worker.adapters.store.keys import status_of, terminal_key
from worker.adapters.store.once import OnceScript
from worker.adapters.store.redis_client import as_text
from worker.core.events import event_data
from worker.core.ports import Published
from worker.core.types import JobKey


class EventPublisher:
    """Publishes terminal events for task messages: the core's
    :class:`~worker.core.ports.EventPublisher`, in a Redis stream."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str,
        retention_seconds: int,
        clock_offset: ClockOffset | None = None,
    ) -> None:
        """``clock_offset``: test only, as the ledger's (:mod:`worker.adapters.store.clock`)."""
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        self._redis = client
        self._offset = clock_offset
        self._stream = stream
        self._retention = retention_seconds
        self._script = OnceScript(client, "publish")

    @property
    def client(self) -> redis.Redis:
        """The Redis the events go to (the ledger's)."""
        return self._redis

    @property
    def stream(self) -> str:
        """The stream name events go to."""
        return self._stream

    def publish_terminal(
        self,
        *,
        event_type: str,
        task_id: str,
        job: JobKey | None,
        merchant_uid: str | None,
        attempts: int,
        duplicate: bool,
        detail: Mapping[str, Any],
    ) -> Published:
        """Publish the one terminal event of ``task_id``, unless it already exists."""
        data = event_data(
            task_id=task_id,
            job=job,
            merchant_uid=merchant_uid,
            attempts=attempts,
            duplicate=duplicate,
            detail=detail,
            occurred_at=redis_now(self._redis, self._offset),
        )
        result = self._script(
            keys=[self._stream, terminal_key(task_id), status_of(job.receipt_key) if job else ""],
            args=[
                event_type,
                json.dumps(data, ensure_ascii=False),
                offset_ms(self._offset),
                self._retention,
            ],
        )
        new, entry_id = result
        return Published(
            entry_id=entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id),
            new=bool(new),
        )


def task_event(client: redis.Redis, *, stream: str, task_id: str) -> dict[str, Any] | None:
    """The (first) terminal event a task published, decoded, while its marker lasts."""
    return _pointed_at(client, stream, terminal_key(task_id))


def latest_event(
    client: redis.Redis, *, stream: str, imp_uid: str | None = None, job: JobKey | None = None
) -> dict[str, Any] | None:
    """The latest terminal event of a job still within retention, decoded: named by its
    ``job``, or (a V1 payment) by its ``imp_uid``."""
    if job is None:
        assert imp_uid is not None
        job = JobKey.payment(imp_uid)
    return _pointed_at(client, stream, status_of(job.receipt_key))


def _pointed_at(client: redis.Redis, stream: str, pointer: str) -> dict[str, Any] | None:
    """The event whose stream id the string ``pointer`` holds, decoded; None once either
    is gone."""
    entry_id = client.get(pointer)
    if entry_id is None:
        return None
    entries = client.xrange(stream, min=entry_id, max=entry_id)
    if not entries or not entries[0][1]:
        return None
    return _decoded(entries[0][0], entries[0][1])


def read_events(
    client: redis.Redis, *, stream: str, after: str, block_ms: int, count: int
) -> list[dict[str, Any]]:
    """The result events after entry ``after`` ("0": the oldest kept, "$": only new ones),
    decoded like :func:`latest_event`; waits up to ``block_ms`` for the first."""
    # One stream asked for: [(stream, [(entry id, fields), ...])], or nothing after the wait.
    batch = cast("list[Any]", client.xread({stream: after}, block=block_ms, count=count) or [])
    return [_decoded(entry_id, fields) for _, entries in batch for entry_id, fields in entries]


def _decoded(entry_id: object, raw: Mapping[Any, Any]) -> dict[str, Any]:
    fields = {as_text(k): as_text(v) for k, v in raw.items()}
    return {"id": as_text(entry_id), "type": fields.get("type"), "data": json.loads(fields["data"])}
