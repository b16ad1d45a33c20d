-- wrk script for benchmark (c): POST /api/event, a new message id on every request.
--   wrk -t2 -c32 -d8s --latency -s bench/single.lua http://127.0.0.1:4000 -- RUN_ID
local threads = {}
local counter = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  run = args[1] or "wrk"
  headers = { ["Content-Type"] = "application/json" }
end

function request()
  counter = counter + 1
  local body = string.format('{"app_id":"single-%s","message_id":"w%d-%d","event":"CREATED"}', run, tid, counter)
  return wrk.format("POST", "/api/event", headers, body)
end
