"""The store's side of the ingress: a malformed entry set aside, acked and deleted at once.

The ingress end to end is in ``test_ingress.py``; here the store's method alone, on a
Redis of its own (the dead-letter list is trimmed, so no other test may share it).
"""

from __future__ import annotations

import json
import logging

import pytest
import redis

from tests.support.redis_server import RedisServer
from worker.adapters.store import ingress_entries
from worker.adapters.store.ingress_entries import IngressEntries
from worker.adapters.store.keys import DEAD_ENTRIES_KEY
from worker.adapters.store.views import list_dead_entries

pytestmark = pytest.mark.integration

STREAM, GROUP, CONSUMER = "payment.events", "cashreceipt-ingress", "test-1"


def _pending_entry(client: redis.Redis, data: bytes) -> str:
    """An entry added and read by CONSUMER, so pending in the group."""
    entry = client.xadd(STREAM, {"type": "payment.confirmed", "data": data})
    client.xreadgroup(GROUP, CONSUMER, {STREAM: ">"}, count=1)
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def test_set_aside_keeps_the_record_and_deletes_the_entry(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The record's fields, masked; the entry acked and deleted; past the limit the oldest go,
    with the warning."""
    client = own_redis.client()
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    monkeypatch.setattr(ingress_entries, "DEAD_ENTRIES_LIMIT", 2)
    entries = IngressEntries(client, stream=STREAM, group=GROUP, consumer=CONSUMER)
    ids = []
    for n in range(3):
        raw = json.dumps({"imp_uid": f"imp_{n}", "identifier": "010-1234-5678"}).encode()
        entry_id = _pending_entry(client, raw)
        ids.append(entry_id)
        with caplog.at_level(logging.WARNING, logger=ingress_entries.__name__):
            entries.set_aside(
                entry_id,
                task_id=f"task-{n}",
                kind="payment.refunded",
                imp_uid=f"imp_{n}",
                reason="unknown_type",
                errors={"type": ["Must be payment.confirmed or payment.cancelled."]},
                raw=raw,
                data=json.loads(raw),
            )
        assert client.xlen(STREAM) == 0
        assert client.xpending(STREAM, GROUP)["pending"] == 0
    assert client.llen(DEAD_ENTRIES_KEY) == 2
    newest = list_dead_entries(client)[0]
    assert set(newest) == {
        "at", "stream", "entry_id", "task_id", "type", "imp_uid", "reason", "errors", "data"
    }  # fmt: skip
    assert (newest["stream"], newest["entry_id"], newest["task_id"]) == (STREAM, ids[2], "task-2")
    assert (newest["type"], newest["imp_uid"], newest["reason"]) == (
        "payment.refunded",
        "imp_2",
        "unknown_type",
    )
    assert newest["data"] == {"imp_uid": "imp_2", "identifier": "010****5678"}
    assert [record["entry_id"] for record in list_dead_entries(client)] == [ids[2], ids[1]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{DEAD_ENTRIES_KEY} is at its limit of 2; the oldest are trimmed"] * 2


def test_reads_take_over_and_done(own_redis: RedisServer) -> None:
    """New entries one at a time, this consumer's pending ones again, a dead consumer's taken
    over once idle; ids as text; done leaves nothing in the stream or pending."""
    client = own_redis.client()
    gone = IngressEntries(client, stream=STREAM, group=GROUP, consumer="gone")
    heir = IngressEntries(client, stream=STREAM, group=GROUP, consumer="heir")
    gone.ensure_group()
    gone.ensure_group()  # BUSYGROUP: already there, nothing to do
    first = client.xadd(STREAM, {"type": "payment.confirmed", "data": "{}"})
    second = client.xadd(STREAM, {"type": "payment.confirmed", "data": "{}"})
    [(entry_id, fields)] = gone.read_new(block_ms=None)
    assert entry_id == first and fields == {"type": "payment.confirmed", "data": "{}"}
    assert [e for e, _ in gone.read_new(block_ms=None)] == [second]
    assert gone.read_new(block_ms=None) == []
    assert [e for e, _ in gone.read_own_pending(after="0", count=10)] == [first, second]
    assert [e for e, _ in gone.read_own_pending(after=first, count=10)] == [second]
    assert heir.take_over(idle_ms=3_600_000, cursor="0-0", count=10) == ("0-0", [])
    cursor, taken = heir.take_over(idle_ms=0, cursor="0-0", count=10)
    assert (cursor, [e for e, _ in taken]) == ("0-0", [first, second])
    assert gone.read_own_pending(after="0", count=10) == []
    heir.done(first)
    client.xdel(STREAM, second)  # deleted behind the group's back: only acknowledged
    heir.acknowledge(second)
    assert client.xlen(STREAM) == 0
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    assert heir.forget_gone_consumers() == 0  # "gone" is not idle for an hour yet
