-- Move one layout 1 side key or status pointer to its layout 2 name (issue 14), if it is one.
-- KEYS: the layout 1 name, the layout 2 name. ARGV: the type such a key has ('list': a
-- history, 'set': waiters, 'string': a status pointer), the history's length.
-- In layout 1, `cash_receipt:ledger:x:history` was payment x's history (a list), or the
-- record (a hash) of the payment whose imp_uid is `x:history`: only the type tells, and
-- a record stays where it is. Returns 1 when the key moved, 0 when it stayed.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= ARGV[1] then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])  -- with its TTL
  return 1
end
-- This release wrote the new key already: what it wrote is newer, and keeps its TTL.
if kind == 'list' then
  for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    redis.call('RPUSH', KEYS[2], entry)  -- the older attempts after the newer ones
  end
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
elseif kind == 'set' then
  for _, waiter in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    redis.call('SADD', KEYS[2], waiter)
  end
end
-- A string: the new pointer names a later event than the old one.
redis.call('DEL', KEYS[1])
return 1
