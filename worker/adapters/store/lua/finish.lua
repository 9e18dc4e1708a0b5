-- needs: now_ms, publish_once, partial, once
-- The terminal transition and its event, together.
-- KEYS: ledger, due, stream, terminal marker, status pointer, waiters, dead-job index,
--       history, terminal marker of the extra event.
-- ARGV: fence, state, event type, event data, clock offset ms (now_ms.lua), event
--       retention s, (unused: it was the caller's clock), receipt json, last_error json,
--       ledger retention s, receipt key,
--       extra event type ('' for none), extra event data, the terminal markers'
--       key prefix (a waiter's marker is named from its task id, read here),
--       the waiters' event type and data (worker.core.events.waiter_event: this
--       script adds only the task id, the event id and the live receipt), the
--       cancel_failed event type, '1' when the outcome settles the job's last POST
--       or DELETE (its sent_at goes), '1' when the waiters' event carries the live
--       receipt, the history's length, in how many ms a waiter that takes the job over is
--       due ('' when the failure is every waiter's too)
local terminal_prefix = ARGV[14]
local waiter_type, cancel_failed_type = ARGV[15], ARGV[17]
-- A waiter's event: the core's template, with its identity, and the live receipt.
local function waiter_data(waiter, published_id, live)
  local data = cjson.decode(ARGV[16])
  data['task_id'] = waiter
  data['event_id'] = redis.sha1hex(waiter .. published_id)
  if ARGV[19] == '1' then data['receipt'] = live and cjson.decode(live) or cjson.null end
  return cjson.encode(data)
end
-- The job passes to a message recorded while it was in hand (an issue after a
-- partial refund, a cancellation after an issue), unless that task already ended:
-- received, its payload in field, due at due. True when it did.
local function hand_over(task_id, op, field, value, due)
  if not task_id or redis.call('EXISTS', terminal_prefix .. task_id) == 1 then
    return false
  end
  redis.call('HSET', KEYS[1], 'state', 'received', 'op', op, 'task_id', task_id,
    field, value, 'attempts', 0, 'next_attempt_at', due)
  -- The refund that held the job has ended: its cancel step is no new owner's.
  redis.call('HDEL', KEYS[1], 'cancel_step')
  redis.call('PERSIST', KEYS[1])
  redis.call('ZADD', KEYS[2], due, ARGV[11])
  return true
end
local record = redis.call('HMGET', KEYS[1], 'state', 'fence', 'attempts', 'op')
if record[1] ~= 'in_flight' or record[2] ~= ARGV[1] then
  return {-1, record[1] or ''}
end
local now = now_ms(ARGV[5])
local entry = {at = now, op = record[4] or 'issue',
  attempt = tonumber(record[3] or '0'), outcome = ARGV[3]}
if ARGV[9] ~= '' then entry['error'] = cjson.decode(ARGV[9]) end
-- The transition's second event (a partial refund's re-issue, or its failure).
if ARGV[12] ~= '' then entry['then'] = ARGV[12] end
redis.call('LPUSH', KEYS[8], cjson.encode(entry))
redis.call('LTRIM', KEYS[8], 0, tonumber(ARGV[20]) - 1)
redis.call('EXPIRE', KEYS[8], ARGV[10])
if ARGV[2] == 'failed' or ARGV[3] == cancel_failed_type then
  -- A dead letter: a job that failed, or a refund whose receipt stays live.
  redis.call('ZADD', KEYS[7], now, ARGV[11])
else
  redis.call('ZREM', KEYS[7], ARGV[11])
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at', now)
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'receipt', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'last_error', ARGV[9]) end
redis.call('HDEL', KEYS[1], 'lease_until', 'next_attempt_at')
if ARGV[18] == '1' then
  -- Settled: no POST or DELETE of the job is left that i'mport may yet act on.
  redis.call('HDEL', KEYS[1], 'sent_at')
end
redis.call('ZREM', KEYS[2], ARGV[11])
redis.call('EXPIRE', KEYS[1], ARGV[10])
local published = publish_once(KEYS[3], KEYS[4], KEYS[5], ARGV[3], ARGV[4], now, ARGV[6])
redis.call('HSET', KEYS[1], 'event_id', published[2])
if ARGV[12] ~= '' then
  -- A partial refund: the cancellation and the new receipt are one transition.
  publish_once(KEYS[3], KEYS[9], KEYS[5], ARGV[12], ARGV[13], now, ARGV[6])
end
-- A failure that is the owner's alone (its message never ran): the first waiter
-- that has not ended takes the job over, due when the sweeper re-sends it should its
-- message be lost; the others wait on it, and hear its outcome. True when one did.
local function to_waiter()
  local payload = redis.call('HGET', KEYS[1], 'payload')
  if ARGV[21] == '' or ARGV[2] ~= 'failed' or not payload then return false end
  local due = now + tonumber(ARGV[21])
  local owner = redis.call('HGET', KEYS[1], 'task_id')
  local waiters = redis.call('SMEMBERS', KEYS[6])
  table.sort(waiters)
  for _, waiter in ipairs(waiters) do
    if waiter ~= owner and hand_over(waiter, 'issue', 'payload', payload, due) then
      redis.call('SREM', KEYS[6], waiter, owner)
      redis.call('ZREM', KEYS[7], ARGV[11])  -- owed, not dead
      return true
    end
  end
  return false
