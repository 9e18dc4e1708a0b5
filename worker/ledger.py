"""The receipt ledger: one record per payment in Redis, the source of truth for "done or not".

Celery on Redis can lose a message (kombu's BRPOP and its unacked HSET are two
round trips; a failed retry publish is dropped) and routinely runs one twice
(visibility timeout, redelivery). i'mport V1 has no idempotency key. So the
state of every receipt job lives here, and every transition is one Lua script,
so concurrent duplicates take exactly one path::

    (none) ─claim─▶ in_flight ─finish─▶ issued
       │              │  ▲     └─finish─▶ failed ─receive/claim─▶ (re-opened)
    receive         park │ claim (lease passed, or the fence handed on)
       ▼              ▼  │
    received ◀────────┘──┘   (the sweeper re-sends received jobs when due)

A record (hash ``cash_receipt:ledger:<imp_uid>``) holds the state, the task id
of the message that owns the job, a fencing token (``fence``, bumped on every
claim, so a worker that lost its claim cannot finish the job), the attempt
count, the payload (identifier sealed), the last error, the receipt, and
timestamps. ``cash_receipt:ledger:due`` (a sorted set) holds, for every
non-terminal job, when the sweeper should look at it again: a lease deadline
for in-flight jobs, a next-attempt time for parked ones.

The terminal transition and its XADD happen in one script, keyed by the task
id (the marker of :mod:`worker.events`): a redelivered message whose task
already ended publishes nothing new, and exactly one event per issued payment
is not a duplicate.

A refund is the same job under ``op`` ``cancel`` (its payload in ``cancel``):
recorded ``received`` before it is sent (:meth:`Ledger.receive_cancel`), or,
while another task holds the job, kept in ``pending_cancel*`` until that job
ends issued. Only a full refund ends the job's receipts for good: a job
``cancelled`` by a partial refund (nothing was left to re-issue) re-opens for
the next issue, and an issue recorded while it ran (``pending_issue*``) owns
the job at once. A final ``cancel_failed`` leaves the job ``issued`` and in the
failed index, the dead-letter view.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker.events import (
    ISSUED,
    PUBLISH_ONCE_LUA,
    PUBLISH_ONCE_SCRIPT,
    event_data,
    status_key,
    terminal_key,
)
from worker.masking import mask_payload

DUE_KEY = "cash_receipt:ledger:due"
#: Jobs that failed for good, by when: the dead-letter view.
FAILED_KEY = "cash_receipt:ledger:failed"
TERMINAL_STATES = frozenset({"issued", "failed", "cancelled"})
#: The message header that hands a claimed job on to the next message of its
#: task (a retry, a sweeper re-send): the fence it was handed on with.
FENCE_HEADER = "ledger_fence"


def ledger_key(imp_uid: str) -> str:
    """The ledger record of one payment."""
    return f"cash_receipt:ledger:{imp_uid}"


def history_key(imp_uid: str) -> str:
    """The last 50 attempts and outcomes of a payment's jobs, newest first."""
    return f"cash_receipt:ledger:{imp_uid}:history"


def waiters_key(imp_uid: str) -> str:
    """The task ids of other messages waiting on a payment's job in flight."""
    return f"cash_receipt:ledger:{imp_uid}:waiters"


# Every script takes the time from its caller (milliseconds), so tests can
# reason about it and Redis's clock never matters.

# Whether a cancellation payload (JSON) is a partial refund: it has an amount.
# Only a full refund ends a payment's receipts for good; after a partial one
# with no receipt to replace, a later confirmation must still issue.
_PARTIAL_LUA = """
local function partial(cancel)
  if not cancel or cancel == '' then return false end
  local ok, decoded = pcall(cjson.decode, cancel)
  return ok and type(decoded) == 'table' and type(decoded['amount']) == 'number'
end
"""

