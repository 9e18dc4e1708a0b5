-- needs: now_ms, once
-- Keep (or park) a claimed job while it waits to retry.
-- KEYS: ledger, due, history. ARGV: fence, clock offset ms (now_ms.lua), due_ms, new_state,
-- last_error, receipt key,
-- the history's length
local record = redis.call('HMGET', KEYS[1], 'state', 'fence', 'attempts', 'op')
local now = now_ms(ARGV[2])
if record[1] ~= 'in_flight' or record[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'updated_at', now, 'last_error', ARGV[5])
redis.call('LPUSH', KEYS[3], cjson.encode({at = now, op = record[4] or 'issue',
  attempt = tonumber(record[3] or '0'), outcome = 'retry', error = cjson.decode(ARGV[5])}))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[7]) - 1)
if ARGV[4] == 'received' then
  redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[3])
  redis.call('HDEL', KEYS[1], 'lease_until')
else
  redis.call('HSET', KEYS[1], 'lease_until', ARGV[3])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
return 1