end
-- The messages recorded behind the job (a cancellation behind any job, an issue
-- behind a partial refund) still run, however the job ended: one with work left
-- owns the job now, and the other, if any, stays recorded behind it (issue 14,
-- finding 17). A cancellation goes first after a failure, an issue after a partial
-- refund that had no receipt to replace.
local owner = redis.call('HGET', KEYS[1], 'task_id')
local pending = redis.call('HMGET', KEYS[1], 'pending_cancel_task', 'pending_cancel',
  'pending_cancel_due', 'pending_issue_task', 'pending_issue', 'pending_issue_due', 'cancel')
local function to_cancel()
  if hand_over(pending[1], 'cancel', 'cancel', pending[2], pending[3]) then
    redis.call('ZREM', KEYS[7], ARGV[11])  -- owed, not dead: the refund runs now
    return 'cancel'
  end
  return nil
end
local function to_issue()
  if hand_over(pending[4], 'issue', 'payload', pending[5], pending[6]) then
    redis.call('HDEL', KEYS[1], 'receipt')
    redis.call('ZREM', KEYS[7], ARGV[11])
    return 'issue'
  end
  return nil
end
-- Every other message that asked for this payment meanwhile ends now, with the
-- owner's outcome, as a duplicate, even if that message itself is lost; but for
-- ``spare``, an issue recorded to run after the job's new owner.
local function end_waiters(live, spare)
  for _, waiter in ipairs(redis.call('SMEMBERS', KEYS[6])) do
    if waiter ~= owner and waiter ~= spare then
      publish_once(KEYS[3], terminal_prefix .. waiter, KEYS[5], waiter_type,
        waiter_data(waiter, published[2], live), now, ARGV[6])
    end
  end
  redis.call('DEL', KEYS[6])
  if spare then redis.call('SADD', KEYS[6], spare) end
  redis.call('EXPIRE', KEYS[6], ARGV[10])
end
-- A cancellation that ends with this refund's outcome: its first event, as a
-- duplicate, under its own task id; nothing when that task already ended.
local function echo(task_id)
  if not task_id or redis.call('EXISTS', terminal_prefix .. task_id) == 1 then return end
  local data = cjson.decode(ARGV[4])
  data['task_id'] = task_id
  data['event_id'] = redis.sha1hex(task_id .. published[2])
  data['duplicate'] = true
  publish_once(KEYS[3], terminal_prefix .. task_id, KEYS[5], ARGV[3], cjson.encode(data),
    now, ARGV[6])
end
if record[4] == 'cancel' then
  -- The cancellations this one took over (issue 14, finding 12).
  for _, waiter in ipairs(cjson.decode(redis.call('HGET', KEYS[1], 'cancel_waiters') or '[]')) do
    echo(waiter)
  end
  redis.call('HDEL', KEYS[1], 'cancel_waiters')
end
local successor = nil
if to_waiter() then
  -- The job is in hand again (an issue waiter's): its waiters stay, and so does a
  -- cancellation recorded behind it.
  successor = 'issue'
elseif ARGV[2] == 'issued' then
  -- Waiters are issue messages: after a cancellation's transition (a partial refund's
  -- re-issue, a repeated refund, a cancel_failed) they get the live receipt. A
  -- cancellation recorded meanwhile then owns the job: the receipt must not stay
  -- live if that cancellation's message was lost.
  end_waiters(redis.call('HGET', KEYS[1], 'receipt'), nil)
  successor = to_cancel()
elseif ARGV[2] == 'failed' then
  -- After a failure (a partial refund's failed re-issue too), waiters hear it; an issue
  -- recorded behind a refund runs, after a cancellation recorded too, if any.
  successor = to_cancel()
  if successor then
    end_waiters(redis.call('HGET', KEYS[1], 'receipt'), pending[4])
  else
    successor = to_issue()
    if successor then
      redis.call('EXPIRE', KEYS[6], ARGV[10])  -- they end with the issue now running
    else
      end_waiters(redis.call('HGET', KEYS[1], 'receipt'), nil)
    end
  end
elseif ARGV[2] == 'cancelled' then
  if partial(pending[7]) then
    -- A partial refund with no receipt to replace: issue messages that came
    -- meanwhile still issue. The one recorded last owns the job now.
    successor = to_issue() or to_cancel()
    redis.call('EXPIRE', KEYS[6], ARGV[10])
  else
    -- Issue messages still waiting will never issue: each ends as a stale one; a
    -- cancellation recorded meanwhile has nothing left to cancel: a duplicate.
    end_waiters(nil, nil)
    echo(pending[1])
  end
else
  redis.call('EXPIRE', KEYS[6], ARGV[10])
end
if successor ~= 'issue' then
  redis.call('HDEL', KEYS[1], 'pending_cancel_task', 'pending_cancel', 'pending_cancel_due')
end
if successor ~= 'cancel' or ARGV[2] ~= 'failed' then
  redis.call('HDEL', KEYS[1], 'pending_issue_task', 'pending_issue', 'pending_issue_due')
end
return published
