-- A fragment shared by every script that ends a task: XADD the event unless this
-- task already published one (its marker), and remember where it went. Events older
-- than retention (s) by the ledger's clock, now (ms), go (MINID ~).
local function publish_once(stream, marker, status, event_type, data, now, retention)
  local seen = redis.call('GET', marker)
  if seen then
    return {0, seen}
  end
  local id = redis.call('XADD', stream, 'MINID', '~',
    string.format('%d-0', now - tonumber(retention) * 1000), '*', 'type', event_type, 'data', data)
  redis.call('SET', marker, id, 'EX', retention)
  if status ~= '' then
    redis.call('SET', status, id, 'EX', retention)
  end
  return {1, id}
end
