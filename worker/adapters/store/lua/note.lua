-- Record steps of the job the owner has taken (e.g. the old receipt is cancelled), at once.
-- KEYS: ledger. ARGV: fence, then field, value pairs
local record = redis.call('HMGET', KEYS[1], 'state', 'fence')
if record[1] ~= 'in_flight' or record[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
