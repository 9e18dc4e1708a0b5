-- wrk script: GET /receipts/{imp_uid} over the receipts run.sh issued beforehand
-- (bench_get_1 .. bench_get_N, N = SANDBOX_RECEIPTS, default 256).
-- Needs SANDBOX_TOKEN in the environment.
local token = os.getenv("SANDBOX_TOKEN") or error("set SANDBOX_TOKEN")
local count = tonumber(os.getenv("SANDBOX_RECEIPTS") or "256")
local threads = {}
local counter = 0
not_ok = 0 -- global, so done() can read it through thread:get

wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer " .. token

function setup(thread)
  table.insert(threads, thread)
end

function request()
  counter = counter + 1
  return wrk.format(nil, "/receipts/bench_get_" .. (counter % count + 1))
end

function response(status, headers, body)
  if status ~= 200 then not_ok = not_ok + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do bad = bad + thread:get("not_ok") end
  io.write(string.format("non-200 responses: %d\n", bad))
end
