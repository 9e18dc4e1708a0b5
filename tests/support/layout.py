"""The Redis layout as data: dump what the store wrote, load it back, compare two dumps.

The layout (key names, types, hash fields, values) is a contract with deployed data:
records written by one release are finished by the next. The scenarios here drive
the store only through its public calls (``Ledger``, ``EventPublisher``, ``keep_dead_message``),
save the steps an owner noted, written as the fixture's release wrote them (:func:`_older_note`),
so the same code runs against an older checkout to capture a fixture
(``python -m tests.support.layout OUT.json``, from that checkout's worktree) and
against the current code in tests/integration/test_layout_compat.py.

Ids are fixed (``imp_layout_*``, ``task-*``), so key names are the same in every
run; what differs from run to run (times, stream ids, event ids) is replaced by a
placeholder in :func:`normalized`.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from worker.adapters.store.dead_messages import keep_dead_message
from worker.adapters.store.events import EventPublisher
from worker.adapters.store.keys import CALL_PREFIX, ledger_key
from worker.adapters.store.ledger import Ledger
from worker.celery.producer import end_settled
from worker.core.events import CANCELLED, FAILED, ISSUED
from worker.core.types import JobKey

STREAM = "cash_receipt.events"
PAYLOAD = {"imp_uid": "x", "identifier_sealed": "gAAAA", "amount": 1000}
RECEIPT = {"apply_num": "A1", "receipt_url": "https://example.invalid/r/1"}
PARTIAL = {"imp_uid": "x", "amount": 300, "reason": "partial"}
FULL = {"imp_uid": "x", "reason": "full"}

Dump = dict[str, dict[str, Any]]


def ledger(client: redis.Redis, *, lease_seconds: float = 30) -> Ledger:
    """The ledger as the worker builds it, on the result stream's default name."""
    return Ledger(
        client,
        stream=STREAM,
        event_retention_seconds=7 * 24 * 3600,
        retention_seconds=30 * 24 * 3600,
        lease_seconds=lease_seconds,
    )


def _data(task_id: str, imp_uid: str, **detail: Any) -> dict[str, Any]:
    return {"imp_uid": imp_uid, "task_id": task_id, "duplicate": False, **detail}


def _older_note(client: redis.Redis, imp_uid: str, **fields: str) -> None:
    """Write record fields one step at a time, as the release of the fixture noted its steps.

    At d88b25b the owner wrote a step field by field (``Ledger.note``). Today's store
    writes each step by a typed note (``note_sent``, ``note_cancelled``), which adds
    fields that release did not have (``sent_op``) and is the core's path, tested
    with it; a production method kept only for these scenarios would be dead code.
    The scenarios hold the claim they write under, so no fence is needed here.
    """
    client.hset(ledger_key(imp_uid), mapping=fields)


def mid_flight(client: redis.Redis) -> None:
    """Four jobs left in the middle, as a worker that died (or waits) leaves them.

    - ``imp_layout_claimed``: an issue in flight, with a second message waiting on it;
    - ``imp_layout_parked``: an issue parked after a retryable error, with its history;
    - ``imp_layout_refund``: a partial refund in flight past its cancel step, an
      issue message recorded meanwhile (``pending_issue*``);
    - ``imp_layout_pending_cancel``: an issue in flight with a full refund kept beside
      it (``pending_cancel*``).

    The leases are one second long and the parked job is due in one: by the time a
    fixture of this is loaded, the sweeper must hand every one of them out.
    """
    store = ledger(client, lease_seconds=1)
    error = {"reason": "server_error", "status": 503, "retryable": True}

    uid = "imp_layout_claimed"
    store.receive(uid, task_id="task-claimed-1", payload=PAYLOAD, resend_after=60)
    store.claim(uid, task_id="task-claimed-1", payload=PAYLOAD)
    store.receive(uid, task_id="task-claimed-2", payload=PAYLOAD, resend_after=60)

    uid = "imp_layout_parked"
    store.receive(uid, task_id="task-parked-1", payload=PAYLOAD, resend_after=60)
    claim = store.claim(uid, task_id="task-parked-1", payload=PAYLOAD)
    store.park(uid, fence=claim.fence, until=time.time() + 1, error=error)

    uid = "imp_layout_refund"
    store.receive(uid, task_id="task-refund-issue", payload=PAYLOAD, resend_after=60)
    claim = store.claim(uid, task_id="task-refund-issue", payload=PAYLOAD)
    store.finish(
        uid,
        fence=claim.fence,
        state="issued",
        task_id="task-refund-issue",
        event_type=ISSUED,
        data=_data("task-refund-issue", uid, receipt=RECEIPT),
        receipt=RECEIPT,
    )
    store.receive_cancel(uid, task_id="task-refund-cancel", cancel=PARTIAL, resend_after=60)
    claim = store.claim(uid, task_id="task-refund-cancel", payload=PARTIAL, op="cancel")
    _older_note(client, uid, cancelled_receipt=json.dumps(RECEIPT))
    _older_note(client, uid, cancel_step="cancelled")
    store.receive(uid, task_id="task-refund-reissue", payload=PAYLOAD, resend_after=60)

    uid = "imp_layout_pending_cancel"
    store.receive(uid, task_id="task-pending-issue", payload=PAYLOAD, resend_after=60)
    store.claim(uid, task_id="task-pending-issue", payload=PAYLOAD)
    store.receive_cancel(uid, task_id="task-pending-cancel", cancel=FULL, resend_after=60)


