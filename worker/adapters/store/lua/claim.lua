-- needs: now_ms, partial, once, cancel_waiter
-- KEYS: ledger, due, terminal marker of this task, waiters, dead-job index.
-- ARGV: task_id, payload, clock offset ms (now_ms.lua), lease_ms, receipt key (the indexes'
--       member), op ('issue' or 'cancel'),
--       the fence the message carries ('' for none)
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'done'}
end
local now = now_ms(ARGV[3])
local op = ARGV[6]
local record = redis.call('HMGET', KEYS[1],
  'state', 'task_id', 'lease_until', 'receipt', 'attempts', 'op', 'fence', 'cancel',
  'next_attempt_at', 'sent_at')
local state, owner, lease, receipt = record[1], record[2], tonumber(record[3] or '0'), record[4]
if owner == ARGV[1] and (state == 'issued' or state == 'failed' or state == 'cancelled') then
  -- The job ended under this task, whose marker has expired: a copy of its message
  -- that comes that late must not run it again, nor publish a second event.
  return {'done'}
end
if ARGV[7] ~= '' and owner and owner ~= ARGV[1]
    and (state == 'issued' or state == 'failed' or state == 'cancelled')
    and redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0 then
  -- A retry of a task that lost the job to a takeover: that task became a waiter and
  -- heard the job's end, even if its marker has expired since (one still waiting, as
  -- behind a partial refund, is in the set). A new message carries no fence; this
  -- late copy must not re-open the job (a failed one would POST again).
  return {'done'}
end
local attempts = tonumber(record[5] or '0')
local recorded_op = record[6] or 'issue'
local after_partial = partial(record[8])
if state == 'issued' and op == 'issue' then
  return {'issued', receipt}
end
if state == 'cancelled' and not (after_partial
    and (op == 'issue' or not partial(ARGV[2]) or recorded_partial(ARGV[2]))) then
  -- A full refund ends the payment's receipts; after a partial one an issue
  -- (or a full refund) still has work to do.
  return {'cancelled', receipt or ''}
end
if op == 'issue' and recorded_op == 'cancel' and (state == 'in_flight' or state == 'received') then
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
    if op == 'issue' then redis.call('SADD', KEYS[4], ARGV[1]) end
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
  redis.call('HSET', KEYS[1], 'created_at', now)
end
if record[10] and record[10] ~= '' then
  -- The job's last POST or DELETE is unsettled (a replay of a job that ended so, a
  -- new message after it): i'mport may yet act on it, so this attempt waits and looks.
  resumed = 1
end
if owner and owner ~= ARGV[1] and recorded_op == 'issue'
    and (state == 'in_flight' or state == 'received') then
  -- A takeover: the message that owned the job may be gone (its worker died,
  -- its retry was never published). It still ends in one event, as a waiter.
  redis.call('SADD', KEYS[4], owner)
elseif owner and owner ~= ARGV[1] and recorded_op == 'cancel' and op == 'cancel'
    and (state == 'in_flight' or state == 'received') then
  -- A cancellation takes over another's (parked, or its worker gone): that one
  -- ends with this one's outcome, as a duplicate (issue 14, finding 12).
  cancel_waiter(KEYS[1], owner)
  if redis.call('HGET', KEYS[1], 'cancel_step') == 'cancelled' then
    -- That one's cancel step is not this one's: the balance it re-issued may be live by
    -- now. This refund takes its own steps; the worker finishes that one's only when this
    -- one is the same refund again (issue 16 review, findings 1 and 2).
    redis.call('HSET', KEYS[1], 'cancel_step', 'inherited')
  end
end
if recorded_op ~= op and (state == 'in_flight' or state == 'received') then
  -- Another operation takes over an unfinished job (a refund of a parked issue): it
  -- gets a budget of its own, not what the issue left. It still waits out the issue's
  -- unsettled POST (resumed), then looks and acts: sent_op says whose request that was.
  attempts = 0
end
attempts = attempts + 1
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'task_id', ARGV[1], 'op', op,
  'attempts', attempts, 'updated_at', now, 'lease_until', now + tonumber(ARGV[4]))
if op == 'issue' then
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
