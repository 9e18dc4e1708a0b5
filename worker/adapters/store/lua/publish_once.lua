-- A fragment shared by every script that ends a task: XADD the event unless this
-- task already published one (its marker), and remember where it went.
local function publish_once(stream, marker, status, event_type, data, minid, retention)
  local seen = redis.call('GET', marker)
  if seen then
    return {0, seen}
  end
  local id = redis.call('XADD', stream, 'MINID', '~', minid, '*', 'type', event_type, 'data', data)
  redis.call('SET', marker, id, 'EX', retention)
  if status ~= '' then
    redis.call('SET', status, id, 'EX', retention)
  end
  return {1, id}
end
