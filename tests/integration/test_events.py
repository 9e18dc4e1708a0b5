"""Result events on a real Redis: once per task, trimmed by age, findable per payment."""

from __future__ import annotations

import time

import pytest

from tests.support.redis_server import RedisServer
from worker.adapters.store.events import EventPublisher, latest_event
from worker.core.events import FAILED, ISSUED
from worker.core.types import JobKey

pytestmark = pytest.mark.integration


def publisher(redis_server: RedisServer, stream: str, retention: int = 3600) -> EventPublisher:
    """A publisher on its own stream of the private Redis."""
    return EventPublisher(redis_server.client(), stream=stream, retention_seconds=retention)


def publish(events: EventPublisher, task_id: str, imp_uid: str, event_type: str = ISSUED) -> bool:
    """Publish a minimal terminal event; True when it was new."""
    return events.publish_terminal(
        event_type=event_type,
        task_id=task_id,
        job=JobKey.payment(imp_uid),
        merchant_uid=None,
        attempts=1,
        duplicate=False,
        detail={},
    ).new


def test_one_terminal_event_per_task(redis_server: RedisServer, imp_uid: str) -> None:
    """A second publish for the same task id adds nothing, even with another outcome."""
    events = publisher(redis_server, f"s-{imp_uid}")
    assert publish(events, "task-1", imp_uid) is True
    assert publish(events, "task-1", imp_uid, FAILED) is False
    assert publish(events, "task-2", imp_uid) is True
    assert redis_server.client().xlen(f"s-{imp_uid}") == 2


def test_entries_older_than_retention_are_trimmed(redis_server: RedisServer, imp_uid: str) -> None:
    """MINID trimming drops whole old stream nodes and keeps everything recent."""
    client = redis_server.client()
    stream = f"s-{imp_uid}"
    old = int((time.time() - 7200) * 1000)
    for offset in range(300):
        client.xadd(stream, {"type": "old", "data": "{}"}, id=f"{old + offset}-0")
    recent = int((time.time() - 60) * 1000)
    client.xadd(stream, {"type": "recent", "data": "{}"}, id=f"{recent}-0")
    publish(publisher(redis_server, stream, retention=3600), "task-x", imp_uid)
    kept = [fields["type"] for _, fields in client.xrange(stream)]
    assert kept.count("old") < 100
    assert kept[-2:] == ["recent", ISSUED]


def test_latest_event_per_payment(redis_server: RedisServer, imp_uid: str) -> None:
    """`cashreceipt status` finds the newest terminal event of a payment without scanning."""
    stream = f"s-{imp_uid}"
    events = publisher(redis_server, stream)
    assert latest_event(redis_server.client(), stream=stream, imp_uid=imp_uid) is None
    publish(events, "task-a", imp_uid, FAILED)
    publish(events, "task-b", imp_uid, ISSUED)
    latest = latest_event(redis_server.client(), stream=stream, imp_uid=imp_uid)
    assert latest is not None
    assert (latest["type"], latest["data"]["task_id"]) == (ISSUED, "task-b")
