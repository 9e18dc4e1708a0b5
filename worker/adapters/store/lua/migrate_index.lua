-- Move a batch of a layout 1 index's members into its layout 2 index (issue 14).
-- KEYS: the layout 1 index (cash_receipt:ledger:due or :failed), the layout 2 index.
-- ARGV: the receipt keys' prefix of a V1 payment, how many members at most.
-- A key there that is no sorted set is no index: it is the record of the payment whose
-- imp_uid is `due` or `failed`, and stays. Each member moves once, in this script: added
-- under its receipt key (or moved earlier, LT: the sweeper looks again at the sooner
-- time), and removed from the old index. Returns how many members are left to move.
if redis.call('TYPE', KEYS[1])['ok'] ~= 'zset' then
  return 0
end
local batch = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
for i = 1, #batch, 2 do
  redis.call('ZADD', KEYS[2], 'LT', batch[i + 1], ARGV[1] .. batch[i])
  redis.call('ZREM', KEYS[1], batch[i])
end
return redis.call('ZCARD', KEYS[1])