_RECEIVE = (
    _PARTIAL_LUA
    + """
-- KEYS: ledger, due, waiters. ARGV: task_id, payload, now_ms, resend_at_ms, imp_uid
local record = redis.call('HMGET', KEYS[1], 'state', 'op', 'cancel')
local state = record[1]
local reopen = state == 'failed' or (state == 'cancelled' and partial(record[3]))
if state and not reopen then
  if state == 'received' or state == 'in_flight' then
    -- A waiter ends with the owner.
    redis.call('SADD', KEYS[3], ARGV[1])
    if record[2] == 'cancel' and partial(record[3]) then
      -- Behind a partial refund, which may end with no receipt to replace:
      -- kept, to own the job then (its message waits meanwhile).
      redis.call('HSET', KEYS[1], 'pending_issue_task', ARGV[1], 'pending_issue', ARGV[2],
        'pending_issue_due', ARGV[4])
    end
  end
  return state
end
if not state then
  redis.call('HSET', KEYS[1], 'created_at', ARGV[3], 'fence', 0)
end
redis.call('HSET', KEYS[1], 'state', 'received', 'task_id', ARGV[1], 'payload', ARGV[2],
  'op', 'issue', 'attempts', 0, 'updated_at', ARGV[3], 'next_attempt_at', ARGV[4])
redis.call('HDEL', KEYS[1], 'last_error', 'receipt', 'lease_until')
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return 'received'
"""
)

_RECEIVE_CANCEL = (
    _PARTIAL_LUA
    + """
-- Record a cancellation before it is enqueued, so that a lost message is re-sent.
-- KEYS: ledger, due, terminal marker of this task. ARGV: task_id, cancel, now_ms,
-- resend_at_ms, imp_uid
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 'done'
end
local record = redis.call('HMGET', KEYS[1], 'state', 'task_id', 'cancel')
local state, owner = record[1], record[2]
if state and owner == ARGV[1] then
  return state  -- the same task again (an ingress entry handled twice)
end
if state == 'cancelled' and not (partial(record[3]) and not partial(ARGV[2])) then
  return state  -- nothing left to cancel: the task reports a duplicate
end
if state == 'received' or state == 'in_flight' then
  -- Another task owns the job. The cancellation waits its turn; if the job
  -- ends issued before this task has claimed it, it becomes the job's owner.
  redis.call('HSET', KEYS[1], 'pending_cancel_task', ARGV[1], 'pending_cancel', ARGV[2],
    'pending_cancel_due', ARGV[4])
  return state
end
if not state then
  redis.call('HSET', KEYS[1], 'created_at', ARGV[3], 'fence', 0)
end
redis.call('HSET', KEYS[1], 'state', 'received', 'op', 'cancel', 'task_id', ARGV[1],
  'cancel', ARGV[2], 'attempts', 0, 'updated_at', ARGV[3], 'next_attempt_at', ARGV[4])
redis.call('HDEL', KEYS[1], 'cancel_step', 'lease_until',
  'pending_cancel_task', 'pending_cancel', 'pending_cancel_due')
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return 'received'
"""
)

