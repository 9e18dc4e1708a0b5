-- A fragment: once(run), which makes a mutating script safe to re-run (issue 14,
-- finding 8). redis-py re-sends a command after a connection error or a timeout even
-- when the server already ran it: a re-run claim answered busy, a re-run finish
-- "fenced out". So each call carries an id of its own: KEYS[#KEYS] is its reply key
-- (named by that id), ARGV[#ARGV] how long the reply is kept (s). The first run keeps
-- its reply there; a re-run of the same call answers it again and does nothing more.
-- Another call (a duplicate message's claim) has another id: it is never taken for
-- this one. The loader puts a script that needs it inside: return once(function() ... end)
local function once(run)
  local kept = redis.call('GET', KEYS[#KEYS])
  if kept then return cjson.decode(kept) end
  local reply = run()
  redis.call('SET', KEYS[#KEYS], cjson.encode(reply), 'EX', ARGV[#ARGV])
  return reply
end
