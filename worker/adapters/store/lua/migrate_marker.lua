-- Move one layout 1 second marker to its layout 2 name (issue 14), if it is one.
-- KEYS: `cash_receipt:terminal:<t>:2`, `cash_receipt:terminal_then:<t>`, the result stream.
-- ARGV: the task id t.
-- In layout 1 that first name was task t's second marker (a partial refund's re-issue),
-- or the marker of the task whose id is `t:2`. The event it points at says which: its
-- task_id. When that event is gone from the stream, the marker stays as it is, and
-- expires with the markers of its time. Returns 1 when it moved, 0 when it stayed.
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then
  return 0
end
local id = redis.call('GET', KEYS[1])
local entries = redis.pcall('XRANGE', KEYS[3], id, id)
if type(entries) ~= 'table' or entries['err'] or #entries == 0 then
  return 0
end
local fields, data = entries[1][2], nil
for i = 1, #fields, 2 do
  if fields[i] == 'data' then data = fields[i + 1] end
end
local ok, decoded = pcall(cjson.decode, data or '')
if not ok or type(decoded) ~= 'table' or decoded['task_id'] ~= ARGV[1] then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])  -- with its TTL
else
  redis.call('DEL', KEYS[1])
end
return 1