_CLAIM = (
    _PARTIAL_LUA
    + """
-- KEYS: ledger, due, terminal marker of this task, waiters, failed index.
-- ARGV: task_id, payload, now_ms, lease_ms, imp_uid, purpose ('issue' or 'cancel'),
--       the fence the message carries ('' for none)
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'done'}
end
local now = tonumber(ARGV[3])
local purpose = ARGV[6]
local record = redis.call('HMGET', KEYS[1],
  'state', 'task_id', 'lease_until', 'receipt', 'attempts', 'op', 'fence', 'cancel',
  'next_attempt_at')
local state, owner, lease, receipt = record[1], record[2], tonumber(record[3] or '0'), record[4]
local attempts = tonumber(record[5] or '0')
local op = record[6] or 'issue'
local after_partial = partial(record[8])
if state == 'issued' and purpose == 'issue' then
  return {'issued', receipt}
end
if state == 'cancelled' and not (after_partial and (purpose == 'issue' or not partial(ARGV[2])))
then
  -- A full refund ends the payment's receipts; after a partial one an issue
  -- (or a full refund) still has work to do.
  return {'cancelled', receipt or ''}
end
if purpose == 'issue' and op == 'cancel' and (state == 'in_flight' or state == 'received') then
  if not after_partial then
    -- A full refund owns the job: an issue message is stale and must not re-issue.
    return {'cancelled', ''}
  end
  -- A partial refund is being handled: wait; this message may have to issue after it.
  return {'busy', tostring(lease > 0 and lease or tonumber(record[9] or '0'))}
end
local resumed = 0
if state == 'in_flight' then
  -- A live lease is taken over only by the message its owner handed the job to
  -- (a retry or a sweeper re-send, carrying the current fence): another copy
  -- of the same task (a re-send of a job that was still queued, a redelivery)
  -- waits like any duplicate, or two copies would POST at once.
  if lease > now and (owner ~= ARGV[1] or ARGV[7] ~= record[7]) then
    -- Issue messages wait on the job; a cancellation waits too, but must act after.
    if purpose == 'issue' then redis.call('SADD', KEYS[4], ARGV[1]) end
    return {'busy', tostring(lease)}
  end
  resumed = 1
elseif state == 'received' then
  if attempts > 0 then resumed = 1 end
elseif state == 'failed' or state == 'issued' or state == 'cancelled' then
  -- A new operation on a finished job: a re-opened issue, or a cancellation.
  attempts = 0
  redis.call('HDEL', KEYS[1], 'cancel_step')
else
  redis.call('HSET', KEYS[1], 'created_at', ARGV[3])
end
if owner and owner ~= ARGV[1] and op == 'issue'
    and (state == 'in_flight' or state == 'received') then
  -- A takeover: the message that owned the job may be gone (its worker died,
  -- its retry was never published). It still ends in one event, as a waiter.
  redis.call('SADD', KEYS[4], owner)
end
attempts = attempts + 1
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'task_id', ARGV[1], 'op', purpose,
  'attempts', attempts, 'updated_at', ARGV[3], 'lease_until', now + tonumber(ARGV[4]))
if purpose == 'issue' then
  redis.call('HSET', KEYS[1], 'payload', ARGV[2])
  redis.call('HDEL', KEYS[1], 'receipt')
else
  redis.call('HSET', KEYS[1], 'cancel', ARGV[2])
  if redis.call('HGET', KEYS[1], 'pending_cancel_task') == ARGV[1] then
    redis.call('HDEL', KEYS[1], 'pending_cancel_task', 'pending_cancel', 'pending_cancel_due')
  end
end
redis.call('HDEL', KEYS[1], 'next_attempt_at')
redis.call('ZREM', KEYS[5], ARGV[5])
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[5])
return {'claimed', tostring(fence), tostring(attempts), tostring(resumed)}
"""
)

_HOLD = """
-- Keep (or park) a claimed job while it waits to retry.
-- KEYS: ledger, due, history. ARGV: fence, now_ms, due_ms, new_state, last_error, imp_uid
local record = redis.call('HMGET', KEYS[1], 'state', 'fence', 'attempts', 'op')
if record[1] ~= 'in_flight' or record[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'updated_at', ARGV[2], 'last_error', ARGV[5])
redis.call('LPUSH', KEYS[3], cjson.encode({at = tonumber(ARGV[2]), op = record[4] or 'issue',
  attempt = tonumber(record[3] or '0'), outcome = 'retry', error = cjson.decode(ARGV[5])}))
redis.call('LTRIM', KEYS[3], 0, 49)
if ARGV[4] == 'received' then
  redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[3])
  redis.call('HDEL', KEYS[1], 'lease_until')
else
  redis.call('HSET', KEYS[1], 'lease_until', ARGV[3])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
return 1
"""

