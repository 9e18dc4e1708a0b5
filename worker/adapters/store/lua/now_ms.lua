-- A fragment: now_ms(offset), the ledger's clock in milliseconds: Redis's TIME, so
-- every host stamps and compares leases and due times by one clock, plus the offset
-- the caller passes (0 but in tests: worker.adapters.store.clock.ClockOffset).
local function now_ms(offset)
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + tonumber(offset)
end
