"""Read views of the store, for the CLI, the operator commands and the metrics.

Only :mod:`worker.adapters.store` knows the Redis layout: key names, a record's
hash fields, the indexes. The entry points and the observability read through
these views, which return plain values (a masked record as a dict, a typed
:class:`ReplaySource`, counts), never a raw hash (issue 13). The ledger's own
index reads (``stuck``, ``dead_job_ids``, ``job_history``, ``jobs_by_state``,
``oldest_due_seconds``) stay in :mod:`worker.adapters.store.ledger`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from worker.adapters.store.keys import (
    DEAD_ENTRIES_KEY,
    DEAD_JOBS_KEY,
    DEAD_MESSAGES_KEY,
    LEDGER_PREFIX,
    ledger_key,
)
from worker.adapters.store.ledger import dead_job_ids, shown_record, stuck


def shown_job(client: redis.Redis, imp_uid: str) -> dict[str, Any] | None:
    """A payment's ledger record as an operator may see it (masked), or None."""
    raw = client.hgetall(ledger_key(imp_uid))
    return shown_record(raw) if raw else None


def stuck_jobs(
    client: redis.Redis, *, older_than: float, limit: int = 100
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Jobs overdue in a non-terminal state, oldest first, each with its masked record."""
    for imp_uid in stuck(client, older_than=older_than, limit=limit):
        yield imp_uid, shown_record(client.hgetall(ledger_key(imp_uid)))


def _cancel_failed(record: dict[str, Any]) -> bool:
    """Whether a record is a cancellation that ended in cancel_failed (the job stays issued)."""
    return record.get("state") == "issued" and record.get("op") == "cancel" and "cancel" in record


def dead_jobs(
    client: redis.Redis, *, reason: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Jobs that failed for good, newest first, masked; only ``reason`` if given.

    ``failed`` says what failed: ``issue`` (the job is failed) or ``cancel``
    (cancel_failed: the refunded payment's receipt is still live). Index
    entries whose record has expired (``LEDGER_RETENTION``) are dropped here.
    """
    found = []
    for imp_uid in dead_job_ids(client, limit=10_000):
        raw = client.hgetall(ledger_key(imp_uid))
        if not raw:
            client.zrem(DEAD_JOBS_KEY, imp_uid)  # its record expired: nothing left to replay
            continue
        record = shown_record(raw)
        failure = record.get("last_error") or {}
        if reason is not None and failure.get("reason") != reason:
            continue
        failed = "cancel" if _cancel_failed(record) else "issue"
        found.append({"imp_uid": imp_uid, "failed": failed, **record})
        if len(found) >= limit:
            break
    return found


@dataclass(frozen=True)
class ReplaySource:
    """What a replay of one job needs from its record.

    ``state`` is the job's state (``unknown`` without a record); ``cancel`` the
    message of a cancellation that failed for good and is still a dead letter
    (None otherwise); ``payload`` the sealed issue payload kept (empty if none).
    """

    state: str
    cancel: dict[str, Any] | None
    payload: dict[str, Any]


def replay_source(client: redis.Redis, imp_uid: str) -> ReplaySource:
    """The parts of a payment's record that a replay sends again."""
    raw = client.hgetall(ledger_key(imp_uid))
    record = {_text(k): _text(v) for k, v in raw.items()}
    cancel = None
    if _cancel_failed(record) and client.zscore(DEAD_JOBS_KEY, imp_uid) is not None:
        cancel = json.loads(record["cancel"])
    return ReplaySource(
        state=record.get("state", "unknown"),
        cancel=cancel,
        payload=json.loads(record.get("payload") or "{}"),
    )


@dataclass(frozen=True)
class LedgerState:
    """A payment's state in the ledger, and the receipt it recorded (if any)."""

    state: str
    receipt_tid: str | None


def ledger_state(client: redis.Redis, imp_uid: str) -> LedgerState:
    """The state (``unknown`` without a record) and the recorded receipt's id of a payment."""
    state, recorded = (
        _text(value) if value is not None else None
        for value in client.hmget(ledger_key(imp_uid), ["state", "receipt"])
    )
    try:
        tid = json.loads(recorded or "{}").get("receipt_tid")
    except (ValueError, AttributeError):
        tid = None
    return LedgerState(state or "unknown", tid if isinstance(tid, str) else None)


def ledger_payments(client: redis.Redis, *, limit: int = 10_000) -> list[str]:
    """imp_uids with a ledger record (SCAN: cheap for Redis, fine for a one-off check)."""
    found = []
    for key in client.scan_iter(match=f"{LEDGER_PREFIX}*", count=1000):
        name = _text(key)[len(LEDGER_PREFIX) :]
        if ":" in name or name in {"due", "failed"}:
            continue
        found.append(name)
        if len(found) >= limit:
            break
    return sorted(found)


def dead_message_count(client: redis.Redis) -> int:
    """Messages the workers could not run, set aside."""
    return int(client.llen(DEAD_MESSAGES_KEY))


def dead_entry_count(client: redis.Redis) -> int:
    """Ingress entries that could not become a job, set aside."""
    return int(client.llen(DEAD_ENTRIES_KEY))


def ingress_backlog(client: redis.Redis, stream: str) -> int:
    """Payment events in the ingress stream not yet handled: the ingress deletes handled ones."""
    return int(client.xlen(stream))


def list_dead_entries(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters of the ingress (malformed entries), newest first."""
    return [json.loads(item) for item in client.lrange(DEAD_ENTRIES_KEY, 0, limit - 1)]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