_FINISH = (
    PUBLISH_ONCE_LUA
    + _PARTIAL_LUA
    + """
-- The terminal transition and its event, together.
-- KEYS: ledger, due, stream, terminal marker, status pointer, waiters, failed index,
--       history, terminal marker of the extra event.
-- ARGV: fence, state, event type, event data, minid, event retention s,
--       now_ms, receipt json, last_error json, ledger retention s, imp_uid,
--       extra event type ('' for none), extra event data
local record = redis.call('HMGET', KEYS[1], 'state', 'fence', 'attempts', 'op')
if record[1] ~= 'in_flight' or record[2] ~= ARGV[1] then
  return {-1, record[1] or ''}
end
local entry = {at = tonumber(ARGV[7]), op = record[4] or 'issue',
  attempt = tonumber(record[3] or '0'), outcome = ARGV[3]}
if ARGV[9] ~= '' then entry['error'] = cjson.decode(ARGV[9]) end
-- The transition's second event (a partial refund's re-issue, or its failure).
if ARGV[12] ~= '' then entry['then'] = ARGV[12] end
redis.call('LPUSH', KEYS[8], cjson.encode(entry))
redis.call('LTRIM', KEYS[8], 0, 49)
redis.call('EXPIRE', KEYS[8], ARGV[10])
if ARGV[2] == 'failed' or ARGV[3] == 'cash_receipt.cancel_failed' then
  -- A dead letter: a job that failed, or a refund whose receipt stays live.
  redis.call('ZADD', KEYS[7], ARGV[7], ARGV[11])
else
  redis.call('ZREM', KEYS[7], ARGV[11])
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at', ARGV[7])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'receipt', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'last_error', ARGV[9]) end
redis.call('HDEL', KEYS[1], 'lease_until', 'next_attempt_at')
redis.call('ZREM', KEYS[2], ARGV[11])
redis.call('EXPIRE', KEYS[1], ARGV[10])
local published = publish_once(KEYS[3], KEYS[4], KEYS[5], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call('HSET', KEYS[1], 'event_id', published[2])
if ARGV[12] ~= '' then
  -- A partial refund: the cancellation and the new receipt are one transition.
  publish_once(KEYS[3], KEYS[9], KEYS[5], ARGV[12], ARGV[13], ARGV[5], ARGV[6])
end
if ARGV[2] == 'issued' or (ARGV[2] == 'failed' and ARGV[12] == '') then
  -- Every other message that asked for this payment meanwhile ends now too,
  -- with the owner's outcome, as a duplicate, even if that message itself is
  -- lost. After a failure, a new payload (not a waiter) re-opens the job.
  -- Waiters are issue messages: after a cancellation's transition (a partial
  -- refund's re-issue, a repeated refund, a cancel_failed) they get the live receipt.
  local owner = redis.call('HGET', KEYS[1], 'task_id')
  local live = redis.call('HGET', KEYS[1], 'receipt')
  local waiter_type = ARGV[3]
  if ARGV[2] == 'issued' then waiter_type = 'cash_receipt.issued' end
  for _, waiter in ipairs(redis.call('SMEMBERS', KEYS[6])) do
    if waiter ~= owner then
      local data = cjson.decode(ARGV[4])
      data['task_id'] = waiter
      data['duplicate'] = true
      data['event_id'] = redis.sha1hex(waiter .. published[2])
      if ARGV[3] ~= waiter_type then
        data['error'] = nil
        data['receipt'] = live and cjson.decode(live) or cjson.null
      end
      publish_once(KEYS[3], 'cash_receipt:terminal:' .. waiter, KEYS[5], waiter_type,
        cjson.encode(data), ARGV[5], ARGV[6])
    end
  end
  redis.call('DEL', KEYS[6])
elseif ARGV[2] == 'cancelled' then
  local rec = redis.call('HMGET', KEYS[1],
    'cancel', 'pending_issue_task', 'pending_issue', 'pending_issue_due')
  if partial(rec[1]) then
    -- A partial refund with no receipt to replace: issue messages that came
    -- meanwhile still issue. The one recorded last owns the job now.
    if rec[2] and redis.call('EXISTS', 'cash_receipt:terminal:' .. rec[2]) == 0 then
      redis.call('HSET', KEYS[1], 'state', 'received', 'op', 'issue', 'task_id', rec[2],
        'payload', rec[3], 'attempts', 0, 'next_attempt_at', rec[4])
      redis.call('HDEL', KEYS[1], 'receipt')
      redis.call('PERSIST', KEYS[1])
      redis.call('ZADD', KEYS[2], rec[4], ARGV[11])
    end
    redis.call('EXPIRE', KEYS[6], ARGV[10])
  else
    -- Issue messages still waiting will never issue: each ends as a stale one.
    for _, waiter in ipairs(redis.call('SMEMBERS', KEYS[6])) do
      local data = cjson.decode(ARGV[4])
      data['task_id'] = waiter
      data['duplicate'] = true
      data['receipt'] = nil
      data['event_id'] = redis.sha1hex(waiter .. published[2])
      data['error'] = {reason = 'cancelled', status = cjson.null, code = cjson.null,
        message = 'the receipt of this payment was cancelled', retryable = false}
      publish_once(KEYS[3], 'cash_receipt:terminal:' .. waiter, KEYS[5], 'cash_receipt.failed',
        cjson.encode(data), ARGV[5], ARGV[6])
    end
    redis.call('DEL', KEYS[6])
  end
else
  redis.call('EXPIRE', KEYS[6], ARGV[10])
end
if ARGV[2] == 'issued' then
  -- A cancellation recorded while this job was in hand now owns it: the
  -- receipt must not stay live if that cancellation's message was lost.
  local pending = redis.call('HMGET', KEYS[1],
    'pending_cancel_task', 'pending_cancel', 'pending_cancel_due')
  if pending[1] and redis.call('EXISTS', 'cash_receipt:terminal:' .. pending[1]) == 0 then
    redis.call('HSET', KEYS[1], 'state', 'received', 'op', 'cancel', 'task_id', pending[1],
      'cancel', pending[2], 'attempts', 0, 'next_attempt_at', pending[3])
    redis.call('HDEL', KEYS[1], 'cancel_step')
    redis.call('PERSIST', KEYS[1])
    redis.call('ZADD', KEYS[2], pending[3], ARGV[11])
    redis.call('ZREM', KEYS[7], ARGV[11])  -- owed, not dead: a cancel_failed is retried
  end
  redis.call('HDEL', KEYS[1], 'pending_cancel_task', 'pending_cancel', 'pending_cancel_due')
end
redis.call('HDEL', KEYS[1], 'pending_issue_task', 'pending_issue', 'pending_issue_due')
return published
"""
)