def full_issue(client: redis.Redis) -> None:
    """Every transition the store has, to its end, on a few payments.

    An issue retried once (kept through a countdown, then parked) and issued with a
    waiter; a later message told it is a duplicate; a partial refund re-issued for
    the balance; a full refund; a job failed for good; a message parked; an event
    published outside the ledger.
    """
    store = ledger(client)
    error = {"reason": "server_error", "status": 503, "retryable": True}
    uid = "imp_layout_issue"
    store.receive(uid, task_id="task-issue-1", payload=PAYLOAD, resend_after=60)
    claim = store.claim(uid, task_id="task-issue-1", payload=PAYLOAD)
    store.extend(uid, fence=claim.fence, seconds=1, error=error)
    claim = store.claim(uid, task_id="task-issue-1", payload=PAYLOAD, fence=claim.fence)
    store.park(uid, fence=claim.fence, until=time.time(), error=error)
    (due,) = [job for job in store.due_jobs(limit=10, regrace_seconds=30) if job.imp_uid == uid]
    store.receive(uid, task_id="task-issue-2", payload=PAYLOAD, resend_after=60)
    claim = store.claim(uid, task_id=due.task_id, payload=due.payload, fence=due.fence)
    store.claim(uid, task_id="task-issue-3", payload=PAYLOAD)
    _older_note(client, uid, sent_at=repr(1.5))
    store.finish(
        uid,
        fence=claim.fence,
        state="issued",
        task_id="task-issue-1",
        event_type=ISSUED,
        data=_data("task-issue-1", uid, receipt=RECEIPT),
        receipt=RECEIPT,
    )
    end_settled(
        store,
        EventPublisher(client, stream=STREAM, retention_seconds=3600),
        op="issue",
        state="issued",
        message={"imp_uid": uid, "merchant_uid": "m-1"},
        task_id="task-issue-4",
    )

    # A partial refund, re-issued for the balance: two events, one transition.
    store.receive_cancel(uid, task_id="task-partial", cancel=PARTIAL, resend_after=60)
    claim = store.claim(uid, task_id="task-partial", payload=PARTIAL, op="cancel")
    _older_note(client, uid, cancel_step="cancelled")
    balance = {**RECEIPT, "apply_num": "A2"}
    store.finish(
        uid,
        fence=claim.fence,
        state="issued",
        task_id="task-partial",
        event_type=CANCELLED,
        data=_data("task-partial", uid, receipt=RECEIPT),
        receipt=balance,
        extra_event=(ISSUED, _data("task-partial", uid, receipt=balance)),
    )
    # Then a full refund ends the payment's receipts, and a stale issue is told so.
    store.receive_cancel(uid, task_id="task-full", cancel=FULL, resend_after=60)
    claim = store.claim(uid, task_id="task-full", payload=FULL, op="cancel")
    store.receive(uid, task_id="task-issue-5", payload=PAYLOAD, resend_after=60)
    store.finish(
        uid,
        fence=claim.fence,
        state="cancelled",
        task_id="task-full",
        event_type=CANCELLED,
        data=_data("task-full", uid, receipt=balance),
        receipt=balance,
    )

    uid = "imp_layout_failed"
    store.receive(uid, task_id="task-failed", payload=PAYLOAD, resend_after=60)
    claim = store.claim(uid, task_id="task-failed", payload=PAYLOAD)
    store.receive(uid, task_id="task-failed-waiter", payload=PAYLOAD, resend_after=60)
    rejected = {"reason": "rejected", "status": 400, "retryable": False}
    store.finish(
        uid,
        fence=claim.fence,
        state="failed",
        task_id="task-failed",
        event_type=FAILED,
        data=_data("task-failed", uid, error=rejected),
        error=rejected,
    )

    keep_dead_message(
        client, {"reason": "unknown task", "queue": "cash_receipts", "parked_at_ms": _ms()}
    )
    EventPublisher(client, stream=STREAM, retention_seconds=3600).publish_terminal(
        event_type=FAILED,
        task_id="task-invalid",
        job=JobKey.payment("imp_layout_invalid"),
        merchant_uid=None,
        attempts=0,
        duplicate=False,
        detail={"error": {"reason": "invalid_payload"}},
    )


