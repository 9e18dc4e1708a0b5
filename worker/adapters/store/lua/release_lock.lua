-- Release the sweeper's lock, only if this sweep still holds it.
-- KEYS: lock. ARGV: this sweep's token
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