_NOTE = """
-- Record a step of the job the owner has taken (e.g. the old receipt is cancelled).
-- KEYS: ledger. ARGV: fence, field, value
local record = redis.call('HMGET', KEYS[1], 'state', 'fence')
if record[1] ~= 'in_flight' or record[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

_DUE = """
-- Hand a due job to the sweeper once, pushing its due time forward.
-- KEYS: ledger, due. ARGV: now_ms, regrace_ms, imp_uid
local record = redis.call('HMGET', KEYS[1], 'state', 'task_id', 'payload', 'lease_until',
  'next_attempt_at', 'attempts', 'op', 'cancel', 'fence')
local state = record[1]
if not state or state == 'issued' or state == 'failed' or state == 'cancelled' then
  redis.call('ZREM', KEYS[2], ARGV[3])
  return false
end
local now = tonumber(ARGV[1])
local due = tonumber((state == 'in_flight' and record[4]) or record[5] or '0')
if due > now then
  redis.call('ZADD', KEYS[2], due, ARGV[3])
  return false
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
local op = record[7] or 'issue'
local payload = record[3]
if op == 'cancel' then payload = record[8] end
return {state, record[2], payload, record[6] or '0', op, record[9] or '0'}
"""


@dataclass(frozen=True)
class Claim:
    """What :meth:`Ledger.claim` found.

    ``kind`` is ``claimed`` (this task now owns the job: ``fence``,
    ``attempt``), ``busy`` (another live task owns it until ``lease_until``),
    ``issued`` (``receipt`` exists), ``cancelled``, or ``done`` (this very task
    already published its outcome). ``resumed`` is set when an earlier attempt
    may have reached i'mport, so the job must look before it POSTs.
    """

    kind: str
    fence: int = 0
    op: str = "issue"
    attempt: int = 0
    resumed: bool = False
    receipt: dict[str, Any] | None = None
    lease_until: int = 0


@dataclass(frozen=True)
class DueJob:
    """A job the sweeper must re-send: it is parked and due, or its owner's lease passed."""

    imp_uid: str
    state: str
    task_id: str
    payload: dict[str, Any]
    attempts: int
    op: str = "issue"
    #: The fence when it was handed out: the re-sent message carries it.
    fence: int = 0


