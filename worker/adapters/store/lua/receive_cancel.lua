-- needs: now_ms, partial, once, cancel_waiter
-- Record a cancellation before it is enqueued, so that a lost message is re-sent.
-- KEYS: ledger, due, terminal marker of this task. ARGV: task_id, cancel, clock offset ms
-- (now_ms.lua), resend_after_ms, receipt key (the due index's member)
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 'done'
end
local now = now_ms(ARGV[3])
local resend_at = now + tonumber(ARGV[4])
local record = redis.call('HMGET', KEYS[1], 'state', 'task_id', 'cancel')
local state, owner = record[1], record[2]
if state and owner == ARGV[1] then
  return state  -- the same task again (an ingress entry handled twice)
end
if state == 'cancelled'
    and not (partial(record[3]) and (not partial(ARGV[2]) or recorded_partial(ARGV[2]))) then
  return state  -- nothing left to cancel: the task reports a duplicate
end
if state == 'received' or state == 'in_flight' then
  -- Another task owns the job. The cancellation waits its turn; when the job
  -- ends before this task has claimed it, it becomes the job's owner. One recorded
  -- so before it ends with this one's outcome.
  local earlier = redis.call('HGET', KEYS[1], 'pending_cancel_task')
  if earlier and earlier ~= ARGV[1] then cancel_waiter(KEYS[1], earlier) end
  redis.call('HSET', KEYS[1], 'pending_cancel_task', ARGV[1], 'pending_cancel', ARGV[2],
    'pending_cancel_due', resend_at)
  return state
end
if not state then
  redis.call('HSET', KEYS[1], 'created_at', now, 'fence', 0)
end
redis.call('HSET', KEYS[1], 'state', 'received', 'op', 'cancel', 'task_id', ARGV[1],
  'cancel', ARGV[2], 'attempts', 0, 'updated_at', now, 'next_attempt_at', resend_at)
redis.call('HDEL', KEYS[1], 'cancel_step', 'lease_until',
  'pending_cancel_task', 'pending_cancel', 'pending_cancel_due')
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], resend_at, ARGV[5])
return 'received'
