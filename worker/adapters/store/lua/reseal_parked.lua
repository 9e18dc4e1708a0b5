-- A re-sealed dead message, in the place of the record read, if it is still there.
-- KEYS: dead messages' list. ARGV: record read, record re-sealed
-- Returns 1 when it was replaced; 0 when it went meanwhile (requeued, or expired).
local at = redis.call('LPOS', KEYS[1], ARGV[1])
if not at then
  return 0
end
redis.call('LSET', KEYS[1], at, ARGV[2])
return 1