class Ledger:
    """The ledger's transitions, each one Lua script."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str,
        event_retention_seconds: int,
        retention_seconds: int,
        lease_seconds: float,
    ) -> None:
        self._redis = client
        self._stream = stream
        self._event_retention = event_retention_seconds
        self._retention = retention_seconds
        self._lease_ms = int(lease_seconds * 1000)
        self._receive = client.register_script(_RECEIVE)
        self._receive_cancel = client.register_script(_RECEIVE_CANCEL)
        self._claim = client.register_script(_CLAIM)
        self._hold = client.register_script(_HOLD)
        self._finish = client.register_script(_FINISH)
        self._due = client.register_script(_DUE)
        self._note = client.register_script(_NOTE)
        self._publish = client.register_script(PUBLISH_ONCE_SCRIPT)

    @property
    def lease_seconds(self) -> float:
        """How long a claim holds before the sweeper may hand the job to another task."""
        return self._lease_ms / 1000

    def receive(
        self, imp_uid: str, *, task_id: str, payload: Mapping[str, Any], resend_after: float
    ) -> str:
        """Record a job before it is enqueued; returns the state it is in now.

        Only a new or failed job becomes ``received``; an existing one is left
        as it is (its task will report it as a duplicate).
        """
        now = _now_ms()
        result = self._receive(
            keys=[ledger_key(imp_uid), DUE_KEY, waiters_key(imp_uid)],
            args=[task_id, json.dumps(payload), now, now + int(resend_after * 1000), imp_uid],
        )
        return _text(result)

    def receive_cancel(
        self, imp_uid: str, *, task_id: str, cancel: Mapping[str, Any], resend_after: float
    ) -> str:
        """Record a cancellation before it is enqueued; returns the job's state now.

        A job nobody holds becomes this cancellation's, ``received`` and due in
        ``resend_after`` seconds, so the sweeper re-sends a lost message. While
        another task holds the job, the cancellation is kept beside it and takes
        the job over if it ends issued. ``done`` means this task already ended.
        """
        now = _now_ms()
        result = self._receive_cancel(
            keys=[ledger_key(imp_uid), DUE_KEY, terminal_key(task_id)],
            args=[task_id, json.dumps(cancel), now, now + int(resend_after * 1000), imp_uid],
        )
        return _text(result)

    def claim(
        self,
        imp_uid: str,
        *,
        task_id: str,
        payload: Mapping[str, Any],
        purpose: str = "issue",
        fence: int | None = None,
    ) -> Claim:
        """Try to own the job for one attempt of ``purpose`` (``issue`` or ``cancel``).

        ``fence`` is the one the message carries (header ``ledger_fence``): only
        a message carrying the current fence may take over a live lease of its
        own task.
        """
        result = self._claim(
            keys=[
                ledger_key(imp_uid),
                DUE_KEY,
                terminal_key(task_id),
                waiters_key(imp_uid),
                FAILED_KEY,
            ],
            args=[
                task_id,
                json.dumps(payload),
                _now_ms(),
                self._lease_ms,
                imp_uid,
                purpose,
                "" if fence is None else str(fence),
            ],
        )
        kind = _text(result[0])
        if kind == "claimed":
            return Claim(
                kind,
                fence=int(result[1]),
                attempt=int(result[2]),
                resumed=_text(result[3]) == "1",
                op=purpose,
            )
        if kind in {"issued", "cancelled"} and len(result) > 1:
            return Claim(kind, receipt=json.loads(_text(result[1])) if result[1] else None)
        if kind == "busy":
            return Claim(kind, lease_until=int(result[1]))
        return Claim(kind)

    def extend(self, imp_uid: str, *, fence: int, seconds: float, error: Mapping[str, Any]) -> bool:
        """Keep the claim through a short retry countdown plus one more attempt."""
        until = _now_ms() + int(seconds * 1000) + self._lease_ms
        return self._hold_job(imp_uid, fence, due=until, state="in_flight", error=error)

    def park(self, imp_uid: str, *, fence: int, until: float, error: Mapping[str, Any]) -> bool:
        """Hand the job back to the ledger until ``until`` (epoch s); the sweeper resumes it."""
        return self._hold_job(imp_uid, fence, due=int(until * 1000), state="received", error=error)

    def _hold_job(
        self, imp_uid: str, fence: int, *, due: int, state: str, error: Mapping[str, Any]
    ) -> bool:
        result = self._hold(
            keys=[ledger_key(imp_uid), DUE_KEY, history_key(imp_uid)],
            args=[fence, _now_ms(), due, state, json.dumps(error, ensure_ascii=False), imp_uid],
        )
        return bool(result)

    def finish(
        self,
        imp_uid: str,
        *,
        fence: int,
        state: str,
        task_id: str,
        event_type: str,
        data: Mapping[str, Any],
        receipt: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
        extra_event: tuple[str, Mapping[str, Any]] | None = None,
    ) -> str | None:
        """End the job and publish its event, atomically; None when this claim was fenced out.

        ``extra_event`` is a second event of the same transition (the new receipt
        of a partial refund), published once under its own marker.
        """
        now = _now_ms()
        min_id = f"{now - self._event_retention * 1000}-0"
        result = self._finish(
            keys=[
                ledger_key(imp_uid),
                DUE_KEY,
                self._stream,
                terminal_key(task_id),
                status_key(imp_uid),
                waiters_key(imp_uid),
                FAILED_KEY,
                history_key(imp_uid),
                terminal_key(f"{task_id}:2"),
            ],
            args=[
                fence,
                state,
                event_type,
                json.dumps(data, ensure_ascii=False),
                min_id,
                self._event_retention,
                now,
                json.dumps(receipt) if receipt is not None else "",
                json.dumps(error, ensure_ascii=False) if error is not None else "",
                self._retention,
                imp_uid,
                extra_event[0] if extra_event else "",
                json.dumps(extra_event[1], ensure_ascii=False) if extra_event else "",
            ],
        )
        if int(result[0]) == -1:
            return None
        return _text(result[1])

    def report_issued_duplicate(
        self, imp_uid: str, *, task_id: str, merchant_uid: str | None
    ) -> None:
        """Publish, for ``task_id``, that this payment's receipt already exists."""
        record = self.record(imp_uid) or {}
        data = event_data(
            task_id=task_id,
            imp_uid=imp_uid,
            merchant_uid=merchant_uid,
            attempts=0,
            duplicate=True,
            detail={"receipt": json.loads(record.get("receipt") or "{}")},
        )
        min_id = f"{_now_ms() - self._event_retention * 1000}-0"
        self._publish(
            keys=[self._stream, terminal_key(task_id), status_key(imp_uid)],
            args=[ISSUED, json.dumps(data, ensure_ascii=False), min_id, self._event_retention],
        )

    def due_jobs(self, *, limit: int, regrace_seconds: float) -> list[DueJob]:
        """Jobs the sweeper must re-send now; each is handed out once per ``regrace_seconds``."""
        now = _now_ms()
        members = self._redis.zrangebyscore(DUE_KEY, 0, now, start=0, num=limit)
        jobs = []
        for member in members:
            imp_uid = _text(member)
            found = self._due(
                keys=[ledger_key(imp_uid), DUE_KEY],
                args=[now, int(regrace_seconds * 1000), imp_uid],
            )
            if not found:
                continue
            state, task_id, payload, attempts, op, fence = (_text(part) for part in found)
            jobs.append(
                DueJob(imp_uid, state, task_id, json.loads(payload), int(attempts), op, int(fence))
            )
        return jobs

    def note(self, imp_uid: str, *, fence: int, field: str, value: str) -> bool:
        """Record a step the owner has taken, so a retry does not take it again."""
        return bool(self._note(keys=[ledger_key(imp_uid)], args=[fence, field, value]))

    def record(self, imp_uid: str) -> dict[str, str] | None:
        """The raw ledger record of a payment, or None."""
        raw = self._redis.hgetall(ledger_key(imp_uid))
        if not raw:
            return None
        return {_text(key): _text(value) for key, value in raw.items()}


