-- Record a step of the job the owner has taken (e.g. the old receipt is cancelled).
-- KEYS: ledger. ARGV: fence, field, value
local record = redis.call('HMGET', KEYS[1], 'state', 'fence')
if record[1] ~= 'in_flight' or record[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
