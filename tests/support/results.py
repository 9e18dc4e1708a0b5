"""Reading the result stream the way a consumer would, with bounded waits."""

from __future__ import annotations

import json
from typing import Any

import redis

from tests.support.wait import wait_for

STREAM = "cash_receipt.events"


class ResultStream:
    """The worker's result events, decoded."""

    def __init__(self, client: redis.Redis, stream: str = STREAM) -> None:
        self._redis = client
        self.stream = stream

    def all(self) -> list[dict[str, Any]]:
        """Every event in the stream, oldest first, as ``{"id", "type", "data"}``."""
        return [
            {"id": entry_id, "type": fields["type"], "data": json.loads(fields["data"])}
            for entry_id, fields in self._redis.xrange(self.stream)
        ]

    def for_task(self, task_id: str) -> list[dict[str, Any]]:
        """Every event published for one task message."""
        return [event for event in self.all() if event["data"]["task_id"] == task_id]

    def for_imp_uid(self, imp_uid: str) -> list[dict[str, Any]]:
        """Every event published for one payment."""
        return [event for event in self.all() if event["data"]["imp_uid"] == imp_uid]

    def wait(self, task_id: str, *, timeout: float = 20) -> dict[str, Any]:
        """The one terminal event of ``task_id``, once it exists."""
        events = wait_for(
            lambda: self.for_task(task_id), timeout=timeout, message=f"the event of task {task_id}"
        )
        assert len(events) == 1, events
        return events[0]

    def wait_many(self, task_id: str, count: int, *, timeout: float = 20) -> list[dict[str, Any]]:
        """The ``count`` events of one task (a partial refund's two), in stream order,
        once they exist; exactly that many."""
        wait_for(
            lambda: len(self.for_task(task_id)) >= count,
            timeout=timeout,
            message=f"{count} events of task {task_id}",
        )
        events = sorted(self.for_task(task_id), key=lambda event: event["id"])
        assert len(events) == count, events
        return events

    def transition(self, task_id: str, *, timeout: float = 20) -> list[tuple[str, bool, Any]]:
        """What ``task_id``'s terminal transition said, once it is out (a partial refund's
        cancelled and issued events go out together): each event's type, whether a
        duplicate, and the amount of the receipt it names (None: none)."""
        events = wait_for(
            lambda: self.for_task(task_id), timeout=timeout, message=f"the events of task {task_id}"
        )
        return [
            (e["type"], e["data"]["duplicate"], (e["data"]["receipt"] or {}).get("amount"))
            for e in sorted(events, key=lambda event: event["id"])
        ]
