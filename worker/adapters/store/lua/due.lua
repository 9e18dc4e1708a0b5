-- needs: now_ms, once
-- Hand a due job to the sweeper once, pushing its due time forward.
-- KEYS: ledger, due. ARGV: clock offset ms (now_ms.lua), regrace_ms, receipt key (the
-- index's member)
local record = redis.call('HMGET', KEYS[1], 'state', 'task_id', 'payload', 'lease_until',
  'next_attempt_at', 'attempts', 'op', 'cancel', 'fence')
local state = record[1]
if not state or state == 'issued' or state == 'failed' or state == 'cancelled' then
  redis.call('ZREM', KEYS[2], ARGV[3])
  return false
end
local now = now_ms(ARGV[1])
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
