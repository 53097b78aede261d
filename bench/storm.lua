-- wrk script: POST /heartbeat for AGENTS agents in turn (one id each), all with pid PID.
-- wrk ... -s storm.lua URL -- AGENTS PID
-- Each thread walks its own share of the ids, so an id comes round once per pass over all
-- of them (AGENTS / rate seconds). The first pass creates them (one event each).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  agents, pid = tonumber(args[1]), tonumber(args[2])
  step = #threads > 0 and #threads or 2
  counter = tid or 0
end

function request()
  counter = counter + step
  local body = string.format(
    '{"agent_id":"storm-%d","pid":%d,"timestamp":"2026-11-27T20:35:24.456284565Z","version":"1.0.0","status":"running","cpu":1.5,"memory":12582912}',
    counter % agents, pid)
  return wrk.format(nil, nil, nil, body)
end
