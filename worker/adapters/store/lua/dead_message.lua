-- needs: now_ms, once
-- Keep one dead message (none for '') and drop the expired ones: parked longer ago
-- than retention s by the ledger's clock (a record's parked_at_ms is its host's).
-- KEYS: dead messages' list. ARGV: record, limit, retention s, clock offset ms (now_ms.lua)
local oldest = now_ms(ARGV[4]) - tonumber(ARGV[3]) * 1000
if ARGV[1] ~= '' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
-- Newest first, so the expired ones are at the tail.
local dropped = 0
while true do
  local tail = redis.call('LINDEX', KEYS[1], -1)
  if not tail then break end
  local ok, record = pcall(cjson.decode, tail)
  local at = 0
  if ok and type(record) == 'table' then at = tonumber(record['parked_at_ms']) or 0 end
  if at >= oldest then break end
  redis.call('RPOP', KEYS[1])
  dropped = dropped + 1
end
return {redis.call('LLEN', KEYS[1]), dropped}
