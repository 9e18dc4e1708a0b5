-- A fragment: cancel_waiter(ledger, task_id). A cancellation whose place another one
-- takes (a takeover of its parked job, or a later one recorded behind the same job)
-- ends with that one's outcome, as a duplicate: finish.lua publishes it for each task
-- kept in the record's cancel_waiters (issue 14, finding 12).
local function cancel_waiter(ledger, task_id)
  local waiting = cjson.decode(redis.call('HGET', ledger, 'cancel_waiters') or '[]')
  table.insert(waiting, task_id)
  redis.call('HSET', ledger, 'cancel_waiters', cjson.encode(waiting))
end
