-- needs: now_ms, partial, once
-- KEYS: ledger, due, waiters, terminal marker of this task.
-- ARGV: task_id, payload, clock offset ms (now_ms.lua), resend_after_ms, receipt key (the due
-- index's member)
local now = now_ms(ARGV[3])
local resend_at = now + tonumber(ARGV[4])
local terminal = {issued = true, failed = true, cancelled = true}
local record = redis.call('HMGET', KEYS[1], 'state', 'op', 'cancel', 'task_id')
local state = record[1]
if redis.call('EXISTS', KEYS[4]) == 1 or (state and record[4] == ARGV[1] and terminal[state]) then
  -- This task already ended (an ingress entry handled again after a crash before its
  -- XACK, a producer's retry of the same task id): its one event is out. Re-opening
  -- the job under it would leave a job no message can claim, that POSTs again once
  -- the marker expires.
  return 'done'
end
if state and record[4] == ARGV[1] then
  return state  -- the same task again, its job still in hand: nothing to record
end
local reopen = state == 'failed' or (state == 'cancelled' and partial(record[3]))
if state and not reopen then
  if state == 'received' or state == 'in_flight' then
    -- A waiter ends with the owner.
    redis.call('SADD', KEYS[3], ARGV[1])
    if record[2] == 'cancel' and partial(record[3]) then
      -- Behind a partial refund, which may end with no receipt to replace:
      -- kept, to own the job then (its message waits meanwhile).
      redis.call('HSET', KEYS[1], 'pending_issue_task', ARGV[1], 'pending_issue', ARGV[2],
        'pending_issue_due', resend_at)
    end
  end
  return state
end
if not state then
  redis.call('HSET', KEYS[1], 'created_at', now, 'fence', 0)
end
redis.call('HSET', KEYS[1], 'state', 'received', 'task_id', ARGV[1], 'payload', ARGV[2],
  'op', 'issue', 'attempts', 0, 'updated_at', now, 'next_attempt_at', resend_at)
-- A re-opened job starts with no refund step: an earlier refund's cancel_step would
-- make the next refund that takes it over skip its DELETE.
redis.call('HDEL', KEYS[1], 'last_error', 'receipt', 'lease_until', 'cancel_step')
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], resend_at, ARGV[5])
return 'received'
