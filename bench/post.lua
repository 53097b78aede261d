-- wrk script: POST /heartbeat for WRK_IDS agents in turn (100 by default), each wrk
-- thread starting at its own place.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local ids = tonumber(os.getenv("WRK_IDS") or "100")
local counter = math.random(0, ids - 1)
request = function()
  counter = counter + 1
  local n = counter % ids
  local body = string.format(
    '{"agent_id":"wrk-%d","pid":%d,"timestamp":"2026-11-27T20:35:24.456284565Z","version":"1.0.0","status":"running","cpu":1.5,"memory":12582912}',
    n, 100000 + n)
  return wrk.format(nil, nil, nil, body)
end
