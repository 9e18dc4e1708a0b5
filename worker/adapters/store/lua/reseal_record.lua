-- Re-sealed fields of one ledger record, each written only if it still holds what was read.
-- KEYS: ledger record. ARGV: field, value read, value re-sealed (repeated)
-- Returns how many fields were written; a field a worker changed meanwhile is left as
-- it is (its new value was sealed under the newest key, or is read again next run).
local written = 0
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    written = written + 1
  end
end
return written