def stuck(client: redis.Redis, *, older_than: float, limit: int = 100) -> list[str]:
    """imp_uids whose non-terminal job has been due for longer than ``older_than`` seconds.

    A healthy fleet re-sends a due job within one sweep interval, and the next
    claim moves it on, so anything overdue by much more is stuck: no worker
    runs, or every re-sent message fails before it can claim the job. "Due" is
    read from the record (``lease_until`` in flight, ``next_attempt_at`` when
    received, else ``updated_at``/``created_at``), which only a transition
    moves: the due index's score is pushed forward every time the sweeper
    hands the job out, so a job re-sent forever would never look overdue there.
    Oldest first.
    """
    ceiling = _now_ms() - int(older_than * 1000)
    overdue: list[tuple[int, str]] = []
    members = [_text(m) for m in client.zrange(DUE_KEY, 0, -1)]
    for start in range(0, len(members), 500):
        batch = members[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for imp_uid in batch:
            pipe.hmget(
                ledger_key(imp_uid),
                ["state", "lease_until", "next_attempt_at", "updated_at", "created_at"],
            )
        for imp_uid, fields in zip(batch, pipe.execute(), strict=True):
            state, lease, next_at, updated, created = (
                _text(f) if f is not None else None for f in fields
            )
            if state is None or state in TERMINAL_STATES:
                continue
            due = (lease if state == "in_flight" else next_at) or updated or created or "0"
            if int(due) <= ceiling:
                overdue.append((int(due), imp_uid))
    return [imp_uid for _, imp_uid in sorted(overdue)[:limit]]


def shown_record(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A ledger record as an operator may see it: sealed fields marked, times readable."""
    record = {_text(key): _text(value) for key, value in raw.items()}
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


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def failed_jobs(client: redis.Redis, *, limit: int = 100) -> list[str]:
    """imp_uids whose job failed for good, newest first: the dead-letter view."""
    return [_text(m) for m in client.zrevrange(FAILED_KEY, 0, limit - 1)]


def job_history(client: redis.Redis, imp_uid: str) -> list[dict[str, Any]]:
    """The attempts and outcomes the ledger kept for a payment, newest first."""
    return [json.loads(_text(item)) for item in client.lrange(history_key(imp_uid), 0, -1)]
