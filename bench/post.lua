-- wrk script: POST /heartbeat for 100 agents in turn.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  local n = counter % 100
  local body = string.format(
    '{"agent_id":"wrk-%d","pid":%d,"timestamp":"2026-11-27T20:35:24.456284565Z","version":"1.0.0","status":"running","cpu":1.5,"memory":12582912}',
    n, 100000 + n)
  return wrk.format(nil, nil, nil, body)
end
