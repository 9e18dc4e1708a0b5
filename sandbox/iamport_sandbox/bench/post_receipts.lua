-- wrk script: POST /receipts/{imp_uid} with a fresh imp_uid on every request, so every
-- request issues a real receipt (a second POST on one imp_uid would be a cheap 400).
-- Needs SANDBOX_TOKEN in the environment (run.sh gets one from /users/getToken).
local token = os.getenv("SANDBOX_TOKEN") or error("set SANDBOX_TOKEN")
local threads = {}
local counter = 0
not_ok = 0 -- global, so done() can read it through thread:get

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.body = '{"identifier":"01012345678","identifier_type":"phone","type":"person","tax_free":0}'

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  prefix = "bench_" .. tid .. "_" .. os.time() .. "_"
end

function request()
  counter = counter + 1
  return wrk.format(nil, "/receipts/" .. prefix .. counter)
end

function response(status, headers, body)
  if status ~= 200 then not_ok = not_ok + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do bad = bad + thread:get("not_ok") end
  io.write(string.format("non-200 responses: %d\n", bad))
end
