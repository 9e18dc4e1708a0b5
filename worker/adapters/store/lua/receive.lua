-- needs: partial
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
-- A re-opened job starts with no refund step: an earlier refund's cancel_step would
-- make the next refund that takes it over skip its DELETE.
redis.call('HDEL', KEYS[1], 'last_error', 'receipt', 'lease_until', 'cancel_step')
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return 'received'
