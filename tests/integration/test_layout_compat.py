"""Records written by an earlier release are finished by this code, in the layout it writes.

Two captured fixtures hold the exact Redis contents (keys, types, TTLs, hash fields,
values) that the scenarios of :mod:`tests.support.layout` left:

- ``layout/redis_layout_2.json``: layout 2 (issue 14), captured from this code with
  ``PYTHONPATH=. python -m tests.support.layout OUT.json "issue 14 layout 2"``. Every
  key but a V1 payment's record moved out of ``cash_receipt:ledger:``; re-capture it
  only with a new layout version and its migration.
- ``layout/redis_layout.json``: layout 1, the store at commit d88b25b, the main that
  issue 13 was measured on, before any of its moves. The capture tool cannot run there
  unchanged: it drives the store by today's names (``keep_dead_message``, ``op=``),
  and that checkout's tests/support/redis_server.py has no ``running_redis``. So it was
  captured from ``git archive d88b25b`` with two files laid over it, and nothing under
  worker/: tests/support/layout.py as first committed (2e3cae5, which calls ``park``
  and ``purpose=``, the names at d88b25b), and today's tests/support/redis_server.py
  with docker/redis/ (the same server and ACL as every test). Then it was run as
  ``PYTHONPATH=. python -m tests.support.layout OUT.json d88b25b``. Two runs gave the
  same normalised dump.

Layout 1 has grown by one field since d88b25b (:data:`ADDED_SINCE_CAPTURE`). Each
test runs on a Redis of its own: the sweeper's due index is global, and a test here
hands out every due job.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import layout
from tests.support.redis_server import running_redis
from tests.support.worker import worker_env
from worker.adapters.store import lua
from worker.adapters.store.keys import DUE_KEY, LAYOUT_KEY, ledger_key
from worker.adapters.store.layout import fold_layout_1_indexes, migrate
from worker.adapters.store.ledger import Claim, DueJob, Ledger
from worker.core.events import CANCELLED, ISSUED

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "cashreceipt")
_LAYOUTS = Path(__file__).parent / "layout"
#: Layout 1's scenarios, as the release at d88b25b left them.
CAPTURED_1 = json.loads((_LAYOUTS / "redis_layout.json").read_text())["scenarios"]
#: Layout 2's scenarios, as this code leaves them.
CAPTURED = json.loads((_LAYOUTS / "redis_layout_2.json").read_text())["scenarios"]

#: What the store wrote at layout 1 that it did not write at d88b25b, by (scenario,
#: key, index in the list): every change here is an addition that readers treat as
#: optional. The history entry of a transition with a second event names that event
#: (6f64afa, for the chaos suite's count of re-issues; ``cashreceipt status`` shows it).
#: Records from before it carry no ``then``, and ``entry.get("then")`` reads them.
ADDED_SINCE_CAPTURE: dict[tuple[str, str, int], dict[str, Any]] = {
    ("full_issue", "cash_receipt:history:iamport:imp_layout_issue", 1): {
        "then": "cash_receipt.issued"
    },
}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[redis.Redis]:
    """An empty private Redis for one test (its client decodes replies)."""
    with running_redis(tmp_path) as server:
        yield server.client()


def _events(client: redis.Redis) -> list[tuple[str, dict[str, Any]]]:
    return [
        (fields["type"], json.loads(fields["data"])) for _, fields in client.xrange(layout.STREAM)
    ]


def _record(client: redis.Redis, imp_uid: str) -> dict[str, str]:
    return dict(client.hgetall(f"cash_receipt:ledger:{imp_uid}"))


def _claim(store: Ledger, job: DueJob) -> Claim:
    claim = store.claim(
        job.imp_uid, task_id=job.task_id, payload=job.payload, op=job.op, fence=job.fence
    )
    assert claim.kind == "claimed", (job, claim)
    return claim


def _issue(store: Ledger, imp_uid: str, claim: Claim, task_id: str, apply_num: str) -> None:
    receipt = {**layout.RECEIPT, "apply_num": apply_num}
    entry = store.finish(
        imp_uid,
        fence=claim.fence,
        state="issued",
        task_id=task_id,
        event_type=ISSUED,
        data={"imp_uid": imp_uid, "task_id": task_id, "duplicate": False, "receipt": receipt},
        receipt=receipt,
    )
    assert entry is not None


@pytest.mark.parametrize("written_in", [1, 2])
def test_mid_flight_jobs_of_the_old_code_are_finished(client: redis.Redis, written_in: int) -> None:
    """Jobs the old code left claimed, parked, and in a refund are handed out and finished.

    The old code's leases have long passed and its parked job is due: the sweeper's
    call hands out all four, each with the fence it must carry, and the new scripts
    take them over and end them in the events the old ones owed, reading the old
    records (waiters, ``pending_issue*``, ``pending_cancel*``, ``cancel_step``).
    Layout 1's jobs are migrated first, as a worker does at its start.
    """
    if written_in == 1:
        layout.load(client, CAPTURED_1["mid_flight"])
        migrate(client, stream=layout.STREAM)
    else:
        layout.load(client, CAPTURED["mid_flight"])
    store = layout.ledger(client)
    jobs = {job.imp_uid: job for job in store.due_jobs(limit=10, regrace_seconds=30)}
    assert {uid: (job.state, job.op, job.task_id) for uid, job in jobs.items()} == {
        "imp_layout_claimed": ("in_flight", "issue", "task-claimed-1"),
        "imp_layout_parked": ("received", "issue", "task-parked-1"),
        "imp_layout_refund": ("in_flight", "cancel", "task-refund-cancel"),
        "imp_layout_pending_cancel": ("in_flight", "issue", "task-pending-issue"),
    }
    assert jobs["imp_layout_refund"].payload == layout.PARTIAL
    before = len(_events(client))

    # An issue in flight, and the message that waited on it: both end, one receipt.
    claim = _claim(store, jobs["imp_layout_claimed"])
    assert claim.resumed
    _issue(store, "imp_layout_claimed", claim, "task-claimed-1", "C1")

    # The parked issue resumes where its history left it.
    claim = _claim(store, jobs["imp_layout_parked"])
    assert (claim.resumed, claim.attempt) == (True, 2)
    _issue(store, "imp_layout_parked", claim, "task-parked-1", "P1")
    history = store.raw_record("imp_layout_parked")
    assert history is not None
    assert history["state"] == "issued"

    # The partial refund: its cancel step is read back, so it does not cancel twice;
    # with no receipt to replace, the issue message recorded meanwhile owns the job.
    claim = _claim(store, jobs["imp_layout_refund"])
    record = _record(client, "imp_layout_refund")
    assert record["cancel_step"] == "cancelled"
    assert json.loads(record["cancelled_receipt"]) == layout.RECEIPT
    # ... and so the core reads it, through the port's typed view.
    job = store.view("imp_layout_refund")
    assert job is not None
    assert (job.op, job.cancel, job.payload) == ("cancel", layout.PARTIAL, layout.PAYLOAD)
    assert job.cancel_done
    assert job.cancelled_receipt is not None
    assert job.cancelled_receipt.apply_num == layout.RECEIPT["apply_num"]
    entry = store.finish(
        "imp_layout_refund",
        fence=claim.fence,
        state="cancelled",
        task_id="task-refund-cancel",
        event_type=CANCELLED,
        data={"task_id": "task-refund-cancel", "duplicate": False, "receipt": layout.RECEIPT},
        receipt=layout.RECEIPT,
    )
    assert entry is not None
    record = _record(client, "imp_layout_refund")
    assert (record["state"], record["op"], record["task_id"]) == (
        "received",
        "issue",
        "task-refund-reissue",
    )
    claim = store.claim("imp_layout_refund", task_id="task-refund-reissue", payload=layout.PAYLOAD)
    assert claim.kind == "claimed"
    _issue(store, "imp_layout_refund", claim, "task-refund-reissue", "R2")

    # The issue with a full refund kept beside it: once issued, the refund owns the job.
    claim = _claim(store, jobs["imp_layout_pending_cancel"])
    _issue(store, "imp_layout_pending_cancel", claim, "task-pending-issue", "PC1")
    record = _record(client, "imp_layout_pending_cancel")
    assert (record["state"], record["op"], record["task_id"]) == (
        "received",
        "cancel",
        "task-pending-cancel",
    )
    assert "pending_cancel_task" not in record
    claim = store.claim(
        "imp_layout_pending_cancel",
        task_id="task-pending-cancel",
        payload=layout.FULL,
        op="cancel",
    )
    assert claim.kind == "claimed"
    entry = store.finish(
        "imp_layout_pending_cancel",
        fence=claim.fence,
        state="cancelled",
        task_id="task-pending-cancel",
        event_type=CANCELLED,
        data={"task_id": "task-pending-cancel", "duplicate": False},
    )
    assert entry is not None

    ended = [(kind, data["task_id"], data["duplicate"]) for kind, data in _events(client)[before:]]
    assert ended == [
        (ISSUED, "task-claimed-1", False),
        (ISSUED, "task-claimed-2", True),
        (ISSUED, "task-parked-1", False),
        (CANCELLED, "task-refund-cancel", False),
        (ISSUED, "task-refund-reissue", False),
        (ISSUED, "task-pending-issue", False),
        (CANCELLED, "task-pending-cancel", False),
    ]
    for uid in jobs:
        assert _record(client, uid)["state"] in {"issued", "cancelled"}
    assert client.zcard(DUE_KEY) == 0
    for task_id in ("task-claimed-2", "task-refund-reissue", "task-pending-cancel"):
        assert client.exists(f"cash_receipt:terminal:{task_id}")


@pytest.mark.parametrize("scenario", sorted(CAPTURED))
def test_the_code_writes_layout_2(client: redis.Redis, scenario: str) -> None:
    """The same scenario leaves the same keys, types, TTLs, hash fields and values.

    Only what differs between any two runs is left out (times, stream ids, event ids,
    the order of waiters' events): see :func:`tests.support.layout.normalized`.
    """
    layout.SCENARIOS[scenario](client)
    dump = _without_event_fields_added_since_capture(layout.dump(client))
    assert layout.normalized(dump) == layout.normalized(CAPTURED[scenario])


#: Fields every event has carried since the capture (issue 15): what an event says, not
#: where the store keeps anything, so no new layout. The scenarios' own events (handed
#: to ``finish`` as they are) lack them; the publisher's have them.
EVENT_FIELDS_ADDED_SINCE_CAPTURE = ("receipt_key", "provider", "kind")


def _without_event_fields_added_since_capture(dump: dict[str, Any]) -> dict[str, Any]:
    for item in dump.values():
        if item["type"] != "stream":
            continue
        for _, fields in item["value"]:
            if "data" not in fields or "type" not in fields:
                continue  # not a result event (the ingress stream's entries)
            data = json.loads(fields["data"])
            for name in EVENT_FIELDS_ADDED_SINCE_CAPTURE:
                data.pop(name, None)
            fields["data"] = json.dumps(data, ensure_ascii=False)
    return dump


# -- the migration from layout 1 (issue 14) ------------------------------------------


def _migrated_expectation(scenario: str) -> layout.Dump:
    """Layout 2's capture, normalised, less the fields layout 1's capture predates, and
    with the layout's own key, which the migration writes."""
    expected = layout.normalized(CAPTURED[scenario])
    for (name, key, index), fields in ADDED_SINCE_CAPTURE.items():
        if name == scenario:
            entries = expected[key]["value"]
            entry = json.loads(entries[index])
            assert {field: entry.pop(field) for field in fields} == fields, (key, entry)
            entries[index] = json.dumps(entry, sort_keys=True)
    expected[LAYOUT_KEY] = {"type": "string", "ttl": False, "value": "2"}
    return expected


@pytest.mark.parametrize("scenario", sorted(CAPTURED_1))
def test_the_migration_leaves_layout_2(client: redis.Redis, scenario: str) -> None:
    """Layout 1's capture, migrated, is layout 2's capture: every key, type, TTL and value.

    Run again, with a full scan too, it moves nothing and changes nothing.
    """
    layout.load(client, CAPTURED_1[scenario])
    first = migrate(client, stream=layout.STREAM)
    assert first.scanned and first.moved > 0
    migrated = layout.normalized(layout.dump(client))
    assert migrated == _migrated_expectation(scenario)
    assert migrate(client, stream=layout.STREAM).moved == 0
    assert migrate(client, stream=layout.STREAM, rescan=True).moved == 0
    assert layout.normalized(layout.dump(client)) == migrated


def test_the_migration_tells_a_record_from_a_side_key(client: redis.Redis) -> None:
    """A layout 1 name that an imp_uid or a task id could also spell is moved by its type,
    or by the event it points at, and a record or another task's marker stays."""
    stream = layout.STREAM
    # Records of the payments `due`, `a:history`, `a:waiters`: hashes, where layout 1's
    # index and payment a's side keys would be.
    for imp_uid in ("due", "a:history", "a:waiters"):
        client.hset(ledger_key(imp_uid), mapping={"state": "issued", "fence": "1"})
    # Payment b's side keys, and the failed index, are layout 1's own.
    client.rpush("cash_receipt:ledger:b:history", '{"outcome": "retry"}')
    client.sadd("cash_receipt:ledger:b:waiters", "task-w")
    client.zadd("cash_receipt:ledger:failed", {"b": 1000})
    # Task r's second marker; the marker of the task named `s:2`; one whose event is gone.
    second = client.xadd(stream, {"type": "cash_receipt.issued", "data": '{"task_id": "r"}'})
    own = client.xadd(stream, {"type": "cash_receipt.issued", "data": '{"task_id": "s:2"}'})
    client.set("cash_receipt:terminal:r:2", second, ex=600)
    client.set("cash_receipt:terminal:s:2", own, ex=600)
    client.set("cash_receipt:terminal:u:2", "1-1", ex=600)
    client.set("cash_receipt:last_event:c", own, ex=600)

    migrate(client, stream=stream)

    for imp_uid in ("due", "a:history", "a:waiters"):
        assert client.hgetall(ledger_key(imp_uid)) == {"state": "issued", "fence": "1"}
    # The scan offers only keys of the type; the script checks again, atomically.
    move_key = client.register_script(lua.source("migrate_key"))
    new_name = "cash_receipt:history:iamport:a"
    assert move_key(keys=[ledger_key("a:history"), new_name], args=["list", 50]) == 0
    assert client.exists(ledger_key("a:history")) and not client.exists(new_name)
    assert client.lrange("cash_receipt:history:iamport:b", 0, -1) == ['{"outcome": "retry"}']
    assert client.smembers("cash_receipt:waiters:iamport:b") == {"task-w"}
    assert client.zrange("cash_receipt:index:failed", 0, -1) == ["iamport:b"]
    assert not client.exists("cash_receipt:ledger:b:history", "cash_receipt:ledger:failed")
    assert client.get("cash_receipt:terminal_then:r") == second
    assert client.ttl("cash_receipt:terminal_then:r") > 0
    assert not client.exists("cash_receipt:terminal:r:2")
    assert client.get("cash_receipt:terminal:s:2") == own
    assert client.get("cash_receipt:terminal:u:2") == "1-1"
    assert not client.exists("cash_receipt:terminal_then:s", "cash_receipt:terminal_then:u")
    assert client.get("cash_receipt:status:iamport:c") == own


def test_a_layout_1_index_is_folded_into_one_already_written(client: redis.Redis) -> None:
    """An older producer adds to layout 1's due index after the migration: the sweep's
    fold moves it, keeping the sooner due time of a job in both."""
    client.zadd(DUE_KEY, {"iamport:p": 5000, "iamport:q": 5000})
    client.zadd("cash_receipt:ledger:due", {"p": 1000, "q": 9000, "n": 7000})
    assert fold_layout_1_indexes(client) == 3
    assert client.zrange(DUE_KEY, 0, -1, withscores=True) == [
        ("iamport:p", 1000.0),
        ("iamport:q", 5000.0),
        ("iamport:n", 7000.0),
    ]
    assert not client.exists("cash_receipt:ledger:due")
    assert fold_layout_1_indexes(client) == 0


def test_an_operator_migrates_with_the_command(tmp_path: Path) -> None:
    """``cashreceipt migrate-layout`` moves layout 1's keys, and a second run moves none."""
    with running_redis(tmp_path) as server:
        client = server.client()
        layout.load(client, CAPTURED_1["mid_flight"])

        def run() -> dict[str, Any]:
            done = subprocess.run(
                [CLI, "migrate-layout", "--json"],
                env=worker_env(server.url, "http://127.0.0.1:9"),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            reply: dict[str, Any] = json.loads(done.stdout)
            return reply

        first = run()
        assert (first["layout"], first["scanned"], first["index_members"]) == (2, True, 4)
        assert first["side_keys"] == 4
        assert client.get(LAYOUT_KEY) == "2"
        second = run()
        assert (second["scanned"], second["index_members"], second["side_keys"]) == (False, 0, 0)