def _ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def dump(client: redis.Redis) -> Dump:
    """Every key: its type, its remaining TTL in seconds (-1 for none), its value.

    But the replies of script calls (``cash_receipt:call:<random id>``): a cache of a
    few minutes, no data a layout or its migration has to keep.
    """
    out: Dump = {}
    for raw in sorted(client.scan_iter(count=1000)):
        key = _text(raw)
        if key.startswith(CALL_PREFIX):
            continue
        kind = _text(client.type(key))
        value: Any
        if kind == "string":
            value = _text(client.get(key))
        elif kind == "hash":
            value = {_text(k): _text(v) for k, v in sorted(client.hgetall(key).items())}
        elif kind == "list":
            value = [_text(item) for item in client.lrange(key, 0, -1)]
        elif kind == "set":
            value = sorted(_text(member) for member in client.smembers(key))
        elif kind == "zset":
            value = [[_text(m), int(s)] for m, s in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            value = [
                [_text(entry_id), {_text(k): _text(v) for k, v in fields.items()}]
                for entry_id, fields in client.xrange(key)
            ]
        else:
            raise AssertionError(f"{key}: a {kind} the store does not write")
        out[key] = {"type": kind, "ttl": int(client.ttl(key)), "value": value}
    return out


def load(client: redis.Redis, data: Dump) -> None:
    """Write a dump back: the same keys, types, values and (still running) TTLs."""
    for key, item in data.items():
        kind, value = item["type"], item["value"]
        if kind == "string":
            client.set(key, value)
        elif kind == "hash":
            client.hset(key, mapping=value)
        elif kind == "list":
            client.rpush(key, *value)
        elif kind == "set":
            client.sadd(key, *value)
        elif kind == "zset":
            client.zadd(key, {member: score for member, score in value})
        elif kind == "stream":
            for entry_id, fields in value:
                client.xadd(key, fields, id=entry_id)
        if item["ttl"] > 0:
            client.expire(key, item["ttl"])


_STREAM_ID = re.compile(r"^\d{13}-\d+$")
_TIME_FIELDS = frozenset(
    {
        "created_at",
        "updated_at",
        "lease_until",
        "next_attempt_at",
        "pending_cancel_due",
        "pending_issue_due",
        "parked_at_ms",
        "at",
    }
)
_RANDOM_FIELDS = frozenset({"event_id", "occurred_at", "parked_at"})


def normalized(data: Dump) -> Dump:
    """A dump with what differs between two runs replaced: times, stream ids, event ids.

    Key names, types, hash fields, list and set lengths, the JSON keys inside values,
    and every other value stay as they are. A TTL becomes whether there is one.
    """

    def scrub(value: Any, field: str = "") -> Any:
        if field in _TIME_FIELDS:
            return "<ms>"
        if field in _RANDOM_FIELDS:
            return "<random>"
        if isinstance(value, dict):
            return {k: scrub(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return scrub_text(value) if isinstance(value, str) else value

    def scrub_text(value: str) -> str:
        if _STREAM_ID.match(value):
            return "<stream id>"
        if value[:1] not in "{[":
            return value
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return json.dumps(scrub(decoded), sort_keys=True)

    out: Dump = {}
    for key, item in data.items():
        value = item["value"]
        if item["type"] == "zset":
            value = sorted([member, "<ms>"] for member, _ in value)
        elif item["type"] == "stream":
            # Waiters are read from a set: their events come in no fixed order.
            value = sorted(
                (["<stream id>", scrub(fields)] for _, fields in value),
                key=lambda entry: json.dumps(entry, sort_keys=True),
            )
        else:
            value = scrub(value)
        out[key] = {"type": item["type"], "ttl": item["ttl"] > 0, "value": value}
    return out


SCENARIOS: dict[str, Callable[[redis.Redis], None]] = {
    "mid_flight": mid_flight,
    "full_issue": full_issue,
}


def capture(out: Path, commit: str) -> None:
    """Run every scenario on its own private Redis and write the dumps to ``out``."""
    from tests.support.redis_server import running_redis

    fixture: dict[str, Any] = {"commit": commit, "scenarios": {}}
    for name, scenario in SCENARIOS.items():
        with tempfile.TemporaryDirectory() as folder, running_redis(Path(folder)) as server:
            client = server.client()
            scenario(client)
            fixture["scenarios"][name] = dump(client)
    out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


if __name__ == "__main__":
    capture(Path(sys.argv[1]), sys.argv[2])
