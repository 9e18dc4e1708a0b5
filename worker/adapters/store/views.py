"""Read views of the store, for the CLI, the operator commands and the metrics.

Only :mod:`worker.adapters.store` knows the Redis layout: key names, a record's
hash fields, the indexes. The entry points and the observability read through
these views, which return plain values (a masked record as a dict, a typed
:class:`ReplaySource`, counts), never a raw hash (issue 13). Every read view is here,
the ledger's indexes' too (``stuck``, ``dead_job_keys``, ``job_history``,
``jobs_by_state``, ``oldest_due_seconds``): :mod:`worker.adapters.store.ledger` holds
the job's transitions only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker.adapters.store.clock import ClockOffset, redis_now, redis_now_ms
from worker.adapters.store.keys import (
    DEAD_ENTRIES_KEY,
    DEAD_JOBS_KEY,
    DEAD_MESSAGES_KEY,
    DUE_KEY,
    JOB_PREFIX,
    LEDGER_PREFIX,
    history_of,
    record_key,
)
from worker.adapters.store.redis_client import as_text
from worker.core.masking import mask_payload
from worker.core.schemas import kept_job
from worker.core.types import JobKey

#: The states a job ends in: no worker owes it anything more (``stuck`` skips them).
TERMINAL_STATES = frozenset({"issued", "failed", "cancelled"})


def shown_job(client: redis.Redis, job: JobKey | str) -> dict[str, Any] | None:
    """A job's ledger record (a string: a V1 payment's imp_uid) as an operator may see it
    (masked), or None."""
    raw = client.hgetall(_record(job))
    return shown_record(raw) if raw else None


def _receipt_key(job: JobKey | str) -> str:
    return JobKey.of(job).receipt_key


def _record(job: JobKey | str) -> str:
    """The record of a job (a string: a V1 payment's imp_uid)."""
    return record_key(_receipt_key(job))


def stuck_jobs(
    client: redis.Redis, *, older_than: float, limit: int = 100
) -> Iterator[tuple[JobKey, dict[str, Any]]]:
    """Jobs of every kind overdue in a non-terminal state, oldest first, each with its
    masked record."""
    for job in stuck(client, older_than=older_than, limit=limit):
        yield job, shown_record(client.hgetall(_record(job)))


def _cancel_failed(record: dict[str, Any]) -> bool:
    """Whether a record is a cancellation that ended in cancel_failed (the job stays issued)."""
    return record.get("state") == "issued" and record.get("op") == "cancel" and "cancel" in record


def dead_jobs(
    client: redis.Redis, *, reason: str | None = None, limit: int = 100
) -> list[tuple[JobKey, dict[str, Any]]]:
    """Jobs that failed for good, of every kind, newest first, each with its masked record;
    only ``reason`` if given.

    The record shown carries ``imp_uid`` (null but for a V1 payment), ``receipt_key``,
    and ``failed``, which says what failed: ``issue`` (the job is failed) or ``cancel``
    (cancel_failed: the refunded payment's receipt is still live). Index entries whose
    record has expired (``LEDGER_RETENTION``) are dropped here.
    """
    found = []
    for job in dead_job_keys(client, limit=10_000):
        raw = client.hgetall(_record(job))
        if not raw:
            # Its record expired: nothing left to replay.
            client.zrem(DEAD_JOBS_KEY, job.receipt_key)
            continue
        record = shown_record(raw)
        failure = record.get("last_error") or {}
        if reason is not None and failure.get("reason") != reason:
            continue
        failed = "cancel" if _cancel_failed(record) else "issue"
        shown = {"imp_uid": job.imp_uid, "receipt_key": job.receipt_key, "failed": failed}
        found.append((job, {**shown, **record}))
        if len(found) >= limit:
            break
    return found


@dataclass(frozen=True)
class ReplaySource:
    """What a replay of one job needs from its record.

    ``state`` is the job's state (``unknown`` without a record); ``cancel`` the
    message of a cancellation that failed for good and is still a dead letter
    (None otherwise); ``payload`` the sealed issue payload kept (empty if none);
    ``balance`` an external receipt's balance after its partial refunds (None: none);
    ``reason`` the last failure's reason; ``replayed_as`` the merchant_uid a ``--new-id``
    replay issued its balance under.
    """

    state: str
    cancel: dict[str, Any] | None
    payload: dict[str, Any]
    balance: dict[str, Any] | None = None
    reason: str | None = None
    replayed_as: str | None = None


def replay_source(client: redis.Redis, job: JobKey | str) -> ReplaySource:
    """The parts of a job's record (a string: a V1 payment's imp_uid) that a replay sends
    again."""
    raw = client.hgetall(_record(job))
    record = {as_text(k): as_text(v) for k, v in raw.items()}
    cancel = None
    if _cancel_failed(record) and client.zscore(DEAD_JOBS_KEY, _receipt_key(job)) is not None:
        cancel = json.loads(record["cancel"])
    error = json.loads(record.get("last_error") or "{}")
    return ReplaySource(
        state=record.get("state", "unknown"),
        cancel=cancel,
        payload=json.loads(record.get("payload") or "{}"),
        balance=json.loads(record["balance"]) if record.get("balance") else None,
        reason=error.get("reason") if isinstance(error, dict) else None,
        replayed_as=record.get(REPLAYED_AS_FIELD) or None,
    )


#: A job's record field: the merchant_uid its balance was replayed under (--new-id).
REPLAYED_AS_FIELD = "replayed_as"


def replayed_under(client: redis.Redis, job: JobKey, merchant_uid: str) -> None:
    """Take a job off the dead letters, its balance replayed under ``merchant_uid``: kept in
    its record, so that running the replay again is the same job, and the derived id
    known as this job's, not the merchant's own order."""
    client.hset(_record(job), REPLAYED_AS_FIELD, merchant_uid)
    client.zrem(DEAD_JOBS_KEY, job.receipt_key)


def has_record(client: redis.Redis, job: JobKey) -> bool:
    """Whether the ledger holds a record of ``job``."""
    return bool(client.exists(_record(job)))


@dataclass(frozen=True)
class LedgerState:
    """A job's state in the ledger, and the receipt it recorded (if any)."""

    state: str
    receipt_tid: str | None
    #: The job as its kept payload (or refund) names it (:func:`kept_job`).
    job: JobKey


def ledger_state(client: redis.Redis, job: JobKey | str) -> LedgerState:
    """The state (``unknown`` without a record) and the recorded receipt's id of a job
    (a string: a V1 payment's imp_uid)."""
    state, recorded, payload, cancel = (
        as_text(value) if value is not None else None
        for value in client.hmget(_record(job), ["state", "receipt", "payload", "cancel"])
    )
    tid = _loaded(recorded).get("receipt_tid")
    return LedgerState(
        state or "unknown",
        tid if isinstance(tid, str) else None,
        kept_job(JobKey.of(job), _loaded(payload or cancel)),
    )


def _loaded(text: str | None) -> dict[str, Any]:
    """A record's JSON field; empty when absent or unreadable."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def ledger_jobs(client: redis.Redis, *, limit: int = 10_000) -> list[JobKey]:
    """The jobs with a record, of every kind this release knows, by receipt key (SCAN:
    cheap for Redis, fine for a one-off check)."""
    found = []
    # Every hash under the ledger's prefix is a V1 payment's record, whatever its imp_uid;
    # before the migration to layout 2 the prefix also held the indexes and side keys, none
    # a hash. Every hash under ``job:`` is another kind's, by receipt key.
    for prefix, job_of in ((LEDGER_PREFIX, JobKey.payment), (JOB_PREFIX, JobKey.parse)):
        for key in client.scan_iter(match=f"{prefix}*", count=1000, _type="hash"):
            job = job_of(as_text(key)[len(prefix) :])
            if job is not None:
                found.append(job)
            if len(found) >= limit:
                return sorted(found, key=_receipt_key)
    return sorted(found, key=_receipt_key)


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


# -- the ledger's records and indexes ------------------------------------------------


def stuck(
    client: redis.Redis,
    *,
    older_than: float,
    limit: int = 100,
    clock_offset: ClockOffset | None = None,
) -> list[JobKey]:
    """Jobs of every kind, not ended, due for longer than ``older_than`` seconds.

    A healthy fleet re-sends a due job within one sweep interval, and the next
    claim moves it on, so anything overdue by much more is stuck: no worker
    runs, or every re-sent message fails before it can claim the job. "Due" is
    read from the record (``lease_until`` in flight, ``next_attempt_at`` when
    received, else ``updated_at``/``created_at``), which only a transition
    moves: the due index's score is pushed forward every time the sweeper
    hands the job out, so a job re-sent forever would never look overdue there.
    Oldest first. Overdue by the ledger's clock, Redis's (``clock_offset``: a test's).
    """
    ceiling = redis_now_ms(client, clock_offset) - int(older_than * 1000)
    overdue: list[tuple[int, str, JobKey]] = []
    parsed = (JobKey.parse(as_text(member)) for member in client.zrange(DUE_KEY, 0, -1))
    members = [job for job in parsed if job is not None]
    for start in range(0, len(members), 500):
        batch = members[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for job in batch:
            pipe.hmget(
                _record(job),
                ["state", "lease_until", "next_attempt_at", "updated_at", "created_at"],
            )
        for job, fields in zip(batch, pipe.execute(), strict=True):
            state, lease, next_at, updated, created = (
                as_text(f) if f is not None else None for f in fields
            )
            if state is None or state in TERMINAL_STATES:
                continue
            due = (lease if state == "in_flight" else next_at) or updated or created or "0"
            if int(due) <= ceiling:
                overdue.append((int(due), job.receipt_key, job))
    return [job for _, _, job in sorted(overdue, key=lambda entry: entry[:2])[:limit]]


def shown_record(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A ledger record as an operator may see it: sealed fields marked, times readable."""
    record = {as_text(key): as_text(value) for key, value in raw.items()}
    shown: dict[str, Any] = {}
    for key, value in record.items():
        if key in {"payload", "cancel", "pending_cancel", "pending_issue"}:
            shown[key] = mask_payload(json.loads(value))
        elif key in {"receipt", "last_error"}:
            shown[key] = json.loads(value)
        elif key in {
            "created_at",
            "updated_at",
            "lease_until",
            "next_attempt_at",
            "pending_cancel_due",
            "pending_issue_due",
        }:
            shown[key] = datetime.fromtimestamp(int(value) / 1000, UTC).isoformat(
                timespec="seconds"
            )
        elif key in {"attempts", "fence"}:
            shown[key] = int(value)
        else:
            shown[key] = value
    return shown


def dead_job_keys(client: redis.Redis, *, limit: int = 100) -> list[JobKey]:
    """The jobs that failed for good, newest first: the ledger's dead letters (of a kind
    this release knows)."""
    found = (
        JobKey.parse(as_text(member)) for member in client.zrevrange(DEAD_JOBS_KEY, 0, limit - 1)
    )
    return [job for job in found if job is not None]


def job_history(client: redis.Redis, job: JobKey | str) -> list[dict[str, Any]]:
    """The attempts and outcomes the ledger kept for a job, newest first."""
    key = history_of(_receipt_key(job))
    return [json.loads(as_text(item)) for item in client.lrange(key, 0, -1)]


# -- read views for the metrics, read at scrape time ---------------------------------

#: The most due-index members one scrape reads the state of; the rest count as unknown.
LEDGER_SCAN_LIMIT = 100_000
_SCAN_CHUNK = 1000


def jobs_by_state(client: redis.Redis, *, limit: int = LEDGER_SCAN_LIMIT) -> dict[str, int]:
    """Jobs that still need someone, by state: ``received``, ``in_flight``, ``failed``.

    Every non-terminal job is in the due index and every failed one in the
    dead-job index; issued and cancelled records have no index (counting them
    would read every record at every scrape), and their rate is a counter.
    """
    counts = {"received": 0, "in_flight": 0, "failed": int(client.zcard(DEAD_JOBS_KEY))}
    total = int(client.zcard(DUE_KEY))
    scanned = 0
    while scanned < min(total, limit):
        members = client.zrange(DUE_KEY, scanned, scanned + _SCAN_CHUNK - 1)
        if not members:
            break
        with client.pipeline(transaction=False) as pipe:
            for job in filter(None, (JobKey.parse(as_text(member)) for member in members)):
                pipe.hget(_record(job), "state")
            states = pipe.execute()
        for state in states:
            # A finished job leaves the index lazily (the sweeper drops it).
            if state is not None and as_text(state) in counts and as_text(state) != "failed":
                counts[as_text(state)] += 1
        scanned += len(members)
    if total > scanned:
        counts["unknown"] = total - scanned
    return counts


def oldest_due_seconds(client: redis.Redis, *, clock_offset: ClockOffset | None = None) -> float:
    """How long the most overdue non-terminal job has been due; 0 when none is.

    A due job is re-sent at the next sweep (every SWEEP_INTERVAL), which moves
    it forward: only a job nobody picks up grows old here. Due times are the
    ledger's clock, Redis's, so the age is read against it, not the scraped host's.
    """
    oldest = client.zrange(DUE_KEY, 0, 0, withscores=True)
    if not oldest:
        return 0.0
    return max(0.0, redis_now(client, clock_offset) - float(oldest[0][1]) / 1000)
